"""Build a model for export: architecture + weights + class names, ready in eval mode."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitserve.artifact import read_labels
from vitserve.errors import LabelsError, WeightsUnavailableError
from vitserve.models import weights as w
from vitserve.models.registry import IMAGENET_LABELS, ModelSpec

log = logging.getLogger(__name__)


@dataclass
class BuiltModel:
    spec: ModelSpec
    model: nn.Module
    labels: list[str]
    weights: dict[str, Any]  # source, path, sha256 -> the manifest

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def build_model(
    spec: ModelSpec,
    *,
    weights: str | Path | None = None,
    random_init: bool = False,
    num_classes: int | None = None,
    labels_file: str | Path | None = None,
) -> BuiltModel:
    """Creates the timm model and loads its weights.

    Weights, in order: `weights` (a checkpoint file), `random_init`, the spec's bundled weights, pretrained
    weights from the hub. Raises WeightsUnavailableError offline when only the hub would do.
    """
    import timm

    labels_given = read_labels_file(labels_file) if labels_file else None
    if num_classes is None:
        num_classes = len(labels_given) if labels_given else spec.num_classes
    kwargs = dict(spec.timm_kwargs, num_classes=num_classes)

    if weights is not None:
        model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
        path = Path(weights)
        w.fit_state_dict(model, w.read_state_dict(path), str(path))
        info = {"source": "file", "path": str(path), "sha256": w.sha256(path)}
    elif random_init:
        model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
        info = {"source": "random-init"}
    elif spec.bundled_weights is not None:
        model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
        w.fit_state_dict(model, w.read_state_dict(spec.bundled_weights), spec.bundled_weights.name)
        info = {"source": "bundled", "path": spec.bundled_weights.name, "sha256": w.sha256(spec.bundled_weights)}
    else:
        model, info = _pretrained(spec, kwargs)
    model.eval()
    labels = labels_given or default_labels(spec, num_classes)
    if len(labels) != num_classes:
        raise LabelsError(f"{labels_file} has {len(labels)} labels but the model has {num_classes} classes")
    return BuiltModel(spec, model, labels, info)


def _pretrained(spec: ModelSpec, kwargs: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    import timm

    hub_id = timm.models.get_pretrained_cfg(spec.hub_name).hf_hub_id
    if w.hub_reachable():
        log.info("downloading pretrained weights %s", spec.hub_name)
        try:
            model = timm.create_model(spec.hub_name, pretrained=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - the hub client raises many kinds; all mean "no weights"
            raise WeightsUnavailableError(f"downloading pretrained weights for {spec.hub_name} failed: {e}") from e
        return model, {"source": "pretrained", "hub_id": hub_id}
    cached = w.cached_pretrained_file(hub_id) if hub_id else None
    if cached is None:
        raise w.offline_error(spec.hub_name)
    log.info("model hub not reachable; using cached weights %s", cached)
    model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    w.fit_state_dict(model, w.read_state_dict(cached), str(cached))
    return model, {"source": "pretrained", "hub_id": hub_id, "sha256": w.sha256(cached)}


def default_labels(spec: ModelSpec, num_classes: int) -> list[str]:
    if spec.labels == IMAGENET_LABELS and num_classes == 1000:
        from timm.data import ImageNetInfo

        # "tench, Tinca tinca" -> "tench": the first synonym is the common name
        return [d.split(",")[0].strip() for d in ImageNetInfo().label_descriptions()]
    if spec.labels != IMAGENET_LABELS and Path(spec.labels).is_file():
        labels = read_labels(spec.labels)
        if len(labels) == num_classes:
            return labels
    return [f"class_{i}" for i in range(num_classes)]


def read_labels_file(path: str | Path) -> list[str]:
    try:
        labels = read_labels(path)
    except (OSError, UnicodeDecodeError) as e:
        raise LabelsError(f"cannot read labels file {path}: {e}") from e
    if not labels:
        raise LabelsError(f"labels file {path} is empty; it needs one class name per line")
    return labels


def example_input(spec: ModelSpec, batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *spec.preprocess.input_size, generator=generator)
