"""The torch runtime's on-device eval transform against the server's CPU one (vitserve.preprocess), on photographs:
the same geometry, pixels within a stated tolerance, the same top-1; each image's failure its own. On the CPU here
(torchvision's libjpeg-turbo decoder, torch's antialiased resize); on a CUDA GPU too where there is one (nvJPEG)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from tests.conftest import ROOT
from vitserve.artifact import Preprocess, read_manifest
from vitserve.errors import PayloadTooLargeError, RequestError
from vitserve.preprocess import decode_image, transform
from vitserve.runtimes.device_preprocess import DevicePreprocess

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PREPROCESSES = {
    "center-bicubic": Preprocess((3, 224, 224), *IMAGENET, 0.875, "bicubic", "center"),
    "center-bilinear": Preprocess((3, 224, 224), (0.5,) * 3, (0.5,) * 3, 0.9, "bilinear", "center"),
    "squash": Preprocess((3, 384, 384), *IMAGENET, 1.0, "bicubic", "squash"),
    "border": Preprocess((3, 224, 224), *IMAGENET, 0.95, "bicubic", "border"),
}
# |device - CPU| in 8-bit levels (0..255) over every pixel of every photograph: the largest and the mean. On the CPU
# both decode with libjpeg-turbo; the difference is torch's and PIL's resampling (measured: at most 2, mean below
# 0.01). nvJPEG's IDCT and chroma upsampling differ from libjpeg's by a few levels.
TOLERANCE = {"cpu": (2.01, 0.02), "cuda": (12, 1.0)}  # 2.01: 2 levels and float rounding
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="needs a CUDA GPU"))]


def _jpeg(array: np.ndarray, **kw) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "JPEG", quality=90, **kw)
    return out.getvalue()


PHOTOS = {name: _jpeg(getattr(skimage.data, name)()) for name in ("astronaut", "chelsea", "coffee", "rocket")}
# three of one size, transformed on the device together: each must stay in its own row
PHOTOS |= {f"{name}-500": _jpeg(np.asarray(Image.fromarray(getattr(skimage.data, name)()).resize((500, 375))))
           for name in ("chelsea", "coffee", "astronaut")}


def _levels(a: np.ndarray, b: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    return np.abs(a - b) * np.asarray(preprocess.std).reshape(3, 1, 1) * 255


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", PREPROCESSES)
def test_on_device_transform_matches_the_cpu_path(name, device):
    preprocess = PREPROCESSES[name]
    batch, failures = DevicePreprocess(preprocess, device)(list(PHOTOS.values()))
    assert failures == [None] * len(PHOTOS) and batch.shape == (len(PHOTOS), *preprocess.input_size)
    largest, mean = TOLERANCE[device]
    for blob, row in zip(PHOTOS.values(), batch.cpu().numpy()):
        levels = _levels(row, transform(decode_image(blob), preprocess), preprocess)
        assert levels.max() <= largest and levels.mean() <= mean, (levels.max(), levels.mean())


@pytest.mark.parametrize("device", DEVICES)
def test_every_image_keeps_its_own_outcome(device):
    """Formats the device does not decode go through the CPU path; grey, EXIF-rotated and CMYK JPEGs are handled;
    an unreadable image, a truncated JPEG and one over the pixel limit fail alone, with the CPU path's errors."""
    preprocess = PREPROCESSES["center-bicubic"]
    rocket = skimage.data.rocket()
    png = io.BytesIO()
    Image.fromarray(rocket).save(png, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    cmyk = io.BytesIO()
    Image.fromarray(rocket).convert("CMYK").save(cmyk, "JPEG", quality=90)
    blobs = {"png": png.getvalue(), "grey": _jpeg(skimage.data.camera()), "exif": _jpeg(rocket, exif=exif),
             "cmyk": cmyk.getvalue(), "text": b"not an image", "truncated": PHOTOS["coffee"][:5000],
             "huge": _jpeg(np.asarray(Image.fromarray(skimage.data.coffee()).resize((1000, 700)))), "empty": b""}
    batch, failures = DevicePreprocess(preprocess, device)(list(blobs.values()), max_pixels=300_000)
    outcome = dict(zip(blobs, failures))
    assert isinstance(outcome["text"], RequestError) and "not a readable image" in str(outcome["text"])
    assert isinstance(outcome["truncated"], RequestError)
    assert isinstance(outcome["huge"], PayloadTooLargeError) and "1000x700" in str(outcome["huge"])
    assert isinstance(outcome["empty"], RequestError)
    largest, mean = TOLERANCE[device]
    for i, name in enumerate(blobs):
        if outcome[name] is None:
            levels = _levels(batch[i].cpu().numpy(), transform(decode_image(blobs[name]), preprocess), preprocess)
            assert levels.max() <= max(largest, 4) and levels.mean() <= mean, (name, levels.max(), levels.mean())
        else:
            assert not batch[i].any()  # a failed image's row stays zeros
    assert [n for n in blobs if outcome[n] is None] == ["png", "grey", "exif", "cmyk"]


@pytest.mark.parametrize("device", DEVICES)
def test_the_model_gives_the_same_top1(device, digits_artifact):
    """Through the shipped model, photographs and the digit examples: the same class from both paths."""
    from vitserve.runtimes.onnxruntime import OnnxRuntime

    preprocess = read_manifest(digits_artifact).preprocess
    blobs = [*PHOTOS.values(), *(_jpeg(np.asarray(Image.open(ROOT / "examples" / f"digit_{d}.png").convert("RGB")
                                                  .resize((96, 96))) ) for d in range(10))]
    batch, failures = DevicePreprocess(preprocess, device)(blobs)
    assert not any(failures)
    model = OnnxRuntime(digits_artifact)
    on_device = model(batch.cpu().numpy()).argmax(1)
    on_cpu = model(np.stack([transform(decode_image(b), preprocess) for b in blobs])).argmax(1)
    assert list(on_device) == list(on_cpu)
    assert list(on_device[len(PHOTOS):]) == list(range(10))
