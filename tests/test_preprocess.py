"""The torch-free eval transform must equal timm's on real photographs."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import skimage.data
from PIL import Image
from timm.data import create_transform

from vitserve.artifact import CROP_MODES, Preprocess
from vitserve.models.catalogue import SPECS
from vitserve.preprocess import decode_image, draft_side, transform

CONFIGS = [SPECS["swin_t"].preprocess, SPECS["swinv2_t"].preprocess, SPECS["cait_xxs24"].preprocess,
           SPECS["vit_b_16"].preprocess, Preprocess((3, 224, 224), (0.4, 0.4, 0.4), (0.2, 0.3, 0.2), 0.875, "bilinear"),
           # timm's other crop modes (CLIP fine-tunes squash; border pads with the mean colour)
           Preprocess((3, 384, 384), (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), 1.0, "bicubic", "squash"),
           Preprocess((3, 224, 224), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.9, "bilinear", "squash"),
           Preprocess((3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1.0, "bicubic", "border"),
           Preprocess((3, 256, 256), (0.3, 0.6, 0.1), (0.2, 0.2, 0.2), 0.95, "bilinear", "border")]
PHOTOS = {"astronaut": None, "chelsea": None, "rocket": None, "camera": None,  # landscape, portrait, small: crops
          "coffee-portrait": (200, 360), "chelsea-small": (150, 97)}              # and pads


def _timm(image: Image.Image, pre: Preprocess) -> np.ndarray:
    t = create_transform(input_size=pre.input_size, interpolation=pre.interpolation, mean=pre.mean, std=pre.std,
                         crop_pct=pre.crop_pct, crop_mode=pre.crop_mode, is_training=False)
    return t(image).numpy()


@pytest.mark.parametrize("pre", CONFIGS,
                         ids=lambda p: f"{p.input_size[1]}-{p.crop_pct}-{p.interpolation}-{p.crop_mode}")
@pytest.mark.parametrize("photo", list(PHOTOS))
def test_transform_matches_timm(pre, photo):
    image = Image.fromarray(getattr(skimage.data, photo.split("-")[0])()).convert("RGB")
    if PHOTOS[photo]:
        image = image.resize(PHOTOS[photo], Image.Resampling.BILINEAR)
    ours, theirs = transform(image, pre), _timm(image, pre)
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-5


def test_crop_modes_differ():
    """The modes must not collapse into one: on a portrait photo each gives a different crop."""
    image = Image.fromarray(skimage.data.coffee()).convert("RGB").resize((200, 360))
    base = SPECS["vit_b_16"].preprocess
    crops = [transform(image, replace(base, crop_mode=mode)) for mode in CROP_MODES]
    for i in range(len(crops)):
        for j in range(i):
            assert np.abs(crops[i] - crops[j]).mean() > 0.05


def test_manifest_crop_mode():
    base = SPECS["vit_b_16"].preprocess.to_dict()
    assert Preprocess.from_dict({**base, "crop_mode": "squash"}).crop_mode == "squash"
    old = {k: v for k, v in base.items() if k != "crop_mode"}
    assert Preprocess.from_dict(old).crop_mode == "center", "manifests written before crop modes were center"
    with pytest.raises(ValueError, match="unknown crop_mode 'stretch'"):
        Preprocess.from_dict({**base, "crop_mode": "stretch"})


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


def _large_jpeg(photo: str, size=(4000, 3000), **kw) -> bytes:
    image = Image.fromarray(getattr(skimage.data, photo)()).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    return _jpeg(image, quality=90, **kw)


@pytest.mark.parametrize("photo", ["astronaut", "coffee"])
def test_fast_jpeg_decodes_large_photos_smaller_and_close(photo):
    """Draft decoding (1/2..1/8 scale in the DCT domain) keeps at least twice the resize target and stays within a
    fraction of one 8-bit level on average of the full decode + resize."""
    pre = SPECS["swin_t"].preprocess
    data = _large_jpeg(photo)
    small = decode_image(data, min_side=draft_side(pre))
    assert small.size == (1000, 750) and min(small.size) >= draft_side(pre) == 496
    exact, fast = transform(decode_image(data), pre), transform(small, pre)
    one_level = 1 / 255 / max(pre.std)
    assert 0 < np.abs(exact - fast).mean() < 0.5 * one_level
    assert (exact * fast).sum() / np.linalg.norm(exact) / np.linalg.norm(fast) > 0.9999


def test_fast_jpeg_leaves_small_jpegs_and_other_formats_alone():
    pre = SPECS["swin_t"].preprocess
    photo = Image.fromarray(skimage.data.chelsea()).convert("RGB")  # 451 x 300: below twice the draft side
    for data in (_jpeg(photo), _png(photo.resize((2000, 1500)))):
        assert np.array_equal(np.asarray(decode_image(data, min_side=draft_side(pre))), np.asarray(decode_image(data)))


def test_fast_jpeg_keeps_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _large_jpeg("astronaut", exif=exif)
    assert decode_image(data, min_side=496).size == (750, 1000)


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
