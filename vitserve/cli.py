"""The `vitserve` command. Heavy libraries are imported inside each command, so `vitserve --help` stays instant."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from vitserve import __version__
from vitserve.config import DEFAULT_ARTIFACTS_DIR, DEFAULT_ATOL, DEFAULT_MAX_BATCH, DEFAULT_OPSET
from vitserve.errors import VitServeError


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def models_markdown() -> str:
    """The supported-models table of README.md (a test keeps the two equal)."""
    from vitserve.models.registry import list_specs

    rows = ["| alias | timm architecture | weights tag | input | crop_pct | mean / std | description |",
            "|---|---|---|---|---|---|---|"]
    for s in list_specs():
        p = s.preprocess
        norm = "imagenet" if p.mean == (0.485, 0.456, 0.406) else f"{p.mean[0]} / {p.std[0]}"
        rows.append(f"| `{s.name}` | `{s.timm_name}` | {s.pretrained_tag or 'bundled'} | {p.input_size[1]} | "
                    f"{p.crop_pct} | {norm} | {s.description} |")
    return "\n".join(rows)


def cmd_models(args: argparse.Namespace) -> int:
    from vitserve.models.registry import list_specs

    specs = list_specs()
    if args.markdown:
        print(models_markdown())
        return 0
    if args.json:
        print(json.dumps([{"name": s.name, "timm_name": s.timm_name, "pretrained_tag": s.pretrained_tag,
                           "num_classes": s.num_classes, "preprocess": s.preprocess.to_dict(),
                           "description": s.description} for s in specs], indent=2))
        return 0
    print(f"{'name':<18} {'timm architecture':<34} {'input':<8} description")
    for s in specs:
        print(f"{s.name:<18} {s.timm_name:<34} {s.preprocess.input_size[1]:<8} {s.description}")
    print("\nAny timm architecture name is accepted as well (e.g. swin_base_patch4_window12_384), and so is a\n"
          "fine-tuned model as timm saves it: a folder holding config.json and model.safetensors\n"
          "(local-dir:PATH, or just its path), or a hub repository holding one (hf-hub:ORG/NAME).")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vitserve.models.registry import resolve, with_overrides

    spec = resolve(args.model)  # unknown names fail before torch is imported
    if args.img_size or args.window_size:
        spec = with_overrides(spec, img_size=args.img_size, window_size=args.window_size)
    from vitserve.export.pipeline import ExportOptions, export_artifact
    from vitserve.models.build import build_model

    out = Path(args.out) if args.out else Path(DEFAULT_ARTIFACTS_DIR) / spec.name.replace("/", "_")
    _progress(f"building {spec.name} ({spec.timm_name})")
    built = build_model(spec, weights=args.weights, random_init=args.random_init, num_classes=args.num_classes,
                        labels_file=args.labels)
    _progress(f"  weights: {built.weights['source']}" + (f" ({built.weights['path']})" if "path" in built.weights
                                                          else ""))
    torch_options = None
    if args.format in ("torch", "tensorrt"):
        if args.format == "tensorrt" and args.device != "cuda":
            raise VitServeError("--format tensorrt builds an engine for the GPU; --device does not apply")
        from vitserve.export.torch_package import TorchOptions

        torch_options = TorchOptions(device=args.device, dtype=args.dtype or ("fp16" if args.device == "cuda"
                                                                              else "fp32"),
                                     batch_buckets=tuple(args.batch_buckets or ()), max_autotune=args.max_autotune,
                                     cuda_graphs=not args.no_cuda_graphs)
    elif args.batch_buckets or args.device != "cuda":
        raise VitServeError("--device and --batch-buckets apply to --format torch and tensorrt only")
    for flag, given in (("--max-autotune", args.max_autotune), ("--no-cuda-graphs", args.no_cuda_graphs)):
        if given and args.format != "torch":
            raise VitServeError(f"{flag} applies to --format torch only")
    options = ExportOptions(out=out, max_batch=args.max_batch, opset=args.opset, rewrite=not args.no_rewrite,
                            atol=args.atol, format=args.format, torch_options=torch_options,
                            dtype=(args.dtype or "fp32") if torch_options is None else "fp32")
    manifest = export_artifact(built, options, progress=_progress)
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


def cmd_triton_repo(args: argparse.Namespace) -> int:
    from vitserve.export.triton import TritonOptions, write_triton_repo

    options = TritonOptions(name=args.name, max_batch_size=args.max_batch_size,
                            max_queue_delay_us=args.max_queue_delay_us, kind=args.kind, instances=args.instances,
                            tensorrt=args.tensorrt)
    target = write_triton_repo(args.artifact, args.repo, options)
    print(f"Triton model repository: {target} (tritonserver --model-repository {Path(args.repo)})")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    import numpy as np

    from vitserve.artifact import read_labels
    from vitserve.server.backends import load_backend, local_device, resolve_backend, softmax, top_k
    from vitserve.server.preprocess import IMAGE_SUFFIXES, decode_image, draft_side, find_images, transform

    name = resolve_backend(args.artifact, args.backend)
    backend = load_backend(args.artifact, name, precision=args.precision, device=local_device(name))
    manifest = backend.manifest
    labels = read_labels(Path(args.artifact) / manifest.labels_file)
    paths = [p for given in map(Path, args.images) for p in (find_images(given) if given.is_dir() else [given])]
    if not paths:
        raise VitServeError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(args.images)}")
    min_side = draft_side(manifest.preprocess) if args.fast_jpeg else None

    def read(path: Path) -> np.ndarray:
        try:
            return transform(decode_image(path.read_bytes(), min_side=min_side), manifest.preprocess)
        except (OSError, VitServeError) as e:
            raise VitServeError(f"cannot read image {path}: {e}") from e

    results = []  # one batch at a time in memory, printed as it is done
    for start in range(0, len(paths), manifest.max_batch):
        chunk = paths[start:start + manifest.max_batch]
        classes = top_k(softmax(backend(np.stack([read(p) for p in chunk]))), labels, args.top_k)
        results.extend({"image": str(p), "top_k": c} for p, c in zip(chunk, classes))
        if not args.json:
            for path, image_classes in zip(chunk, classes):
                print(f"{path}:")
                for c in image_classes:
                    print(f"  {c['score']:7.2%}  {c['label']} ({c['index']})")
    if args.json:
        print(json.dumps({"model": manifest.name, "results": results}, indent=2))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from vitserve.export.quantize import quantize_artifact

    artifact = Path(args.artifact)
    suffix = "int8" if args.backend == "onnxruntime" else "int8-openvino"
    out = Path(args.out) if args.out else artifact.with_name(f"{artifact.name}-{suffix}")
    report = quantize_artifact(artifact, Path(args.calib), out, method=args.backend, samples=args.samples,
                               eval_dir=Path(args.eval) if args.eval else None, min_agreement=args.min_agreement,
                               progress=_progress)
    int8 = report["int8"]
    accuracy = f", accuracy {int8['accuracy']:.2%} (fp32 {int8['fp32_accuracy']:.2%})" if "accuracy" in int8 else ""
    print(f"wrote {out} (int8 top-1 agreement {int8['top1_agreement']:.2%} on {int8['images']} held-out "
          f"images{accuracy})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from vitserve.export.bench import bench_artifact, format_table

    target = Path(args.model)
    out = Path(args.out)
    also = [Path(a) for a in args.also]
    if (target / "vitserve.json").is_file():
        artifact = target
    else:  # a model name: export it (and torch packages for --backends ...,torch) and bench that
        from vitserve.export.bench import export_for_bench
        from vitserve.models.registry import resolve

        artifact, packages = export_for_bench(resolve(args.model), out, args.backends, args.precisions,
                                              args.batch_sizes, _progress)
        also = packages + also
    report = bench_artifact(artifact, out, backends=args.backends, precisions=args.precisions,
                            batch_sizes=args.batch_sizes, rounds=args.rounds, threads=args.threads,
                            eager=not args.no_eager, also=also)
    print(f"{report['model']} on {report['machine']}, threads {args.threads or 'all'}, median of {args.rounds} "
          "rounds\n")
    print(format_table(report))
    print(f"\nwrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("batch sizes must be at least 1")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _choice_list(choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        values = text.split(",")
        bad = [v for v in values if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(choices)}")
        return values
    return parse


SERVE_FLAGS = {  # flag -> (Settings field, type, help)
    "--host": ("host", str, "address to listen on (default 127.0.0.1)"),
    "--port": ("port", int, "port (default 8000)"),
    "--grpc-port": ("grpc_port", int, "also serve the KServe V2 protocol over gRPC on this port (0: a free one; "
                    "default off)"),
    "--max-batch-size": ("max_batch_size", int, "a batch closes at this many images (default 32)"),
    "--max-wait-ms": ("max_wait_ms", float, "... or this long after its first image (default 5)"),
    "--max-queue": ("max_queue", int, "images waiting, and requests in progress; beyond, 503 (default 256)"),
    "--batches-in-flight": ("batches_in_flight", int, "batches computing at once (default: the backend's; 2 for a "
                            "torch package with CUDA graphs, where one batch's host work overlaps another's on the "
                            "GPU, else 1)"),
    "--timeout-ms": ("timeout_ms", float, "answer within this or 504 (default 10000)"),
    "--threads": ("threads", int, "inference threads (default: all cores)"),
    "--backend": ("backend", str, "auto (default: the one the artifact was exported for: onnxruntime for ONNX, "
                  "openvino for an OpenVINO IR, torch / tensorrt for --format torch / tensorrt), onnxruntime, "
                  "openvino, torch or tensorrt"),
    "--device": ("device", str, "onnxruntime: auto, cpu, cuda or tensorrt (default auto); torch: the package's"),
    "--precision": ("precision", str, "openvino: auto, f32 or bf16 (default auto: bf16 where the CPU has it)"),
    "--max-body-mb": ("max_body_mb", float, "largest request body (default 32)"),
    "--max-pixels": ("max_pixels", int, "largest image, width x height (default 40000000)"),
    "--max-images": ("max_images", int, "images per request (default 64)"),
    "--drain-grace-s": ("drain_grace_s", float, "after SIGTERM, keep serving this long before closing (default 1)"),
    "--access-log": ("access_log", bool, "log a line per request: client, method, path, status, ms, request id"),
    "--fast-jpeg": ("fast_jpeg", bool, "decode large JPEGs at 1/2 to 1/8 scale, no less than twice the model's "
                    "resize: a fraction of the decoding work, pixels close to (not equal to) a full decode's"),
}


def cmd_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from vitserve.server.run import serve
    from vitserve.server.settings import Settings

    given = {field: getattr(args, field) for field, _, _ in SERVE_FLAGS.values() if getattr(args, field) is not None}
    try:
        settings = Settings(artifact=Path(args.artifact), **given)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise VitServeError(f"invalid settings: {problems}") from e
    logging.getLogger("vitserve").setLevel(logging.INFO)
    return serve(settings)


def cmd_healthcheck(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitserve",
        description="Export, verify and serve Vision Transformer image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"vitserve {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details from the libraries")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the model aliases and their preprocessing")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--markdown", action="store_true", help="print the README's table")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "export",
        help="export a model to a verified artifact (ONNX, OpenVINO IR, AOTInductor or TensorRT)",
        description="Build MODEL, rewrite it into its export-friendly form, write ONNX and prove that the ONNX "
        "file gives the same answers as the PyTorch model (random inputs and real photographs).",
    )
    p.add_argument("model", help="alias from `vitserve models`, any timm architecture name, or a timm model folder "
                   "(local-dir:PATH or its path; hf-hub:ORG/NAME)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--weights", metavar="FILE", help="checkpoint: .safetensors, .pth or .pt state dict "
                         "(also nested under state_dict / model / state_dict_ema)")
    weights.add_argument("--random-init", action="store_true", help="random weights (testing the pipeline only)")
    p.add_argument("--num-classes", type=int, metavar="N", help="classifier size of a fine-tuned checkpoint")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (fine-tuned models)")
    p.add_argument("--img-size", type=_positive_int, metavar="N", help="square input size a checkpoint was "
                   "trained or fine-tuned at, if not the model's (its eval crop and timm's img_size)")
    p.add_argument("--window-size", type=_positive_int, metavar="N", help="Swin families: the window a checkpoint "
                   "was trained or fine-tuned with, if not the model's")
    p.add_argument("--out", metavar="DIR", help=f"artifact directory (default {DEFAULT_ARTIFACTS_DIR}/MODEL)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, metavar="N",
                   help=f"largest batch the graph accepts (default {DEFAULT_MAX_BATCH})")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--no-rewrite", action="store_true", help="export timm's original graph (for comparison)")
    p.add_argument("--format", choices=["onnx", "openvino", "torch", "tensorrt"], default="onnx",
                   help="onnx (default); openvino: an OpenVINO IR for --backend openvino; torch: an AOTInductor "
                   "package for --backend torch; tensorrt: a TensorRT engine with the window-attention plugin")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="--format torch: compile for this "
                   "device (default cuda)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32", "fp8"], help="--format torch: precision (default "
                   "fp16 on cuda, fp32 on cpu; fp8: the blocks' matrix products in fp8, the rest bf16, for GPUs with "
                   "fp8 tensor cores, on the CPU only to check accuracy); --format tensorrt: the engine's precision "
                   "(fp16, bf16 or fp32, default fp16; LayerNorm and the attention's softmax stay float32); "
                   "--format onnx: fp32 (default) or fp16, for onnxruntime's CUDA and TensorRT providers")
    p.add_argument("--batch-buckets", type=_int_list, metavar="N,N,...", help="--format torch: batch sizes the "
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
    p.set_defaults(func=cmd_export)

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
    p.set_defaults(func=cmd_triton_repo)

    p = sub.add_parser("classify", help="classify image files with an artifact, without a server")
    p.add_argument("artifact", help="artifact directory written by `vitserve export`")
    p.add_argument("images", nargs="+", help="image files, or folders of them (searched to any depth)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to show per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "openvino", "torch", "tensorrt"],
                   help="default auto: the backend the artifact was exported for")
    p.add_argument("--precision", default="auto", choices=["auto", "f32", "bf16"], help="openvino only")
    p.add_argument("--fast-jpeg", action="store_true", help=SERVE_FLAGS["--fast-jpeg"][2])
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser(
        "quantize",
        help="write an int8 artifact, admitted by an accuracy gate",
        description="Quantize an fp32 artifact to int8 (onnxruntime static QDQ, or OpenVINO NNCF), then compare it "
        "with the fp32 model on held-out images (top-1 agreement; accuracy where the images sit in folders named "
        "after the labels). Below --min-agreement nothing is written and the exit code is 1.",
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
    p.add_argument("--out", metavar="DIR", help="default: ARTIFACT-int8 (or ARTIFACT-int8-openvino)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser(
        "bench",
        help="time every backend x precision x batch size against timm eager",
        description="Time an artifact (or a model name, exported first with random weights) in every backend and "
        "precision at each batch size, with timm eager in the same run; prints the table and writes bench.json "
        "and bench.png.",
    )
    p.add_argument("model", help="artifact directory, or a model name")
    p.add_argument("--backends", type=_choice_list(("onnxruntime", "openvino", "torch")),
                   default=["onnxruntime", "openvino"], help="default onnxruntime,openvino; torch: a model name is "
                   "also exported to a CPU torch package per precision, timed in the torch backend")
    p.add_argument("--precisions", type=_choice_list(("f32", "bf16")), default=["f32", "bf16"])
    p.add_argument("--batch-sizes", type=_int_list, default=[1, 8, 32])
    p.add_argument("--rounds", type=int, default=10, help="timed runs of each runner per batch size (default 10)")
    p.add_argument("--threads", type=int, default=None, help="threads for every runner (default: all cores)")
    p.add_argument("--no-eager", action="store_true", help="skip the timm eager baseline (no torch needed)")
    p.add_argument("--also", nargs="+", default=[], metavar="ARTIFACT", help="more artifacts of the same model "
                   "in the same rounds, each in the backend it was made for (e.g. the int8 ones from "
                   "`vitserve quantize`)")
    p.add_argument("--out", default="bench", metavar="DIR", help="where bench.json and bench.png go (default bench)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "serve",
        help="serve an artifact over HTTP (POST /classify, KServe V2) and optionally gRPC (KServe V2)",
        description="Serve an artifact: POST /classify, the KServe V2 protocol under /v2, /healthz, /readyz, "
        "/metrics, /docs; with --grpc-port, the KServe V2 protocol over gRPC too. Unset flags come from VITSERVE_* "
        "environment variables; VITSERVE_API_KEY, if set, is "
        "required on inference routes.",
    )
    p.add_argument("artifact", help="artifact directory written by `vitserve export`")
    for flag, (field, kind, help_text) in SERVE_FLAGS.items():
        if kind is bool:
            p.add_argument(flag, dest=field, action="store_const", const=True, default=None, help=help_text)
        else:
            p.add_argument(flag, dest=field, type=kind, default=None, help=help_text)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("healthcheck", help="exit 0 if a local server is ready (for container health checks)")
    p.add_argument("--url", help="default: http://127.0.0.1:$VITSERVE_PORT/readyz (port 8000 if unset)")
    p.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    p.set_defaults(func=cmd_healthcheck)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except VitServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
