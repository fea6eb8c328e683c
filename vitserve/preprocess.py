"""Image decoding and the eval transform, in PIL + numpy (the server installs without torch).

The transform reproduces timm's eval transform (crop_mode 'center') step for step: torchvision's Resize of the
shorter side to floor(size / crop_pct) on the PIL image, CenterCrop with torchvision's rounding, ToTensor's /255
and Normalize, all in float32. tests/test_preprocess.py checks it against timm on real photographs.
"""

from __future__ import annotations

import io
import math
import warnings
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


def decode_image(data: bytes, max_pixels: int | None = None, min_side: int | None = None) -> Image.Image:
    """Encoded bytes -> upright RGB PIL image (EXIF orientation applied, 16-bit scaled to 8-bit).

    With `min_side`, a JPEG at least twice that large on both sides is decoded at 1/2, 1/4 or 1/8 of its size in
    the DCT domain (PIL's draft mode), never below `min_side`: a fraction of the work for a large photograph, with
    pixels close to, not equal to, a full decode resized (benchmarks/decode.py).

    Raises RequestError for empty, unreadable or truncated data and PayloadTooLargeError for an image over
    `max_pixels`, checked from the header before any pixel is decoded (decompression bombs).
    """
    if not data:
        raise RequestError("empty image: the upload has no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise PayloadTooLargeError(
                    f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
            if min_side is not None and image.format == "JPEG":
                image.draft(None, (min_side, min_side))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PayloadTooLargeError(f"image rejected as a decompression bomb: {e}") from e
    except UnidentifiedImageError as e:  # PIL's own message names an in-memory object, which tells a client nothing
        raise RequestError("not a readable image: its bytes begin like no image format the server reads (JPEG, "
                           "PNG, WebP, GIF, BMP, TIFF, ...)") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL's errors for corrupt, truncated data
        raise RequestError(f"not a readable image ({type(e).__name__}: {e})") from e
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: PIL's RGB conversion would clip at 255; scale to 8 bits instead
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).round().astype(np.uint8))
    return image.convert("RGB")


def transform(image: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """RGB PIL image -> float32 array (3, H, W), normalized like timm's eval transform (its crop mode too)."""
    _, height, width = preprocess.input_size
    if height != width:
        raise ValueError(f"only square model inputs are supported, got {height}x{width}")
    scale = math.floor(height / preprocess.crop_pct)
    resample = INTERPOLATION[preprocess.interpolation]
    if preprocess.crop_mode == "squash":  # both sides to scale, then CenterCrop
        image = _center_crop_or_pad(_resize(image, (scale, scale), resample), height)
    elif preprocess.crop_mode == "border":  # the longer side to scale (timm's ResizeKeepRatio), then CenterCropOrPad
        w, h = image.size
        ratio = max(h / scale, w / scale)
        size = (max(1, round(w / ratio)), max(1, round(h / ratio)))  # timm fails on a side of 0; this keeps 1
        fill = tuple(round(255 * m) for m in preprocess.mean)
        image = _center_crop_or_pad(_resize(image, size, resample), height, fill)
    else:
        image = _shorter_side_then_crop(image, scale, height, resample)
    array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
    mean = np.asarray(preprocess.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(preprocess.std, dtype=np.float32).reshape(3, 1, 1)
    return (array - mean) / std


def _resize(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """torchvision's Resize of a PIL image to (width, height): no resampling at all when the size is already right."""
    return image if image.size == size else image.resize(size, resample)


def _center_crop_or_pad(image: Image.Image, size: int, fill: tuple[int, ...] = (0, 0, 0)) -> Image.Image:
    """torchvision's CenterCrop (fill 0) / timm's CenterCropOrPad: pad a side shorter than `size` with `fill`, the
    odd pixel after, then crop size x size around the center, rounding like torchvision."""
    w, h = image.size
    if size > w or size > h:
        canvas = Image.new("RGB", (max(w, size), max(h, size)), fill)
        canvas.paste(image, (max(size - w, 0) // 2, max(size - h, 0) // 2))
        image, (w, h) = canvas, canvas.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _shorter_side_then_crop(image: Image.Image, scale: int, crop: int, resample: Image.Resampling) -> Image.Image:
    """crop_mode 'center': torchvision's Resize(scale) of the shorter side, then CenterCrop(crop)."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = scale, int(scale * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    top, left = int(round((size[1] - crop) / 2.0)), int(round((size[0] - crop) / 2.0))
    if new_long <= LONG_RESIZE_RATIO * new_short:
        return _resize(image, size, resample).crop((left, top, left + crop, top + crop))
    # A very elongated image (a 1x40000 strip would resize to gigapixels): resample only the source box that
    # maps onto the crop, at a cost independent of the aspect ratio. Shrinking, this equals resize-then-crop
    # up to one 8-bit level in a few pixels; where PIL upsamples an axis it differs by a few levels.
    sx, sy = w / size[0], h / size[1]
    box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
    return image.resize((crop, crop), resample, box=box)
