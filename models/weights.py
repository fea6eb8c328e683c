"""Reading checkpoints and fitting them to an architecture, with errors that say what to pass instead."""

from __future__ import annotations

import argparse
import math
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from vitserve.config import hub_connect_timeout
from vitserve.errors import CheckpointMismatchError, WeightsError, WeightsUnavailableError

# Keys under which training scripts (timm's train.py, DeiT, Swin's original repo, Lightning-style loops) nest the
# weights, in the order they are looked for. timm's CheckpointSaver layout (`state_dict`, `state_dict_ema`): the EMA
# weights, which timm's load_checkpoint takes. DeiT's layout, which CeiT, LocalViT and other DeiT-based repositories
# keep (`model`, `model_ema`): `model`, which their evaluation (`main.py --eval --resume`) loads; `model_ema` alone
# is still found.
WRAPPER_KEYS = ("state_dict_ema", "state_dict", "model", "model_ema", "module")
# .pth.tar: what timm's train.py and the training scripts built on it (T2T-ViT, LV-ViT, ...) name their checkpoints
SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".pth.tar")
SHOWN_KEYS = 8


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / .pth / .pt checkpoint, unwrapped. Never runs pickled code."""
    path = Path(path)
    if path.is_dir():
        hint = (f"it is a timm model folder: export it as the model, `vitserve export {path}`, which also takes its "
                "architecture, classes and preprocessing" if (path / "config.json").is_file() else
                "pass the checkpoint file inside it")
        raise WeightsError(f"--weights {path} is a folder; {hint}")
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if not path.name.endswith(SUFFIXES):
        raise WeightsError(f"weights file {path} has an unknown extension; use one of {', '.join(SUFFIXES)}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"cannot read {path} as safetensors ({e}); is the file complete?") from e
    return unwrap(_torch_load(path), path)


def _torch_load(path: Path) -> object:
    # weights_only=True refuses arbitrary pickled objects; argparse.Namespace is allowed because timm's train.py
    # stores its arguments in every checkpoint, and rebuilding a Namespace runs no code of the file's choosing.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise WeightsError(
                f"{path} holds Python objects besides tensors, and vitserve does not run pickled code. "
                "Save only the weights (torch.save(model.state_dict(), 'weights.pth')) or convert them to "
                f".safetensors. Detail: {str(e).splitlines()[0]}"
            ) from e
        raise WeightsError(f"cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: {e}); "
                           "is the file complete?") from e


def unwrap(obj: object, path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint `obj` (from `path`), out of the training scripts' wrapper keys."""
    while isinstance(obj, dict) and not _is_state_dict(obj):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
        if key is None:
            raise WeightsError(
                f"{path} is a dict without tensors at its top level or under any of {', '.join(WRAPPER_KEYS)} "
                f"(its keys: {', '.join(map(str, list(obj)[:SHOWN_KEYS]))})"
            )
        obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    # DataParallel / DistributedDataParallel save every key under "module."
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def _is_state_dict(d: dict) -> bool:
    return bool(d) and sum(isinstance(v, torch.Tensor) for v in d.values()) >= len(d) / 2


def fit_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Loads `state_dict` into `model` strictly; on any mismatch, raises an error naming keys and the fix."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        # timm's per-family converter: maps the original repos' key layouts (Swin, DeiT, ...) to timm's and
        # leaves timm-format dicts as they are. A dict it cannot handle is compared as given.
        given = state_dict
        try:
            state_dict = filter_fn(given, model)
        except Exception:  # noqa: BLE001 - any failure just means "not that layout"
            pass
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        (k, tuple(state_dict[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        if filter_fn is not None:
            _refuse_resampling(model, given, state_dict, source)
        model.load_state_dict(state_dict, strict=True)
        return
    lines = [f"the checkpoint {source} does not fit {model.__class__.__name__}:"]
    if mismatched:
        lines.append(f"  {len(mismatched)} tensors have another shape: " + ", ".join(
            f"{k} {got} (model expects {want})" for k, got, want in mismatched[:SHOWN_KEYS]))
    if missing:
        lines.append(f"  {len(missing)} missing keys: {_some(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys: {_some(unexpected)}")
    head_classes = _checkpoint_num_classes(model, state_dict)
    if head_classes is not None and head_classes != _model_num_classes(model):
        lines.append(f"The checkpoint's classifier has {head_classes} classes: pass --num-classes {head_classes} "
                     "(and --labels FILE with one class name per line).")
    else:
        lines.append("Check that the model name matches the architecture the checkpoint was trained with.")
    raise CheckpointMismatchError("\n".join(lines))


def _refuse_resampling(model: nn.Module, given: dict[str, torch.Tensor], converted: dict[str, torch.Tensor],
                       source: str) -> None:
    """timm's converters also interpolate position embeddings and relative-position tables to the model's input
    size and window, so that a checkpoint trained at 384 px loads into a 224 px model. That is another model than
    the one trained; the export would verify against it and never notice. CheckpointMismatchError instead, naming
    the size or window the checkpoint was trained with. A resized tensor is a new one with another element count
    than the given tensor of its name; renamed keys (Swin's original layout moves every downsample to the next
    stage) keep their tensor objects, and layout changes their element count."""
    untouched = {id(t) for t in given.values()}
    resized = [(k, tuple(given[k].shape), tuple(v.shape)) for k, v in converted.items()
               if id(v) not in untouched and k in given and given[k].numel() != v.numel()]
    if not resized:
        return
    lines = [f"the checkpoint {source} was trained at another input size or window than this "
             f"{model.__class__.__name__}: loading it would interpolate " + ", ".join(
                 f"{k} {a} -> {b}" for k, a, b in resized[:SHOWN_KEYS]) + ", and the export would not be the model "
             "you trained."]
    size = _trained_input_size(model, resized)
    if size is not None:
        lines.append(f"It was trained at {size} x {size} pixels: pass --img-size {size}.")
    window = _trained_window(resized)
    if window is not None:
        lines.append(f"It was trained with {window} x {window} windows: pass --window-size {window} (and "
                     "--img-size if it was trained at another size too).")
    raise CheckpointMismatchError("\n".join(lines))


def _trained_input_size(model: nn.Module, resized: list[tuple[str, tuple, tuple]]) -> int | None:
    """From a ViT-style `pos_embed` (1, tokens, C): the square input size whose patch grid has that many tokens."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    for key, shape, _ in resized:
        if key.rsplit(".", 1)[-1] != "pos_embed" or len(shape) != 3 or patch is None:
            continue
        for prefix in (getattr(model, "num_prefix_tokens", 0), 0):  # class / distillation tokens may have none
            grid = math.isqrt(max(shape[1] - prefix, 0))
            if grid and grid * grid == shape[1] - prefix:
                return grid * patch[0]
    return None


def _trained_window(resized: list[tuple[str, tuple, tuple]]) -> int | None:
    """From a Swin `relative_position_bias_table` ((2w - 1)^2, heads): the window w."""
    for key, shape, _ in resized:
        if key.endswith("relative_position_bias_table"):
            side = math.isqrt(shape[0])
            if side * side == shape[0] and side % 2 == 1:
                return (side + 1) // 2
    return None


def _some(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def _classifier_keys(model: nn.Module) -> list[str]:
    names = model.pretrained_cfg.get("classifier", "head") if hasattr(model, "pretrained_cfg") else "head"
    return [f"{n}.weight" for n in ([names] if isinstance(names, str) else names)]


def _checkpoint_num_classes(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> int | None:
    for key in _classifier_keys(model):
        if key in state_dict and state_dict[key].ndim == 2:
            return int(state_dict[key].shape[0])
    return None


def _model_num_classes(model: nn.Module) -> int | None:
    return getattr(model, "num_classes", None)


# ---- pretrained weights from the model hub ------------------------------------------------------------------


def hub_reachable() -> bool:
    """True when a TCP connection to the Hugging Face hub (or HF_ENDPOINT) opens within the timeout."""
    from huggingface_hub import constants

    return reachable(constants.ENDPOINT)


def reachable(address: str) -> bool:
    """True when a TCP connection to the host of the URL `address` opens within the timeout."""
    url = urlparse(address)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=hub_connect_timeout()):
            return True
    except OSError:
        return False


def cached_pretrained_file(hub_id: str) -> Path | None:
    """The hub checkpoint of `hub_id` when it is already in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def release_file(url: str) -> Path:
    """The checkpoint an author's repository releases at `url` (architectures timm lacks, whose weights are not on
    the model hub): from PyTorch's download cache (`torch.hub.get_dir()/checkpoints`), downloaded there first when
    it is not yet. WeightsUnavailableError when it is not cached and cannot be downloaded."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if cached.is_file():
        return cached
    if reachable(url):
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(cached), progress=False)
            return cached
        except Exception as e:  # noqa: BLE001 - urllib raises many kinds; all mean "no weights"
            detail = f"downloading it failed: {e}"
    else:
        detail = f"{urlparse(url).hostname} is not reachable from this machine"
    raise WeightsUnavailableError(
        f"cannot get the released weights {url}: {detail}, and they are not in PyTorch's download cache "
        f"({cached}).\n"
        "  - download the file elsewhere and export it:  --weights FILE\n"
        "  - or put it in the cache folder above, under that name\n"
        "  - try the pipeline without weights:          --random-init (the model will classify at random)"
    )


def offline_error(hub_name: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"cannot get pretrained weights for {hub_name}: the model hub is not reachable from this machine and "
        "the weights are not in the local cache.\n"
        "  - export your own checkpoint:      --weights FILE (.safetensors, .pth or .pt)\n"
        "  - try the pipeline without weights: --random-init (the model will classify at random)\n"
        "  - or run `vitserve export swin_digits`, the small model that ships with vitserve."
    )
