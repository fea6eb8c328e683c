"""The direction of imports (docs/architecture.md): core <- kernels <- runtimes <- {export, server}; models <- export;
the CLI on top. Read from the source of every module, imports inside functions included, so that a lazy import
that runs against the direction fails here as surely as one at the top of a file."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from tests.conftest import ROOT

# top-level folder -> the package it becomes (pyproject.toml's package-dir)
PACKAGE_DIRS = {"vitserve": "vitserve", "models": "vitserve.models", "export": "vitserve.export",
                "server": "vitserve.server"}
# the layer of a module: the longest prefix listed; anything else under vitserve is the core
LAYER_PREFIXES = {"vitserve.kernels": "kernels", "vitserve.runtimes": "runtimes", "vitserve.models": "models",
                  "vitserve.export": "export", "vitserve.server": "server", "vitserve.cli": "cli",
                  "vitserve.__main__": "cli", "vitserve.ray": "ray"}
MAY_IMPORT = {
    "core": {"core"},
    "kernels": {"core", "kernels"},
    "runtimes": {"core", "kernels", "runtimes"},
    "models": {"core", "kernels", "models"},
    "export": {"core", "kernels", "runtimes", "models", "export"},
    "server": {"core", "runtimes", "server"},
    "ray": {"core", "runtimes", "ray"},  # Ray Data's predictor: runs artifacts, like the server
    "cli": {"core", "kernels", "runtimes", "models", "export", "server", "ray", "cli"},
}
# libraries that the serving install does not have: the core and the server never import them; among the runtimes
# only the torch runtime imports torch (when that runtime is chosen), and torchvision for decoding on its device
HEAVY = {"torch", "timm", "onnx", "onnxscript", "torchvision", "triton", "safetensors", "skimage"}
HEAVY_ALLOWED = {"vitserve.runtimes.torch_package": {"torch"},
                 "vitserve.runtimes.device_preprocess": {"torch", "torchvision"}}


def modules(root: Path) -> dict[str, Path]:
    """Every Python module of the package under `root`, by its dotted name."""
    found = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def layer(module: str) -> str:
    prefixes = [p for p in LAYER_PREFIXES if module == p or module.startswith(p + ".")]
    return LAYER_PREFIXES[max(prefixes, key=len)] if prefixes else "core"


def imports(path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from vitserve import runtimes` imports the module vitserve.runtimes
                full = f"{node.module}.{alias.name}"
                found.append((node.lineno, full if full in known else node.module))
    return found


def violations(root: Path) -> list[str]:
    """Every import that runs against the direction, as 'module:line imports target (layer -> layer)'."""
    found = modules(root)
    known = set(found)
    problems = []
    for module, path in found.items():
        here = layer(module)
        for line, target in imports(path, known):
            top = target.split(".")[0]
            if top == "vitserve":
                there = layer(target)
                if there not in MAY_IMPORT[here]:
                    problems.append(f"{module}:{line} imports {target} ({here} -> {there})")
            elif top in HEAVY and here in ("core", "server", "runtimes") and top not in HEAVY_ALLOWED.get(module, ()):
                problems.append(f"{module}:{line} imports {target} ({here} may not need {top})")
    return problems


def test_imports_point_one_way():
    assert violations(ROOT) == []


def test_every_module_is_seen():
    found = modules(ROOT)
    assert {"vitserve.runtimes.onnxruntime", "vitserve.server.app", "vitserve.export.formats.torch",
            "vitserve.models.rewrites.windows", "vitserve.cli.serve"} <= set(found)
    assert layer("vitserve.artifact") == "core" and layer("vitserve.runtimes.base") == "runtimes"


def test_a_planted_import_is_found(tmp_path):
    """The check fails on the imports it is there to stop: the server importing export lazily, inside a function;
    a runtime importing models; the core importing torch."""
    for folder in PACKAGE_DIRS:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("assets", "__pycache__"))
    app = tmp_path / "server" / "app.py"
    app.write_text(app.read_text() + "\n\ndef _planted():\n    from vitserve.export.pipeline import export_artifact\n"
                   "    return export_artifact\n")
    runtime = tmp_path / "vitserve" / "runtimes" / "openvino.py"
    runtime.write_text(runtime.read_text() + "\nimport vitserve.models.catalogue\n")
    core = tmp_path / "vitserve" / "scores.py"
    core.write_text(core.read_text() + "\nimport torch\n")
    found = violations(tmp_path)
    assert len(found) == 3, found
    assert any(v.startswith("vitserve.server.app:") and "vitserve.export.pipeline (server -> export)" in v
               for v in found)
    assert any("vitserve.runtimes.openvino" in v and "(runtimes -> models)" in v for v in found)
    assert any("vitserve.scores" in v and "may not need torch" in v for v in found)
