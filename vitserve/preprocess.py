"""Image decoding and the eval transform, in PIL + numpy (the server installs without torch).

The transform reproduces timm's eval transform (crop_mode 'center') step for step: torchvision's Resize of the
shorter side to floor(size / crop_pct) on the PIL image, CenterCrop with torchvision's rounding, ToTensor's /255
and Normalize, all in float32. tests/test_preprocess.py checks it against timm on real photographs.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vitserve.artifact import Preprocess
from vitserve.errors import PayloadTooLargeError, RequestError, VitServeError

INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def find_images(directory: Path) -> list[Path]:
    """The image files under `directory` (by suffix, any depth), sorted."""
    if not directory.is_dir():
        raise VitServeError(f"{directory} is not a directory of images")
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# Above this aspect ratio the resize is computed for the center crop only (see transform).
LONG_RESIZE_RATIO = 4


def draft_side(preprocess: Preprocess) -> int:
    """The smallest side decode_image may decode a JPEG at for `preprocess` (--fast-jpeg): twice the side the
    transform resizes to, so that its resampling still shrinks the image at least 2x."""
    return 2 * math.floor(preprocess.input_size[1] / preprocess.crop_pct)


@contextlib.contextmanager
def _reading():
    """PIL's errors while reading an image, as the server answers them: RequestError for unreadable data,
    PayloadTooLargeError for a decompression bomb (PIL's warning made an error)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PayloadTooLargeError(f"image rejected as a decompression bomb: {e}") from e
    except UnidentifiedImageError as e:  # PIL's own message names an in-memory object, which tells a client nothing
        raise RequestError("not a readable image: its bytes begin like no image format the server reads (JPEG, "
                           "PNG, WebP, GIF, BMP, TIFF, ...)") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL's errors for corrupt, truncated data
        raise RequestError(f"not a readable image ({type(e).__name__}: {e})") from e


def open_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """The image with its header read and no pixel decoded yet (its format and size known): RequestError for empty
    or unreadable data, PayloadTooLargeError over `max_pixels` or for a decompression bomb."""
    if not data:
        raise RequestError("empty image: the upload has no bytes")
    with _reading():
        image = Image.open(io.BytesIO(data))
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise PayloadTooLargeError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return image


def decode_image(data: bytes, max_pixels: int | None = None, min_side: int | None = None) -> Image.Image:
    """Encoded bytes -> upright RGB PIL image (EXIF orientation applied, 16-bit scaled to 8-bit).

    With `min_side`, a JPEG at least twice that large on both sides is decoded at 1/2, 1/4 or 1/8 of its size in
    the DCT domain (PIL's draft mode), never below `min_side`: a fraction of the work for a large photograph, with
    pixels close to, not equal to, a full decode resized (benchmarks/decode.py).

    Raises RequestError for empty, unreadable or truncated data and PayloadTooLargeError for an image over
    `max_pixels`, checked from the header before any pixel is decoded (decompression bombs): open_image.
    """
    image = open_image(data, max_pixels)
    with _reading():
        if min_side is not None and image.format == "JPEG":
            image.draft(None, (min_side, min_side))
        image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: PIL's RGB conversion would clip at 255; scale to 8 bits instead
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).round().astype(np.uint8))
    return image.convert("RGB")


@dataclass(frozen=True)
class Geometry:
    """Where an image of a given size goes in the eval transform, computed once (`geometry`) and carried out by the
    PIL transform here and by the torch runtime's on-device one alike: resize the whole image to `resize` (None:
    keep it), or, for a very elongated image, resample only `source_box` of it straight to the crop; then paste it
    at `offset` on a `canvas` filled with `fill` where it is smaller than the crop; then crop `size` x `size` at
    (`left`, `top`)."""

    resize: tuple[int, int] | None  # (width, height)
    source_box: tuple[float, float, float, float] | None  # (left, top, right, bottom) of the source image
    canvas: tuple[int, int] | None  # (width, height)
    offset: tuple[int, int]
    fill: tuple[int, int, int]
    left: int
    top: int
    size: int


def geometry(width: int, height: int, preprocess: Preprocess) -> Geometry:
    """The eval transform's steps for a width x height image (timm's, with the checkpoint's crop mode)."""
    _, crop, crop_w = preprocess.input_size
    if crop != crop_w:
        raise ValueError(f"only square model inputs are supported, got {crop}x{crop_w}")
    scale = math.floor(crop / preprocess.crop_pct)
    fill = (0, 0, 0)
    if preprocess.crop_mode == "squash":  # both sides to scale, then CenterCrop
        size = (scale, scale)
    elif preprocess.crop_mode == "border":  # the longer side to scale (timm's ResizeKeepRatio), then CenterCropOrPad
        ratio = max(height / scale, width / scale)
        size = (max(1, round(width / ratio)), max(1, round(height / ratio)))  # timm fails on a side of 0; this keeps 1
        fill = tuple(round(255 * m) for m in preprocess.mean)
    else:  # "center": torchvision's Resize(scale) of the shorter side, then CenterCrop(crop)
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = scale, int(scale * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        top, left = int(round((size[1] - crop) / 2.0)), int(round((size[0] - crop) / 2.0))
        if new_long > LONG_RESIZE_RATIO * new_short:
            # A very elongated image (a 1x40000 strip would resize to gigapixels): resample only the source box
            # that maps onto the crop, at a cost independent of the aspect ratio. Shrinking, this equals
            # resize-then-crop up to one 8-bit level in a few pixels; where PIL upsamples an axis it differs by a
            # few levels.
            sx, sy = width / size[0], height / size[1]
            box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
            return Geometry(None, box, None, (0, 0), fill, 0, 0, crop)
        return Geometry(None if size == (width, height) else size, None, None, (0, 0), fill, left, top, crop)
    # torchvision's CenterCrop (fill 0) / timm's CenterCropOrPad: pad a side shorter than the crop with `fill`, the
    # odd pixel after, then crop around the center, rounding like torchvision
    w, h = size
    canvas, offset = None, (0, 0)
    if crop > w or crop > h:
        canvas, offset = (max(w, crop), max(h, crop)), (max(crop - w, 0) // 2, max(crop - h, 0) // 2)
        w, h = canvas
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return Geometry(None if size == (width, height) else size, None, canvas, offset, fill, left, top, crop)


def transform(image: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """RGB PIL image -> float32 array (3, H, W), normalized like timm's eval transform (its crop mode too)."""
    g = geometry(*image.size, preprocess)
    resample = INTERPOLATION[preprocess.interpolation]
    if g.source_box is not None:
        image = image.resize((g.size, g.size), resample, box=g.source_box)
    else:
        if g.resize is not None:  # torchvision's Resize of a PIL image: no resampling when the size is right
            image = image.resize(g.resize, resample)
        if g.canvas is not None:
            canvas = Image.new("RGB", g.canvas, g.fill)
            canvas.paste(image, g.offset)
            image = canvas
        image = image.crop((g.left, g.top, g.left + g.size, g.top + g.size))
    return normalize(np.asarray(image, dtype=np.float32).transpose(2, 0, 1), preprocess)


def normalize(pixels: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """(3, H, W) values 0..255 -> ToTensor's /255, then Normalize, in float32."""
    array = pixels / np.float32(255)
    mean = np.asarray(preprocess.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(preprocess.std, dtype=np.float32).reshape(3, 1, 1)
    return (array - mean) / std
