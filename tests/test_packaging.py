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


# the tests that read the wheel run on one worker, which builds it once (two builds at once in the same source tree
# trip over each other's build/ folder)
with_wheel = pytest.mark.xdist_group("wheel")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True)
    (path,) = out.glob("vitserve-*.whl")
    return zipfile.ZipFile(path).namelist()


@with_wheel
def test_every_subpackage_is_in_the_wheel(wheel):
    expected = set()
    for top, package in (("vitserve", ()), ("models", ("models",)), ("export", ("export",)), ("server", ("server",))):
        for init in (ROOT / top).rglob("__init__.py"):
            expected.add(".".join(("vitserve", *package, *init.parent.relative_to(ROOT / top).parts)))
    packaged = {name.rsplit("/", 1)[0].replace("/", ".") for name in wheel if name.endswith("/__init__.py")}
    assert expected <= packaged, expected - packaged
    assert {"vitserve.runtimes", "vitserve.cli", "vitserve.models.families", "vitserve.export.formats"} <= expected
    for module in (ROOT / "models").rglob("*.py"):
        assert f"vitserve/models/{module.relative_to(ROOT / 'models')}" in wheel


@with_wheel
def test_bundled_model_is_in_the_wheel(wheel):
    assert "vitserve/models/assets/swin_digits/model.safetensors" in wheel
    assert "vitserve/models/assets/swin_digits/labels.txt" in wheel


@with_wheel
def test_grpc_protocol_is_in_the_wheel(wheel):
    assert {"vitserve/server/open_inference.proto", "vitserve/server/open_inference_pb2.py",
            "vitserve/server/grpc_health.proto", "vitserve/server/grpc_health_pb2.py",
            "vitserve/server/kserve_grpc.py"} <= set(wheel)


@with_wheel
def test_try_it_page_is_in_the_wheel(wheel):
    from vitserve.server.routes.ui import ASSETS

    assert {f"vitserve/server/ui/{name}" for name in ("index.html", *ASSETS)} <= set(wheel)


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
    """README opens with the two set-up commands; the second, the test command, is the one CI runs."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    setup, test = re.findall(r"```bash\n(.*?)\n```", readme, re.S)[:2]
    assert "vitserve export swin_digits" in setup and "vitserve serve" in setup
    assert test.strip() in ci, "CI must run the README's test command"
    assert 'pytest -q -m "not slow" tests' in readme, "README names the fast tier"


def test_readme_is_one_page_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\(((?:docs/)[^)#]+)\)", readme)
    assert {"docs/architecture.md", "docs/commands.md", "docs/testing.md"} <= set(links)
    for link in links:
        assert (ROOT / link).is_file(), link


def test_docs_name_every_command_and_flag():
    """docs/commands.md documents every subcommand and every one of its flags, as the parser has them."""
    import argparse

    from vitserve.cli import build_parser

    doc = (ROOT / "docs" / "commands.md").read_text()
    (subcommands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [f"{name} {flag}" for name, parser in subcommands.choices.items()
               for action in parser._actions for flag in action.option_strings
               if flag.startswith("--") and flag != "--help" and flag not in doc]
    missing += [name for name in subcommands.choices if f"`vitserve {name}" not in doc]
    assert not missing, f"docs/commands.md lacks {missing}"


def test_files_named_in_the_docs_exist():
    """A path in backquotes in README or docs/ (`export/formats/torch.py`) names a file of this repository."""
    named = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        named |= set(re.findall(r"`((?:[\w.-]+/)+[\w.-]+\.(?:py|sh|md|yaml|json|proto))`", doc.read_text()))
    missing = sorted(p for p in named if not p.startswith("/") and not (ROOT / p).exists())
    assert not missing, missing


@pytest.mark.xdist_group("grouped")
def test_xdist_groups_reach_the_scheduler(request):
    """Under `--dist loadgroup` (pyproject.toml's addopts), a test's xdist_group is appended to its node id, which is
    how the scheduler keeps a group on one worker. pytest 9.2 drops it (each worker would then build a group's
    fixture again): pyproject.toml keeps pytest below that."""
    if not getattr(request.config.option, "loadgroup", False):  # set on xdist workers only
        pytest.skip("not run by a pytest-xdist worker under --dist loadgroup")
    assert request.node.nodeid.endswith("@grouped")
