"""export/toolchain.py: a package's shared object needs the shared libstdc++ even where the C++ compiler would copy
libstdc++ into it; such a copy makes PyTorch's loader fail (here: std::bad_cast; on a CUDA machine: a crash).

A compiler that copies libstdc++ in is made here by wrapping g++ with -static-libstdc++ for shared objects."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT
from vitserve.errors import ExportError
from vitserve.export import toolchain

pytestmark = pytest.mark.skipif(not (sys.platform.startswith("linux") and shutil.which("g++")),
                                reason="needs Linux and g++")


@pytest.fixture(scope="module")
def static_gxx(tmp_path_factory) -> str:
    wrapper = tmp_path_factory.mktemp("cxx") / "g++"
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case " $* " in *" -shared "*) exec {shutil.which("g++")} "$@" -static-libstdc++;; esac
        exec {shutil.which("g++")} "$@"
        """))
    wrapper.chmod(0o755)
    return str(wrapper)


def _shared_object(cxx: str, folder: Path) -> bytes:
    folder.mkdir()
    source, shared = folder / "x.cpp", folder / "x.so"
    source.write_text(toolchain.PROBE_SOURCE)
    subprocess.run([cxx, "-shared", "-fPIC", str(source), "-o", str(shared)], check=True)
    return shared.read_bytes()


def test_needed_libraries_of_a_shared_object(tmp_path, static_gxx):
    needed = toolchain.needed_libraries(_shared_object("g++", tmp_path / "a"))
    assert toolchain.LIBSTDCXX in needed
    if shutil.which("readelf"):  # binutils' reading of the same object, entry by entry
        dynamic = subprocess.run(["readelf", "-d", str(tmp_path / "a" / "x.so")], capture_output=True, text=True)
        assert needed == re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic.stdout)
    assert toolchain.LIBSTDCXX not in toolchain.needed_libraries(_shared_object(static_gxx, tmp_path / "b"))
    with pytest.raises(ValueError, match="ELF"):
        toolchain.needed_libraries(b"#!/bin/sh\n")


def test_a_compiler_that_copies_libstdcxx_in_is_found(static_gxx):
    assert toolchain.links_libstdcxx_statically(static_gxx)
    assert not toolchain.links_libstdcxx_statically(shutil.which("g++"))
    with pytest.raises(ExportError, match="could not build"):
        toolchain.links_libstdcxx_statically("false")


# Compiles a small CPU package with compile_package (as the export does) under $CXX, optionally without the
# toolchain's settings; keeps an input and the model's answer beside it; prints what the manifest would record.
COMPILE = """
import json, sys
from pathlib import Path
import torch
from vitserve.export import toolchain
from vitserve.export.torch_package import TorchOptions, compile_package
if sys.argv[2] == "as-torch-links":
    toolchain.inductor_configs = lambda: {}
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 10), torch.nn.GELU()).eval()
record = compile_package(model, (3, 4, 4), Path(sys.argv[1]), TorchOptions(device="cpu", dtype="fp32"), 4)
x = torch.randn(3, 3, 4, 4)
with torch.no_grad():
    torch.save((x, model(x)), sys.argv[1] + ".expected")
print(json.dumps(record))
"""
# Loads the package in a fresh process, as the server does, and compares its answer with the model's.
LOAD = """
import sys, torch
x, expected = torch.load(sys.argv[1] + ".expected")
runner = torch._inductor.aoti_load_package(sys.argv[1])
print("max diff", (runner(x) - expected).abs().max().item())
"""


def _python(code: str, *args: str, cxx: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CXX=cxx, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor-cache"))
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow(minutes=2)  # two AOTInductor compiles
def test_the_package_needs_the_shared_libstdcxx_and_loads(tmp_path, static_gxx):
    import json

    linked, plain = str(tmp_path / "linked.pt2"), str(tmp_path / "plain.pt2")
    compiled = _python(COMPILE, linked, "export", cxx=static_gxx, tmp_path=tmp_path)
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert json.loads(compiled.stdout.splitlines()[-1])["libstdcxx_linked_explicitly"] is True
    loaded = _python(LOAD, linked, cxx=static_gxx, tmp_path=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert float(loaded.stdout.split()[-1]) < 1e-5
    # the same package as PyTorch alone links it with this compiler: its loader fails on it
    compiled = _python(COMPILE, plain, "as-torch-links", cxx=static_gxx, tmp_path=tmp_path)
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert json.loads(compiled.stdout.splitlines()[-1])["libstdcxx_linked_explicitly"] is False
    failed = _python(LOAD, plain, cxx=static_gxx, tmp_path=tmp_path)
    assert failed.returncode != 0 and "bad_cast" in failed.stderr


def test_a_package_object_without_the_shared_libstdcxx_is_an_export_error(tmp_path, static_gxx):
    import zipfile

    from vitserve.export.torch_package import MODEL_FOLDER, check_shared_libstdcxx

    for name, cxx in (("shared", "g++"), ("static", static_gxx)):
        with zipfile.ZipFile(tmp_path / f"{name}.pt2", "w") as archive:
            archive.writestr(f"model/{MODEL_FOLDER}model.so", _shared_object(cxx, tmp_path / name))
    check_shared_libstdcxx(tmp_path / "shared.pt2")
    with pytest.raises(ExportError, match="links libstdc\\+\\+ into shared objects statically"):
        check_shared_libstdcxx(tmp_path / "static.pt2")
