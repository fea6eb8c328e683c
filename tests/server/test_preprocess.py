"""The torch-free eval transform must equal timm's on real photographs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image
from timm.data import create_transform

from vitserve.artifact import Preprocess
from vitserve.models.registry import SPECS
from vitserve.server.preprocess import decode_image, transform

CONFIGS = [SPECS["swin_t"].preprocess, SPECS["swinv2_t"].preprocess, SPECS["cait_xxs24"].preprocess,
           SPECS["vit_b_16"].preprocess, Preprocess((3, 224, 224), (0.4, 0.4, 0.4), (0.2, 0.3, 0.2), 0.875, "bilinear")]


def _timm(image: Image.Image, pre: Preprocess) -> np.ndarray:
    t = create_transform(input_size=pre.input_size, interpolation=pre.interpolation, mean=pre.mean, std=pre.std,
                         crop_pct=pre.crop_pct, crop_mode="center", is_training=False)
    return t(image).numpy()


@pytest.mark.parametrize("pre", CONFIGS, ids=lambda p: f"{p.input_size[1]}-{p.crop_pct}-{p.interpolation}")
@pytest.mark.parametrize("photo", ["astronaut", "chelsea", "rocket", "camera"])
def test_transform_matches_timm(pre, photo):
    image = Image.fromarray(getattr(skimage.data, photo)()).convert("RGB")
    ours, theirs = transform(image, pre), _timm(image, pre)
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-5


@pytest.mark.parametrize("size", [(4000, 300), (2000, 90), (31, 1500), (40000, 1)])
def test_elongated_images_resize_only_the_crop(size):
    """Past LONG_RESIZE_RATIO the resize covers the crop only: close to timm's full resize, at bounded cost."""
    pre = SPECS["swin_t"].preprocess
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours = transform(image, pre)
    if size == (40000, 1):  # timm would resize to 248 x 9,920,000: compare the shape and a uniform strip instead
        assert ours.shape == (3, 224, 224)
        flat = Image.new("RGB", size, (10, 200, 30))
        expected = (np.array([10, 200, 30], np.float32) / 255 - np.array(pre.mean)) / np.array(pre.std)
        assert np.allclose(transform(flat, pre), expected[:, None, None].astype(np.float32), atol=1e-5)
        return
    theirs = _timm(image, pre)
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99
    if min(size) >= 248:  # both sides shrink: PIL's box resample matches up to one 8-bit level in a few pixels
        one_level = 1 / 255 / min(pre.std) + 1e-5
        assert np.abs(ours - theirs).max() <= one_level
        assert (np.abs(ours - theirs) > 1e-5).mean() < 0.01


def _png(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_decode_handles_modes_and_exif():
    rgb = Image.fromarray(skimage.data.chelsea())
    for mode in ("L", "P", "RGBA", "CMYK"):
        data = _png(rgb.convert(mode)) if mode != "CMYK" else _jpeg(rgb.convert("CMYK"))
        assert decode_image(data).mode == "RGB"
    sixteen = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    decoded = np.asarray(decode_image(_png(sixteen)))
    assert decoded.max() > 200, "16-bit images must be scaled, not clipped"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rotated = decode_image(_jpeg(rgb, exif=exif))
    assert rotated.size == (rgb.height, rgb.width)


def _jpeg(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **kw)
    return buf.getvalue()
