"""`vitserve export --format torch`: an AOTInductor package, verified like every export, served by the torch
backend. The CPU package is compiled and served here; the CUDA one (fp16, fused kernel, CUDA graphs) needs a GPU."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_cli, run_cli_here
from vitserve.artifact import read_manifest
from vitserve.errors import ArtifactError, ExportError, VerificationError
from vitserve.export import toolchain
from vitserve.export.formats import Built, get_format
from vitserve.export.pipeline import ExportOptions, Job, export_artifact
from vitserve.export.torch_package import TorchOptions, check_options, dispatcher_calls
from vitserve.export.triton import write_triton_repo
from vitserve.models.build import build_model
from vitserve.models.catalogue import SPECS
from vitserve.preprocess import decode_image, transform
from vitserve.runtimes import load as load_backend
from vitserve.runtimes.onnxruntime import OnnxRuntime
from vitserve.runtimes.torch_package import (
    ContainerRunner,
    PackageRunner,
    calls_fused_op,
    check_machine,
    compiled_for,
)

EXAMPLES = sorted((ROOT / "examples").glob("digit_*.png"))


def _pixels(manifest) -> np.ndarray:
    return np.stack([transform(decode_image(p.read_bytes()), manifest.preprocess) for p in EXAMPLES])


# the tests that take the module's package run on one worker (pyproject.toml's --dist loadgroup), which compiles it
# once
with_package = pytest.mark.xdist_group("cpu_package")


@pytest.fixture(scope="module")
def cpu_package(tmp_path_factory):
    out = tmp_path_factory.mktemp("torch") / "swin_digits-torch"
    options = ExportOptions(out=out, max_batch=16, format="torch",
                            torch_options=TorchOptions(device="cpu", dtype="fp32", batch_buckets=(1, 4)))
    export_artifact(build_model(SPECS["swin_digits"]), options, progress=lambda m: None)
    return out


def verify_package(package_file: Path, built, record: dict, staging: Path) -> dict:
    """The torch format's verification of `package_file` (staged in a folder of its own, with the manifest's
    `package` record) against the model `built`: the report, or the error a failed export would raise."""
    staging.mkdir()
    shutil.copy(package_file, staging / "model.pt2")
    options = ExportOptions(out=staging.parent / "out", max_batch=16, format="torch",
                            torch_options=TorchOptions(device="cpu", dtype="fp32"))
    job = Job(built, None, options, staging, None, lambda m: None, buckets=tuple(record["batch_buckets"]))
    result = Built("model.pt2", "torch", package=dict(record), opset=False, device="auto")
    return get_format("torch").verify(job, result)


@pytest.mark.slow  # AOTInductor compiles
@with_package
def test_cpu_package_is_verified_and_described(cpu_package):
    manifest = json.loads((cpu_package / "vitserve.json").read_text())
    assert manifest["model_file"] == "model.pt2" and (cpu_package / "model.pt2").is_file()
    assert not (cpu_package / "model.onnx").exists()
    package = manifest["package"]
    assert package["format"] == "aotinductor" and (package["device"], package["dtype"]) == ("cpu", "fp32")
    assert package["batch_buckets"] == [1, 4, 16]  # --max-batch is always a bucket
    assert package["cuda_graphs"] is False and package["dispatcher_calls"] == []
    report = manifest["verification"]
    assert report["passed"] and report["max_abs_diff"] <= 1e-4 and report["top1_agreement"] == 1.0
    assert set(report["inputs"]) == {"random", "photos", "single_photo"}
    # compiled with freezing: the Linear layers became oneDNN products on prepacked weights, their GELU and
    # residual adds taken in (without freezing: aten addmm on the weights as given)
    assert package["freezing"] is True
    with zipfile.ZipFile(cpu_package / "model.pt2") as archive:
        wrapper = next(archive.read(n) for n in archive.namelist() if n.endswith("wrapper.cpp"))
    assert wrapper.count(b"aoti_torch_cpu__linear_pointwise") >= 24 and b"aoti_torch_cpu_addmm_out(" not in wrapper


@pytest.mark.slow  # AOTInductor compiles
@with_package
def test_verification_runs_the_package_in_a_child_process(cpu_package, tmp_path):
    """The package verified against a model it was not compiled from fails the gate (the child's logits are really
    compared), and a package PyTorch cannot load is an ExportError carrying the child's own message."""
    record = json.loads((cpu_package / "vitserve.json").read_text())["package"]
    other = build_model(SPECS["swin_digits"], random_init=True)
    with pytest.raises(VerificationError, match="does not match the PyTorch model"):
        verify_package(cpu_package / "model.pt2", other, record, tmp_path / "other")
    broken = tmp_path / "model.pt2"
    broken.write_bytes((cpu_package / "model.pt2").read_bytes()[:4096])
    with pytest.raises(ExportError, match=r"PyTorch running the package failed \(exit status 1\)(.|\n)*"
                                          r"ArtifactError: PyTorch cannot load(.|\n)*"
                                          r"container runner instead: (.|\n)*not a readable AOTInductor package"):
        verify_package(broken, other, record, tmp_path / "broken")


def _with_entry(package: Path, out: Path, ending: str, data: bytes) -> Path:
    """A copy of `package` whose entry named ...`ending` holds `data` (the compiled model untouched)."""
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, data if info.filename.endswith(ending) else src.read(info.filename))
    return out


@pytest.mark.slow  # AOTInductor compiles
@with_package
def test_a_package_for_another_machine_is_refused_before_it_is_loaded(cpu_package, tmp_path, monkeypatch):
    """AOTInductor records in the package the machine it compiled for; a package whose host code uses vector
    instructions this CPU lacks, or whose kernels are for another GPU generation, is refused by name, not left to
    stop the server with an illegal instruction or a CUDA error on its first call."""
    from torch._inductor.cpu_vec_isa import valid_vec_isa_list

    recorded = compiled_for(cpu_package / "model.pt2")
    assert recorded["AOTI_DEVICE_KEY"] == "cpu"
    assert recorded["AOTI_CPU_ISA"] in [str(isa).upper() for isa in valid_vec_isa_list()]  # this machine's own
    check_machine(cpu_package / "model.pt2", torch.device("cpu"))

    def recording(**changes) -> bytes:
        return json.dumps({**recorded, **changes}).encode()

    arm = _with_entry(cpu_package / "model.pt2", tmp_path / "arm.pt2", "wrapper_metadata.json",
                      recording(AOTI_CPU_ISA="ASIMD"))
    with pytest.raises(ArtifactError, match="compiled on a CPU with ASIMD and its code uses those instructions; "
                                            "this CPU has"):
        PackageRunner(arm, "cpu", [1, 4, 16], (3, 32, 32))

    h100 = _with_entry(cpu_package / "model.pt2", tmp_path / "h100.pt2", "wrapper_metadata.json",
                       recording(AOTI_DEVICE_KEY="cuda", AOTI_COMPUTE_CAPABILITY="90"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ArtifactError, match=r"compute capability 9\.0, and NVIDIA A100-SXM4-80GB is 8\.0: export"):
        check_machine(h100, torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_machine(h100, torch.device("cuda"))  # on the GPU generation it was compiled for


@pytest.mark.slow  # AOTInductor compiles
@with_package
def test_container_runner_where_the_package_loader_fails(cpu_package, tmp_path):
    """When PyTorch's package loader fails before it has loaded the package (here: it refuses the archive's
    version entry; on the H100 it crashed), verification loads the compiled model with AOTInductor's container
    runner instead, and the report says so; the runner gives the package loader's answers."""
    refused = _with_entry(cpu_package / "model.pt2", tmp_path / "model.pt2", "/archive_version", b"999")
    with pytest.raises(ArtifactError, match="archive version 999"):
        PackageRunner(refused, "cpu", [1, 4, 16], (3, 32, 32))
    record = json.loads((cpu_package / "vitserve.json").read_text())["package"]
    report = verify_package(refused, build_model(SPECS["swin_digits"]), record, tmp_path / "staging")
    assert report["passed"] and report["loader"] == "runner"
    assert "PyTorch running the package failed (exit status 1)" in report["package_loader_failure"]

    runner = PackageRunner(refused, "cpu", [1, 4, 16], (3, 32, 32), loader="runner")
    loaded = PackageRunner(cpu_package / "model.pt2", "cpu", [1, 4, 16], (3, 32, 32))
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32), dtype=np.float32)
    assert np.abs(runner(x) - loaded(x)).max() < 1e-5
    folder = runner.model.folder  # the unpacked model lives as long as its runner
    assert folder.is_dir()
    del runner
    assert not folder.exists()


@pytest.mark.slow  # AOTInductor compiles
@with_package
def test_torch_backend_loads_the_way_the_manifest_says(cpu_package, tmp_path):
    copy = tmp_path / "artifact"
    shutil.copytree(cpu_package, copy)
    manifest = json.loads((copy / "vitserve.json").read_text())
    manifest["package"]["loader"] = "runner"
    (copy / "vitserve.json").write_text(json.dumps(manifest))
    backend = load_backend(copy, "torch")
    assert backend.loader == "runner" and "container runner" in backend.description
    x = _pixels(backend.manifest)
    assert np.abs(backend(x) - load_backend(cpu_package, "torch")(x)).max() < 1e-5
    manifest["package"]["loader"] = "jit"
    (copy / "vitserve.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="unknown package loader 'jit'"):
        load_backend(copy, "torch")


@pytest.mark.slow  # AOTInductor compiles
@with_package
def test_container_runner_refuses_weights_kept_apart(cpu_package, tmp_path):
    apart = tmp_path / "model.pt2"
    shutil.copy(cpu_package / "model.pt2", apart)
    with zipfile.ZipFile(apart, "a") as archive:  # the layout of a package whose weights are not in its model
        archive.writestr("model/data/weights/weight_0", b"\0" * 64)
    with pytest.raises(ArtifactError, match="keeps its weights outside its compiled model"):
        ContainerRunner(apart, torch.device("cpu"))


@pytest.mark.slow  # AOTInductor compiles
@with_package
def test_torch_backend_pads_to_buckets_and_matches_onnx(cpu_package, digits_artifact):
    backend = load_backend(cpu_package, "torch")
    assert backend.buckets == [1, 4, 16] and [backend.bucket(n) for n in (1, 2, 4, 5, 16)] == [1, 4, 4, 16, 16]
    reference = OnnxRuntime(digits_artifact)
    x = _pixels(backend.manifest)
    for n in (1, 3, 10):  # exact bucket, padded within a bucket, padded to the largest
        got, expected = backend(x[:n]), reference(x[:n])
        assert got.shape == (n, 10) and np.abs(got - expected).max() < 1e-4
    with pytest.raises(ArtifactError, match="exceeds the package's largest bucket 16"):
        backend(np.zeros((17, 3, 32, 32), np.float32))
    # plain calls (no CUDA graphs): one batch in flight by default, and calls from several threads are still safe
    assert backend.batches_in_flight == 1
    batches = [x[:1], x[3:], x[:5]] * 3
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(backend, batches))
    assert all(np.abs(got - reference(batch)).max() < 1e-4 for batch, got in zip(batches, answers))


@pytest.mark.slow  # AOTInductor compiles
@with_package
def test_served_by_the_torch_backend(cpu_package):
    # imported here: the GPU test at the end also runs where only the export's packages are installed
    from fastapi.testclient import TestClient

    from vitserve.server.app import create_app
    from vitserve.server.settings import Settings

    with TestClient(create_app(Settings(artifact=cpu_package, backend="torch", max_batch_size=16))) as c:
        files = [("file", (p.name, p.read_bytes(), "image/png")) for p in EXAMPLES]
        response = c.post("/classify", files=files)
        assert response.status_code == 200, response.text
        labels = [r["predictions"][0]["label"] for r in response.json()["results"]]
        assert labels == [p.stem.split("_")[1] for p in EXAMPLES]


@pytest.mark.slow  # AOTInductor compiles
@with_package
def test_served_with_images_decoded_by_the_runtime(cpu_package, digits_artifact):
    """--decode device (the default for a package on a GPU; on the CPU here): the files go to the runtime in the
    batch, which decodes and transforms them on its device; the same classes and nearly the same logits as the
    server's own CPU decoding, an unreadable file fails its request alone, and V2 pixel tensors join the same
    batches."""
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from vitserve.server.app import create_app
    from vitserve.server.settings import Settings

    jpegs = []
    for p in EXAMPLES:
        out = io.BytesIO()
        Image.open(p).convert("RGB").resize((120, 90)).save(out, "JPEG", quality=95)
        jpegs.append((p.stem.split("_")[1] + ".jpg", out.getvalue(), "image/jpeg"))
    files = [("file", j) for j in jpegs] + [("file", (p.name, p.read_bytes(), "image/png")) for p in EXAMPLES[:3]]
    answers = {}
    for decode in ("cpu", "device"):
        settings = Settings(artifact=cpu_package, backend="torch", max_batch_size=16, decode=decode, max_images=16)
        with TestClient(create_app(settings)) as c:
            assert ("images decoded on cpu" in c.get("/readyz").json()["backend"]) == (decode == "device")
            response = c.post("/classify", files=files, params={"top_k": 10})
            assert response.status_code == 200, response.text
            answers[decode] = response.json()["results"]
            bad = c.post("/classify", files=[files[0], ("file", ("notes.txt", b"no image", "text/plain"))])
            assert bad.status_code == 400 and "not a readable image" in bad.json()["error"]
            body = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                                "data": [base64.b64encode(jpegs[4][1]).decode()]}]}
            v2 = c.post("/v2/models/swin_digits/infer", json=body).json()
            pixels = np.stack([transform(decode_image(jpegs[4][1]), read_manifest(cpu_package).preprocess)])
            tensor = c.post("/v2/models/swin_digits/infer", json={"inputs": [{
                "name": "pixel_values", "shape": list(pixels.shape), "datatype": "FP32",
                "data": pixels.ravel().tolist()}]}).json()
            assert np.argmax(v2["outputs"][0]["data"]) == np.argmax(tensor["outputs"][0]["data"]) == 4
    for cpu, device in zip(answers["cpu"], answers["device"]):
        assert cpu["predictions"][0]["label"] == device["predictions"][0]["label"]
        scores = {p["label"]: p["score"] for p in cpu["predictions"]}
        assert all(abs(p["score"] - scores[p["label"]]) < 0.02 for p in device["predictions"])
    assert [r["predictions"][0]["label"] for r in answers["device"][:10]] == [str(d) for d in range(10)]


@pytest.mark.slow  # AOTInductor compiles
@with_package
def test_backends_refuse_the_wrong_artifact(cpu_package, digits_artifact):
    with pytest.raises(ArtifactError, match="--backend torch"):
        OnnxRuntime(cpu_package)
    with pytest.raises(ArtifactError, match="--backend torch"):
        load_backend(cpu_package, "openvino")
    with pytest.raises(ArtifactError, match="the torch backend cannot run; serve it with --backend onnxruntime"):
        load_backend(digits_artifact, "torch")
    with pytest.raises(ArtifactError, match="compiled for cpu"):
        load_backend(cpu_package, "torch", device="cuda")
    with pytest.raises(ArtifactError, match="no Triton backend"):
        write_triton_repo(cpu_package, cpu_package.parent / "repo")


@pytest.mark.slow  # AOTInductor compiles
@with_package
def test_cli_classify_with_the_torch_backend(cpu_package):
    """No --backend: auto runs a torch package with the torch backend."""
    result = run_cli("classify", str(cpu_package), str(EXAMPLES[3]), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["top_k"][0]["label"] == "3"
    result = run_cli("classify", str(cpu_package), str(EXAMPLES[3]), "--backend", "onnxruntime")
    assert result.returncode == 1 and "serve it with --backend torch (or auto, the default)" in result.stderr


def _slim_machine(tmp_path: Path) -> dict[str, str]:
    """The environment of a slim serving machine: no C or C++ compiler on the path, Triton not importable, empty
    Inductor and Triton caches."""
    for folder in ("bin", "no-triton/triton"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / "no-triton/triton/__init__.py").write_text("raise ImportError('no Triton on this machine')\n")
    return {"PATH": str(tmp_path / "bin"), "CC": "no-such-cc", "CXX": "no-such-c++",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "no-triton"), os.environ.get("PYTHONPATH")])),
            "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache"), "TRITON_CACHE_DIR": str(tmp_path / "cache")}


@pytest.mark.slow  # AOTInductor compiles
@with_package
def test_served_where_there_is_no_cpp_compiler(cpu_package, tmp_path):
    """A serving machine (a slim container) need not have a C++ compiler, nor Triton. PyTorch loads a compiled
    package without them, and so must the torch backend: its machine check reads the CPU's instruction sets from
    the CPU, where PyTorch's own list of them compiles a test program for each and fails here."""
    env = _slim_machine(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "from torch._inductor.cpu_vec_isa import valid_vec_isa_list\n"
                            "valid_vec_isa_list()"], capture_output=True, text=True, env={**os.environ, **env})
    assert probe.returncode != 0 and "InvalidCxxCompiler" in probe.stderr  # really no compiler
    probe = subprocess.run([sys.executable, "-c", "import triton"], capture_output=True, text=True,
                           env={**os.environ, **env})
    assert probe.returncode != 0 and "no Triton on this machine" in probe.stderr
    result = run_cli("classify", str(cpu_package), str(EXAMPLES[3]), "--json", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["results"][0]["top_k"][0]["label"] == "3"
    # loaded once: PyTorch's own device check, which needs the compiler, would fail after loading the package and
    # load it again, calling it outdated
    assert "outdated" not in result.stderr, result.stderr[-2000:]


@pytest.mark.slow  # AOTInductor compiles
@with_package
def test_bench_times_a_torch_package_in_its_own_backend(cpu_package, digits_artifact):
    """`vitserve bench PACKAGE`, and a package beside the ONNX artifact (`--also`): the torch backend runs it."""
    from vitserve.export.bench import runners_for

    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    label = "torch fp32 (swin_digits-torch)"
    runners = runners_for(cpu_package, ["onnxruntime", "openvino"], ["f32"], threads=1, eager=False)
    assert list(runners) == [label] and runners[label](x).shape == (2, 10)
    runners = runners_for(cpu_package, ["onnxruntime", "torch"], ["f32", "bf16"], threads=1, eager=False)
    assert list(runners) == [label]  # --backends torch: once, at the package's own precision
    runners = runners_for(digits_artifact, ["onnxruntime"], ["f32"], threads=1, eager=False, also=[cpu_package])
    assert list(runners) == ["onnxruntime f32", label]
    assert np.abs(runners["onnxruntime f32"](x) - runners[label](x)).max() < 1e-4


@pytest.mark.slow(minutes=2)  # AOTInductor compiles
def test_bench_exports_torch_packages_for_a_model_name(tmp_path):
    """`vitserve bench MODEL --backends ...,torch`: the model is exported to ONNX and to a CPU torch package per
    precision, every batch size a bucket of it, and each is timed in its own backend in the same rounds."""
    out = tmp_path / "bench"
    result = run_cli("bench", "swin_digits", "--backends", "onnxruntime,torch", "--precisions", "f32",
                     "--batch-sizes", "1,3", "--rounds", "2", "--no-eager", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    runners = {r["runner"] for r in json.loads((out / "bench.json").read_text())["results"]}
    assert runners == {"onnxruntime f32", "torch fp32 (artifact-torch-fp32)"}
    assert json.loads((out / "artifact-torch-fp32" / "vitserve.json").read_text())["package"]["batch_buckets"] == [1, 3]


@pytest.mark.parametrize("options,message", [
    (TorchOptions(device="cpu", dtype="fp16"), "fp16 on the CPU"),
    (TorchOptions(device="cpu", dtype="fp32", batch_buckets=(0, 8)), "within 1..--max-batch 32"),
    (TorchOptions(device="cpu", dtype="fp32", batch_buckets=(64,)), "within 1..--max-batch 32"),
    (TorchOptions(device="tpu"), "unknown --device"),
    (TorchOptions(device="cpu", dtype="int4"), "unknown --dtype"),
    (TorchOptions(device="cpu", dtype="fp32", cuda_graphs=False), "--no-cuda-graphs applies to --device cuda"),
    (TorchOptions(device="cpu", dtype="fp32", max_autotune=True), "--max-autotune applies to --device cuda"),
])
def test_bad_options(options, message):
    with pytest.raises(ExportError, match=message):
        check_options(options, 32)


def test_cli_errors(tmp_path):
    """Found before the model is built: in this process."""
    if not torch.cuda.is_available():
        result = run_cli_here("export", "swin_digits", "--format", "torch", "--out", str(tmp_path / "x"))
        assert result.returncode == 1 and "needs a CUDA GPU" in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "x").exists()
    result = run_cli_here("export", "swin_digits", "--dtype", "bf16", "--out", str(tmp_path / "y"))
    assert result.returncode == 1 and "an ONNX artifact is fp32 or fp16" in result.stderr
    result = run_cli_here("export", "swin_digits", "--batch-buckets", "1,8", "--out", str(tmp_path / "y"))
    assert result.returncode == 1 and "apply to --format torch and tensorrt only" in result.stderr
    for flag in ("--max-autotune", "--no-cuda-graphs"):
        result = run_cli_here("export", "swin_digits", flag, "--out", str(tmp_path / "z"))
        assert result.returncode == 1 and f"{flag} applies to --format torch only" in result.stderr
    result = run_cli_here("export", "swin_digits", "--format", "torch", "--device", "cpu", "--max-autotune",
                     "--out", str(tmp_path / "w"))
    assert result.returncode == 1 and "--max-autotune applies to --device cuda" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "w").exists()


@pytest.mark.slow(minutes=2)  # AOTInductor compiles
def test_cli_fp8_package_checks_accuracy_on_the_cpu(tmp_path):
    """--dtype fp8: the blocks' Linear layers compute in fp8 (export/fp8.py) inside the package, which calls
    torch._scaled_mm for each; verified against the fp32 model by its own cosine gate; served by the torch
    backend. On the CPU, where PyTorch emulates fp8, this is the accuracy check a GPU export would pass."""
    out = tmp_path / "fp8"
    result = run_cli("export", "swin_digits", "--format", "torch", "--device", "cpu", "--dtype", "fp8",
                     "--max-batch", "4", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "26 Linear layers in fp8; on the CPU PyTorch emulates fp8" in result.stderr
    manifest = json.loads((out / "vitserve.json").read_text())
    assert manifest["package"]["dtype"] == "fp8" and manifest["package"]["fp8_linear_layers"] == 26
    report = manifest["verification"]
    assert report["passed"] and report["min_cosine_required"] == 0.98 and report["top1_agreement"] == 1.0
    assert report["max_abs_diff"] > 1e-3  # not float32 arithmetic after all
    with zipfile.ZipFile(out / "model.pt2") as archive:
        wrapper = next(archive.read(n) for n in archive.namelist() if n.endswith("wrapper.cpp"))
    assert b"_scaled_mm" in wrapper
    result = run_cli("classify", str(out), str(EXAMPLES[3]), "--backend", "torch", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["results"][0]["top_k"][0]["label"] == "3"


def test_fp8_is_for_the_torch_format_only(tmp_path):
    options = ExportOptions(out=tmp_path / "trt", format="tensorrt", torch_options=TorchOptions(dtype="fp8"))
    with pytest.raises(ExportError, match="--dtype fp8 applies to --format torch"):
        export_artifact(build_model(SPECS["swin_digits"]), options, progress=lambda m: None)
    assert not (tmp_path / "trt").exists()


@pytest.mark.slow(minutes=1)  # AOTInductor compiles
def test_fused_op_inside_an_aotinductor_package(tmp_path):
    """The CUDA package's deploy form calls the fused op (`vitserve::window_attention_packed`), which torch.export
    keeps whole and AOTInductor traces through: on CUDA to the Triton kernel's launch, here on the CPU to the
    reference implementation, compiled into the package with the rest. The package calls nothing back through the
    dispatcher, loads single-threaded (as for CUDA graphs) and in the container runner, and matches the model at
    every batch size of its dynamic range."""
    from vitserve.models.rewrites import deploy_copy
    from vitserve.models.rewrites.windows import use_fused_kernel

    built = build_model(SPECS["swin_digits"])
    deploy, _ = deploy_copy(built.model.eval())
    assert use_fused_kernel(deploy) > 0
    batch = torch.export.Dim("batch", min=1, max=8)
    with torch.no_grad():
        program = torch.export.export(deploy, (torch.randn(8, 3, 32, 32),), dynamic_shapes=({0: batch},))
        assert any("window_attention_packed" in str(node.target) for node in program.graph.nodes)
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "fused.pt2"),
                                                        inductor_configs=toolchain.inductor_configs())  # as exported
        assert dispatcher_calls(Path(path)) == []
        package = torch._inductor.aoti_load_package(path, run_single_threaded=True)
        runner = ContainerRunner(Path(path), torch.device("cpu"))
        for n in (1, 3, 8):
            x = torch.randn(n, 3, 32, 32)
            assert (package(x) - built.model(x)).abs().max() < 1e-4
            assert (runner(x) - built.model(x)).abs().max() < 1e-4


@torch.library.custom_op("vitserve_tests::doubled", mutates_args=())
def _doubled(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_doubled.register_fake
def _(x):
    return torch.empty_like(x)


@pytest.mark.slow  # AOTInductor compiles
def test_package_records_the_ops_it_calls_back(tmp_path):
    """An op AOTInductor cannot see into (a plain custom op) stays a call back through PyTorch's dispatcher, which
    the package describes and the manifest records; the process that serves it must have the op registered."""

    class Calls(torch.nn.Module):
        def forward(self, x):
            return _doubled(x + 1) - 3

    program = torch.export.export(Calls(), (torch.randn(4, 8),))
    path = Path(torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "calls.pt2"),
                                                         inductor_configs=toolchain.inductor_configs()))
    assert dispatcher_calls(path) == ["vitserve_tests::doubled"]
    assert torch.equal(torch._inductor.aoti_load_package(str(path))(torch.ones(4, 8)), torch.ones(4, 8))
    assert dispatcher_calls(tmp_path / "missing.pt2") == []
    assert calls_fused_op({"dispatcher_calls": ["vitserve::window_attention_packed"]})
    assert not calls_fused_op({"dispatcher_calls": [], "fused_window_attention_blocks": 12})
    assert calls_fused_op({"fused_window_attention_blocks": 12})  # recorded before dispatcher_calls was
    assert not calls_fused_op({"fused_window_attention_blocks": 0})


@pytest.mark.slow  # AOTInductor compiles
def test_the_package_keeps_fused_attention(tmp_path, monkeypatch):
    """The torch artifact compiles timm's scaled_dot_product_attention (one fused attention kernel on the GPU), not
    the explicit form the ONNX export needs, which writes the attention matrix out (ViT-B/16 on an H100 under
    torch.compile: 6.9k img/s explicit, 10.6k fused)."""
    from vitserve.export import torch_package
    from vitserve.models.rewrites import deploy_copy

    model = build_model(SPECS["vit_s_16"], random_init=True).model.eval()
    x = torch.randn(2, 3, 224, 224)
    sdpa = {}
    for explicit in (True, False):
        deploy, _ = deploy_copy(model, explicit=explicit)
        program = torch.export.export(deploy, (x,))
        sdpa[explicit] = sum("scaled_dot_product" in str(node.target) for node in program.graph.nodes)
        with torch.no_grad():
            assert torch.allclose(deploy(x), model(x), atol=1e-4)
    assert (sdpa[True], sdpa[False]) == (0, 12)  # vit_s_16: 12 blocks

    compiled = []

    def stop_at_compile(deploy, *args):
        compiled.append(deploy)
        raise ExportError("stopped before compiling")

    monkeypatch.setattr(torch_package, "compile_package", stop_at_compile)
    options = ExportOptions(out=tmp_path / "vit", max_batch=2, format="torch",
                            torch_options=TorchOptions(device="cpu", dtype="fp32"))
    with pytest.raises(ExportError, match="stopped"):
        export_artifact(build_model(SPECS["vit_s_16"], random_init=True), options, progress=lambda m: None)
    fused = [m.fused_attn for m in compiled[0].modules() if hasattr(m, "fused_attn")]
    assert len(fused) == 12 and all(fused)


@pytest.mark.slow  # AOTInductor compiles
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_package_with_cuda_graphs(tmp_path, digits_artifact):
    out = tmp_path / "swin_digits-cuda"
    options = ExportOptions(out=out, max_batch=16, format="torch",
                            torch_options=TorchOptions(device="cuda", dtype="fp16"))
    manifest = export_artifact(build_model(SPECS["swin_digits"]), options, progress=lambda m: None)
    assert manifest.package["fused_window_attention_blocks"] > 0
    assert manifest.package["dispatcher_calls"] == []  # the kernel compiled in, no call back into Python
    assert manifest.verification["min_cosine"] >= 0.999
    # and so served where neither Triton nor a compiler is, CUDA graphs and all
    result = run_cli("classify", str(out), str(EXAMPLES[3]), "--json", env=_slim_machine(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["results"][0]["top_k"][0]["label"] == "3"
    backend = load_backend(out, "torch")
    assert backend.cuda_graphs
    x = _pixels(backend.manifest)
    reference = OnnxRuntime(digits_artifact)(x)
    for _ in range(2):  # captured, then replayed
        got = backend(x)
        assert (got.argmax(1) == reference.argmax(1)).all()
    # the same package in plain calls, as exported with --no-cuda-graphs, gives the graphs' answers
    plain = PackageRunner(out / "model.pt2", "cuda", backend.buckets, backend.input_shape, cuda_graphs=False)
    assert not plain.cuda_graphs and np.abs(plain(x) - got).max() < 1e-3
    # the batch crosses to the GPU in fp16, cast on the CPU as the package's first operation casts it on the GPU:
    # exactly the answers of the same graphs fed float32 (a cast that rounds otherwise, to bf16, would change them)
    assert backend.graph(backend.bucket(len(x))).device_in.dtype == torch.float16
    float32_in = PackageRunner(out / "model.pt2", "cuda", backend.buckets, backend.input_shape)
    assert float32_in.transfer_dtype == torch.float32 and np.array_equal(float32_in(x), got)
    # two batches in flight, as the server runs this backend: calls from two threads at once, of two buckets and
    # of one, each get their own batch's answers (a call reading another's staging buffers or output would not)
    major, minor = torch.cuda.get_device_capability()
    assert compiled_for(out / "model.pt2")["AOTI_COMPUTE_CAPABILITY"] == f"{major}{minor}"  # what check_machine reads
    assert backend.batches_in_flight == 2
    backend.reserve(2)  # as the server does before warming: pinned buffers for two calls in every bucket's graph
    batches = [x[:1], x, x[::-1].copy(), x[:3]] * 4
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(backend, batches))
    for batch, answer in zip(batches, answers):
        assert np.array_equal(answer, backend(batch))
    # captured before the reservation or after it, each graph holds two calls' buffers, and serving made no more
    assert {len(batch): backend.graph(backend.bucket(len(batch))).staging.size for batch in batches} == \
        {1: 2, len(x): 2, 3: 2}


@pytest.mark.slow  # AOTInductor compiles
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs a CUDA GPU with fp8 tensor cores (compute capability 8.9 or later)")
def test_cuda_fp8_package(tmp_path, digits_artifact):
    """--dtype fp8 on a GPU: cuBLAS's fp8 GEMMs inside the package beside the fused window-attention kernel,
    verified with CUDA graphs, and the sample images classified as the fp32 ONNX artifact classifies them."""
    out = tmp_path / "swin_digits-fp8"
    options = ExportOptions(out=out, max_batch=16, format="torch",
                            torch_options=TorchOptions(device="cuda", dtype="fp8"))
    manifest = export_artifact(build_model(SPECS["swin_digits"]), options, progress=lambda m: None)
    assert manifest.package["fp8_linear_layers"] == 26 and manifest.package["fused_window_attention_blocks"] > 0
    assert manifest.verification["min_cosine"] >= 0.98 and manifest.verification["top1_agreement"] == 1.0
    backend = load_backend(out, "torch")
    x = _pixels(backend.manifest)
    assert (backend(x).argmax(1) == OnnxRuntime(digits_artifact)(x).argmax(1)).all()
