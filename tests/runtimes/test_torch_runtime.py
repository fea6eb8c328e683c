"""The torch runtime's checks, on packages that need no compile: the machine a package was compiled for (read from
the package before anything is loaded), the device asked for, the loader named, the custom ops it calls back.
Compiled packages are loaded, verified and served in tests/export/test_torch_package.py (slow)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from vitserve.artifact import read_manifest, write_manifest
from vitserve.errors import ArtifactError
from vitserve.runtimes import load
from vitserve.runtimes.torch_package import (
    MODEL_FOLDER,
    PackageRunner,
    calls_fused_op,
    check_machine,
    compiled_for,
    cpu_vector_isa,
)


def fake_package(path: Path, **metadata: str) -> Path:
    """A zip laid out as AOTInductor's package is, holding only the compiled model's metadata: what the runtime
    reads before it loads anything."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"model/{MODEL_FOLDER}model/wrapper_metadata.json", json.dumps(metadata))
    return path


def test_the_machine_a_package_was_compiled_for_is_read_and_checked(tmp_path, monkeypatch):
    here = cpu_vector_isa()
    assert here is None or "avx2" in here or not here  # x86 CPUs here have AVX2; other machines read nothing
    arm = fake_package(tmp_path / "arm.pt2", AOTI_DEVICE_KEY="cpu", AOTI_CPU_ISA="ASIMD")
    assert compiled_for(arm) == {"AOTI_DEVICE_KEY": "cpu", "AOTI_CPU_ISA": "ASIMD"}
    if here is not None:
        with pytest.raises(ArtifactError, match="compiled on a CPU with ASIMD and its code uses those instructions"):
            PackageRunner(arm, "cpu", [1, 4], (3, 32, 32))
    h100 = fake_package(tmp_path / "h100.pt2", AOTI_DEVICE_KEY="cuda", AOTI_COMPUTE_CAPABILITY="90")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ArtifactError, match=r"compute capability 9\.0, and NVIDIA A100-SXM4-80GB is 8\.0"):
        check_machine(h100, torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_machine(h100, torch.device("cuda"))
    assert compiled_for(tmp_path / "missing.pt2") == {}  # unreadable: loading it says why


def test_a_package_that_is_not_one_is_an_artifact_error(tmp_path):
    package = fake_package(tmp_path / "model.pt2")
    with pytest.raises(ArtifactError, match="PyTorch cannot load"):
        PackageRunner(package, "cpu", [1, 4], (3, 32, 32))
    with pytest.raises(ArtifactError, match="unknown package loader 'jit'"):
        PackageRunner(package, "cpu", [1, 4], (3, 32, 32), loader="jit")


def test_the_runtime_refuses_another_device_and_names_the_export(tmp_path, digits_artifact):
    artifact = tmp_path / "torch"
    shutil.copytree(digits_artifact, artifact)
    manifest = read_manifest(artifact)
    (artifact / manifest.model_file).unlink()
    fake_package(artifact / "model.pt2", AOTI_DEVICE_KEY="cpu")
    manifest.model_file = "model.pt2"
    manifest.package = {"format": "aotinductor", "device": "cpu", "dtype": "fp32", "batch_buckets": [1, 64]}
    write_manifest(artifact, manifest)
    with pytest.raises(ArtifactError, match="compiled for cpu; --device cuda cannot run it"):
        load(artifact, "torch", device="cuda")
    with pytest.raises(ArtifactError, match="the torch backend runs on cpu or cuda; --device tensorrt does not"):
        load(artifact, "torch", device="tensorrt")
    with pytest.raises(ArtifactError, match="PyTorch cannot load"):
        load(artifact)  # auto: the torch runtime, which gets as far as loading the (fake) package


def test_which_packages_call_the_fused_op_back():
    assert calls_fused_op({"dispatcher_calls": ["vitserve::window_attention_packed"]})
    assert not calls_fused_op({"dispatcher_calls": [], "fused_window_attention_blocks": 6})  # compiled in
    assert calls_fused_op({"fused_window_attention_blocks": 6})  # an older record: whenever it has fused blocks
    assert not calls_fused_op({})
