"""`vitserve healthcheck`: exit 0 when a local server is ready (the container's HEALTHCHECK); standard library only."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the server's readiness probe answers 200 (the container HEALTHCHECK); standard library only."""
    import os
    import urllib.error
    import urllib.request

    url = args.url or f"http://127.0.0.1:{os.environ.get('VITSERVE_PORT', '8000')}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError) as e:
        print(f"unhealthy: {url}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


def add(sub) -> None:
    p = sub.add_parser("healthcheck", help="exit 0 if a local server is ready (for container health checks)")
    p.add_argument("--url", help="default: http://127.0.0.1:$VITSERVE_PORT/readyz (port 8000 if unset)")
    p.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    p.set_defaults(func=run)
