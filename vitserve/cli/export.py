"""`vitserve export MODEL`: build the model, rewrite it, write the artifact in a format, and prove it."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitserve.cli.common import int_list, positive_int, progress
from vitserve.config import DEFAULT_ARTIFACTS_DIR, DEFAULT_ATOL, DEFAULT_MAX_BATCH, DEFAULT_OPSET


def run(args: argparse.Namespace) -> int:
    from vitserve.models.catalogue import resolve, with_overrides

    spec = resolve(args.model)  # unknown names fail before torch is imported
    if args.img_size or args.window_size:
        spec = with_overrides(spec, img_size=args.img_size, window_size=args.window_size)
    from vitserve.artifact import check_output_dir
    from vitserve.export.formats import Flags, get_format
    from vitserve.export.pipeline import export_artifact
    from vitserve.models.build import build_model

    out = Path(args.out) if args.out else Path(DEFAULT_ARTIFACTS_DIR) / spec.name.replace("/", "_")
    flags = Flags(dtype=args.dtype, device=args.device, batch_buckets=tuple(args.batch_buckets or ()),
                  max_autotune=args.max_autotune, no_cuda_graphs=args.no_cuda_graphs)
    fmt = get_format(args.format)
    options = fmt.options(flags, out, max_batch=args.max_batch, opset=args.opset, rewrite=not args.no_rewrite,
                          atol=args.atol)
    fmt.check(options)  # what the export would refuse, before the model is built
    check_output_dir(out)
    progress(f"building {spec.name} ({spec.timm_name})")
    built = build_model(spec, weights=args.weights, random_init=args.random_init, num_classes=args.num_classes,
                        labels_file=args.labels)
    progress(f"  weights: {built.weights['source']}" + (f" ({built.weights['path']})" if "path" in built.weights
                                                         else ""))
    manifest = export_artifact(built, options, progress=progress)
    report = manifest.verification
    graph = manifest.graph  # an AOTInductor package or a TensorRT engine has no ONNX graph to count
    contents = (f"{graph['nodes']} ONNX nodes" if "nodes" in graph
                else f"{manifest.model_file}, {graph['file_bytes'] / 1e6:.1f} MB")
    print(f"wrote {out} ({contents}, verified: max |diff| {report['max_abs_diff']:.1e}, "
          f"top-1 agreement {report['top1_agreement']:.0%})")
    if args.triton_repo:
        from vitserve.export.triton import write_triton_repo

        target = write_triton_repo(out, args.triton_repo)
        print(f"Triton model repository: {target} (`vitserve triton-repo` for GPU instances and other settings)")
    return 0


def add(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to a verified artifact (ONNX, OpenVINO IR, AOTInductor or TensorRT)",
        description="Build MODEL, rewrite it into its export-friendly form, write the artifact and prove that it "
        "gives the same answers as the PyTorch model (random inputs and real photographs), run by the same code "
        "that serves it.",
    )
    p.add_argument("model", help="alias from `vitserve models`, any timm architecture name, or a timm model folder "
                   "(local-dir:PATH or its path; hf-hub:ORG/NAME)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--weights", metavar="FILE", help="checkpoint: .safetensors, .pth or .pt state dict "
                         "(also nested under state_dict / model / state_dict_ema)")
    weights.add_argument("--random-init", action="store_true", help="random weights (testing the pipeline only)")
    p.add_argument("--num-classes", type=int, metavar="N", help="classifier size of a fine-tuned checkpoint")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (fine-tuned models)")
    p.add_argument("--img-size", type=positive_int, metavar="N", help="square input size a checkpoint was "
                   "trained or fine-tuned at, if not the model's (its eval crop and timm's img_size)")
    p.add_argument("--window-size", type=positive_int, metavar="N", help="Swin families: the window a checkpoint "
                   "was trained or fine-tuned with, if not the model's")
    p.add_argument("--out", metavar="DIR", help=f"artifact directory (default {DEFAULT_ARTIFACTS_DIR}/MODEL)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, metavar="N",
                   help=f"largest batch the graph accepts (default {DEFAULT_MAX_BATCH})")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--no-rewrite", action="store_true", help="export timm's original graph (for comparison)")
    from vitserve.export.formats import FORMATS  # the names only: no torch

    p.add_argument("--format", choices=list(FORMATS), default="onnx",
                   help="onnx (default); openvino: an OpenVINO IR for --backend openvino; torch: an AOTInductor "
                   "package for --backend torch; tensorrt: a TensorRT engine with the window-attention plugin")
    p.add_argument("--device", choices=["cuda", "cpu"], help="--format torch: compile for this device (default "
                   "cuda)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32", "fp8"], help="--format torch: precision (default "
                   "fp16 on cuda, fp32 on cpu; fp8: the blocks' matrix products in fp8, the rest bf16, for GPUs with "
                   "fp8 tensor cores, on the CPU only to check accuracy); --format tensorrt: the engine's precision "
                   "(fp16, bf16 or fp32, default fp16; LayerNorm and the attention's softmax stay float32); "
                   "--format onnx: fp32 (default) or fp16, for onnxruntime's CUDA and TensorRT providers")
    p.add_argument("--batch-buckets", type=int_list, metavar="N,N,...", help="--format torch: batch sizes the "
                   "server warms and captures CUDA graphs for; --format tensorrt: one optimization profile each "
                   "(default 1,8,32 and --max-batch)")
    p.add_argument("--max-autotune", action="store_true", help="--format torch --device cuda: let Inductor "
                   "benchmark GEMM kernels, including its own with the following element-wise operations fused "
                   "(longer compile)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="--format torch --device cuda: verify and serve "
                   "the package with plain calls instead of a CUDA graph per bucket (if capturing one fails)")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                   help=f"largest |logit difference| accepted by the verification (default {DEFAULT_ATOL:g})")
    p.add_argument("--triton-repo", metavar="DIR", help="also write a Triton model repository (CPU instances, GPU "
                   "for a TensorRT engine; the artifact's max batch; `vitserve triton-repo` has the other settings)")
    p.set_defaults(func=run)
