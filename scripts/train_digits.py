"""Trains `swin_digits`, the small Swin that ships with vitserve, on scikit-learn's handwritten digits (CPU).

    python scripts/train_digits.py            # writes models/assets/swin_digits/{model.safetensors,labels.txt}

The architecture is timm's SwinTransformer with shifted windows, in a small config chosen so that one model
exercises every case of the window rewrite (see vitserve.models.families.swin_digits.DIGITS_TIMM_KWARGS).
Images go through the same eval transform the exported artifact uses (the catalogue's preprocessing), plus small
random affine jitter during training. Prints held-out accuracy; the run fails below --min-accuracy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.data import create_transform
from torchvision.transforms import v2

from vitserve.models.catalogue import SPECS
from vitserve.models.digits import load_split

OUT = Path(__file__).resolve().parent.parent / "models" / "assets" / "swin_digits"


def to_tensor(images, preprocess) -> torch.Tensor:
    t = create_transform(input_size=preprocess.input_size, interpolation=preprocess.interpolation,
                         mean=preprocess.mean, std=preprocess.std, crop_pct=preprocess.crop_pct, is_training=False)
    return torch.stack([t(img) for img in images])


def evaluate(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--min-accuracy", type=float, default=0.95)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    torch.manual_seed(0)
    spec = SPECS["swin_digits"]
    train_images, train_labels, test_images, test_labels = load_split()
    x_train, y_train = to_tensor(train_images, spec.preprocess), torch.as_tensor(train_labels)
    x_test, y_test = to_tensor(test_images, spec.preprocess), torch.as_tensor(test_labels)
    jitter = v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))

    model = timm.create_model(spec.timm_name, pretrained=False, **spec.timm_kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * ((len(x_train) + args.batch_size - 1) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train))
        for start in range(0, len(order), args.batch_size):
            idx = order[start:start + args.batch_size]
            xb = torch.stack([jitter(img) for img in x_train[idx]])
            loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            accuracy = evaluate(model, x_test, y_test)
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.3f}  held-out accuracy {accuracy:.2%}"
                  f"  ({time.perf_counter() - started:.0f}s)", flush=True)
    accuracy = evaluate(model, x_test, y_test)
    if accuracy < args.min_accuracy:
        raise SystemExit(f"held-out accuracy {accuracy:.2%} is below {args.min_accuracy:.0%}; weights not written")
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out / "model.safetensors"))
    (args.out / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))
    print(f"held-out accuracy {accuracy:.2%} on {len(y_test)} images; wrote {args.out}")


if __name__ == "__main__":
    main()
