"""Checkpoint reading and fitting: formats, wrappers, refusals, and errors that say what to pass."""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
from safetensors.torch import save_file

from vitserve.errors import CheckpointMismatchError, ExportError, WeightsError, WeightsUnavailableError
from vitserve.models.build import build_model
from vitserve.models.catalogue import SPECS, resolve, with_overrides
from vitserve.models.families.swin_digits import DIGITS_TIMM_KWARGS
from vitserve.models.weights import fit_state_dict, read_state_dict


@pytest.fixture(scope="module")
def state_dict():
    torch.manual_seed(1)
    model = timm.create_model("swin_tiny_patch4_window7_224", **DIGITS_TIMM_KWARGS)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3, "args": argparse.Namespace(lr=0.1)},  # timm train.py checkpoint
    lambda sd: {"model": sd, "optimizer": {}},
    lambda sd: {"state_dict": {k: torch.zeros_like(v) for k, v in sd.items()}, "state_dict_ema": sd},
    # DeiT's main.py (and CeiT's, LocalViT's): its evaluation loads `model`, not the EMA copy beside it
    lambda sd: {"model": sd, "model_ema": {k: torch.zeros_like(v) for k, v in sd.items()}, "epoch": 299},
    lambda sd: {"model_ema": sd},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},  # DistributedDataParallel
], ids=["plain", "timm-train", "model", "ema-preferred", "deit-model-preferred", "ema-alone", "ddp-prefix"])
def test_pth_wrappers(tmp_path, state_dict, wrap):
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(state_dict), path)
    assert _same(read_state_dict(path), state_dict)


def test_safetensors_and_build(tmp_path, state_dict):
    path = tmp_path / "w.safetensors"
    save_file(state_dict, str(path))
    built = build_model(SPECS["swin_digits"], weights=path)
    assert _same(built.model.state_dict(), state_dict)
    assert built.weights["source"] == "file" and len(built.weights["sha256"]) == 64


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": Evil()}, path)
    with pytest.raises(WeightsError, match="does not run pickled code"):
        read_state_dict(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x80\x02this is not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="cannot read"):
        read_state_dict(path)


def test_missing_file_and_bad_extension(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(WeightsError, match="unknown extension"):
        read_state_dict(tmp_path / "w.txt")


def test_head_size_mismatch_suggests_num_classes(state_dict):
    model = timm.create_model("swin_tiny_patch4_window7_224", **dict(DIGITS_TIMM_KWARGS, num_classes=7))
    with pytest.raises(CheckpointMismatchError, match="--num-classes 10") as e:
        fit_state_dict(model, state_dict, "ckpt.pth")
    assert "head.fc.weight (10, 192)" in str(e.value)


def test_missing_and_unexpected_keys_are_named(state_dict):
    model = timm.create_model("swin_tiny_patch4_window7_224", **DIGITS_TIMM_KWARGS)
    broken = dict(state_dict)
    del broken["layers.0.blocks.0.norm1.weight"]
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as e:
        fit_state_dict(model, broken, "ckpt.pth")
    assert "layers.0.blocks.0.norm1.weight" in str(e.value) and "extra.weight" in str(e.value)


def test_wrong_architecture(state_dict):
    model = timm.create_model("deit_tiny_patch16_224", num_classes=10)
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        fit_state_dict(model, state_dict, "ckpt.pth")


def test_offline_pretrained_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("vitserve.models.weights.hub_reachable", lambda: False)
    monkeypatch.setattr("vitserve.models.weights.cached_pretrained_file", lambda hub_id: None)
    with pytest.raises(WeightsUnavailableError, match="--weights FILE.*\n.*--random-init"):
        build_model(resolve("deit_t"))


@pytest.mark.parametrize("reachable", [True, False], ids=["online", "offline"])
def test_pretrained_refuses_a_classifier_it_would_leave_random(monkeypatch, reachable):
    """timm loads a backbone and leaves a classifier of another size random: refused before any download."""
    monkeypatch.setattr("vitserve.models.weights.hub_reachable", lambda: reachable)

    def no_download(*args, **kwargs):
        raise AssertionError("nothing may be created or downloaded")

    monkeypatch.setattr("vitserve.models.build.create", no_download)
    monkeypatch.setattr("vitserve.models.weights.cached_pretrained_file", no_download)
    with pytest.raises(WeightsError, match="classify 1000 classes, not 10.*--weights FILE"):
        build_model(resolve("deit_t"), num_classes=10)
    with pytest.raises(WeightsError, match="no classifier.*--weights FILE"):
        build_model(resolve("vit_small_patch14_dinov2.lvd142m"))


def test_imagenet_subsets_get_their_class_names():
    from timm.data import ImageNetInfo

    from vitserve.models.build import default_labels

    spec = resolve("deit_t")
    assert default_labels(spec, 1000)[0] == "tench"
    twelve_k = default_labels(spec, 11821)
    assert len(twelve_k) == 11821 and twelve_k[-1] == ImageNetInfo("imagenet-12k").label_descriptions()[-1]
    assert default_labels(spec, 21841)[0] == "organism"
    assert default_labels(spec, 7) == [f"class_{i}" for i in range(7)]


def test_hub_probe_fails_fast_when_unreachable(monkeypatch):
    import huggingface_hub.constants

    from vitserve.models.weights import hub_reachable

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    assert hub_reachable() is False


@pytest.fixture(scope="module")
def deit_288(tmp_path_factory):
    """A DeiT-Ti checkpoint fine-tuned at 288 px with 7 classes (its pos_embed has 18 x 18 + 1 tokens)."""
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("deit") / "deit288.safetensors"
    save_file(timm.create_model("deit_tiny_patch16_224", img_size=288, num_classes=7).state_dict(), str(path))
    return path


def test_checkpoint_of_another_input_size_is_refused(deit_288):
    """timm's converter would interpolate its position embeddings to 224 px: another model than the one trained."""
    with pytest.raises(CheckpointMismatchError, match=r"pos_embed \(1, 325, 192\) -> \(1, 197, 192\)") as e:
        build_model(SPECS["deit_t"], weights=deit_288, num_classes=7)
    assert "pass --img-size 288" in str(e.value)


def test_img_size_builds_the_trained_model(deit_288):
    built = build_model(with_overrides(SPECS["deit_t"], img_size=288), weights=deit_288, num_classes=7)
    assert _same(built.model.state_dict(), read_state_dict(deit_288))
    assert built.timm_kwargs == {"img_size": 288} and built.spec.preprocess.input_size == (3, 288, 288)
    assert built.model(torch.randn(1, 3, 288, 288)).shape == (1, 7)


def test_checkpoint_of_another_window_is_refused(tmp_path):
    path = tmp_path / "window4.safetensors"
    save_file(timm.create_model("swin_tiny_patch4_window7_224", **dict(DIGITS_TIMM_KWARGS, window_size=4))
              .state_dict(), str(path))
    with pytest.raises(CheckpointMismatchError, match="relative_position_bias_table") as e:
        build_model(SPECS["swin_digits"], weights=path)
    assert "trained with 4 x 4 windows: pass --window-size 4" in str(e.value)
    built = build_model(with_overrides(SPECS["swin_digits"], window_size=4), weights=path)
    assert _same(built.model.state_dict(), read_state_dict(path)) and built.timm_kwargs["window_size"] == 4


def test_window_size_for_a_model_without_windows():
    with pytest.raises(ExportError, match="no attention windows"):
        build_model(with_overrides(SPECS["deit_t"], window_size=8), random_init=True)
    with pytest.raises(ExportError, match="no attention windows"):  # PVT v2 takes neither argument
        build_model(with_overrides(SPECS["pvt_v2_b0"], img_size=256, window_size=8), random_init=True)


def test_img_size_for_an_architecture_without_it():
    """PVT v2 has no img_size argument: it runs at any input size, and only the eval crop changes."""
    built = build_model(with_overrides(SPECS["pvt_v2_b0"], img_size=256), random_init=True)
    assert built.timm_kwargs == {} and built.spec.preprocess.input_size == (3, 256, 256)
    assert built.model(torch.randn(1, 3, 256, 256)).shape == (1, 1000)


def test_overrides_are_not_for_pretrained_weights():
    with pytest.raises(WeightsError, match="trained at 224 x 224 pixels; --img-size 288 is for a checkpoint"):
        build_model(with_overrides(SPECS["deit_t"], img_size=288))
    with pytest.raises(WeightsError, match="--window-size is for a checkpoint"):
        build_model(with_overrides(SPECS["swin_t"], window_size=12))


def test_checkpoint_of_the_original_swin_repository(tmp_path, state_dict):
    """Microsoft's layout: each stage ends with its downsample (timm's next stage starts with it), `head` is one
    Linear. timm's converter renames the keys; the tensors keep their sizes and nothing is interpolated."""
    import re

    original = {re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k)
                .replace("head.fc.", "head."): v for k, v in state_dict.items()}
    assert "layers.0.downsample.reduction.weight" in original and "head.weight" in original
    path = tmp_path / "swin_original.pth"
    torch.save({"model": original}, path)
    assert _same(build_model(SPECS["swin_digits"], weights=path).model.state_dict(), state_dict)
