"""`vitserve quantize ARTIFACT --calib DIR`: an int8 artifact, admitted by an accuracy gate."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitserve.cli.common import progress


def run(args: argparse.Namespace) -> int:
    from vitserve.export.quantize import quantize_artifact

    artifact = Path(args.artifact)
    suffix = "int8" if args.backend == "onnxruntime" else "int8-openvino"
    out = Path(args.out) if args.out else artifact.with_name(f"{artifact.name}-{suffix}")
    report = quantize_artifact(artifact, Path(args.calib), out, method=args.backend, samples=args.samples,
                               eval_dir=Path(args.eval) if args.eval else None, min_agreement=args.min_agreement,
                               min_speedup=args.min_speedup, progress=progress)
    int8 = report["int8"]
    accuracy = f", accuracy {int8['accuracy']:.2%} (fp32 {int8['fp32_accuracy']:.2%})" if "accuracy" in int8 else ""
    speed = report["speed"]
    print(f"wrote {out} (int8 top-1 agreement {int8['top1_agreement']:.2%} on {int8['images']} held-out "
          f"images{accuracy}; {speed['speedup']:.2f}x fp32's speed here)")
    return 0


def add(sub) -> None:
    p = sub.add_parser(
        "quantize",
        help="write an int8 artifact, admitted by an accuracy gate",
        description="Quantize an fp32 artifact to int8 (onnxruntime static QDQ, or OpenVINO NNCF), then compare it "
        "with the fp32 model on held-out images (top-1 agreement; accuracy where the images sit in folders named "
        "after the labels) and time both, interleaved, in the same runtime on this machine. Below --min-agreement "
        "or --min-speedup nothing is written and the exit code is 1.",
    )
    p.add_argument("artifact", help="fp32 artifact directory written by `vitserve export`")
    p.add_argument("--calib", required=True, metavar="DIR", help="calibration images (any layout, searched "
                   "recursively)")
    p.add_argument("--eval", metavar="DIR", help="held-out images for the gate (default: a quarter of --calib, "
                   "never used for calibration)")
    p.add_argument("--samples", type=int, default=300, metavar="N", help="calibration images to use (default 300)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "openvino"])
    p.add_argument("--min-agreement", type=float, default=0.99, metavar="F",
                   help="smallest top-1 agreement with fp32 that passes (default 0.99)")
    p.add_argument("--min-speedup", type=float, default=1.1, metavar="F",
                   help="how many times as fast as fp32 int8 must run on this machine (default 1.1; 0 writes it "
                   "whatever its speed, still timed and recorded)")
    p.add_argument("--out", metavar="DIR", help="default: ARTIFACT-int8 (or ARTIFACT-int8-openvino)")
    p.set_defaults(func=run)
