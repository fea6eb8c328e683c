"""The eval transform on the model's device, for the torch runtime: encoded images in, the batch the model sees out.

JPEGs are decoded where the model runs (torchvision's decode_jpeg: nvJPEG in batches on a CUDA device, libjpeg-turbo
on the CPU), so that the compressed bytes, not float32 pixels, cross the bus; other formats (PNG, WebP, ...) and
JPEGs the device decoder refuses (CMYK, progressive ones some nvJPEG versions reject) are decoded on the CPU by the
server's own decode_image and sent as uint8. Resize (antialiased, the artifact's interpolation), crop or pad and
normalise then run on the device, all the images of one size at once, following the same `vitserve.preprocess.geometry`
as the CPU path; tests/runtimes/test_device_preprocess.py holds the two to a stated tolerance on photographs.

Each image keeps its own outcome: one that cannot be decoded gets its RequestError in place of its pixels, and the
rest of the batch goes on.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from vitserve.artifact import Preprocess
from vitserve.errors import RequestError
from vitserve.preprocess import decode_image, geometry, open_image, transform

MODES = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
         "bicubic": InterpolationMode.BICUBIC, "lanczos": InterpolationMode.LANCZOS, "box": InterpolationMode.BOX,
         "hamming": InterpolationMode.HAMMING}
ON_DEVICE = ("nearest", "bilinear", "bicubic")  # antialiased resizes torch has on tensors; others: the CPU path
JPEG_START = b"\xff\xd8\xff"


def check_header(data: bytes, max_pixels: int | None) -> tuple[str, int, int]:
    """(format, width, height) from the header alone, before any pixel is decoded, with the CPU path's checks
    (vitserve.preprocess.open_image: RequestError for data that is no image, PayloadTooLargeError over `max_pixels`
    or for a decompression bomb)."""
    with open_image(data, max_pixels) as image:
        return image.format, *image.size


class DevicePreprocess:
    """Encoded images -> the model's input batch on `device`, with the artifact's eval transform."""

    def __init__(self, preprocess: Preprocess, device: str | torch.device, dtype: torch.dtype = torch.float32):
        self.preprocess = preprocess
        self.device = torch.device(device)
        self.dtype = dtype
        self.mean = torch.tensor(preprocess.mean, device=self.device).view(3, 1, 1) * 255
        self.std = torch.tensor(preprocess.std, device=self.device).view(3, 1, 1) * 255

    def __call__(self, blobs: list[bytes], max_pixels: int | None = None) -> tuple[torch.Tensor, list[Exception]]:
        """(batch (N, 3, H, W) of `dtype` on the device, failures): row i holds image i, or zeros where
        `failures` has an exception for index i (failures is a list of N entries, None where the image is fine)."""
        _, size, _ = self.preprocess.input_size
        batch = torch.zeros((len(blobs), 3, size, size), dtype=self.dtype, device=self.device)
        failures: list[Exception | None] = [None] * len(blobs)
        pixels = self.decode(blobs, max_pixels, failures)
        sizes: dict[tuple[int, int], list[int]] = {}  # images of one size are transformed together: a few launches
        for i, image in enumerate(pixels):
            if isinstance(image, np.ndarray):  # transformed on the CPU already
                batch[i] = torch.from_numpy(image).to(self.device, self.dtype, non_blocking=True)
            elif image is not None:
                sizes.setdefault(tuple(image.shape[1:]), []).append(i)
        for rows in sizes.values():
            try:
                batch[rows] = self.transform(torch.stack([pixels[i] for i in rows]))
            except Exception as e:  # noqa: BLE001 - these images only
                for i in rows:
                    failures[i] = RequestError(f"cannot preprocess this image: {e}")
        return batch, failures

    def decode(self, blobs: list[bytes], max_pixels: int | None,
               failures: list[Exception | None]) -> list[torch.Tensor | np.ndarray | None]:
        """Per image: uint8 (3, H, W) on the device (a JPEG the device decoded, or another file decoded on the CPU),
        or a float32 (3, H, W) numpy array already transformed on the CPU (a transform the device cannot do, or a
        preprocessed input), or None (failed)."""
        out: list[torch.Tensor | np.ndarray | None] = [None] * len(blobs)
        jpegs = []
        for i, data in enumerate(blobs):
            if isinstance(data, np.ndarray):  # already preprocessed (a V2 pixel_values tensor's row)
                out[i] = data
                continue
            try:
                fmt, width, height = check_header(data, max_pixels)
            except RequestError as e:
                failures[i] = e
                continue
            if not self._on_device(width, height):
                out[i] = self._on_cpu(data, max_pixels, failures, i, transformed=True)
            elif fmt == "JPEG" and data.startswith(JPEG_START):
                jpegs.append(i)
            else:
                out[i] = self._on_cpu(data, max_pixels, failures, i)
        if jpegs:
            for i, image in zip(jpegs, self._decode_jpegs([blobs[i] for i in jpegs])):
                out[i] = image if image is not None else self._on_cpu(blobs[i], max_pixels, failures, i)
        return out

    def _on_device(self, width: int, height: int) -> bool:
        """Whether the transform of a width x height image runs on the device: an interpolation torch resizes with
        antialiasing, and a crop inside the (resized, padded) image; the rest (a very elongated image, a crop_pct
        above 1) is rare and runs on the CPU."""
        g = geometry(width, height, self.preprocess)
        w, h = g.canvas or g.resize or (width, height)
        return (self.preprocess.interpolation in ON_DEVICE and g.source_box is None and min(g.left, g.top) >= 0
                and g.left + g.size <= w and g.top + g.size <= h)

    def _decode_jpegs(self, blobs: list[bytes]) -> list[torch.Tensor | None]:
        """All at once (one nvJPEG batch on CUDA); where the batch fails, one by one, None for those that fail."""
        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        options = {"mode": ImageReadMode.RGB, "device": self.device, "apply_exif_orientation": True}
        try:
            return list(decode_jpeg(data, **options))
        except RuntimeError:
            decoded = []
            for one in data:
                try:
                    decoded.append(decode_jpeg(one, **options))
                except RuntimeError:
                    decoded.append(None)
            return decoded

    def _on_cpu(self, data: bytes, max_pixels: int | None, failures: list, i: int,
                transformed: bool = False) -> torch.Tensor | np.ndarray | None:
        """Decoded on the CPU (the server's decode_image): its uint8 pixels sent to the device, or, `transformed`,
        the whole transform done there too (float32 out)."""
        try:
            image = decode_image(data, max_pixels)
        except RequestError as e:
            failures[i] = e
            return None
        if transformed:
            return transform(image, self.preprocess)
        return torch.from_numpy(np.asarray(image)).permute(2, 0, 1).to(self.device, non_blocking=True)

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (K, 3, H, W) on the device, images of one size -> their normalised crops (K, 3, S, S)."""
        g = geometry(images.shape[3], images.shape[2], self.preprocess)
        if g.resize is not None:
            width, height = g.resize
            images = F.resize(images, [height, width], interpolation=MODES[self.preprocess.interpolation],
                              antialias=True)
        if g.canvas is not None:
            width, height = g.canvas
            x, y = g.offset
            canvas = torch.tensor(g.fill, dtype=torch.uint8, device=self.device).view(1, 3, 1, 1).expand(
                len(images), 3, height, width).clone()
            canvas[:, :, y:y + images.shape[2], x:x + images.shape[3]] = images
            images = canvas
        crop = images[:, :, g.top:g.top + g.size, g.left:g.left + g.size]
        return ((crop.float() - self.mean) / self.std).to(self.dtype)
