"""The wheel carries every subpackage and the bundled model; the serving side and `--help` never import torch."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT
from vitserve.cli import models_markdown

HEAVY = ("torch", "timm", "onnx", "onnxscript", "torchvision")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True)
    (path,) = out.glob("vitserve-*.whl")
    return zipfile.ZipFile(path).namelist()


def test_every_subpackage_is_in_the_wheel(wheel):
    expected = {"vitserve"}
    for top in ("models", "export", "server"):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            expected.add(".".join(("vitserve", top, *rel)))
    packaged = {name.rsplit("/", 1)[0].replace("/", ".") for name in wheel if name.endswith("/__init__.py")}
    assert expected <= packaged, expected - packaged
    for module in (ROOT / "models").glob("*.py"):
        assert f"vitserve/models/{module.name}" in wheel


def test_bundled_model_is_in_the_wheel(wheel):
    assert "vitserve/models/assets/swin_digits/model.safetensors" in wheel
    assert "vitserve/models/assets/swin_digits/labels.txt" in wheel


def test_grpc_protocol_is_in_the_wheel(wheel):
    assert {"vitserve/server/open_inference.proto", "vitserve/server/open_inference_pb2.py",
            "vitserve/server/grpc_health.proto", "vitserve/server/grpc_health_pb2.py",
            "vitserve/server/kserve_grpc.py"} <= set(wheel)


def _imported_after(code: str) -> list[str]:
    probe = f"""
import sys
{code}
print("HEAVY:" + ",".join(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("HEAVY:")][-1]
    return [m for m in line.removeprefix("HEAVY:").split(",") if m]


def test_server_does_not_import_torch():
    assert _imported_after("import vitserve.server.app, vitserve.server.run, vitserve.runtimes, vitserve.preprocess, "
                           "vitserve.runtimes.onnxruntime, vitserve.runtimes.openvino, vitserve.runtimes.tensorrt, "
                           "vitserve.server.kserve_grpc") == []


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["export", "--help"]])
def test_cli_help_does_not_import_torch(argv):
    code = f"""
from vitserve.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
"""
    assert _imported_after(code) == []


def test_readme_models_table_matches_registry():
    readme = (ROOT / "README.md").read_text()
    table = models_markdown()
    assert table in readme, "README's models table is stale: paste the output of `vitserve models --markdown`"


def test_readme_commands_are_the_ci_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = re.search(r"```bash\n(.*?)\n```", readme.split("## Tests", 1)[1], re.S).group(1).strip()
    assert test_cmd in ci, "CI must run the README's test command"
