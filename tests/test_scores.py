"""Softmax and the top-k list every answer carries: top_indices equals the full stable sort's first k, ties too."""

from __future__ import annotations

import numpy as np
import pytest

from vitserve.scores import softmax, top_indices, top_k


@pytest.mark.parametrize("k", [1, 2, 5, 9, 10, 11])
def test_top_indices_equal_the_stable_sort(k):
    rng = np.random.default_rng(k)
    probs = rng.standard_normal((200, 10)).astype(np.float32)
    probs[:50] = np.round(probs[:50])  # many ties, at the k-th place too
    probs[50:60] = 0.25  # every class tied
    expected = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    assert np.array_equal(top_indices(probs, k), expected)


def test_top_k_lists_labels_scores_best_first():
    logits = np.array([[0.0, 2.0, 1.0, 2.0], [3.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    probs = softmax(logits)
    assert np.allclose(probs.sum(-1), 1)
    answer = top_k(probs, ["a", "b", "c", "d"], 3)
    assert [[p["label"] for p in row] for row in answer] == [["b", "d", "c"], ["a", "b", "c"]]
    assert answer[0][0]["score"] == pytest.approx(float(probs[0, 1])) and answer[0][0]["index"] == 1
    assert len(top_k(probs, ["a", "b", "c", "d"], 99)[0]) == 4
