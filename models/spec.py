"""What the catalogue holds: a ModelSpec per model name, with the eval preprocessing its weights were trained with.

Only the standard library is imported here (`vitserve models` must stay fast).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitserve.artifact import Preprocess

ASSETS = Path(__file__).parent / "assets"  # weights and labels that ship with vitserve

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
IMAGENET_LABELS = "imagenet-1k"


@dataclass(frozen=True)
class ModelSpec:
    """One exportable model.

    Attributes:
        name: what the user types (alias, or the timm name itself).
        timm_name: timm architecture; `pretrained_tag` picks its weights on the hub (timm's default tag).
        preprocess: the eval transform the weights were trained with.
        labels: IMAGENET_LABELS, or a labels file (one class per line).
        timm_kwargs: architecture overrides passed to timm.create_model (bundled models use a small config).
        bundled_weights: weights shipped with vitserve, used when no --weights / --random-init is given.
        source: a timm model folder ("local-dir:PATH") or hub repository ("hf-hub:ORG/NAME") whose weights are
            used when no --weights / --random-init is given (models/timm_folder.py).
        label_names: class names that came with the model (a timm folder's label_names), by class index.
    """

    name: str
    timm_name: str
    preprocess: Preprocess
    pretrained_tag: str | None = None
    num_classes: int = 1000
    labels: str = IMAGENET_LABELS
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    bundled_weights: Path | None = None
    description: str = ""
    source: str | None = None
    label_names: tuple[str, ...] = ()

    @property
    def hub_name(self) -> str:
        return f"{self.timm_name}.{self.pretrained_tag}" if self.pretrained_tag else self.timm_name


def imagenet(name: str, timm_name: str, tag: str, description: str, *, size: int = 224, crop_pct: float = 0.9,
              inception: bool = False) -> ModelSpec:
    mean, std = (INCEPTION_MEAN, INCEPTION_STD) if inception else (IMAGENET_MEAN, IMAGENET_STD)
    preprocess = Preprocess((3, size, size), mean, std, crop_pct, "bicubic")
    return ModelSpec(name, timm_name, preprocess, pretrained_tag=tag, description=description)
