"""`vitserve bench MODEL_OR_ARTIFACT`: every runtime x precision x batch size, beside timm eager, in one run."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitserve import runtimes
from vitserve.cli.common import choice_list, int_list, progress

CPU_RUNTIMES = tuple(name for name, entry in runtimes.RUNTIMES.items() if "cpu" in entry.devices)


def run(args: argparse.Namespace) -> int:
    from vitserve.export.bench import bench_artifact, format_table

    target = Path(args.model)
    out = Path(args.out)
    also = [Path(a) for a in args.also]
    if (target / "vitserve.json").is_file():
        artifact = target
    else:  # a model name: export it (and torch packages for --backends ...,torch) and bench that
        from vitserve.export.bench import export_for_bench
        from vitserve.models.catalogue import resolve

        artifact, packages = export_for_bench(resolve(args.model), out, args.backends, args.precisions,
                                              args.batch_sizes, progress)
        also = packages + also
    report = bench_artifact(artifact, out, backends=args.backends, precisions=args.precisions,
                            batch_sizes=args.batch_sizes, rounds=args.rounds, threads=args.threads,
                            eager=not args.no_eager, also=also, peers=args.peers)
    print(f"{report['model']} on {report['machine']}, threads {args.threads or 'all'}, median of {args.rounds} "
          "rounds\n")
    print(format_table(report))
    print(f"\nwrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 0


def add(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="time every backend x precision x batch size against timm eager",
        description="Time an artifact (or a model name, exported first with random weights) in every backend and "
        "precision at each batch size, with timm eager in the same run; prints the table and writes bench.json "
        "and bench.png.",
    )
    p.add_argument("model", help="artifact directory, or a model name")
    p.add_argument("--backends", type=choice_list(CPU_RUNTIMES),
                   default=["onnxruntime", "openvino"], help="default onnxruntime,openvino; torch: a model name is "
                   "also exported to a CPU torch package per precision, timed in the torch backend")
    p.add_argument("--precisions", type=choice_list(("f32", "bf16")), default=["f32", "bf16"])
    p.add_argument("--batch-sizes", type=int_list, default=[1, 8, 32])
    p.add_argument("--rounds", type=int, default=10, help="timed runs of each runner per batch size (default 10)")
    p.add_argument("--threads", type=int, default=None, help="threads for every runner (default: all cores)")
    p.add_argument("--no-eager", action="store_true", help="skip the timm eager baseline (no torch needed)")
    p.add_argument("--peers", action="store_true", help="also time what a user would pick by hand (OpenVINO "
                   "converted from timm, onnxruntime on a plain export, torch.compile) and the runtime `serve` "
                   "chooses here (`vitserve auto`), with its ratio to the fastest peer")
    p.add_argument("--also", nargs="+", default=[], metavar="ARTIFACT", help="more artifacts of the same model "
                   "in the same rounds, each in the backend it was made for (e.g. the int8 ones from "
                   "`vitserve quantize`)")
    p.add_argument("--out", default="bench", metavar="DIR", help="where bench.json and bench.png go (default bench)")
    p.set_defaults(func=run)
