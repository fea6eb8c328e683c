"""The TensorRT path without TensorRT: the plugin ONNX (one node per window attention) checked against the model
with the kernel's reference on the CPU, in float32 and in the strongly typed fp16 form the engine is built from,
a perturbation that must break it, the optimization profiles. Building and running the engine needs TensorRT and
a GPU and is skipped without them."""

from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import onnx
import pytest
import timm
import torch

from tests.conftest import run_cli
from tests.weights import perturb
from vitserve.artifact import Profile, profile_for
from vitserve.errors import ExportError
from vitserve.export.onnx import INPUT_NAME
from vitserve.export.tensorrt import (
    COSINE_OP,
    DOMAIN,
    PLAIN_OP,
    export_plugin_onnx,
    optimization_profiles,
    reference_evaluator,
)
from vitserve.models.build import build_model
from vitserve.models.catalogue import SPECS
from vitserve.models.rewrites import deploy_copy
from vitserve.proof import compare

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _plugin_onnx(model, input_size, path, max_batch=8, dtype="fp32"):
    deploy, _ = deploy_copy(model)
    return export_plugin_onnx(deploy, input_size, path, max_batch=max_batch, opset=18, dtype=dtype)["plugin_nodes"]


def _tensor_types(path):
    """Every tensor's element type in the file (initializers, inputs, outputs, and inferred intermediates)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    types = {i.name: i.data_type for i in graph.initializer}
    for value in (*graph.input, *graph.output, *graph.value_info):
        types[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:  # constants folded into nodes
        if node.op_type == "Constant":
            types[node.output[0]] = node.attribute[0].t.data_type
    return graph, types


def _logits(model, x):
    with torch.no_grad():
        return model(x).numpy()


@pytest.fixture(scope="module")
def digits_plugin(tmp_path_factory):
    model = build_model(SPECS["swin_digits"]).model
    path = tmp_path_factory.mktemp("trt") / "plugin.onnx"
    return model, path, _plugin_onnx(model, (3, 32, 32), path)


def test_every_window_attention_is_one_plugin_node(digits_plugin):
    model, path, nodes = digits_plugin
    blocks = sum(len(stage.blocks) for stage in model.layers)
    graph = onnx.load(str(path)).graph
    ops = Counter((n.domain, n.op_type) for n in graph.node)
    assert nodes == blocks == ops[(DOMAIN, PLAIN_OP)]
    assert ops[("", "Softmax")] == 0  # the whole attention (bias, mask, softmax, @ v) is inside the plugin
    node = next(n for n in graph.node if n.domain == DOMAIN)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"scale": 1.0, "plugin_namespace": b"vitserve", "plugin_version": b"1", "aot": 1}


def test_plugin_onnx_computes_the_model(digits_plugin):
    model, path, _ = digits_plugin
    evaluator = reference_evaluator(path)
    for batch in (1, 5):  # the batch dimension stays dynamic
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        got = evaluator.run(None, {INPUT_NAME: x.numpy()})[0]
        assert np.abs(got - _logits(model, x)).max() < 1e-4


def test_swapped_plugin_inputs_break_it(digits_plugin, tmp_path):
    model, path, _ = digits_plugin
    graph = onnx.load(str(path))
    node = next(n for n in graph.graph.node if n.domain == DOMAIN)
    node.input[0], node.input[1] = node.input[1], node.input[0]  # q <-> k in the first block
    broken = tmp_path / "broken.onnx"
    onnx.save(graph, str(broken))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    got = reference_evaluator(broken).run(None, {INPUT_NAME: x.numpy()})[0]
    assert np.abs(got - _logits(model, x)).max() > 1e-2


def _small_swin_v2(arch: str = "swinv2_tiny_window8_256"):
    """Swin V2 (or Swin V2 CR) at 64 px with perturbed weights: timm's zero post-norms would hide the attention."""
    return perturb(timm.create_model(
        arch, pretrained=False, embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4),
        img_size=64, window_size=4, num_classes=5).eval())


@pytest.mark.slow  # real-size Swin V2
@pytest.mark.parametrize("arch", ["swinv2_tiny_window8_256", "swinv2_cr_tiny_224"])
def test_swin_v2_uses_the_cosine_plugin(tmp_path, arch):
    model = _small_swin_v2(arch)
    path = tmp_path / "v2.onnx"
    nodes = _plugin_onnx(model, (3, 64, 64), path)
    ops = Counter((n.domain, n.op_type) for n in onnx.load(str(path)).graph.node)
    assert nodes == 5 == ops[(DOMAIN, COSINE_OP)]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    got = reference_evaluator(path).run(None, {INPUT_NAME: x.numpy()})[0]
    assert np.abs(got - _logits(model, x)).max() < 1e-4


@pytest.mark.parametrize("arch", ["swin_digits", "swin_v2"])
def test_fp16_plugin_onnx_carries_its_precision(arch, tmp_path):
    """What a strongly typed engine is built from: float32 at the edges, fp16 weights and attention inputs,
    float32 LayerNorms and attention constants; its logits point where the fp32 model's do."""
    if arch == "swin_v2":
        model, size, op = _small_swin_v2(), (3, 64, 64), COSINE_OP
    else:
        model, size, op = build_model(SPECS["swin_digits"]).model, (3, 32, 32), PLAIN_OP
    path = tmp_path / "fp16.onnx"
    deploy, _ = deploy_copy(model)
    info = export_plugin_onnx(deploy, size, path, max_batch=8, opset=18, dtype="fp16")
    graph, types = _tensor_types(path)
    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert types[graph.input[0].name] == F32 and types[graph.output[0].name] == F32
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    assert len(norms) == info["float32_layer_norms"] == sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert all(types[name] == F32 for n in norms for name in n.input if name)
    matmul_weights = [name for n in graph.node if n.op_type in ("MatMul", "Gemm") for name in n.input
                      if name in {i.name for i in graph.initializer}]
    assert matmul_weights and all(types[name] == F16 for name in matmul_weights)
    plugins = [n for n in graph.node if n.domain == DOMAIN]
    assert len(plugins) == info["plugin_nodes"] and all(n.op_type == op for n in plugins)
    for n in plugins:
        assert [types[name] for name in n.input] == [F16, F16, F16, F32] + ([F32] if op == COSINE_OP else [])
    x = torch.randn(4, *size, generator=torch.Generator().manual_seed(2))
    got = reference_evaluator(path).run(None, {INPUT_NAME: x.numpy()})[0]
    expected = _logits(model, x)
    stats = compare(expected, got)
    assert got.dtype == np.float32 and stats["min_cosine"] > 0.999 and stats["top1_agreement"] == 1.0


def test_models_without_window_attention_are_refused(tmp_path):
    vit = build_model(SPECS["deit_t"], random_init=True).model
    with pytest.raises(ExportError, match="has none"):
        _plugin_onnx(vit, (3, 224, 224), tmp_path / "vit.onnx")


def test_windows_over_64_tokens_are_plugin_nodes_too(tmp_path):
    """12x12 windows (Swin at 384 px: 144 tokens, the kernel's tiled form) in the first two stages, one 3x3 window
    after: every block is a plugin node and the graph computes the model."""
    model = perturb(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, embed_dim=24,
                                      depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), img_size=96, window_size=12,
                                      num_classes=5).eval())
    path = tmp_path / "w12.onnx"
    assert _plugin_onnx(model, (3, 96, 96), path) == 4
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    got = reference_evaluator(path).run(None, {INPUT_NAME: x.numpy()})[0]
    assert np.abs(got - _logits(model, x)).max() < 1e-4


def test_optimization_profiles():
    profiles = optimization_profiles([1, 8, 32], 64)
    assert profiles == [Profile(1, 1, 1), Profile(2, 8, 8), Profile(9, 32, 32), Profile(33, 64, 64)]
    assert [profile_for(profiles, n) for n in (1, 2, 8, 9, 32, 33, 64)] == [0, 1, 1, 2, 2, 3, 3]
    assert optimization_profiles([64], 64) == [Profile(1, 64, 64)]
    with pytest.raises(ValueError):
        profile_for(profiles, 65)
    with pytest.raises(ExportError, match="within 1..64"):
        optimization_profiles([0, 8], 64)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed")
def test_export_without_tensorrt_is_a_clear_error(tmp_path):
    result = run_cli("export", "swin_digits", "--format", "tensorrt", "--out", str(tmp_path / "engine"))
    assert result.returncode == 1 and "needs TensorRT" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "engine").exists()


@pytest.mark.skipif(not (HAS_TENSORRT and torch.cuda.is_available()), reason="needs TensorRT and a CUDA GPU")
def test_engine_export_and_backend(tmp_path, digits_artifact):
    from vitserve.export.pipeline import ExportOptions, export_artifact
    from vitserve.export.torch_package import TorchOptions
    from vitserve.runtimes import load as load_backend
    from vitserve.runtimes.onnxruntime import OnnxRuntime

    out = tmp_path / "swin_digits-trt"
    options = ExportOptions(out=out, max_batch=16, format="tensorrt", torch_options=TorchOptions(batch_buckets=(1, 8)))
    manifest = export_artifact(build_model(SPECS["swin_digits"]), options, progress=print)
    assert manifest.model_file == "model.engine" and len(manifest.package["profiles"]) == 3
    major, minor = torch.cuda.get_device_capability()
    assert manifest.package["compute_capability"] == f"{major}.{minor}"
    backend = load_backend(out, "tensorrt")
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32), dtype=np.float32)
    expected = OnnxRuntime(digits_artifact)(x)
    assert (backend(x).argmax(1) == expected.argmax(1)).all()
