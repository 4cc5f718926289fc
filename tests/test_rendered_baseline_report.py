"""The rendered baseline's per-collection breakdown, against a naive float64 leave-one-out ranking."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from csi_training.batching import collection_of
from csi_training.experiments.rendered_baseline import _write_report, by_collection
from csi_training.metrics import evaluate


def _naive(emb: np.ndarray, works: list[str], queries: list[int]) -> tuple[float, float]:
    """(MAP, Top1) of `queries`, each ranking every other item by float64 inner product."""
    e = emb.astype(np.float64)
    aps, top1 = [], []
    for q in queries:
        others = [i for i in range(len(works)) if i != q]
        order = sorted(others, key=lambda i: -float(e[q] @ e[i]))
        rel = np.array([works[i] == works[q] for i in order])
        hits = np.flatnonzero(rel) + 1
        aps.append(np.mean(np.arange(1, len(hits) + 1) / hits))
        top1.append(bool(rel[0]))
    return float(np.mean(aps)), float(np.mean(top1))


@pytest.mark.parametrize(("n_works", "dim"), [(6, 4), (25, 16), (40, 32)])
def test_by_collection_matches_a_naive_ranking(n_works: int, dim: int) -> None:
    rng = np.random.default_rng()
    sources = ["bach", "essenFolksong", "oneills1850"]
    works, rows = [], []
    for w in range(n_works):
        source = sources[int(rng.integers(len(sources)))]
        centre = rng.standard_normal(dim)
        for _ in range(int(rng.integers(1, 5))):  # a work with one version has no relevant item
            works.append(f"m21:{source}/work{w}.mxl")
            rows.append(centre + rng.standard_normal(dim) * rng.uniform(0.3, 2.0))
    emb = np.asarray(rows, dtype=np.float32)
    metrics = evaluate(emb, works, return_per_query=True)
    got = by_collection(metrics["per_query"], works)
    for source, stats in got.items():
        queries = [
            i for i, w in enumerate(works) if collection_of(w) == source and sum(x == w for x in works) > 1
        ]
        want_map, want_top1 = _naive(emb, works, queries)
        assert stats["queries"] == len(queries)
        assert stats["works"] == len({works[q] for q in queries})
        assert stats["MAP"] == pytest.approx(want_map, abs=1e-6)
        assert stats["Top1"] == pytest.approx(want_top1, abs=1e-9)
    # every query with a relevant item is in exactly one collection
    assert sum(s["queries"] for s in got.values()) == metrics["n_queries"]


def test_collection_of() -> None:
    assert collection_of("m21:bach/bwv11.6.mxl") == "bach"
    assert collection_of("essenFolksong/x") == "essenFolksong"
    assert collection_of("plain-id") == "(none)"


def test_report_lists_collections_in_row_order(tmp_path: Path) -> None:
    row = {"items": 8, "note": "", "MAP": 0.5, "P@10": 0.1, "MR1": 2.0, "MRR": 0.6, "Top1": 0.7}
    per = {
        "bach": {"queries": 4, "works": 2, "MAP": 0.25, "Top1": 0.5},
        "essen": {"queries": 4, "works": 1, "MAP": 1.0, "Top1": 1.0},
    }
    result = {
        "test_works": 3,
        "test_files": 8,
        "train": {"train_works": 10, "train_files": 40, "epoch": 1},
        "epochs_planned": 2,
        "rows": [{"system": "ours", **row}, {"system": "ftm", **row}],
        "by_collection": {"ftm": {"bach": per["bach"]}, "ours": per},
    }
    args = argparse.Namespace(test_versions=4, renderer="synth", config="c.yaml")
    out = tmp_path / "report.md"
    _write_report(out, result, args)
    text = out.read_text()
    lines = text.splitlines()
    table = lines[lines.index("| ours | 0.250 / 0.500 | 1.000 / 1.000 |") - 2 :]
    assert table[0].startswith("| system | bach (2 works) | essen (1 works) |")
    assert table[3] == "| ftm | 0.250 / 0.500 |  |"
