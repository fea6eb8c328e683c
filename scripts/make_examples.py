"""Writes examples/digit_<class>.png: the first held-out image of each class (never seen in training)."""

from pathlib import Path

from vitserve.models.digits import load_split

OUT = Path(__file__).resolve().parent.parent / "examples"

if __name__ == "__main__":
    _, _, images, labels = load_split()
    OUT.mkdir(exist_ok=True)
    for digit in range(10):
        first = next(i for i, label in enumerate(labels) if label == digit)
        images[first].save(OUT / f"digit_{digit}.png")
        print(f"digit_{digit}.png = held-out image #{first}")
