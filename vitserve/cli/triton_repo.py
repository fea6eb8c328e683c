"""`vitserve triton-repo ARTIFACT REPO`: a Triton Inference Server model repository from an artifact."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from vitserve.export.triton import TritonOptions, write_triton_repo

    options = TritonOptions(name=args.name, max_batch_size=args.max_batch_size,
                            max_queue_delay_us=args.max_queue_delay_us, kind=args.kind, instances=args.instances,
                            tensorrt=args.tensorrt)
    target = write_triton_repo(args.artifact, args.repo, options)
    print(f"Triton model repository: {target} (tritonserver --model-repository {Path(args.repo)})")
    return 0


def add(sub) -> None:
    p = sub.add_parser(
        "triton-repo",
        help="write a Triton Inference Server model repository from an artifact",
        description="Write REPO/NAME/config.pbtxt, REPO/NAME/1/model.onnx (or the OpenVINO IR, or the TensorRT "
        "engine) and the labels, for "
        "`tritonserver --model-repository REPO`. Triton takes preprocessed tensors (see the manifest's preprocess).",
    )
    p.add_argument("artifact", help="artifact directory written by `vitserve export`")
    p.add_argument("repo", help="model repository directory (created if missing; other models in it are kept)")
    p.add_argument("--name", help="model name in the repository (default: the artifact's)")
    p.add_argument("--max-batch-size", type=int, metavar="N", help="Triton's max_batch_size (default: the "
                   "artifact's max batch)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, metavar="US",
                   help="dynamic batching: how long a request may wait for others (default 2000)")
    p.add_argument("--kind", choices=["cpu", "gpu"], help="instance kind (default cpu; gpu for a TensorRT engine)")
    p.add_argument("--instances", type=int, default=1, metavar="N", help="model instances per device (default 1)")
    p.add_argument("--tensorrt", action="store_true", help="gpu: onnxruntime's TensorRT accelerator in fp16")
    p.set_defaults(func=run)
