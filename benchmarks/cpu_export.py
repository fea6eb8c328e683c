"""Swin-T on CPU: timm eager vs plain torch.onnx export vs vitserve's export, all in one run, side by side.

    python benchmarks/cpu_export.py [--model swin_t] [--batch-sizes 1,8] [--rounds 15] [--threads 2]

Random-init weights (speed does not depend on the values). The three runners take turns within every round (the
order rotates from round to round), so a machine that slows down mid-run slows all of them alike; onnxruntime's
idle threads do not spin, so one session cannot steal the cores from the next. The table shows the median ms per
batch and the ratios against timm eager and against the plain export.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import timm
import torch

from vitserve.export.onnx import INPUT_NAME, export_onnx, graph_stats
from vitserve.machine import cpu_name
from vitserve.models.build import build_model
from vitserve.models.catalogue import resolve
from vitserve.models.rewrites import deploy_copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="swin_t")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    torch.set_num_threads(args.threads)
    spec = resolve(args.model)
    model = build_model(spec, random_init=True).model
    deploy, rewrite = deploy_copy(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    # Two sessions share 2 cores: a session's idle threads must not spin while the other one computes.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    with tempfile.TemporaryDirectory() as tmp:
        plain_path, ours_path = Path(tmp) / "plain.onnx", Path(tmp) / "vitserve.onnx"
        export_onnx(model, spec.preprocess.input_size, plain_path, max_batch=max(batch_sizes), opset=18)
        export_onnx(deploy, spec.preprocess.input_size, ours_path, max_batch=max(batch_sizes), opset=18)
        nodes = {"plain": graph_stats(plain_path)["nodes"], "vitserve": graph_stats(ours_path)["nodes"]}
        sessions = {name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                    for name, p in (("plain", plain_path), ("vitserve", ours_path))}

        def eager(x: np.ndarray) -> None:
            with torch.inference_mode():
                model(torch.from_numpy(x))

        runners = {
            "timm eager (PyTorch)": eager,
            "torch.onnx export + onnxruntime": lambda x: sessions["plain"].run(None, {INPUT_NAME: x}),
            f"vitserve export ({rewrite}) + onnxruntime": lambda x: sessions["vitserve"].run(None, {INPUT_NAME: x}),
        }
        results: dict[tuple[str, int], list[float]] = {}
        for batch in batch_sizes:
            x = np.random.default_rng(0).standard_normal((batch, *spec.preprocess.input_size), dtype=np.float32)
            for run in runners.values():  # warm-up
                run(x)
                run(x)
            for r in range(args.rounds):
                names = list(runners)
                for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
                    run = runners[name]
                    started = time.perf_counter()
                    run(x)
                    results.setdefault((name, batch), []).append((time.perf_counter() - started) * 1e3)

    print(f"{args.model} ({spec.timm_name}), {cpu_name()}, {args.threads} threads, median of {args.rounds} rounds")
    print(f"torch {torch.__version__}, timm {timm.__version__}, onnxruntime {ort.__version__}; "
          f"ONNX nodes: plain {nodes['plain']}, vitserve {nodes['vitserve']}")
    names = list(runners)
    columns = [f"b{b} ms" for b in batch_sizes] + [f"b{b} vs eager" for b in batch_sizes]
    columns += [f"b{b} vs plain" for b in batch_sizes]
    print(f"\n| runtime | {' | '.join(columns)} |")
    print("|---" * (1 + 3 * len(batch_sizes)) + "|")
    for name in names:
        ms = [statistics.median(results[(name, b)]) for b in batch_sizes]
        eager_ms = [statistics.median(results[(names[0], b)]) for b in batch_sizes]
        plain_ms = [statistics.median(results[(names[1], b)]) for b in batch_sizes]
        print(f"| {name} | {' | '.join(f'{m:.1f}' for m in ms)} | "
              f"{' | '.join(f'{e / m:.2f}x' for e, m in zip(eager_ms, ms))} | "
              f"{' | '.join(f'{p / m:.2f}x' for p, m in zip(plain_ms, ms))} |")
    print("\n(ratios > 1 mean faster than the reference column)")


if __name__ == "__main__":
    main()
