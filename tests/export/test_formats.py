"""The export formats' options, checked before anything is built: each format takes its own flags, refuses the
others naming the formats that take them, and fills in its defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitserve.errors import ExportError
from vitserve.export.formats import FORMATS, Flags, get_format
from vitserve.export.torch_package import TorchOptions

OUT = Path("artifacts/x")


def test_every_format_is_registered_and_named_by_its_module():
    assert list(FORMATS) == ["onnx", "openvino", "torch", "tensorrt"]
    for name in FORMATS:
        assert get_format(name).name == name
    with pytest.raises(ExportError, match="unknown --format 'tflite'; choose onnx, openvino, torch, tensorrt"):
        get_format("tflite")


@pytest.mark.parametrize("name,flags,message", [
    ("onnx", Flags(batch_buckets=(1, 8)), "--device and --batch-buckets apply to --format torch and tensorrt only"),
    ("openvino", Flags(device="cpu"), "--device and --batch-buckets apply to --format torch and tensorrt only"),
    ("tensorrt", Flags(max_autotune=True), "--max-autotune applies to --format torch only"),
    ("onnx", Flags(no_cuda_graphs=True), "--no-cuda-graphs applies to --format torch only"),
    ("tensorrt", Flags(device="cpu"), "--format tensorrt builds an engine for the GPU; --device does not apply"),
])
def test_flags_a_format_does_not_take_are_refused(name, flags, message):
    with pytest.raises(ExportError, match=message):
        get_format(name).options(flags, OUT)


def test_defaults_and_checks_of_the_torch_format():
    torch_format = get_format("torch")
    assert not torch_format.explicit_attention  # AOTInductor keeps SDPA as one fused kernel
    cpu = torch_format.options(Flags(device="cpu", batch_buckets=(4,)), OUT, max_batch=16)
    assert cpu.torch_options == TorchOptions(device="cpu", dtype="fp32", batch_buckets=(4,))
    assert torch_format.check(cpu) == (4, 16)  # --max-batch is always a bucket
    assert torch_format.options(Flags(), OUT).torch_options.dtype == "fp16"  # on cuda
    fp16_cpu = torch_format.options(Flags(device="cpu", dtype="fp16"), OUT)
    with pytest.raises(ExportError, match="fp16 on the CPU"):
        torch_format.check(fp16_cpu)


def test_precision_each_format_holds():
    onnx = get_format("onnx")
    onnx.check(onnx.options(Flags(dtype="fp16"), OUT))
    for name, dtype in (("onnx", "bf16"), ("openvino", "fp16")):
        fmt = get_format(name)
        with pytest.raises(ExportError, match=f"--dtype {dtype} with --format {name}: an ONNX artifact is fp32"):
            fmt.check(fmt.options(Flags(dtype=dtype), OUT))
    tensorrt = get_format("tensorrt")
    with pytest.raises(ExportError, match="--dtype fp8 applies to --format torch"):
        tensorrt.check(tensorrt.options(Flags(dtype="fp8"), OUT))
