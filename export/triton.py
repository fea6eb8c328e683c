"""A Triton Inference Server model repository from an artifact (`vitserve triton-repo`, `export --triton-repo`).

    REPO/NAME/config.pbtxt      backend, max_batch_size, input/output names, types and dims, dynamic batching,
                                instance group; the output names labels.txt for Triton's classification extension
    REPO/NAME/labels.txt
    REPO/NAME/vitserve.json     the artifact's manifest (preprocessing for clients; Triton ignores it)
    REPO/NAME/1/model.onnx      (or model.xml + model.bin for an OpenVINO artifact: Triton's openvino backend; or
                                model.engine for a TensorRT artifact: Triton's tensorrt backend, every optimization
                                profile offered to each GPU instance; the engine holds its plugin's kernel)

Triton serves tensors: clients send preprocessed NCHW float32 (the manifest's `preprocess`); `vitserve serve` is
the server that takes images. Standard library only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vitserve import runtimes
from vitserve.artifact import MANIFEST_NAME, check_files, install_artifact, read_manifest
from vitserve.errors import ArtifactError

CONFIG_NAME = "config.pbtxt"
MARKER = "# Written by vitserve"
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int64": "TYPE_INT64"}


@dataclass(frozen=True)
class TritonOptions:
    name: str | None = None  # model name in the repository (default: the artifact's)
    max_batch_size: int | None = None  # default: the artifact's max_batch
    max_queue_delay_us: int = 2000  # how long Triton holds a request to grow a batch
    kind: str | None = None  # instance kind: cpu or gpu (default gpu for a TensorRT engine, else cpu)
    instances: int = 1  # model instances per device
    tensorrt: bool = False  # gpu: onnxruntime's TensorRT accelerator, fp16


def _dims(shape: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def config_text(manifest, options: TritonOptions) -> str:
    """config.pbtxt for the artifact described by `manifest` (protobuf text format of Triton's ModelConfig)."""
    name = options.name or manifest.name
    max_batch = options.max_batch_size or manifest.max_batch
    if not 1 <= max_batch <= manifest.max_batch:
        raise ArtifactError(f"--max-batch-size must be between 1 and the artifact's max_batch {manifest.max_batch}; "
                            f"got {max_batch}")
    runtime = runtimes.made_for(manifest)  # Triton's backend for the model file is the registry's
    engine = runtime.name == "tensorrt"
    kind = options.kind or ("gpu" if engine else "cpu")
    if kind not in ("cpu", "gpu"):
        raise ArtifactError(f"unknown instance kind {kind!r}; choose cpu or gpu")
    if options.tensorrt and kind != "gpu":
        raise ArtifactError("--tensorrt needs --kind gpu")
    if options.instances < 1:
        raise ArtifactError(f"--instances must be at least 1, got {options.instances}")
    tensors = {}
    for role, spec in (("input", manifest.input), ("output", manifest.output)):
        if spec.shape[0] != -1:
            raise ArtifactError(f"the artifact's {role} {spec.name!r} has no dynamic batch dimension; re-export it")
        if spec.dtype not in DTYPES:
            raise ArtifactError(f"{role} data type {spec.dtype!r} has no Triton equivalent")
        tensors[role] = spec
    if runtime.triton_backend is None:
        raise ArtifactError(f"{manifest.model_file} ({runtime.name} runtime) has no Triton backend here; write the "
                            "repository from an ONNX or OpenVINO artifact of the model")
    if engine and kind != "gpu":
        raise ArtifactError("a TensorRT engine runs on a GPU: use --kind gpu")
    if engine and options.tensorrt:
        raise ArtifactError("--tensorrt is onnxruntime's TensorRT accelerator for ONNX artifacts; this artifact "
                            "already is a TensorRT engine")
    lines = [
        f"{MARKER} from the artifact {manifest.name!r} ({manifest.architecture}).",
        f"# Inputs are preprocessed images: {json.dumps(manifest.preprocess.to_dict())}",
    ]
    if engine:
        lines.append(f"# A TensorRT {manifest.package.get('tensorrt', '')} engine: Triton's tensorrt backend must "
                     "use that TensorRT version, on the GPU model it was built on.")
    lines += [
        f'name: "{name}"',
        f'backend: "{runtime.triton_backend}"',
        f"max_batch_size: {max_batch}",
        "input [",
        "  {",
        f'    name: "{tensors["input"].name}"',
        f"    data_type: {DTYPES[tensors['input'].dtype]}",
        f"    dims: {_dims(tensors['input'].shape[1:])}",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{tensors["output"].name}"',
        f"    data_type: {DTYPES[tensors['output'].dtype]}",
        f"    dims: {_dims(tensors['output'].shape[1:])}",
        f'    label_filename: "{manifest.labels_file}"',
        "  }",
        "]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {options.instances}",
        f"    kind: KIND_{kind.upper()}",
    ]
    if engine:  # Triton picks, per request, the best of the profiles an instance has; without this only the first
        profiles = range(len(manifest.package.get("profiles", [])))
        lines.append("    profile: [ " + ", ".join(f'"{i}"' for i in profiles) + " ]")
    lines += [
        "  }",
        "]",
    ]
    if runtime.name != "onnxruntime":  # Triton's default file name is its backend's: model.onnx, model.plan, ...
        lines += [f'default_model_filename: "model{Path(manifest.model_file).suffix}"']
    if options.tensorrt:
        lines += [
            "optimization {",
            "  execution_accelerators {",
            "    gpu_execution_accelerator: [",
            "      {",
            '        name: "tensorrt"',
            '        parameters { key: "precision_mode" value: "FP16" }',
            '        parameters { key: "max_workspace_size_bytes" value: "4294967296" }',
            "      }",
            "    ]",
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def write_triton_repo(artifact_dir: str | Path, repo: str | Path, options: TritonOptions = TritonOptions()) -> Path:
    """Writes REPO/NAME for the artifact; returns that folder. A model folder vitserve wrote before is replaced;
    anything else under that name is left alone and reported."""
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    check_files(artifact_dir, manifest)  # the repository gets the files the export verified, or nothing
    text = config_text(manifest, options)
    repo = Path(repo)
    target = repo / (options.name or manifest.name)
    if target.exists():
        config = target / CONFIG_NAME
        if not (config.is_file() and config.read_text().startswith(MARKER)):
            raise ArtifactError(f"{target} exists and was not written by vitserve; choose another --name or remove it")
    repo.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=repo))
    try:
        (tmp / "1").mkdir()
        stem = Path(manifest.model_file).with_suffix("")
        model_files = [manifest.model_file, *(f"{stem}{s}" for s in runtimes.made_for(manifest).companions)]
        try:
            for file_name in model_files:
                shutil.copyfile(artifact_dir / file_name, tmp / "1" / ("model" + Path(file_name).suffix))
            shutil.copyfile(artifact_dir / manifest.labels_file, tmp / manifest.labels_file)
            shutil.copyfile(artifact_dir / MANIFEST_NAME, tmp / MANIFEST_NAME)
        except OSError as e:
            raise ArtifactError(f"cannot copy the artifact into the repository: {e}") from e
        (tmp / CONFIG_NAME).write_text(text)
        install_artifact(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
