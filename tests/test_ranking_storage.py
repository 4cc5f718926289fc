"""Recall cost of reduced-precision reference storage, measured against float32 exact search.

The data imitate a version-identification catalog: unit-norm 256-d embeddings, 2,000 works
with 5 versions each, queries drawn as new versions of random works. The README's storage
table quotes what this test measures (float16: recall@10 ~0.999, int8: ~0.99).
"""

from __future__ import annotations

import numpy as np
import pytest

from csi_runtime import dequantize_int8, quantize_int8, topk

D, WORKS, VERSIONS, QUERIES, K = 256, 2000, 5, 400, 10


def catalog(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    centers = rng.standard_normal((WORKS, D))
    refs = (centers[:, None, :] + 0.6 * rng.standard_normal((WORKS, VERSIONS, D))).reshape(-1, D)
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    works = rng.integers(0, WORKS, QUERIES)
    q = centers[works] + 0.6 * rng.standard_normal((QUERIES, D))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32), refs.astype(np.float32)


@pytest.mark.parametrize(
    ("storage", "min_recall", "min_top1"), [("float16", 0.995, 0.99), ("int8", 0.97, 0.95)]
)
def test_recall_cost_of_storage(
    rng: np.random.Generator, storage: str, min_recall: float, min_top1: float, record_property
) -> None:  # type: ignore[no-untyped-def]
    q, refs = catalog(rng)
    truth = np.argsort(-(q.astype(np.float64) @ refs.T.astype(np.float64)), axis=1, kind="stable")[:, :K]
    if storage == "float16":
        _, idx = topk(q, refs.astype(np.float16), K)
    else:
        codes, scales = quantize_int8(refs)
        _, idx = topk(q, codes, K, scales=scales)
    recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(idx, truth)]))
    top1 = float(np.mean(idx[:, 0] == truth[:, 0]))
    record_property(f"{storage}_recall@10", recall)
    record_property(f"{storage}_top1", top1)
    print(f"\n{storage}: recall@10 = {recall:.4f}, top-1 agreement = {top1:.4f}")
    assert recall >= min_recall
    assert top1 >= min_top1


def test_int8_quantisation_error_is_bounded(rng: np.random.Generator) -> None:
    x = rng.standard_normal((300, 64)).astype(np.float32) * rng.uniform(0.01, 100, (300, 1)).astype(
        np.float32
    )
    x[5] = 0.0
    codes, scales = quantize_int8(x)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    assert np.abs(codes.astype(np.int32)).max() <= 127
    err = np.abs(dequantize_int8(codes, scales) - x)
    assert (err <= scales[:, None] * 0.5 * (1 + 1e-5) + 1e-30).all()
    assert scales[5] == 0 and (codes[5] == 0).all()
    bad = x.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="row 3"):
        quantize_int8(bad)
