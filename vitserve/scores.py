"""Logits -> class scores: the softmax and the top-k list that `/classify` and `vitserve classify` answer with."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[list[dict]]:
    """Per row, the k most probable classes as {label, index, score}, best first."""
    k = max(1, min(k, probs.shape[-1]))
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [[{"label": labels[i], "index": int(i), "score": float(row[i])} for i in idx]
            for row, idx in zip(probs, order)]
