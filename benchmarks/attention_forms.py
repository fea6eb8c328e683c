"""Which attention form does each CPU runtime run fastest? Side by side in one run, for the rewritten Swin-T.

    python benchmarks/attention_forms.py [--threads 2] [--rounds 12]

1. OpenVINO: the artifact path (PyTorch -> ONNX with explicit q @ k^T + bias, softmax, @ v -> OpenVINO) against
   OpenVINO's own PyTorch converter on the same model with `F.scaled_dot_product_attention(attn_mask=bias)`, which
   becomes OpenVINO's ScaledDotProductAttention op. Whole model, bf16 where the CPU has it, batch 1 and 8.
2. onnxruntime: stage 1's window attention at batch 8 (512 windows, 3 heads, 49 tokens, head dim 32) as the
   unfused ONNX ops the exporter writes, against onnxruntime's fused com.microsoft.MultiHeadAttention with the
   bias as attention_bias. Attention alone (the whole model adds the rest of each block around it).
Each pair alternates run by run (order flipping every round); medians; outputs compared.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from timing import side_by_side  # benchmarks/timing.py, beside this script


def openvino_forms(threads: int, rounds: int) -> None:
    import openvino as ov
    import torch
    import torch.nn.functional as F

    from vitserve.export.onnx import export_onnx
    from vitserve.models.build import build_model
    from vitserve.models.catalogue import SPECS
    from vitserve.models.rewrites import deploy_copy, windows
    from vitserve.runtimes.openvino import cpu_supports_bf16

    def sdpa_forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        nW, N, nH, hd = self.num_windows, self.window_area, self.num_heads, self.head_dim
        q, k, v = (t.reshape(B, nW, N, nH, hd).transpose(2, 3) for t in self.qkv(x).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias, scale=1.0)  # scale folded into q
        return self.proj(out.permute(0, 1, 3, 2, 4).reshape(B, L, nH * hd))

    spec = SPECS["swin_t"]
    deploy, _ = deploy_copy(build_model(spec, random_init=True).model, rewrite=True)
    x = torch.randn(8, *spec.preprocess.input_size)
    precision = "bf16" if cpu_supports_bf16() else "f32"
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(deploy, spec.preprocess.input_size, Path(tmp) / "model.onnx", max_batch=8, opset=18)
        from_onnx = core.compile_model(core.read_model(Path(tmp) / "model.onnx"), "CPU", config)
    explicit_forward = windows.WindowOrderAttention.forward
    windows.WindowOrderAttention.forward = sdpa_forward
    try:
        with torch.inference_mode():
            converted = ov.convert_model(deploy, example_input=x)
    finally:
        windows.WindowOrderAttention.forward = explicit_forward
    sdpa_ops = sum(op.get_type_name() == "ScaledDotProductAttention" for op in converted.get_ops())
    from_torch = core.compile_model(converted, "CPU", config)
    print(f"OpenVINO {precision}, {threads} threads, Swin-T (window-order rewrite), median of {rounds} rounds")
    print(f"PyTorch converter graph: {sdpa_ops} ScaledDotProductAttention ops\n")
    print("| batch | ONNX, explicit attention ms | PyTorch, SDPA op ms | explicit / SDPA | max logit diff |")
    print("|---|---|---|---|---|")
    for batch in (1, 8):
        inputs = np.random.default_rng(0).standard_normal((batch, *spec.preprocess.input_size), dtype=np.float32)
        a, b = from_onnx(inputs)[0], from_torch(inputs)[0]
        ms = side_by_side({"onnx": lambda x=inputs: from_onnx(x), "sdpa": lambda x=inputs: from_torch(x)}, rounds)
        print(f"| {batch} | {ms['onnx']:.1f} | {ms['sdpa']:.1f} | {ms['onnx'] / ms['sdpa']:.2f}x | "
              f"{np.abs(a - b).max():.2e} |")


def onnxruntime_forms(threads: int, rounds: int) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    windows_, heads, tokens, head_dim = 8 * 64, 3, 49, 32
    channels = heads * head_dim
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal((windows_, tokens, channels), dtype=np.float32) for n in ("q", "k", "v")}
    bias = numpy_helper.from_array(rng.standard_normal((1, heads, tokens, tokens), dtype=np.float32), "bias")
    node = helper.make_node
    unfused_nodes = [
        node("Reshape", ["q", "heads"], ["q4"]), node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
        node("Reshape", ["k", "heads"], ["k4"]), node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
        node("Reshape", ["v", "heads"], ["v4"]), node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
        node("MatMul", ["qh", "kt"], ["scores"]), node("Add", ["scores", "bias"], ["biased"]),
        node("Softmax", ["biased"], ["p"], axis=-1), node("MatMul", ["p", "vh"], ["o4"]),
        node("Transpose", ["o4"], ["o3"], perm=[0, 2, 1, 3]), node("Reshape", ["o3", "tokens"], ["out"]),
    ]
    shapes = [helper.make_tensor("heads", TensorProto.INT64, [4], [windows_, tokens, heads, head_dim]),
              helper.make_tensor("tokens", TensorProto.INT64, [3], [windows_, tokens, channels])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [windows_, tokens, channels]) for n in feed]
    output = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [windows_, tokens, channels])]
    unfused = helper.make_model(helper.make_graph(unfused_nodes, "unfused", inputs, output, [*shapes, bias]),
                                opset_imports=[helper.make_opsetid("", 18)])
    mha_node = node("MultiHeadAttention", ["q", "k", "v", "", "", "bias"], ["out"], domain="com.microsoft",
                    num_heads=heads, scale=1.0)
    mha = helper.make_model(helper.make_graph([mha_node], "mha", inputs, output, [bias]),
                            opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {name: ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for name, model in (("unfused", unfused), ("mha", mha))}
    onnx.checker.check_model(unfused)
    diff = np.abs(sessions["unfused"].run(None, feed)[0] - sessions["mha"].run(None, feed)[0]).max()
    ms = side_by_side({name: (lambda s=s: s.run(None, feed)) for name, s in sessions.items()}, rounds)
    print(f"\nonnxruntime {ort.__version__} CPU, {threads} threads, Swin-T stage-1 window attention at batch 8")
    print("| unfused ops ms | MultiHeadAttention ms | unfused / MHA | max diff |\n|---|---|---|---|")
    print(f"| {ms['unfused']:.2f} | {ms['mha']:.2f} | {ms['unfused'] / ms['mha']:.2f}x | {diff:.2e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    openvino_forms(args.threads, args.rounds)
    onnxruntime_forms(args.threads, args.rounds)


if __name__ == "__main__":
    main()
