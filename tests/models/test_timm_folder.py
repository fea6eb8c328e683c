"""timm model folders (what `timm.models.save_for_hf` / `push_to_hf_hub` write) and hub repositories holding one:
built exactly as timm itself loads them, with their classes and eval transform."""

from __future__ import annotations

import json
import shutil

import pytest
import timm
import torch
from timm.data import resolve_data_config
from timm.models import save_for_hf

from tests.conftest import run_cli
from vitserve.errors import ExportError, UnknownModelError, WeightsError, WeightsUnavailableError
from vitserve.models.build import build_model
from vitserve.models.catalogue import resolve
from vitserve.models.families.swin_digits import DIGITS_TIMM_KWARGS

LABELS = ["cat", "dog", "bird"]


def _save_folder(path, *, safetensors=True, seed=0):
    """A fine-tuned 3-class Swin saved by timm, with its class names and a squash eval transform."""
    torch.manual_seed(seed)
    model = timm.create_model("swin_tiny_patch4_window7_224", **dict(DIGITS_TIMM_KWARGS, num_classes=3))
    save_for_hf(model, str(path), model_config={"label_names": LABELS}, safe_serialization=safetensors,
                data_config={"crop_pct": 0.95, "crop_mode": "squash", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)})
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _save_folder(tmp_path_factory.mktemp("timm") / "my-swin")


@pytest.mark.parametrize("spelling", ["local-dir:{}", "{}"])
def test_folder_builds_as_timm_loads_it(folder, spelling):
    spec = resolve(spelling.format(folder))
    built = build_model(spec)
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, *spec.preprocess.input_size)
    with torch.no_grad():
        assert torch.equal(built.model(x), theirs(x))
    assert built.labels == LABELS
    assert (spec.name, spec.timm_name, spec.num_classes) == ("my-swin", "swin_tiny_patch4_window7_224", 3)
    data = resolve_data_config(model=theirs)
    pre = spec.preprocess
    assert (pre.input_size, pre.crop_pct, pre.crop_mode, pre.interpolation) == \
        (data["input_size"], data["crop_pct"], data["crop_mode"], data["interpolation"])
    assert (list(pre.mean), list(pre.std)) == (list(data["mean"]), list(data["std"]))
    assert built.weights["source"] == "local-dir" and built.weights["path"].endswith("model.safetensors")


def test_folder_weights_are_really_loaded(folder, tmp_path):
    """Another folder of the same config with other weights must give other logits (no silent random init)."""
    other = _save_folder(tmp_path / "other", seed=1)
    a, b = build_model(resolve(str(folder))), build_model(resolve(str(other)))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(a.model(x), b.model(x))


def test_older_layouts(tmp_path):
    """pytorch_model.bin only, the single-dict config of older timm, label names with gaps."""
    path = _save_folder(tmp_path / "old", safetensors=False)
    cfg = json.loads((path / "config.json").read_text())
    # the single dict of older timm (no pretrained_cfg section, "labels"); model_args kept for the tiny Swin, where
    # a real config of that age names a stock architecture
    legacy = {"architecture": cfg["architecture"], **cfg["pretrained_cfg"], "labels": {"0": "cat", "2": "bird"},
              "model_args": cfg["model_args"]}
    (path / "config.json").write_text(json.dumps(legacy))
    spec = resolve(str(path))
    built = build_model(spec)
    assert built.labels == ["cat", "class_1", "bird"]
    assert built.weights["path"].endswith("pytorch_model.bin")
    assert spec.preprocess.crop_mode == "squash"


def test_folder_errors(tmp_path, folder):
    with pytest.raises(UnknownModelError, match="does not exist"):
        resolve(f"local-dir:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownModelError, match="has no config.json.*--weights FILE"):
        resolve(f"local-dir:{tmp_path / 'empty'}")
    no_weights = tmp_path / "config-only"
    no_weights.mkdir()
    shutil.copy(folder / "config.json", no_weights)
    with pytest.raises(WeightsUnavailableError, match="no weights.*--random-init"):
        build_model(resolve(str(no_weights)))
    assert build_model(resolve(str(no_weights)), random_init=True).weights["source"] == "random-init"
    cfg = json.loads((folder / "config.json").read_text())
    (no_weights / "config.json").write_text(json.dumps({**cfg, "model_args": {**cfg["model_args"], "bogus": 1}}))
    with pytest.raises(ExportError, match="cannot build swin_tiny_patch4_window7_224 .*'bogus'.*model_args"):
        build_model(resolve(str(no_weights)), random_init=True)
    for change, message in [({"architecture": "swin_gigantic_9000"}, "does not have"),
                            ({"pretrained_cfg": {**cfg["pretrained_cfg"], "crop_mode": "zoom"}}, "crop_mode 'zoom'"),
                            ({"num_classes": 0}, "a backbone without a classifier")]:
        (no_weights / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(UnknownModelError, match=message):
            resolve(str(no_weights))


def test_folder_given_as_weights_says_how_to_export_it(folder, tmp_path):
    with pytest.raises(WeightsError, match=f"is a folder; it is a timm model folder.*vitserve export {folder}"):
        build_model(resolve("swin_t"), weights=folder)
    with pytest.raises(WeightsError, match="is a folder; pass the checkpoint file inside it"):
        build_model(resolve("swin_t"), weights=tmp_path)


def test_hub_repo_from_the_local_cache(folder, tmp_path, monkeypatch):
    """hf-hub:ORG/NAME offline: the repository's files from the Hugging Face cache (its real layout), else an error
    that says what to do."""
    import huggingface_hub.constants

    monkeypatch.setattr("vitserve.models.weights.hub_reachable", lambda: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="not reachable.*local-dir:PATH"):
        resolve("hf-hub:someone/my-swin")
    repo = tmp_path / "models--someone--my-swin"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd" * 5)
    shutil.copytree(folder, repo / "snapshots" / ("0123abcd" * 5))
    spec = resolve("hf-hub:someone/my-swin")
    assert (spec.name, spec.source, spec.num_classes) == ("my-swin", "hf-hub:someone/my-swin", 3)
    built = build_model(spec)
    assert built.weights["source"] == "hf-hub" and built.weights["path"] == "someone/my-swin"
    assert built.labels == LABELS
    # a revision, as timm spells it: a cached tag resolves to its snapshot, an unknown one is not found
    (repo / "refs" / "v1").write_text("0123abcd" * 5)
    assert resolve("hf-hub:someone/my-swin@v1").name == "my-swin"
    with pytest.raises(WeightsUnavailableError, match="my-swin@v2"):
        resolve("hf-hub:someone/my-swin@v2")


@pytest.mark.slow  # exports in a fresh process
def test_cli_exports_a_folder_with_its_classes_and_transform(folder, tmp_path):
    out = tmp_path / "artifact"
    done = run_cli("export", str(folder), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert (out / "labels.txt").read_text().split() == LABELS
    manifest = json.loads((out / "vitserve.json").read_text())
    assert manifest["name"] == "my-swin" and manifest["preprocess"]["crop_mode"] == "squash"
    assert manifest["weights"]["source"] == "local-dir"
    assert manifest["verification"]["passed"]
