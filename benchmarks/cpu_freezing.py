"""Does freezing make the CPU torch artifact faster? Each model exported to a CPU package twice, with and without
Inductor's freezing (the weights compiled in as constants, prepacked for oneDNN), timed side by side in one run
through the server's torch backend.

    python benchmarks/cpu_freezing.py swin_t vit_b_16 deit_s [--dtype bf16] [--batch-sizes 1,8] [--threads 2]

The exports are what `vitserve export MODEL --random-init --format torch --device cpu --dtype DTYPE` writes (each
verified against the fp32 model as usual); the two packages alternate call by call (the order flips every round);
medians of --rounds calls.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from timing import side_by_side  # benchmarks/timing.py, beside this script

from vitserve.export.bench import export_cpu_package
from vitserve.models.build import build_model
from vitserve.models.catalogue import resolve
from vitserve.runtimes.torch_package import TorchRuntime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch-sizes", default="1,8")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    print(f"torch CPU packages, {args.dtype}, {args.threads} threads, median of {args.rounds} rounds\n")
    print("| model | batch | frozen ms | not frozen ms | speed-up |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            built = build_model(resolve(name), random_init=True)
            backends = {}
            for freezing in (True, False):
                out = Path(tmp) / f"{name}-{'frozen' if freezing else 'not-frozen'}"
                export_cpu_package(built, out, args.dtype, batches, freezing=freezing)
                backends[freezing] = TorchRuntime(out, threads=args.threads)
            for batch in batches:
                x = np.random.default_rng(0).standard_normal((batch, *backends[True].input_shape), dtype=np.float32)
                ms = side_by_side({f: (lambda b=backend, x=x: b(x)) for f, backend in backends.items()}, args.rounds)
                print(f"| {name} | {batch} | {ms[True]:.1f} | {ms[False]:.1f} | {ms[False] / ms[True]:.2f}x |",
                      flush=True)


if __name__ == "__main__":
    main()
