"""Fine-tuned models in timm's own sharing format: a folder that `timm.models.save_for_hf` or `push_to_hf_hub` wrote.

    config.json         architecture, num_classes, label_names, model_args (timm >= 1.0.21) and pretrained_cfg
                        (input_size, mean, std, crop_pct, crop_mode, interpolation: the eval transform)
    model.safetensors   the weights (or pytorch_model.bin)

`local-dir:PATH` (or the folder's path itself) names such a folder, `hf-hub:ORG/NAME` a Hugging Face hub repository
holding one; the same spellings as `timm.create_model`. The config is read here with the standard library (the
hub client only for `hf-hub:`), so a wrong name fails before torch is imported; the weights go through the same
loader and checks as `--weights FILE` (models/weights.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitserve.artifact import Preprocess
from vitserve.errors import UnknownModelError, WeightsUnavailableError

log = logging.getLogger(__name__)

SOURCES = ("local-dir", "hf-hub")
CONFIG_NAME = "config.json"
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")  # timm's order of preference


@dataclass(frozen=True)
class FolderConfig:
    """What config.json says: the model to build, its classes and its eval transform."""

    architecture: str
    num_classes: int
    model_args: dict[str, Any]
    preprocess: Preprocess
    label_names: tuple[str, ...]


def split_source(name: str) -> tuple[str, str] | None:
    """("local-dir", PATH) or ("hf-hub", REPO) for a name in timm's source spellings, or for the path of a folder
    holding config.json; None for any other name (an alias or a timm architecture)."""
    source, sep, ref = name.partition(":")
    if sep and source.replace("_", "-") in SOURCES:
        if not ref:
            raise UnknownModelError(f"{name!r} names no {source} after the colon")
        return source.replace("_", "-"), ref
    if (Path(name) / CONFIG_NAME).is_file():
        return "local-dir", name
    return None


def read_config(path: Path) -> FolderConfig:
    """Parses config.json as timm does (models/_hub.py `_parse_model_cfg`): the layout with a `pretrained_cfg`
    section, or the older single dict; num_classes and label_names at the top level win; `img_size` in model_args
    is the input size of a model with a fixed one."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnknownModelError(f"cannot read {path}: {e}") from e
    if not isinstance(cfg, dict) or "architecture" not in cfg:
        raise UnknownModelError(f"{path} is not a timm model config: it names no `architecture`")
    pretrained = dict(cfg.get("pretrained_cfg") or {k: v for k, v in cfg.items() if k != "architecture"})
    model_args = dict(cfg.get("model_args") or {})
    num_classes = int(cfg.get("num_classes", pretrained.get("num_classes", 1000)))
    if num_classes < 1:
        raise UnknownModelError(f"{path}: num_classes {num_classes}, a backbone without a classifier; vitserve exports "
                                "classifiers: fine-tune it on your classes and export that folder or checkpoint")
    input_size = tuple(pretrained.get("input_size", (3, 224, 224)))
    if model_args.get("img_size") is not None and pretrained.get("fixed_input_size", False):
        size = model_args["img_size"]
        input_size = (input_size[0], *((size, size) if isinstance(size, int) else size))
    try:
        preprocess = Preprocess(
            tuple(input_size), tuple(pretrained.get("mean", (0.485, 0.456, 0.406))),
            tuple(pretrained.get("std", (0.229, 0.224, 0.225))), float(pretrained.get("crop_pct") or 0.875),
            pretrained.get("interpolation") or "bilinear", pretrained.get("crop_mode") or "center",
        )
    except ValueError as e:  # Preprocess checks the crop mode
        raise UnknownModelError(f"{path}: {e}") from e
    names = cfg.get("label_names", pretrained.get("label_names", pretrained.get("labels")))
    return FolderConfig(cfg["architecture"], num_classes, model_args, preprocess, _label_list(names, num_classes))


def _label_list(names: Any, num_classes: int) -> tuple[str, ...]:
    """timm's label_names: a list by class index, or {index: name} where indices have gaps; () when absent."""
    if isinstance(names, dict):
        by_index = {int(k): str(v) for k, v in names.items()}
        return tuple(by_index.get(i, f"class_{i}") for i in range(num_classes))
    return tuple(str(n) for n in names) if names else ()


def locate(source: str, ref: str) -> Path:
    """The folder holding config.json: `ref` itself for local-dir; for hf-hub, config.json fetched from the hub
    (or found in the local Hugging Face cache when the hub is not reachable) into its snapshot folder."""
    if source == "local-dir":
        folder = Path(ref).expanduser()
        if not (folder / CONFIG_NAME).is_file():
            what = "does not exist" if not folder.exists() else f"has no {CONFIG_NAME}"
            raise UnknownModelError(
                f"{folder} {what}: a timm model folder (what timm.models.save_for_hf or push_to_hf_hub writes) "
                f"holds {CONFIG_NAME} and {' or '.join(WEIGHT_NAMES)}. For a checkpoint file alone, name its "
                "architecture and pass --weights FILE.")
        return folder
    return hub_file(ref, CONFIG_NAME).parent


def hub_file(repo: str, filename: str) -> Path:
    """`filename` of hub repository `repo` (`ORG/NAME`, or `ORG/NAME@REVISION` as timm spells a branch, tag or
    commit), downloaded, or from the local cache when the hub is not reachable."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from vitserve.models.weights import hub_reachable

    repo_id, _, revision = repo.partition("@")
    if hub_reachable():
        log.info("downloading %s from hf-hub:%s", filename, repo)
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision or None))
        except Exception as e:  # noqa: BLE001 - the hub client raises many kinds; all mean "not there"
            raise WeightsUnavailableError(f"cannot get {filename} of hf-hub:{repo}: {e}") from e
    cached = try_to_load_from_cache(repo_id, filename, revision=revision or None)
    if isinstance(cached, str):
        log.info("model hub not reachable; using the cached %s of hf-hub:%s", filename, repo)
        return Path(cached)
    raise WeightsUnavailableError(
        f"cannot get {filename} of hf-hub:{repo}: the model hub is not reachable from this machine and the file is "
        "not in the local Hugging Face cache. Copy the repository's folder here and export it by its path "
        "(local-dir:PATH).")


def display_name(source: str, ref: str) -> str:
    """The folder's or the repository's own name: the artifact's name and default folder."""
    return Path(ref.rstrip("/")).name if source == "local-dir" else ref.partition("@")[0].rstrip("/").split("/")[-1]


def weights_file(source: str, ref: str) -> Path:
    """The folder's checkpoint: model.safetensors, else pytorch_model.bin."""
    if source == "local-dir":
        folder = locate(source, ref)
        for name in WEIGHT_NAMES:
            if (folder / name).is_file():
                return folder / name
        raise WeightsUnavailableError(f"{folder} has {CONFIG_NAME} but no weights ({' or '.join(WEIGHT_NAMES)}); "
                                      "pass --weights FILE, or --random-init to try the pipeline")
    failures = []
    for name in WEIGHT_NAMES:
        try:
            return hub_file(ref, name)
        except WeightsUnavailableError as e:
            failures.append(str(e))
    raise WeightsUnavailableError("; ".join(failures))
