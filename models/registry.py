"""Supported models: short aliases (torchvision style) -> timm architectures, with their eval preprocessing.

Any timm architecture name is accepted too (`vitserve export swin_base_patch4_window12_384`); the aliases are the
models this project tests. Only the standard library is imported here (`vitserve models` must stay fast); timm is
imported when a name is not an alias.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vitserve.artifact import Preprocess
from vitserve.errors import UnknownModelError
from vitserve.models import timm_folder

ASSETS = Path(__file__).parent / "assets"

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


def _imagenet(name: str, timm_name: str, tag: str, description: str, *, size: int = 224, crop_pct: float = 0.9,
              inception: bool = False) -> ModelSpec:
    mean, std = (INCEPTION_MEAN, INCEPTION_STD) if inception else (IMAGENET_MEAN, IMAGENET_STD)
    preprocess = Preprocess((3, size, size), mean, std, crop_pct, "bicubic")
    return ModelSpec(name, timm_name, preprocess, pretrained_tag=tag, description=description)


# The small Swin that scripts/train_digits.py trains on scikit-learn's handwritten digits and vitserve ships:
# 32x32 input, patch 2, window 6 -> stage 1 is 16x16 tokens padded to 18x18 (shifted + padded windows),
# stage 2 is 8x8 padded to 12x12, stage 3 (4x4) fits in one window (no shift). Every rewrite case in one model.
DIGITS_TIMM_KWARGS: dict[str, Any] = dict(
    img_size=32, patch_size=2, window_size=6, embed_dim=48, depths=(2, 2, 2), num_heads=(2, 4, 8), num_classes=10
)

SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        _imagenet("swin_t", "swin_tiny_patch4_window7_224", "ms_in1k", "Swin-T, 28M params"),
        _imagenet("swin_s", "swin_small_patch4_window7_224", "ms_in22k_ft_in1k", "Swin-S, 50M params"),
        _imagenet("swin_b", "swin_base_patch4_window7_224", "ms_in22k_ft_in1k", "Swin-B, 88M params"),
        _imagenet("swinv2_t", "swinv2_tiny_window8_256", "ms_in1k", "Swin V2-T, window 8, 256 px", size=256),
        _imagenet("swinv2_cr_t", "swinv2_cr_tiny_ns_224", "sw_in1k", "Swin V2-T, timm's CR implementation, 224 px"),
        _imagenet("vit_b_16", "vit_base_patch16_224", "augreg2_in21k_ft_in1k", "ViT-B/16, 86M params",
                  inception=True),
        _imagenet("vit_s_16", "vit_small_patch16_224", "augreg_in21k_ft_in1k", "ViT-S/16, 22M params",
                  inception=True),
        _imagenet("deit_t", "deit_tiny_patch16_224", "fb_in1k", "DeiT-Ti, 5M params"),
        _imagenet("deit_s", "deit_small_patch16_224", "fb_in1k", "DeiT-S, 22M params"),
        _imagenet("deit_b", "deit_base_patch16_224", "fb_in1k", "DeiT-B, 86M params"),
        _imagenet("deit_s_distilled", "deit_small_distilled_patch16_224", "fb_in1k",
                  "DeiT-S with distillation token"),
        _imagenet("pvt_v2_b0", "pvt_v2_b0", "in1k", "PVT v2-B0, 3.7M params"),
        _imagenet("twins_svt_s", "twins_svt_small", "in1k", "Twins-SVT-S, 24M params"),
        _imagenet("twins_pcpvt_s", "twins_pcpvt_small", "in1k", "Twins-PCPVT-S, 24M params"),
        _imagenet("cait_xxs24", "cait_xxs24_224", "fb_dist_in1k", "CaiT-XXS24, 12M params", crop_pct=1.0),
        _imagenet("tnt_s", "tnt_s_patch16_224", "in1k", "TNT-S, 24M params", inception=True),
        _imagenet("mvitv2_t", "mvitv2_tiny", "fb_in1k", "MViT v2-T, 24M params"),
        ModelSpec(
            "swin_digits",
            "swin_tiny_patch4_window7_224",
            Preprocess((3, 32, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1.0, "bicubic"),
            num_classes=10,
            labels=str(ASSETS / "swin_digits" / "labels.txt"),
            timm_kwargs=DIGITS_TIMM_KWARGS,
            bundled_weights=ASSETS / "swin_digits" / "model.safetensors",
            description="Swin (32 px, window 6, 3 stages) trained on scikit-learn digits; ships with vitserve",
        ),
    ]
}


def with_overrides(spec: ModelSpec, *, img_size: int | None = None, window_size: int | None = None) -> ModelSpec:
    """`spec` for a checkpoint trained or fine-tuned at another resolution or window (`--img-size`,
    `--window-size`): square `img_size` inputs (the eval crop, and timm's `img_size`: position embeddings, window
    masks), `window_size` x `window_size` windows (Swin families)."""
    kwargs = dict(spec.timm_kwargs)
    preprocess = spec.preprocess
    if img_size is not None:
        preprocess = replace(preprocess, input_size=(preprocess.input_size[0], img_size, img_size))
        kwargs["img_size"] = img_size
    if window_size is not None:
        kwargs["window_size"] = window_size
    return replace(spec, preprocess=preprocess, timm_kwargs=kwargs)


def list_specs() -> list[ModelSpec]:
    return list(SPECS.values())


def resolve(name: str) -> ModelSpec:
    """Alias, timm name (optionally `arch.tag`) or timm model folder (`local-dir:PATH` or the folder's path,
    `hf-hub:ORG/NAME`) -> ModelSpec; UnknownModelError with close matches otherwise."""
    if name in SPECS:
        return SPECS[name]
    folder = timm_folder.split_source(name)
    if folder:
        return _spec_from_folder(*folder)
    import timm

    arch, _, tag = name.partition(".")
    if arch in timm.list_models():
        return _spec_from_timm(name, arch, tag or None)
    candidates = list(SPECS) + timm.list_models()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}.{hint} `vitserve models` lists the aliases; any timm architecture name works too."
    )


def _spec_from_timm(name: str, arch: str, tag: str | None) -> ModelSpec:
    import timm

    cfg = timm.models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    if cfg is None:
        raise UnknownModelError(f"timm has no pretrained config {name!r}; try the plain architecture name {arch!r}")
    preprocess = Preprocess(  # timm's resolve_data_config: crop_pct 0.875 and crop_mode "center" when unset
        tuple(cfg.input_size), tuple(cfg.mean), tuple(cfg.std), float(cfg.crop_pct or 0.875), cfg.interpolation,
        cfg.crop_mode or "center",
    )
    return ModelSpec(name, arch, preprocess, pretrained_tag=cfg.tag, num_classes=cfg.num_classes or 1000)


def _spec_from_folder(source: str, ref: str) -> ModelSpec:
    config = timm_folder.read_config(timm_folder.locate(source, ref) / timm_folder.CONFIG_NAME)
    import timm

    if not timm.is_model(config.architecture):
        raise UnknownModelError(f"{source}:{ref} is a {config.architecture!r}, an architecture timm "
                                f"{timm.__version__} does not have; a newer timm may (pip install -U timm)")
    return ModelSpec(timm_folder.display_name(source, ref), config.architecture, config.preprocess,
                     num_classes=config.num_classes,
                     timm_kwargs={k: v for k, v in config.model_args.items() if k != "num_classes"},
                     description=f"timm model folder {source}:{ref}", source=f"{source}:{ref}",
                     label_names=config.label_names)
