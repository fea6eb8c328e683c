from vitserve.cli import main

raise SystemExit(main())
