"""Fused window attention: one kernel for softmax(q k^T * scale + bias) v over every window and head.

Swin spends its GPU time in many small attentions (49 or 64 tokens per window) whose score matrices are written
and read back several times by the stock ops (matmul, add bias, add mask, softmax, matmul). This kernel keeps one
window-head in registers from q, k, v to the output: scores, the constant bias (relative position bias + shift
mask, as built by models/rewrites/windows.py), softmax and the product with v in one pass, fp16/bf16 in, fp32
accumulation; windows of more than 64 tokens in blocks of query rows, the keys in steps with the softmax kept online
(`tiles`). The cosine variant (Swin V2) normalizes q and k and multiplies by a per-head logit scale.

    window_attention(q, k, v, bias, logit_scale, scale) -> out
      q, k, v, out: (B * nW, nH, N, D), windows of one image consecutive (index b * nW + w)
      bias: (nW or 1, nH, N, N), any float dtype (read as float32), added to the scores of window w % nW
      logit_scale: (nH,) float32 for cosine attention, else None; scale: multiplies the plain scores

    window_attention_packed(qkv, bias, logit_scale, scale, heads) -> out
      qkv: (B * nW, N, 3 * nH * D), the qkv projection's output as it comes (q, k, v thirds, heads within each);
      out: (B * nW, N, nH * D), the layout the output projection reads: no copies around the kernel

Both are PyTorch custom ops (`torch.ops.vitserve.window_attention`, `..._packed`; `_define` below): on CUDA the
Triton kernel runs (one kernel, the layout a compile-time switch), elsewhere the reference implementation (what
the tests compare with). torch.export keeps each op whole; torch.compile and AOTInductor compile the kernel itself
into what they produce. `compile_kernel` compiles the same kernel (separate q, k, v) ahead of time to PTX (no
GPU needed) for launchers outside Python, TensorRT's plugin (trt_plugin.py): its parameters come in the order such
a launch passes them, input pointers, then the int32 scalars, then the output pointer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # triton ships with CUDA builds of torch; CPU-only installs have no kernel, only the reference
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
              logit_scale: torch.Tensor | None, scale: float) -> torch.Tensor:
    """The exact mathematics, computed in float32, returned in q's dtype."""
    windows, heads, n, _ = q.shape
    qf, kf, vf = q.float(), k.float(), v.float()
    if logit_scale is not None:
        scores = F.normalize(qf, dim=-1) @ F.normalize(kf, dim=-1).transpose(-2, -1)
        scores = scores * logit_scale.float().view(1, heads, 1, 1)
    else:
        scores = (qf @ kf.transpose(-2, -1)) * scale
    nwb = bias.shape[0]
    scores = scores.view(-1, nwb, heads, n, n) + bias.float().unsqueeze(0)  # B, nW, nH, N, N
    out = scores.softmax(dim=-1).view(windows, heads, n, n) @ vf
    return out.to(q.dtype)


def split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W, N, 3 * nH * D) -> q, k, v, each (W, nH, N, D) (views)."""
    windows, n, width = qkv.shape
    return qkv.view(windows, n, 3, heads, width // 3 // heads).permute(2, 0, 3, 1, 4).unbind(0)


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    """(W, nH, N, D) -> (W, N, nH * D), the layout the output projection reads."""
    windows, heads, n, head_dim = out.shape
    return out.transpose(1, 2).reshape(windows, n, heads * head_dim)


# Tiles. Windows of up to 8x8 tokens (Swin's 7x7, Swin V2's 8x8) go whole into one program per (window, head): the
# score tile padded to a power of two, one softmax. Larger windows (12x12 in Swin at 384 px, 16x16 and 24x24 in
# Swin V2's fine-tuned models) would need a 256x256 or 1024x1024 tile: they are cut into blocks of query rows, one
# program each, which take the keys a block at a time with the softmax kept online (running maximum and sum, the
# partial output rescaled whenever the maximum grows).
WHOLE_WINDOW_TOKENS = 64
QUERY_BLOCK, KEY_BLOCK = 64, 32


@dataclass(frozen=True)
class Tiles:
    """How the kernel covers one (window, head) of `tokens` x `head_dim`: its compile-time tile sizes and how many
    programs the launch gives it."""

    block_m: int  # query rows per program
    block_n: int  # keys per step
    block_d: int
    key_steps: int  # 1: the whole window in one pass
    query_blocks: int  # programs per (window, head)


def _power_of_two(n: int) -> int:
    """The next power of two, at least 16 (tl.dot's smallest tile)."""
    return max(16, 1 << (n - 1).bit_length())


def tiles(tokens: int, head_dim: int) -> Tiles:
    if tokens <= WHOLE_WINDOW_TOKENS:
        block = _power_of_two(tokens)
        return Tiles(block, block, _power_of_two(head_dim), key_steps=1, query_blocks=1)
    return Tiles(QUERY_BLOCK, KEY_BLOCK, _power_of_two(head_dim), key_steps=-(-tokens // KEY_BLOCK),
                 query_blocks=-(-tokens // QUERY_BLOCK))


def tile_constants(cover: Tiles) -> dict[str, int]:
    """The kernel's compile-time arguments for `cover`."""
    return {"BLOCK_M": cover.block_m, "BLOCK_N": cover.block_n, "BLOCK_D": cover.block_d,
            "KEY_STEPS": cover.key_steps}


def launch_arguments(shape, bias_windows, query_blocks: int):
    """(programs, int32 scalars) of a launch for q of `shape` (windows, heads, tokens, head_dim): `query_blocks`
    programs per (window, head) (Tiles.query_blocks); the scalars go between the input and output pointers. Works on
    ints and on TensorRT's symbolic dimensions alike."""
    windows, heads, tokens, head_dim = shape
    return windows * heads * query_blocks, (heads, tokens, head_dim, bias_windows)


if triton is not None:

    @triton.jit
    def _scores(q, k, bias_ptr, logit_ptr, bias_base, rows, keys, n, head, SCALE: tl.constexpr):
        """Scores of the query rows `rows` against the keys `keys` (q already normalized for cosine attention) plus
        their bias; keys past the window -inf."""
        if logit_ptr is not None:  # cosine attention: normalize in fp32, like F.normalize (eps 1e-12)
            kf = k.to(tl.float32)
            kf = kf / tl.maximum(tl.sqrt(tl.sum(kf * kf, axis=1)), 1e-12)[:, None]
            scores = tl.dot(q, tl.trans(kf), input_precision="ieee")
            scores = scores * tl.load(logit_ptr + head).to(tl.float32)
        else:
            scores = tl.dot(q, tl.trans(k)) * SCALE  # fp32 accumulation
        pair_ok = (rows[:, None] < n) & (keys[None, :] < n)
        bias = tl.load(bias_ptr + bias_base + rows[:, None] * n + keys[None, :], mask=pair_ok, other=0.0)
        return tl.where(keys[None, :] < n, scores + bias.to(tl.float32), float("-inf"))

    @triton.jit
    def _input_offsets(tokens, window, head, heads, n, d, cols, PACKED: tl.constexpr):
        """Offsets of q's elements for the token indices `tokens` (k's and v's: plus the shift of their third in
        the packed layout, the same offsets in their own tensors otherwise)."""
        if PACKED:  # token rows of 3 * C (q | k | v, heads within each)
            width = heads * d
            return window * n * 3 * width + tokens[:, None] * 3 * width + head * d + cols[None, :]
        else:  # (W, nH, N, D), contiguous
            return (window * heads + head) * n * d + tokens[:, None] * d + cols[None, :]

    @triton.jit
    def _window_attention_kernel(
        q_ptr, k_ptr, v_ptr, bias_ptr, logit_ptr,  # inputs; logit_ptr is None for plain attention
        heads, n, d, bias_windows,  # int32 scalars
        out_ptr,  # the output, last: TensorRT launches (inputs..., int32 scalars..., outputs...)
        SCALE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        KEY_STEPS: tl.constexpr,  # 1: the whole window at once (BLOCK_M = BLOCK_N >= n); more: an online softmax
        PACKED: tl.constexpr = False,  # q_ptr = k_ptr = v_ptr: one (W, N, 3 * nH * D) tensor; out (W, N, nH * D)
    ):
        pid = tl.program_id(0)  # one program per (window, head, block of query rows), query blocks innermost
        if KEY_STEPS == 1:  # the whole window in one program
            query_blocks = 1
        else:
            query_blocks = tl.cdiv(n, BLOCK_M)
        head = pid // query_blocks % heads
        window = pid // query_blocks // heads
        rows = pid % query_blocks * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        if PACKED:
            k_shift = heads * d
            v_shift = 2 * heads * d
        else:
            k_shift = 0
            v_shift = 0
        col_ok = cols[None, :] < d
        q_offsets = _input_offsets(rows, window, head, heads, n, d, cols, PACKED)
        q = tl.load(q_ptr + q_offsets, mask=(rows[:, None] < n) & col_ok, other=0.0)
        if logit_ptr is not None:
            q = q.to(tl.float32)
            q = q / tl.maximum(tl.sqrt(tl.sum(q * q, axis=1)), 1e-12)[:, None]
        bias_base = ((window % bias_windows) * heads + head) * n * n
        if KEY_STEPS == 1:
            keys = rows  # every token of the window, as query and as key
            key_ok = (keys[:, None] < n) & col_ok
            k = tl.load(k_ptr + (q_offsets + k_shift), mask=key_ok, other=0.0)
            v = tl.load(v_ptr + (q_offsets + v_shift), mask=key_ok, other=0.0)
            scores = _scores(q, k, bias_ptr, logit_ptr, bias_base, rows, keys, n, head, SCALE)
            scores = scores - tl.max(scores, axis=1)[:, None]
            p = tl.exp(scores)
            p = p / tl.sum(p, axis=1)[:, None]
            out = tl.dot(p.to(v.dtype), v)
        else:
            top = tl.full([BLOCK_M], float("-inf"), tl.float32)  # each row's largest score so far
            total = tl.zeros([BLOCK_M], tl.float32)  # each row's sum of exp(score - top) so far
            out = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            for step in range(KEY_STEPS):
                keys = step * BLOCK_N + tl.arange(0, BLOCK_N)
                key_ok = (keys[:, None] < n) & col_ok
                key_offsets = _input_offsets(keys, window, head, heads, n, d, cols, PACKED)
                k = tl.load(k_ptr + (key_offsets + k_shift), mask=key_ok, other=0.0)
                v = tl.load(v_ptr + (key_offsets + v_shift), mask=key_ok, other=0.0)
                scores = _scores(q, k, bias_ptr, logit_ptr, bias_base, rows, keys, n, head, SCALE)
                new_top = tl.maximum(top, tl.max(scores, axis=1))
                rescale = tl.exp(top - new_top)
                p = tl.exp(scores - new_top[:, None])
                total = total * rescale + tl.sum(p, axis=1)
                out = out * rescale[:, None] + tl.dot(p.to(v.dtype), v)
                top = new_top
            out = out / total[:, None]
        if PACKED:  # output rows of C
            out_offsets = window * n * heads * d + rows[:, None] * heads * d + head * d + cols[None, :]
        else:
            out_offsets = q_offsets
        tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < n) & col_ok)

    def _launch(q, k, v, bias, logit_scale, scale: float, out: torch.Tensor, shape, packed: bool) -> torch.Tensor:
        """One launch over `shape` (windows, heads, tokens, head_dim)."""
        bias = bias.contiguous()
        logit = None if logit_scale is None else logit_scale.contiguous().float().view(-1)
        cover = tiles(shape[2], shape[3])
        programs, scalars = launch_arguments(shape, bias.shape[0], cover.query_blocks)
        torch.library.wrap_triton(_window_attention_kernel)[(programs,)](
            q, k, v, bias, logit, *scalars, out, SCALE=float(scale), **tile_constants(cover), PACKED=packed,
        )
        return out

    def triton_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                                logit_scale: torch.Tensor | None, scale: float) -> torch.Tensor:
        """Launches the kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)."""
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return _launch(q, k, v, bias, logit_scale, scale, torch.empty_like(q), q.shape, packed=False)

    def triton_window_attention_packed(qkv: torch.Tensor, bias: torch.Tensor, logit_scale: torch.Tensor | None,
                                       scale: float, heads: int) -> torch.Tensor:
        """The packed layout: qkv (W, N, 3 * nH * D) in, (W, N, nH * D) out, nothing copied around the kernel."""
        qkv = qkv.contiguous()
        windows, n, width = qkv.shape
        head_dim = width // 3 // heads
        out = qkv.new_empty(windows, n, heads * head_dim)
        return _launch(qkv, qkv, qkv, bias, logit_scale, scale, out, (windows, heads, n, head_dim), packed=True)


def _on_triton(t: torch.Tensor) -> bool:
    return triton is not None and t.device.type == "cuda"


def _window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                      logit_scale: torch.Tensor | None, scale: float) -> torch.Tensor:
    if _on_triton(q):
        return triton_window_attention(q, k, v, bias, logit_scale, scale)
    return reference(q, k, v, bias, logit_scale, scale)


def _window_attention_packed(qkv: torch.Tensor, bias: torch.Tensor, logit_scale: torch.Tensor | None, scale: float,
                             heads: int) -> torch.Tensor:
    if _on_triton(qkv):
        return triton_window_attention_packed(qkv, bias, logit_scale, scale, heads)
    return merge_heads(reference(*split_heads(qkv.contiguous(), heads), bias, logit_scale, scale))


def _define(name: str, implementation):
    """The op `name` ("vitserve::..."). With Triton, a `triton_op`: eager calls launch the kernel, and torch.compile and
    AOTInductor trace through the op to the kernel launch and compile the kernel into what they produce (a package
    runs it without Python, Triton or a compiler); torch.export keeps the op whole (the ONNX exporter's translation
    to TensorRT's plugin node). The implementation also serves as the fake kernel: on tensors without data it
    allocates the output as the real call does (contiguous)."""
    if triton is not None:
        return torch.library.triton_op(name, implementation, mutates_args=())
    op = torch.library.custom_op(name, implementation, mutates_args=())
    op.register_fake(implementation)
    return op


window_attention = _define("vitserve::window_attention", _window_attention)
window_attention_packed = _define("vitserve::window_attention_packed", _window_attention_packed)


# Ahead-of-time compilation: the kernel as PTX, for launchers that are not Python (TensorRT's AOT plugins).

TRITON_TYPES = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}
SCALARS = 4  # heads, tokens, head_dim, bias_windows: int32, between the input and the output pointers
MAX_STATIC_SHARED = 48 * 1024  # more needs an opt-in attribute that a plain launch does not set


@dataclass(frozen=True)
class CompiledKernel:
    """The kernel compiled for one GPU architecture, one set of dtypes and one window size.

    Launch it with grid (windows * heads * query_blocks, 1, 1) (launch_arguments), `threads` threads per block,
    `shared` bytes of dynamic shared memory and the arguments (q, k, v, bias[, logit_scale], heads, tokens,
    head_dim, bias_windows, out)."""

    name: str
    ptx: str
    threads: int
    shared: int
    inputs: int  # 4 pointers, or 5 with cosine attention's logit scale
    query_blocks: int  # programs per (window, head)


def compile_kernel(*, dtype: str, bias_dtype: str, logit_dtype: str | None, scale: float, tokens: int,
                   head_dim: int, arch: int, ptx_version: int | None = None) -> CompiledKernel:
    """The kernel as PTX for sm_`arch` (no GPU needed to compile). `dtype`: q, k, v and out ("fp16", "bf16",
    "fp32"); `bias_dtype`, `logit_dtype` (None: plain attention, `scale` multiplies q k^T); `ptx_version`: the
    highest PTX ISA the driver that will load it accepts (e.g. 84 for CUDA 12.4), None for Triton's own."""
    from triton.backends.compiler import GPUTarget

    cover = tiles(tokens, head_dim)
    signature = {"q_ptr": TRITON_TYPES[dtype], "k_ptr": TRITON_TYPES[dtype], "v_ptr": TRITON_TYPES[dtype],
                 "bias_ptr": TRITON_TYPES[bias_dtype],
                 "logit_ptr": "constexpr" if logit_dtype is None else TRITON_TYPES[logit_dtype],
                 "heads": "i32", "n": "i32", "d": "i32", "bias_windows": "i32", "out_ptr": TRITON_TYPES[dtype]}
    constexprs = {"SCALE": float(scale), **tile_constants(cover), "PACKED": False}
    signature.update(dict.fromkeys(constexprs, "constexpr"))  # in the kernel's parameter order
    if logit_dtype is None:
        constexprs["logit_ptr"] = None
    source = triton.compiler.ASTSource(fn=_window_attention_kernel, signature=signature, constexprs=constexprs)
    options = {} if ptx_version is None else {"ptx_version": ptx_version}
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    kernel = CompiledKernel(name=compiled.metadata.name, ptx=compiled.asm["ptx"],
                            threads=compiled.metadata.num_warps * compiled.metadata.warp_size,
                            shared=compiled.metadata.shared, inputs=4 if logit_dtype is None else 5,
                            query_blocks=cover.query_blocks)
    check_launch(kernel, compiled.metadata)
    return kernel


def entry_parameters(ptx: str, name: str) -> list[str]:
    """The PTX types of the kernel entry's parameters, in order (".u64" for pointers, ".u32" for int32 ...)."""
    match = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\(([^)]*)\)", ptx)
    if match is None:
        raise RuntimeError(f"no kernel entry {name!r} in the PTX")
    return re.findall(r"\.param\s+(\.\w+)", match.group(1))


def check_launch(kernel: CompiledKernel, metadata) -> None:
    """Refuses a compilation that a plain launch of (inputs..., int32 scalars..., output) cannot run right:
    another parameter order, scratch memory (Triton appends scratch pointers that such a launch leaves null),
    clusters, cooperative or programmatic-dependent launches, too much shared memory."""
    params = entry_parameters(kernel.ptx, kernel.name)
    expected = [".u64"] * kernel.inputs + [".u32"] * SCALARS + [".u64"]
    if params[:len(expected)] != expected or any(p != ".u64" for p in params[len(expected):]):
        raise RuntimeError(f"kernel {kernel.name} takes {params}; a launch passes {expected} (then null pointers)")
    needs = {name: getattr(metadata, name, 0) for name in
             ("global_scratch_size", "profile_scratch_size", "launch_cooperative_grid", "launch_pdl")}
    needs["clusters"] = getattr(metadata, "num_ctas", 1) != 1
    if any(needs.values()):
        raise RuntimeError(f"kernel {kernel.name} needs launch features a plain launch lacks: {needs}")
    if kernel.shared > MAX_STATIC_SHARED:
        raise RuntimeError(f"kernel {kernel.name} needs {kernel.shared} bytes of shared memory (at most "
                           f"{MAX_STATIC_SHARED} without an opt-in)")


def loadable_ptx_version(arch: int) -> int | None:
    """The highest PTX ISA that both this machine's CUDA driver loads and Triton's own ptxas assembles (Triton
    compiles the PTX on to a binary as well) for sm_`arch`, or None without a driver. A driver newer than Triton's
    ptxas (CUDA 13 with Triton's CUDA 12.8 ptxas) makes ptxas the limit; an older driver makes the driver the limit,
    and PTX newer than the driver would only be refused when loaded, not when compiled."""
    import ctypes
    from types import SimpleNamespace

    from triton.backends.nvidia.compiler import get_ptx_version_from_options, ptx_get_version

    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    driver = ptx_get_version(f"{version.value // 1000}.{version.value % 1000 // 10}")
    return min(driver, get_ptx_version_from_options(SimpleNamespace(ptx_version=None), arch))
