"""Build a model for export: architecture + weights + class names, ready in eval mode."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitserve.artifact import read_labels, sha256
from vitserve.errors import ExportError, LabelsError, WeightsError, WeightsUnavailableError
from vitserve.models import timm_folder
from vitserve.models import weights as w
from vitserve.models.architectures import registered_timm
from vitserve.models.spec import IMAGENET_LABELS, ModelSpec

log = logging.getLogger(__name__)


@dataclass
class BuiltModel:
    spec: ModelSpec
    model: nn.Module
    labels: list[str]
    weights: dict[str, Any]  # source, path, sha256 -> the manifest
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # the architecture overrides timm was given

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

    Weights, in order: `weights` (a checkpoint file), `random_init`, the spec's bundled weights, the weights of
    the timm model folder or hub repository it came from, pretrained weights from the hub. Raises
    WeightsUnavailableError offline when only the hub would do.
    """
    labels_given = read_labels_file(labels_file) if labels_file else None
    if num_classes is None:
        num_classes = len(labels_given) if labels_given else spec.num_classes
    kwargs = architecture_kwargs(spec)

    if weights is not None:
        model = create(spec.timm_name, kwargs, num_classes)
        path = Path(weights)
        w.fit_state_dict(model, w.read_state_dict(path), str(path))
        info = {"source": "file", "path": str(path), "sha256": sha256(path)}
    elif random_init:
        model = create(spec.timm_name, kwargs, num_classes)
        info = {"source": "random-init"}
    elif spec.bundled_weights is not None:
        model = create(spec.timm_name, kwargs, num_classes)
        w.fit_state_dict(model, w.read_state_dict(spec.bundled_weights), spec.bundled_weights.name)
        info = {"source": "bundled", "path": spec.bundled_weights.name, "sha256": sha256(spec.bundled_weights)}
    elif spec.source is not None:
        source, _, ref = spec.source.partition(":")
        path = timm_folder.weights_file(source, ref)
        model = create(spec.timm_name, kwargs, num_classes)
        w.fit_state_dict(model, w.read_state_dict(path), spec.source)
        info = {"source": source, "path": str(path) if source == "local-dir" else ref, "sha256": sha256(path)}
    else:
        model, info = _pretrained(spec, kwargs, num_classes)
    model.eval()
    labels = labels_given or default_labels(spec, num_classes)
    if len(labels) != num_classes:
        raise LabelsError(f"{labels_file} has {len(labels)} labels but the model has {num_classes} classes")
    return BuiltModel(spec, model, labels, info, kwargs)


def architecture_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """The spec's timm overrides that its architecture takes: without an `img_size` argument (PVT v2), a model
    runs at any input size as it is, and `img_size` (from --img-size) is left out; a `window_size` (from
    --window-size) for a model without windows is an error."""
    timm = registered_timm()

    kwargs = dict(spec.timm_kwargs)
    while "img_size" in kwargs or "window_size" in kwargs:
        try:
            with torch.device("meta"):  # no memory, no initialization: only whether the arguments are taken
                timm.create_model(spec.timm_name, pretrained=False, **kwargs)
            break
        except TypeError as e:  # the argument the architecture refused is named in the message
            if "img_size" in kwargs and "'img_size'" in str(e):
                kwargs.pop("img_size")
            elif "window_size" in kwargs and "'window_size'" in str(e):
                raise ExportError(f"{spec.timm_name} has no attention windows: --window-size applies to the Swin "
                                  "families") from None
            else:
                raise cannot_build(spec.timm_name, kwargs, e) from e
    return kwargs


def create(timm_name: str, kwargs: dict[str, Any], num_classes: int, pretrained: bool = False) -> nn.Module:
    timm = registered_timm()

    try:
        return timm.create_model(timm_name, pretrained=pretrained, **dict(kwargs, num_classes=num_classes))
    except TypeError as e:  # an argument the architecture does not take (a timm folder's model_args, say)
        raise cannot_build(timm_name, kwargs, e) from e


def cannot_build(timm_name: str, kwargs: dict[str, Any], error: TypeError) -> ExportError:
    import timm

    return ExportError(f"timm {timm.__version__} cannot build {timm_name} with the arguments {kwargs}: {error}. A "
                       "timm model folder's config.json lists them under model_args; one written by another timm "
                       "version may name arguments this one does not have")


def _pretrained(spec: ModelSpec, kwargs: dict[str, Any], num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    timm = registered_timm()

    cfg = timm.models.get_pretrained_cfg(spec.hub_name)
    trained = cfg.input_size[-1]
    # timm would interpolate the weights to another size or window: another model than the one trained
    if kwargs.get("img_size", trained) != trained:
        raise WeightsError(f"the pretrained weights of {spec.hub_name} were trained at {trained} x {trained} "
                           f"pixels; --img-size {kwargs['img_size']} is for a checkpoint of your own (--weights) "
                           "trained at that size, or --random-init")
    if "window_size" in kwargs:
        raise WeightsError(f"the pretrained weights of {spec.hub_name} were trained with its own window; "
                           "--window-size is for a checkpoint of your own (--weights) or --random-init")
    # timm would leave a classifier of another size (or the one a backbone lacks) randomly initialized
    if not cfg.num_classes:
        raise WeightsError(f"the pretrained weights of {spec.hub_name} have no classifier (a backbone trained for "
                           "features, not classes): export a checkpoint fine-tuned on your classes (--weights FILE), "
                           "or a weights tag with a classifier (timm.list_pretrained lists them)")
    if num_classes != cfg.num_classes:
        raise WeightsError(f"the pretrained weights of {spec.hub_name} classify {cfg.num_classes} classes, not "
                           f"{num_classes} (--num-classes / --labels): the classifier would be random. Export your "
                           "fine-tuned checkpoint (--weights FILE), or --random-init to try the pipeline")
    hub_id = cfg.hf_hub_id
    if not hub_id and not cfg.url and cfg.origin_url:  # models/architectures/: released on a page, by hand
        raise WeightsUnavailableError(
            f"the authors of {spec.timm_name} release its weights on a page to download from by hand, not as a file "
            f"vitserve can fetch: {cfg.origin_url}\n"
            "  - download the checkpoint there and export it: --weights FILE\n"
            "  - try the pipeline without weights:           --random-init (the model will classify at random)")
    if not hub_id and cfg.url:  # models/architectures/: the authors' released file
        path = w.release_file(cfg.url)
        model = create(spec.timm_name, kwargs, num_classes)
        w.fit_state_dict(model, w.read_state_dict(path), str(path))
        return model, {"source": "pretrained", "url": cfg.url, "sha256": sha256(path)}
    if w.hub_reachable():
        log.info("downloading pretrained weights %s", spec.hub_name)
        try:
            model = create(spec.hub_name, kwargs, num_classes, pretrained=True)
        except Exception as e:  # noqa: BLE001 - the hub client raises many kinds; all mean "no weights"
            raise WeightsUnavailableError(f"downloading pretrained weights for {spec.hub_name} failed: {e}") from e
        return model, {"source": "pretrained", "hub_id": hub_id}
    cached = w.cached_pretrained_file(hub_id) if hub_id else None
    if cached is None:
        raise w.offline_error(spec.hub_name)
    log.info("model hub not reachable; using cached weights %s", cached)
    model = create(spec.timm_name, kwargs, num_classes)
    w.fit_state_dict(model, w.read_state_dict(cached), str(cached))
    return model, {"source": "pretrained", "hub_id": hub_id, "sha256": sha256(cached)}


def default_labels(spec: ModelSpec, num_classes: int) -> list[str]:
    if len(spec.label_names) == num_classes:
        return list(spec.label_names)
    if spec.labels == IMAGENET_LABELS:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset({"num_classes": num_classes})  # 1k, 12k, 21k, 22k: told apart by their sizes
        if subset:
            # "tench, Tinca tinca" -> "tench": the first synonym is the common name
            return [d.split(",")[0].strip() for d in ImageNetInfo(subset).label_descriptions()]
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
