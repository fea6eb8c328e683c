"""What `--fast-jpeg` saves: the server's decode + eval transform of one JPEG photograph, full decode against draft
decoding (1/2..1/8 scale in the DCT domain, no less than twice the model's resize), side by side in one run.

    python benchmarks/decode.py [--rounds 15] [--model swin_t]

For photographs of 12, 4 and 1 megapixels (scikit-image's, resized, JPEG quality 90), prints each path's median
milliseconds (alternating run by run, order flipping every round), their ratio, and how far the fast path's model
input is from the full one's (mean and max |difference| in 8-bit levels, cosine).
"""

from __future__ import annotations

import argparse
import io
import platform

import numpy as np
import PIL
import skimage.data
from PIL import Image
from timing import side_by_side  # benchmarks/timing.py, beside this script

from vitserve.models.catalogue import resolve
from vitserve.preprocess import decode_image, draft_side, transform

SIZES = {"12 MP": (4000, 3000), "4 MP": (2304, 1728), "1 MP": (1152, 864)}
PHOTOS = ("astronaut", "coffee", "chelsea")


def jpeg(photo: str, size: tuple[int, int]) -> bytes:
    image = Image.fromarray(getattr(skimage.data, photo)()).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--model", default="swin_t", help="whose eval transform (default swin_t: 224, crop 0.9)")
    args = parser.parse_args()
    pre = resolve(args.model).preprocess
    side = draft_side(pre)
    level = 1 / 255 / min(pre.std)  # one 8-bit level in normalized units, at its largest
    print(f"{platform.processor() or platform.machine()}, Pillow {PIL.__version__}, {args.model} transform "
          f"({pre.input_size[1]} px, crop_pct {pre.crop_pct}); draft side >= {side}; medians of {args.rounds}")
    print(f"{'photo':>16} {'full ms':>8} {'fast ms':>8} {'ratio':>6} {'decoded at':>11} "
          f"{'mean lvl':>8} {'max lvl':>7} {'cosine':>8}")
    for label, size in SIZES.items():
        for photo in PHOTOS:
            data = jpeg(photo, size)
            paths = {"full": lambda data=data: transform(decode_image(data), pre),
                     "fast": lambda data=data: transform(decode_image(data, min_side=side), pre)}
            ms = side_by_side(paths, args.rounds)
            full, fast = paths["full"](), paths["fast"]()
            diff = np.abs(full - fast)
            cosine = float((full * fast).sum() / np.linalg.norm(full) / np.linalg.norm(fast))
            at = "x".join(map(str, decode_image(data, min_side=side).size))
            print(f"{label + ' ' + photo:>16} {ms['full']:8.1f} {ms['fast']:8.1f} {ms['full'] / ms['fast']:5.1f}x "
                  f"{at:>11} {diff.mean() / level:8.2f} {diff.max() / level:7.1f} {cosine:8.5f}")


if __name__ == "__main__":
    main()
