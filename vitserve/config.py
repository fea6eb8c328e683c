"""Defaults shared by the CLI, the exporter and the server."""

from __future__ import annotations

import os

DEFAULT_OPSET = 18
"""ONNX opset written by `vitserve export` (onnxruntime >= 1.14 and OpenVINO run it)."""

DEFAULT_MAX_BATCH = 64
"""Largest batch the exported graph declares and the verification exercises."""

DEFAULT_ATOL = 1e-4
"""Largest |logit difference| between the exported model and the PyTorch model that still passes."""

DEFAULT_ARTIFACTS_DIR = "artifacts"
"""`vitserve export NAME` writes to artifacts/NAME unless --out is given."""


def hub_connect_timeout() -> float:
    """Seconds to wait for the model hub before treating it as unreachable (VITSERVE_HUB_TIMEOUT)."""
    return float(os.environ.get("VITSERVE_HUB_TIMEOUT", "3"))
