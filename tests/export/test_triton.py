"""The Triton model repository: config.pbtxt parsed by Triton's own ModelConfig protobuf (shipped in tritonclient)
and checked against the ONNX file it sits beside."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tests.conftest import run_cli, run_cli_here
from vitserve.artifact import read_manifest
from vitserve.errors import ArtifactError
from vitserve.export.triton import TritonOptions, config_text, write_triton_repo


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_repository_matches_the_onnx_file(digits_artifact, tmp_path):
    target = write_triton_repo(digits_artifact, tmp_path / "repo", TritonOptions(max_batch_size=16))
    config = parse((target / "config.pbtxt").read_text())
    manifest = read_manifest(digits_artifact)
    assert config.name == "swin_digits" and config.backend == "onnxruntime"
    assert config.max_batch_size == 16
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]

    session = ort.InferenceSession(str(target / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (graph_in,), (graph_out,) = session.get_inputs(), session.get_outputs()
    (cfg_in,), (cfg_out,) = config.input, config.output
    assert (cfg_in.name, cfg_out.name) == (graph_in.name, graph_out.name)
    assert cfg_in.data_type == cfg_out.data_type == model_config_pb2.TYPE_FP32
    assert list(cfg_in.dims) == list(manifest.input.shape[1:]) == graph_in.shape[1:]
    assert list(cfg_out.dims) == [manifest.num_classes] == graph_out.shape[1:]
    labels = (target / cfg_out.label_filename).read_text().splitlines()
    assert len(labels) == manifest.num_classes
    # the file Triton would load runs a batch of max_batch_size
    x = np.zeros((config.max_batch_size, *cfg_in.dims), np.float32)
    assert session.run(None, {cfg_in.name: x})[0].shape == (16, manifest.num_classes)
    assert json.loads((target / "vitserve.json").read_text())["preprocess"] == manifest.preprocess.to_dict()


def test_gpu_tensorrt_and_openvino_configs(digits_artifact):
    manifest = read_manifest(digits_artifact)
    config = parse(config_text(manifest, TritonOptions(kind="gpu", instances=2, tensorrt=True, name="digits")))
    assert config.name == "digits" and config.max_batch_size == manifest.max_batch
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and group.count == 2
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"

    manifest.model_file = "model.xml"
    config = parse(config_text(manifest, TritonOptions()))
    assert config.backend == "openvino" and config.default_model_filename == "model.xml"


def test_tensorrt_engine_config(digits_artifact):
    """A TensorRT artifact's manifest (no engine is built here: the config is what is checked): Triton's tensorrt
    backend on GPU instances that may use every optimization profile, not only the first."""
    manifest = read_manifest(digits_artifact)
    manifest.model_file = "model.engine"
    manifest.package = {"format": "tensorrt", "tensorrt": "11.4.0",
                        "profiles": [{"min": 1, "opt": 1, "max": 1}, {"min": 2, "opt": 8, "max": 8},
                                     {"min": 9, "opt": 64, "max": 64}]}
    text = config_text(manifest, TritonOptions())
    config = parse(text)
    assert config.backend == "tensorrt" and config.default_model_filename == "model.engine"
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and list(group.profile) == ["0", "1", "2"]
    assert "TensorRT 11.4.0 engine" in text
    with pytest.raises(ArtifactError, match="use --kind gpu"):
        config_text(manifest, TritonOptions(kind="cpu"))
    with pytest.raises(ArtifactError, match="already is a TensorRT engine"):
        config_text(manifest, TritonOptions(kind="gpu", tensorrt=True))


@pytest.mark.parametrize("options,message", [
    (TritonOptions(max_batch_size=65), "between 1 and the artifact's max_batch 64"),
    (TritonOptions(tensorrt=True), "--tensorrt needs --kind gpu"),
    (TritonOptions(kind="tpu"), "unknown instance kind"),
    (TritonOptions(instances=0), "at least 1"),
])
def test_bad_options(digits_artifact, options, message):
    with pytest.raises(ArtifactError, match=message):
        config_text(read_manifest(digits_artifact), options)


def test_rewrites_its_own_model_folder_only(digits_artifact, tmp_path):
    repo = tmp_path / "repo"
    write_triton_repo(digits_artifact, repo)
    write_triton_repo(digits_artifact, repo, TritonOptions(max_batch_size=8))  # replaces its own folder
    assert parse((repo / "swin_digits" / "config.pbtxt").read_text()).max_batch_size == 8
    (repo / "other").mkdir()
    (repo / "other" / "config.pbtxt").write_text('name: "other"\n')
    with pytest.raises(ArtifactError, match="not written by vitserve"):
        write_triton_repo(digits_artifact, repo, TritonOptions(name="other"))
    assert (repo / "other" / "config.pbtxt").read_text() == 'name: "other"\n'
    assert sorted(p.name for p in repo.iterdir()) == ["other", "swin_digits"]  # no temporary folders left


def test_cli(digits_artifact, tmp_path):
    result = run_cli("triton-repo", str(digits_artifact), str(tmp_path / "repo"), "--kind", "gpu", "--tensorrt")
    assert result.returncode == 0, result.stderr
    assert "tritonserver --model-repository" in result.stdout
    config = parse((tmp_path / "repo" / "swin_digits" / "config.pbtxt").read_text())
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    result = run_cli_here("triton-repo", str(tmp_path / "missing"), str(tmp_path / "repo"))
    assert result.returncode == 1 and "is not a directory" in result.stderr and "Traceback" not in result.stderr
