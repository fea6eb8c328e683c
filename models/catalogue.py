"""The model catalogue: short aliases (torchvision style) -> timm architectures, with their eval preprocessing.

The aliases live in models/families/, one file per architecture family (FAMILIES); a name that is not an alias may
be any timm architecture (`vitserve export swin_base_patch4_window12_384`) or a timm model folder. Only the standard
library is imported here (`vitserve models` must stay fast); timm is imported when a name is not an alias.
"""

from __future__ import annotations

import difflib
from dataclasses import replace

from vitserve.artifact import Preprocess
from vitserve.errors import UnknownModelError
from vitserve.models import timm_folder
from vitserve.models.families import FAMILIES
from vitserve.models.spec import ModelSpec

SPECS: dict[str, ModelSpec] = {spec.name: spec for family in FAMILIES for spec in family.VARIANTS}


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
    from vitserve.models.architectures import registered_timm

    timm = registered_timm()
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
    from vitserve.models.architectures import registered_timm

    timm = registered_timm()

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
