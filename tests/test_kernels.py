"""The fused window-attention op: reference mathematics, the Triton kernel in Triton's CPU interpreter (small
shapes), compiled ahead of time to PTX (the launch TensorRT's plugin makes; no GPU needed to compile), and on
CUDA at full size in fp16 / bf16 (skipped without a GPU)."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from vitserve.kernels.window_attention import reference, split_heads, window_attention, window_attention_packed

HAS_TRITON = importlib.util.find_spec("triton") is not None

INTERPRETER_CHECK = """
import torch
from vitserve.kernels.window_attention import (
    reference, split_heads, triton_window_attention, triton_window_attention_packed)
torch.manual_seed(0)
worst = 0.0
for cosine in (False, True):
    # whole windows (up to 64 tokens), then the tiled form: 144 = 12x12, 100 (blocks of keys and queries cut short)
    for B, nW, nH, N, D, nwb in [(2, 4, 3, 49, 32, 4), (1, 2, 2, 64, 16, 1), (2, 3, 2, 9, 8, 3),
                                 (1, 2, 2, 144, 16, 2), (1, 1, 2, 100, 8, 1)]:
        qkv = torch.randn(B * nW, N, 3 * nH * D)
        q, k, v = (t.contiguous() for t in split_heads(qkv, nH))
        bias = torch.randn(nwb, nH, N, N)
        bias[..., 0, 1:5] = -100.0  # a shift mask's entries
        bias[..., N - 3] += 6.0  # each row's largest score in the last keys: the online softmax must rescale
        scale = torch.rand(nH) * 10 if cosine else None
        expected = reference(q, k, v, bias, scale, 0.17)
        out = triton_window_attention(q, k, v, bias, scale, 0.17)
        worst = max(worst, (expected - out).abs().max().item())
        packed = triton_window_attention_packed(qkv, bias, scale, 0.17, nH)  # W, N, nH * D
        worst = max(worst, (expected.transpose(1, 2).reshape(packed.shape) - packed).abs().max().item())
        if not cosine and N in (49, 144):  # a permuted bias must be caught
            wrong = triton_window_attention(q, k, v, bias.transpose(-2, -1).contiguous(), None, 0.17)
            assert (reference(q, k, v, bias, None, 0.17) - wrong).abs().max().item() > 1e-2
print(worst)
"""


def _naive(q, k, v, bias, logit_scale, scale):
    """Window by window, head by head: the plainest statement of the op."""
    out = torch.empty_like(q)
    for w in range(q.shape[0]):
        for h in range(q.shape[1]):
            if logit_scale is not None:
                s = torch.nn.functional.normalize(q[w, h], dim=-1) @ torch.nn.functional.normalize(k[w, h], dim=-1).T
                s = s * logit_scale[h]
            else:
                s = (q[w, h] @ k[w, h].T) * scale
            out[w, h] = (s + bias[w % bias.shape[0], h]).softmax(-1) @ v[w, h]
    return out


@pytest.mark.parametrize("cosine", [False, True])
def test_reference_equals_naive_loops(cosine):
    torch.manual_seed(0)
    q, k, v = (torch.randn(6, 2, 49, 8) for _ in range(3))
    bias = torch.randn(3, 2, 49, 49)
    scale = torch.rand(2) * 5 if cosine else None
    assert (reference(q, k, v, bias, scale, 0.3) - _naive(q, k, v, bias, scale, 0.3)).abs().max() < 1e-5
    assert (window_attention(q, k, v, bias, scale, 0.3) - _naive(q, k, v, bias, scale, 0.3)).abs().max() < 1e-5


@pytest.mark.parametrize("cosine", [False, True])
def test_packed_layout_equals_split(cosine):
    """The packed op reads q, k, v from the qkv projection's output and writes (W, N, nH * D): the same numbers as
    the split op on the same q, k, v. Swapping two heads inside the packing must show."""
    torch.manual_seed(0)
    heads, d = 3, 8
    qkv = torch.randn(6, 49, 3 * heads * d)
    bias = torch.randn(3, heads, 49, 49)
    scale = torch.rand(heads) * 5 if cosine else None
    split = window_attention(*(t.contiguous() for t in split_heads(qkv, heads)), bias, scale, 0.3)
    expected = split.transpose(1, 2).reshape(6, 49, heads * d)
    assert (window_attention_packed(qkv, bias, scale, 0.3, heads) - expected).abs().max() < 1e-6
    swapped = qkv.view(6, 49, 3, heads, d)[:, :, :, [1, 0, 2]].reshape(qkv.shape)
    assert (window_attention_packed(swapped, bias, scale, 0.3, heads) - expected).abs().max() > 1e-2


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_kernel_in_interpreter():
    result = subprocess.run([sys.executable, "-c", INTERPRETER_CHECK], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-5


def test_fake_kernel_matches_real_layout():
    """torch.compile trusts the fake kernel's strides; a transposed (non-contiguous) q must still give contiguous."""
    q = torch.randn(4, 6, 2, 8).transpose(1, 2)  # 4, 2, 6, 8, non-contiguous
    k, v = torch.randn(4, 2, 6, 8), torch.randn(4, 2, 6, 8)
    bias = torch.randn(2, 2, 6, 6)
    torch.library.opcheck(window_attention, (q, k, v, bias, None, 0.5))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = window_attention(mode.from_tensor(q), mode.from_tensor(k), mode.from_tensor(v),
                                mode.from_tensor(bias), None, 0.5)
    assert fake.is_contiguous()
    torch.library.opcheck(window_attention_packed, (torch.randn(4, 6, 36), bias, None, 0.5, 2))


# (cosine, window area): Swin's 7x7, Swin V2's 8x8 (whole windows), Swin's 12x12 at 384 px and Swin V2's 16x16
# (the tiled form)
GPU_WINDOWS = [(False, 49), (True, 64), (False, 144), (True, 256)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cosine,n", GPU_WINDOWS)
def test_cuda_kernel_full_size(dtype, cosine, n):
    torch.manual_seed(0)
    windows, heads, d = 64 * 64, 3, 32  # Swin-T stage 1 at batch 64
    q, k, v = (torch.randn(windows, heads, n, d, device="cuda", dtype=dtype) for _ in range(3))
    bias = torch.randn(64, heads, n, n, device="cuda")
    scale = torch.rand(heads, device="cuda") * 10 if cosine else None
    expected = reference(q.float(), k.float(), v.float(), bias, scale, 0.177)
    got = window_attention(q, k, v, bias, scale, 0.177)
    assert got.dtype == dtype
    assert (got.float() - expected).abs().max().item() < (2e-2 if dtype == torch.bfloat16 else 5e-3)
    qkv = torch.cat([t.transpose(1, 2).reshape(windows, n, heads * d) for t in (q, k, v)], dim=-1)
    packed = window_attention_packed(qkv, bias, scale, 0.177, heads)  # the same q, k, v, packed
    expected = expected.transpose(1, 2).reshape(windows, n, heads * d)
    assert (packed.float() - expected).abs().max().item() < (2e-2 if dtype == torch.bfloat16 else 5e-3)


needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


@needs_triton
@pytest.mark.skipif(not torch.backends.cuda.is_built(), reason="this PyTorch has no CUDA support to trace for")
@pytest.mark.parametrize("layout", ["packed", "split"])
def test_compilers_trace_through_the_op_to_the_kernel(layout, monkeypatch):
    """For CUDA, torch.export keeps each fused op whole (the ONNX exporter translates it to TensorRT's plugin node)
    and AOTInductor's trace (AOTAutograd, as torch.compile's) goes through it to the Triton kernel's launch, which
    Inductor compiles into the package: no call back into Python. Traced here on fake CUDA tensors (no GPU needed)
    with the swin_digits deploy form in fp16, one launch of this kernel per block in place of each op."""
    from torch._functorch.aot_autograd import aot_export_module
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vitserve.kernels.window_attention import _window_attention_kernel
    from vitserve.models.build import build_model
    from vitserve.models.catalogue import SPECS
    from vitserve.models.rewrites import deploy_copy
    from vitserve.models.rewrites.windows import WindowOrderAttention, use_fused_kernel

    class Logits(torch.nn.Module):  # AOTAutograd's export wants a tuple out
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return (self.model(x),)

    # Which pointers the kernel writes is read from its compiled form, which needs a GPU: without one, PyTorch
    # warns and takes every one as written (copies of the inputs in the trace, not there on a GPU)
    monkeypatch.setattr(logging.getLogger("torch._higher_order_ops.triton_kernel_wrap"), "disabled", True)
    deploy, _ = deploy_copy(build_model(SPECS["swin_digits"]).model.eval())
    blocks = use_fused_kernel(deploy, layout)
    op = "window_attention_packed" if layout == "packed" else "window_attention.default"
    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
        model = Logits(deploy).to(device="cuda", dtype=torch.float16)
        x = torch.empty(4, 3, 32, 32, device="cuda", dtype=torch.float16)
        program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", max=16)},))
        assert sum(op in str(node.target) for node in program.graph.nodes) == blocks
        traced, _ = aot_export_module(program.module(), (x,), trace_joint=False)
    calls = [node for node in traced.graph.nodes if node.op == "call_function"]
    assert not [node for node in calls if "vitserve" in str(node.target)]
    launches = [node.kwargs for node in calls if node.target.__name__ == "triton_kernel_wrapper_functional"]
    assert len(launches) == blocks
    for launch in launches:
        assert kernel_side_table.get_kernel(launch["kernel_idx"]) is _window_attention_kernel
        assert launch["kwargs"]["PACKED"] == (layout == "packed")
    areas = [m.window_area for m in deploy.modules() if isinstance(m, WindowOrderAttention)]
    assert [launch["kwargs"]["n"] for launch in launches] == areas  # each block's own window, in order


@needs_triton
@pytest.mark.parametrize("cosine", [False, True])
def test_kernel_compiles_ahead_of_time_for_a_plain_launch(cosine):
    """PTX for an H100 (sm_90) built on this CPU machine, with the argument order TensorRT's AOT plugins launch
    with: input pointers, the four int32 scalars, the output pointer (Triton's scratch pointers after it)."""
    from vitserve.kernels.window_attention import compile_kernel, entry_parameters

    kernel = compile_kernel(dtype="fp16", bias_dtype="fp32", logit_dtype="fp32" if cosine else None, scale=1.0,
                            tokens=64 if cosine else 49, head_dim=32, arch=90, ptx_version=84)
    inputs = 5 if cosine else 4
    assert kernel.inputs == inputs and kernel.threads == 128 and 0 < kernel.shared <= 48 * 1024
    assert entry_parameters(kernel.ptx, kernel.name)[:inputs + 5] == [".u64"] * inputs + [".u32"] * 4 + [".u64"]
    assert re.search(r"^\.version 8\.4$", kernel.ptx, re.M) and re.search(r"^\.target sm_90", kernel.ptx, re.M)
    assert f".reqntid {kernel.threads}" in kernel.ptx  # the block size the launch must use


@needs_triton
def test_compiled_kernel_bakes_in_its_constants():
    """Scale and tile sizes are compile-time constants: another scale or window size is another kernel."""
    from vitserve.kernels.window_attention import compile_kernel

    def ptx(**changes):
        args = dict(dtype="bf16", bias_dtype="fp32", logit_dtype=None, scale=1.0, tokens=49, head_dim=32, arch=90)
        return compile_kernel(**{**args, **changes}).ptx

    base = ptx()
    assert ptx(scale=0.5) != base and ptx(tokens=16) != base and ptx(dtype="fp16") != base
    assert ptx(tokens=144) != base


@needs_triton
@pytest.mark.parametrize("tokens", [144, 256, 576])  # 12x12, 16x16, 24x24 windows
def test_large_windows_compile_in_tiles_for_a_plain_launch(tokens):
    """Over 64 tokens the kernel takes blocks of query rows, one program each, and steps through the keys: within
    a plain launch's shared memory at any window size."""
    from vitserve.kernels.window_attention import QUERY_BLOCK, compile_kernel, launch_arguments, tiles

    cover = tiles(tokens, 32)
    assert cover.key_steps > 1 and cover.query_blocks == -(-tokens // QUERY_BLOCK)
    for cosine in (False, True):
        kernel = compile_kernel(dtype="fp16", bias_dtype="fp32", logit_dtype="fp32" if cosine else None, scale=1.0,
                                tokens=tokens, head_dim=32, arch=90)
        assert kernel.query_blocks == cover.query_blocks and 0 < kernel.shared <= 48 * 1024
    assert launch_arguments((8, 3, tokens, 32), 4, cover.query_blocks)[0] == 8 * 3 * cover.query_blocks


@needs_triton
def test_launch_check_refuses_what_a_plain_launch_cannot_run():
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    from vitserve.kernels.window_attention import CompiledKernel, check_launch

    @triton.jit
    def output_first(out_ptr, q_ptr, k_ptr, v_ptr, bias_ptr, heads, n, d, bias_windows):
        tl.store(out_ptr + heads * n * d * bias_windows, tl.load(q_ptr) + tl.load(k_ptr) + tl.load(v_ptr)
                 + tl.load(bias_ptr))

    signature = {name: "*fp16" for name in ("out_ptr", "q_ptr", "k_ptr", "v_ptr", "bias_ptr")}
    signature.update({name: "i32" for name in ("heads", "n", "d", "bias_windows")})
    compiled = triton.compile(triton.compiler.ASTSource(fn=output_first, signature=signature, constexprs={}),
                              target=GPUTarget("cuda", 90, 32))
    kernel = CompiledKernel(compiled.metadata.name, compiled.asm["ptx"], 128, 0, inputs=4, query_blocks=1)
    with pytest.raises(RuntimeError, match="a launch passes"):
        check_launch(kernel, compiled.metadata)

    from vitserve.kernels.window_attention import compile_kernel

    good = compile_kernel(dtype="fp16", bias_dtype="fp32", logit_dtype=None, scale=1.0, tokens=49, head_dim=32,
                          arch=90)
    check_launch(good, SimpleNamespace(global_scratch_size=0, num_ctas=1))
    with pytest.raises(RuntimeError, match="global_scratch_size"):
        check_launch(good, SimpleNamespace(global_scratch_size=256, num_ctas=1))
    with pytest.raises(RuntimeError, match="shared memory"):
        check_launch(CompiledKernel(good.name, good.ptx, good.threads, 64 * 1024, good.inputs, 1), SimpleNamespace())


def _launch_like_tensorrt(kernel, q, k, v, bias, logit_scale, out):
    """The launch a TensorRT AOT plugin makes, with the CUDA driver API and nothing of Triton's: the PTX loaded as
    a module, grid (windows * heads * query blocks), `threads` per block, `shared` bytes of dynamic shared memory,
    the arguments (inputs..., heads, tokens, head_dim, bias_windows, output) and null pointers for the parameters
    left."""
    import ctypes

    from vitserve.kernels.window_attention import entry_parameters, launch_arguments

    libcuda = ctypes.CDLL("libcuda.so.1")

    def check(status, what):
        assert status == 0, f"{what}: CUDA error {status}"

    module, function = ctypes.c_void_p(), ctypes.c_void_p()
    check(libcuda.cuModuleLoadData(ctypes.byref(module), kernel.ptx.encode() + b"\0"), "cuModuleLoadData")
    check(libcuda.cuModuleGetFunction(ctypes.byref(function), module, kernel.name.encode()), "cuModuleGetFunction")
    programs, scalars = launch_arguments(q.shape, bias.shape[0], kernel.query_blocks)  # what the plugin hands TRT
    tensors = [q, k, v, bias] + ([] if logit_scale is None else [logit_scale])
    args = [ctypes.c_void_p(t.data_ptr()) for t in tensors]
    args += [ctypes.c_int(x) for x in scalars] + [ctypes.c_void_p(out.data_ptr())]
    args += [ctypes.c_void_p(0)] * (len(entry_parameters(kernel.ptx, kernel.name)) - len(args))
    pointers = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    check(libcuda.cuLaunchKernel(function, programs, 1, 1, kernel.threads, 1, 1, kernel.shared, stream,
                                 pointers, None), "cuLaunchKernel")
    torch.cuda.synchronize()
    check(libcuda.cuModuleUnload(module), "cuModuleUnload")


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cosine,n", GPU_WINDOWS)
def test_ahead_of_time_kernel_launched_like_tensorrt(dtype, cosine, n):
    from vitserve.kernels.window_attention import compile_kernel, loadable_ptx_version

    torch.manual_seed(0)
    windows, heads, d = 8 * 64, 3, 32
    q, k, v = (torch.randn(windows, heads, n, d, device="cuda", dtype=dtype) for _ in range(3))
    bias = torch.randn(64, heads, n, n, device="cuda")
    logit = torch.rand(heads, device="cuda") * 10 if cosine else None
    major, minor = torch.cuda.get_device_capability()
    kernel = compile_kernel(dtype={torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype], bias_dtype="fp32",
                            logit_dtype="fp32" if cosine else None, scale=0.177, tokens=n, head_dim=d,
                            arch=major * 10 + minor, ptx_version=loadable_ptx_version(major * 10 + minor))
    out = torch.full_like(q, float("nan"))
    _launch_like_tensorrt(kernel, q, k, v, bias, logit, out)
    expected = reference(q.float(), k.float(), v.float(), bias, logit, 0.177)
    assert (out.float() - expected).abs().max().item() < (2e-2 if dtype == torch.bfloat16 else 5e-3)
    wrong = torch.full_like(q, float("nan"))  # the bias of another window: must not pass
    _launch_like_tensorrt(kernel, q, k, v, bias.roll(1, 0).contiguous(), logit, wrong)
    assert (wrong.float() - expected).abs().max().item() > 5e-2
