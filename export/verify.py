"""Proof that an exported artifact answers like the PyTorch model it came from.

Every export runs the artifact through the runtime that serves it (vitserve.runtimes, loaded from the staged
artifact folder exactly as `vitserve serve` loads it) on random tensors *and* on real photographs (scikit-image
ships a few), preprocessed with the model's own timm eval transform, and compares with the original (un-rewritten)
PyTorch model: max |logit difference|, lowest cosine similarity, top-1 agreement, gated by vitserve.proof.gate (the
gate a server applies to the artifact's proof at load). A runtime that loads native code (an AOTInductor package)
runs in a child process (outputs_in_child). Over tolerance an fp32 ONNX export also gets the first block whose
output diverges, found by exporting the deploy model again with every block's output as an extra graph output
(locate_divergence). The verified artifact keeps a few of the inputs and the model's answers (vitserve.proof), which
a server re-runs before it serves.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitserve import proof
from vitserve.artifact import Preprocess
from vitserve.errors import ExportError
from vitserve.export.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx
from vitserve.proof import compare, worst
from vitserve.runtimes.onnxruntime import session as onnxruntime_session

log = logging.getLogger(__name__)

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field")
RANDOM_BATCH = 3
# Block outputs (`blocks.3`, `layers.1.blocks.0`, Twins' `blocks.2.1`, CaiT's `blocks_token_only.0`) are where
# the first divergence is looked for.
PROBE_PATTERN = re.compile(r"(^|\.)blocks[a-z_]*(\.\d+)+$")


def sample_photos(preprocess: Preprocess) -> tuple[list[str], torch.Tensor]:
    """scikit-image's bundled photographs through the model's timm eval transform: (names, N x C x H x W)."""
    import skimage.data
    from PIL import Image
    from timm.data import create_transform

    transform = create_transform(
        input_size=preprocess.input_size,
        interpolation=preprocess.interpolation,
        mean=preprocess.mean,
        std=preprocess.std,
        crop_pct=preprocess.crop_pct,
        crop_mode=preprocess.crop_mode,
        is_training=False,
    )
    images = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    return list(PHOTOS), torch.stack([transform(img) for img in images])


def verification_inputs(preprocess: Preprocess) -> tuple[list[str], dict[str, torch.Tensor]]:
    """The photographs' names, and the inputs every export is checked on: random images, the photographs as a
    batch, and one photograph alone (batch 1)."""
    generator = torch.Generator().manual_seed(0)
    random_x = torch.randn(RANDOM_BATCH, *preprocess.input_size, generator=generator)
    photo_names, photo_x = sample_photos(preprocess)
    return photo_names, {"random": random_x, "photos": photo_x, "single_photo": photo_x[:1]}


def check_runner(run: Callable[[np.ndarray], np.ndarray], reference: nn.Module,
                 inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """An exported model's logits (`run` on numpy batches) against the reference model's, per input set and worst
    over all sets: {"inputs": {name: compare(...)}, "max_abs_diff", "min_cosine", "top1_agreement"}."""
    return check_outputs({name: run(x.numpy()) for name, x in inputs.items()}, reference, inputs)


def check_outputs(outputs: dict[str, np.ndarray], reference: nn.Module,
                  inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """check_runner for logits computed elsewhere (`outputs`, by input set name)."""
    per_input = {}
    for name, x in inputs.items():
        with torch.no_grad():
            ref = reference(x).numpy()
        per_input[name] = compare(ref, outputs[name])
    return worst(per_input)


CHILD_OUTPUT_TAIL = 6000  # characters of a failed child's stderr that its error carries (a faulthandler stack)


class ChildFailed(ExportError):
    """outputs_in_child's child failed, crashed or did not finish: `summary` says which, `output` is all it wrote
    to stderr (the error's message carries only its end)."""

    def __init__(self, summary: str, output: str):
        super().__init__(f"{summary}; its last output:\n{output[-CHILD_OUTPUT_TAIL:].rstrip()}")
        self.summary, self.output = summary, output


def outputs_in_child(module: str, args: list[str], inputs: dict[str, np.ndarray], *, what: str,
                     timeout_s: float = 1800) -> dict[str, np.ndarray]:
    """Runs `python -X faulthandler -m module INPUTS.npz OUTPUTS.npz *args` in a fresh process and returns the
    arrays it saved. For runtimes that load native code (an AOTInductor package): the artifact is checked in a
    process like the server's, not in the one that built it, and a crash of the runtime becomes an ExportError that
    carries the crash's Python stack (faulthandler) instead of killing the exporter; a child still running after
    `timeout_s` is stopped with SIGABRT, so that the error shows where it was stuck (ChildFailed). `what` names the
    child in errors ("PyTorch running the package")."""
    with tempfile.TemporaryDirectory(prefix="vitserve-verify-") as tmp:
        inputs_file, outputs_file = Path(tmp) / "inputs.npz", Path(tmp) / "outputs.npz"
        np.savez(inputs_file, **inputs)
        command = [sys.executable, "-X", "faulthandler", "-m", module, str(inputs_file), str(outputs_file), *args]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
        try:
            _, stderr = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack, then the process ends
            _, stderr = child.communicate()
            failure = f"{what} did not finish within {timeout_s:g} s and was stopped"
        else:
            failure = (f"{what} crashed ({signal.Signals(-child.returncode).name}, in native code)"
                       if child.returncode < 0 else
                       f"{what} failed (exit status {child.returncode})" if child.returncode > 0 else None)
        log.debug("%s: %s", what, stderr[-CHILD_OUTPUT_TAIL:])
        if failure:
            raise ChildFailed(failure, stderr)
        with np.load(outputs_file) as saved:
            return {name: saved[name] for name in saved.files}


def run_artifact(folder: Path, runtime: str, inputs: dict[str, np.ndarray], *, device: str = "auto",
                 precision: str = "auto") -> tuple[dict[str, np.ndarray], str]:
    """Every array of `inputs` through the artifact in `folder` as `vitserve serve --backend runtime` runs it
    (runtimes.load, at most max_batch images per call, as the server's batches): (logits by name, what ran them)."""
    from vitserve import runtimes

    loaded = runtimes.load(folder, runtime, device=device, precision=precision)
    return proof.run(loaded, inputs, loaded.manifest.max_batch), f"{loaded.description} ({loaded.version()})"


LOADED = "vitserve: artifact loaded"  # what the verification child prints once its runtime has loaded the artifact
RUNTIME_KEY = "__runtime__"  # the child's outputs: what ran them, beside the logits


def _child(argv: list[str]) -> None:
    """`python -m vitserve.export.verify INPUTS.npz OUTPUTS.npz FOLDER RUNTIME [--device D] [--precision P]`: the
    artifact run as the server runs it, in a process of its own (outputs_in_child); the logits saved to
    OUTPUTS.npz under the inputs' names."""
    import argparse

    from vitserve import runtimes

    parser = argparse.ArgumentParser(prog="python -m vitserve.export.verify")
    for name in ("inputs", "outputs", "folder"):
        parser.add_argument(name, type=Path)
    parser.add_argument("runtime")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args(argv)
    loaded = runtimes.load(args.folder, args.runtime, device=args.device, precision=args.precision)
    print(LOADED, file=sys.stderr, flush=True)
    with np.load(args.inputs) as inputs:
        logits = proof.run(loaded, {name: inputs[name] for name in inputs.files}, loaded.manifest.max_batch)
    np.savez(args.outputs, **logits, **{RUNTIME_KEY: np.array(f"{loaded.description} ({loaded.version()})")})


class _Probe(nn.Module):
    """Runs a model and also returns every block's output (in timm's layout, via `probe_view` where defined)."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names
        self._outputs: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self._handles = [modules[n].register_forward_hook(partial(self._record, n)) for n in names]

    def _record(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        output = output[0] if isinstance(output, tuple) else output
        view = getattr(module, "probe_view", None)
        self._outputs[name] = view(output) if view is not None else output

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._outputs = {}
        logits = self.model(x)
        return (logits, *[self._outputs[n] for n in self.names])

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def probe_names(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the block modules that run on `x`, in execution order."""
    candidates = [n for n, m in model.named_modules() if PROBE_PATTERN.search(n) and _has_forward(m)]
    fired: list[str] = []
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda *_, n=n: fired.append(n)) for n in candidates]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(fired))


def _has_forward(module: nn.Module) -> bool:
    return not isinstance(module, (nn.ModuleList, nn.ModuleDict))


def locate_divergence(
    reference: nn.Module, deploy: nn.Module, x: torch.Tensor, *, atol: float, opset: int
) -> dict[str, Any]:
    """Block-by-block comparison of the reference, the PyTorch deploy form and its ONNX export on `x`.

    A block diverges when max |difference| / max(1, max |reference|) exceeds atol. Returns every block's figures
    and a one-line summary naming the first divergent block and whether the PyTorch deploy form already shows it
    (a wrong rewrite) or only the ONNX file does (exporter or runtime).
    """
    names = [n for n in probe_names(reference, x) if n in dict(deploy.named_modules())]
    if not names:
        return {"summary": "the model has no block modules to compare"}
    ref_probe, deploy_probe = _Probe(reference, names), _Probe(deploy, names)
    try:
        with torch.no_grad():
            ref_outs = [t.numpy() for t in ref_probe(x)[1:]]
            torch_outs = [t.numpy() for t in deploy_probe(x)[1:]]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "probe.onnx"
            output_names = [OUTPUT_NAME] + [f"probe_{i}" for i in range(len(names))]
            export_onnx(deploy_probe, tuple(x.shape[1:]), path, max_batch=len(x), opset=opset,
                        output_names=output_names)
            session, _ = onnxruntime_session(path)
            onnx_outs = session.run(None, {INPUT_NAME: x.numpy()})[1:]
    finally:
        ref_probe.remove()
        deploy_probe.remove()
    blocks = []
    first = None
    for name, ref, t, o in zip(names, ref_outs, torch_outs, onnx_outs):
        scale = max(1.0, float(np.abs(ref).max()))
        torch_err = float(np.abs(ref - t).max()) / scale
        onnx_err = float(np.abs(ref - o).max()) / scale
        blocks.append({"block": name, "torch_rel_diff": torch_err, "onnx_rel_diff": onnx_err})
        if first is None and max(torch_err, onnx_err) > atol:
            first = blocks[-1]
    result: dict[str, Any] = {"blocks": blocks}
    if first is None:
        result["summary"] = "every block output is within tolerance; the divergence is after the last block (head)"
    else:
        culprit = "already in the PyTorch deploy form (the rewrite)" if first["torch_rel_diff"] > atol else \
            "only in the ONNX graph (exporter or onnxruntime)"
        result["first_block"] = first["block"]
        result["summary"] = (
            f"First divergent block: {first['block']} (relative difference {max(first['torch_rel_diff'], first['onnx_rel_diff']):.3g}), "  # noqa: E501
            f"{culprit}."
        )
    return result


if __name__ == "__main__":
    _child(sys.argv[1:])
