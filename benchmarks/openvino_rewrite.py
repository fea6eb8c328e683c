"""Does the window rewrite help OpenVINO? The same model exported with and without it, side by side in one run.

    vitserve export swin_t --random-init --out artifacts/swin_t_random --max-batch 32
    vitserve export swin_t --random-init --no-rewrite --out artifacts/swin_t_plain --max-batch 32
    python benchmarks/openvino_rewrite.py artifacts/swin_t_random artifacts/swin_t_plain [--precision bf16]

The two compiled models alternate run by run (the order flips every round); medians of --rounds runs.
"""

from __future__ import annotations

import argparse

import numpy as np
from timing import side_by_side  # benchmarks/timing.py, beside this script

from vitserve.runtimes.openvino import OpenVINORuntime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rewritten")
    parser.add_argument("plain")
    parser.add_argument("--precision", default="bf16", choices=["f32", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch-sizes", default="1,8")
    args = parser.parse_args()
    models = {"rewritten": OpenVINORuntime(args.rewritten, threads=args.threads, precision=args.precision),
              "plain": OpenVINORuntime(args.plain, threads=args.threads, precision=args.precision)}
    print(f"openvino {args.precision}, {args.threads} threads, median of {args.rounds} rounds\n")
    print("| batch | rewritten ms | plain ms | plain / rewritten |\n|---|---|---|---|")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        x = np.random.default_rng(0).standard_normal((batch, *models["plain"].manifest.input.shape[1:]),
                                                      dtype=np.float32)
        ms = side_by_side({name: (lambda m=model, x=x: m(x)) for name, model in models.items()}, args.rounds)
        rw, plain = ms["rewritten"], ms["plain"]
        print(f"| {batch} | {rw:.1f} | {plain:.1f} | {plain / rw:.2f}x |")


if __name__ == "__main__":
    main()
