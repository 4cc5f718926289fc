"""calibrate_threshold against a brute-force search over thresholds, with ties, at several sizes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from csi_runtime.calibrate import Calibration, calibrate_threshold, is_match, min_negatives


def naive_far(neg: np.ndarray, t: float) -> float:
    return sum(1 for s in neg.tolist() if s >= t) / len(neg)


def f32_up(t: float) -> float:
    return float(np.nextafter(np.float32(t), np.float32(np.inf)))


def f32_down(t: float) -> float:
    return float(np.nextafter(np.float32(t), np.float32(-np.inf)))


def f32_above(v: float) -> float:
    """The smallest float32 strictly above v."""
    near = float(np.float32(v))
    return near if near > v else f32_up(near)


def naive_threshold(neg: np.ndarray, target: float) -> float:
    """Smallest float32 t with FAR(t) <= target, by trying every float32 near a negative score
    (FAR only changes at a negative value, so the answer is one of them)."""
    candidates: set[float] = set()
    for v in set(neg.tolist()):
        near = float(np.float32(v))
        candidates |= {f32_down(near), near, f32_up(near)}
    for t in sorted(candidates):
        if naive_far(neg, t) <= target:
            return t
    raise AssertionError("no threshold satisfies the target")


def scores(rng: np.random.Generator, n: int, loc: float, ties: bool) -> np.ndarray:
    x = rng.normal(loc, 0.15, n)
    return np.round(x, 2) if ties else x  # rounding creates many ties


@pytest.mark.parametrize("target", [0.5, 0.1, 0.05, 0.01, 0.3, 0.07])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_brute_force(rng: np.random.Generator, target: float, ties: bool) -> None:
    for _ in range(4):
        n_neg = int(rng.integers(min_negatives(target), min_negatives(target) + 600))
        n_pos = int(rng.integers(1, 300))
        neg = scores(rng, n_neg, 0.2, ties)
        pos = scores(rng, n_pos, 0.7, ties)
        cal = calibrate_threshold(pos, neg, target)
        expected = naive_threshold(neg, target)
        assert cal.threshold == expected
        assert cal.far == naive_far(neg, cal.threshold) <= target
        # A float32, and minimal: the next smaller float32 already breaks the target.
        assert float(np.float32(cal.threshold)) == cal.threshold
        assert naive_far(neg, f32_down(cal.threshold)) > target
        assert cal.frr == sum(1 for s in pos.tolist() if s < cal.threshold) / n_pos
        assert (cal.n_pos, cal.n_neg, cal.target_far) == (n_pos, n_neg, target)


def test_ties_at_the_cut_are_decided_as_a_block() -> None:
    # 100 negatives, target 3%: three false alarms allowed, but the 3rd and 4th best tie.
    neg = np.array([0.9, 0.8, 0.7, 0.7, 0.7, *([0.1] * 95)])
    cal = calibrate_threshold([0.75, 0.7, 0.95], neg, 0.03)
    assert cal.threshold == f32_above(0.7)
    assert cal.far == 0.02  # only 0.9 and 0.8 match: admitting 0.7 would admit all three
    assert cal.frr == pytest.approx(1 / 3)  # the positive at 0.7 equals a tied negative: a miss
    # A negative exactly at the threshold is a false alarm (score >= threshold matches).
    assert is_match(cal.threshold, cal.threshold)
    assert naive_far(np.append(neg, cal.threshold), cal.threshold) > cal.far


def test_exact_budget_and_all_tied() -> None:
    neg = np.linspace(0.0, 0.99, 100)
    cal = calibrate_threshold([1.0], neg, 0.01)
    assert cal.far == 0.01 and cal.threshold == f32_above(0.98)
    cal = calibrate_threshold([0.5, 0.6], np.full(50, 0.5), 0.1)
    assert cal.threshold == f32_above(0.5) and cal.far == 0.0 and cal.frr == 0.5


def test_float32_and_integer_inputs(rng: np.random.Generator) -> None:
    neg = rng.standard_normal(400).astype(np.float32)
    pos = (rng.standard_normal(50) + 2).astype(np.float32)
    cal = calibrate_threshold(pos, neg, 0.01)
    assert cal.threshold == naive_threshold(neg.astype(np.float64), 0.01)
    # float32 scores compared with the float64 threshold: the same decisions
    assert int(np.count_nonzero(neg >= cal.threshold)) / neg.size == cal.far
    ints = calibrate_threshold([5, 6], list(range(10)), 0.2)
    assert ints.threshold == f32_above(7.0) and ints.far == 0.2


@pytest.mark.parametrize(
    ("target", "need"), [(0.5, 2), (0.3, 4), (0.1, 10), (0.07, 15), (0.01, 100), (0.001, 1000)]
)
def test_min_negatives(target: float, need: int) -> None:
    assert min_negatives(target) == need
    assert 1 / need <= target < 1 / (need - 1) if need > 1 else True
    neg = np.linspace(0, 1, need - 1)
    with pytest.raises(ValueError, match=rf"at least {need} negative scores \(got {need - 1}\)"):
        calibrate_threshold([1.0], neg, target)
    cal = calibrate_threshold([1.0], np.linspace(0, 1, need), target)
    assert cal.far <= target and math.isfinite(cal.threshold)


def test_bad_input() -> None:
    ok_neg = np.linspace(0, 1, 200)
    for target in [0, 1, -0.1, 1.5, float("nan"), True, "0.1"]:
        with pytest.raises(ValueError, match="target_far"):
            calibrate_threshold([1.0], ok_neg, target)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive_scores is empty"):
        calibrate_threshold([], ok_neg, 0.1)
    with pytest.raises(ValueError, match="negative_scores holds NaN"):
        calibrate_threshold([1.0], [*ok_neg[:-1], np.nan], 0.1)
    with pytest.raises(ValueError, match=r"positive_scores holds NaN or infinite .*\(first at position 1\)"):
        calibrate_threshold([1.0, np.inf], ok_neg, 0.1)
    with pytest.raises(ValueError, match="1-D"):
        calibrate_threshold([[1.0]], ok_neg, 0.1)
    with pytest.raises(TypeError, match="real numbers"):
        calibrate_threshold(["a"], ok_neg, 0.1)


def test_calibration_record() -> None:
    cal = calibrate_threshold([0.9], np.linspace(0, 0.5, 10), 0.1)
    assert isinstance(cal, Calibration)
    d = cal.to_dict()
    assert set(d) == {"threshold", "far", "frr", "n_pos", "n_neg", "target_far"}
    assert d["threshold"] == cal.threshold


def test_window_scores_follow_the_monitor_decision() -> None:
    from csi_runtime import Hit
    from csi_runtime.calibrate import MISS_SCORE, window_scores

    hits = [[Hit("a", 0.9, {}), Hit("b", 0.8, {})], [Hit("b", 0.95, {}), Hit("a", 0.7, {})], []]
    assert window_scores(hits, "a") == [0.9, MISS_SCORE, MISS_SCORE]  # b outranks a: a miss
    assert window_scores(hits) == [0.9, 0.95, MISS_SCORE]


def _naive_normalized(scores: list[float], cohort: int) -> list[float]:
    """Float64 reference: each score minus the mean of the cohort best *other* scores."""
    out = []
    for i, s in enumerate(scores):
        others = sorted((x for j, x in enumerate(scores) if j != i), reverse=True)[:cohort]
        out.append(s - sum(others) / cohort)
    return out


@pytest.mark.parametrize("cohort", [1, 2, 4, 7])
@pytest.mark.parametrize("n_works", [8, 9, 30])
def test_normalize_hits_matches_a_naive_reference_and_keeps_the_ranking(
    rng: np.random.Generator, cohort: int, n_works: int
) -> None:
    from csi_runtime import Hit
    from csi_runtime.calibrate import normalize_hits

    for _ in range(20):
        raw = np.sort(rng.uniform(-1, 1, n_works))[::-1]
        if rng.random() < 0.3:  # ties, including at the edge of the cohort
            raw[cohort] = raw[cohort - 1]
        hits = [Hit(f"w{i}", float(s), {"i": i}) for i, s in enumerate(raw)]
        out = normalize_hits(hits, cohort)
        assert [h.work_id for h in out] == [h.work_id for h in hits]
        assert [h.metadata for h in out] == [h.metadata for h in hits]
        np.testing.assert_allclose([h.score for h in out], _naive_normalized(list(raw), cohort), atol=1e-12)
        scores = [h.score for h in out]
        assert all(a >= b for a, b in itertools.pairwise(scores))  # monotone: order kept


def test_normalize_hits_edges_and_cohort_window_scores() -> None:
    from csi_runtime import Hit
    from csi_runtime.calibrate import MISS_SCORE, normalize_hits, search_k, window_scores

    hits = [Hit("a", 0.9, {}), Hit("b", 0.7, {}), Hit("c", 0.5, {})]
    assert normalize_hits(hits, 0) == hits and normalize_hits([], 3) == []
    with pytest.raises(ValueError, match="a cohort of 3 works needs 4 ranked works per window, got 3"):
        normalize_hits(hits, 3)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="cohort must be an integer >= 0"):
            normalize_hits(hits, bad)  # type: ignore[arg-type]
    assert search_k(10, 4) == 10 and search_k(1, 4) == 5 and search_k(3, 0) == 3
    # a is top-1: 0.9 - mean(0.7, 0.5); in the second window b outranks a, so a positive misses
    windows = [hits, [Hit("b", 0.95, {}), Hit("a", 0.9, {}), Hit("c", 0.2, {})]]
    assert window_scores(windows, "a", cohort=2) == [pytest.approx(0.3), MISS_SCORE]
    assert window_scores(windows, cohort=2) == [pytest.approx(0.3), pytest.approx(0.95 - 0.55)]
    # music resembling everything a little scores low even with a high raw similarity
    flat = [Hit(w, 0.93 - 0.001 * i, {}) for i, w in enumerate("abcde")]
    assert window_scores([flat], cohort=4)[0] < 0.01 < window_scores([windows[0]], cohort=2)[0]
