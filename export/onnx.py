"""PyTorch module -> ONNX file with a dynamic batch dimension (torch.onnx's dynamo exporter)."""

from __future__ import annotations

import logging
import re
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitserve.errors import ExportError

log = logging.getLogger(__name__)

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"


@contextmanager
def _quiet_exporter():
    """The exporter prints a progress line per step and warns about things that do not apply to eval graphs."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(
    module: nn.Module,
    input_size: tuple[int, ...],
    path: Path,
    *,
    max_batch: int,
    opset: int,
    output_names: list[str] | None = None,
    custom_translation_table: dict | None = None,
) -> None:
    """Writes `module` as ONNX to `path` (one file, weights inside) with batch dimension 1..max_batch.

    `input_size` is one image's (C, H, W). The example traced has batch 2: torch.export specializes a size-1
    dimension to a constant, which would fix the batch at 1.
    """
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
    example = torch.randn(2, *input_size)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=output_names or [OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                optimize=True,
                verbose=False,
                custom_translation_table=custom_translation_table,
            )
            program.save(str(path), external_data=False)
    except Exception as e:  # the exporter raises many types; the user needs the message, not the type
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
        raise ExportError(f"torch.onnx.export failed for {type(module).__name__}: {' '.join(message[:3])}") from e


def graph_stats(path: Path) -> dict[str, Any]:
    """Node counts by op type, parameter count and file size of an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(node.op_type for node in model.graph.node)
    params = sum(_numel(t.dims) for t in model.graph.initializer)
    return {
        "nodes": sum(ops.values()),
        "op_counts": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "initializers": len(model.graph.initializer),
        "parameters": params,
        "file_bytes": path.stat().st_size,
    }


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n
