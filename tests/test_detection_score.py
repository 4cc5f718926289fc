"""detection_score against the DetectionTracker itself: on random window sequences, the tracker
detects at the score and not a float above it, for positives and negatives, with ties, gaps,
silent windows and several tracker settings."""

from __future__ import annotations

import numpy as np
import pytest

from csi_runtime import Hit
from csi_runtime.calibrate import MISS_SCORE, detection_score, normalize_hits
from csi_runtime.tracker import DetectionTracker

WORKS = ("a", "b", "c", "d", "e", "f")


def random_windows(rng: np.random.Generator, n: int, ties: bool) -> list[list[Hit]]:
    """n windows of ranked hits over WORKS; a few silent ones (no hits)."""
    windows = []
    for _ in range(n):
        if rng.random() < 0.1:
            windows.append([])
            continue
        scores = rng.uniform(-0.2, 1.0, len(WORKS))
        if ties:
            scores = np.round(scores, 1)
        order = np.argsort(-scores, kind="stable")
        windows.append([Hit(WORKS[i], float(scores[i]), {}) for i in order])
    return windows


def tracker_detects(
    windows: list[list[Hit]], threshold: float, work_id: str | None, cohort: int, **params: int
) -> bool:
    """Run the real tracker (as the Monitor feeds it: normalised hits, empty for silence)."""
    tracker = DetectionTracker(threshold, **params)
    found = []
    for i, hits in enumerate(windows):
        found += tracker.update(5.0 * i, 5.0 * i + 20.0, normalize_hits(hits, cohort), silent=not hits)
    found += tracker.flush()
    return any(work_id is None or m.work_id == work_id for m in found)


@pytest.mark.parametrize(
    ("min_windows", "max_gap_windows", "max_rank"), [(1, 0, 1), (2, 1, 1), (2, 2, 1), (3, 2, 2), (2, 0, 3)]
)
@pytest.mark.parametrize("cohort", [0, 2])
@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_the_tracker_detects_at_the_score_and_not_above(
    rng: np.random.Generator, min_windows: int, max_gap_windows: int, max_rank: int, cohort: int, n: int
) -> None:
    params = {"min_windows": min_windows, "max_gap_windows": max_gap_windows, "max_rank": max_rank}
    for trial in range(15):
        windows = random_windows(rng, n, ties=trial % 3 == 0)
        for work_id in (None, "a"):
            score = detection_score(windows, work_id, cohort, **params)
            if score == MISS_SCORE:
                assert not tracker_detects(windows, -10.0, work_id, cohort, **params)
                continue
            assert tracker_detects(windows, score, work_id, cohort, **params)
            assert not tracker_detects(windows, float(np.nextafter(score, np.inf)), work_id, cohort, **params)


def test_constructed_cases() -> None:
    def w(*pairs: tuple[str, float]) -> list[Hit]:
        return [Hit(k, s, {}) for k, s in pairs]

    windows = [w(("a", 0.9), ("b", 0.1)), w(("b", 0.5), ("a", 0.4)), w(("a", 0.6), ("b", 0.2)), []]
    # a is top-1 in windows 0 and 2, one window apart: min(0.9, 0.6) when one gap is bridged
    assert detection_score(windows, "a", min_windows=2, max_gap_windows=1) == 0.6
    assert detection_score(windows, "a", min_windows=2, max_gap_windows=0) == MISS_SCORE
    # within the top 2, a supports windows 0-2: the weakest link of the best chain
    assert detection_score(windows, "a", min_windows=2, max_gap_windows=0, max_rank=2) == 0.4
    assert detection_score(windows, "a", min_windows=2, max_gap_windows=1, max_rank=2) == 0.6
    assert detection_score(windows, "a", min_windows=3, max_gap_windows=0, max_rank=2) == 0.4
    # one window is enough with min_windows 1: the best top-1 score of any work
    assert detection_score(windows, min_windows=1) == 0.9
    assert detection_score(windows, "b", min_windows=1) == 0.5
    # equal scores are two windows, not one candidate
    tied = [w(("a", 0.3), ("b", 0.1)), w(("a", 0.3), ("b", 0.2))]
    assert detection_score(tied, "a", min_windows=2, max_gap_windows=0) == 0.3
    assert detection_score([], min_windows=1) == MISS_SCORE
    assert detection_score([[], []], "a") == MISS_SCORE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_windows": 0}, "min_windows must be an integer >= 1"),
        ({"max_gap_windows": -1}, "max_gap_windows must be an integer >= 0"),
        ({"max_rank": 1.5}, "max_rank must be an integer >= 1"),
        ({"cohort": -1}, "cohort must be an integer >= 0"),
    ],
)
def test_bad_parameters(kwargs: dict, message: str) -> None:
    windows = [[Hit("a", 0.5, {}), Hit("b", 0.1, {})]]
    with pytest.raises(ValueError, match=message):
        detection_score(windows, **kwargs)


def test_spread_over_windows() -> None:
    from csi_runtime.calibrate import spread_over_windows

    a, b = [Hit("a", 0.5, {})], [Hit("b", 0.4, {})]
    assert spread_over_windows([a, b], [False, True, False, True]) == [a, [], b, []]
    assert spread_over_windows([], np.ones(3, bool)) == [[], [], []]
    with pytest.raises(ValueError, match="2 hit lists for 1 audible windows"):
        spread_over_windows([a, b], [False, True])
    with pytest.raises(ValueError, match="1 hit lists for 2 audible windows"):
        spread_over_windows([a], [False, False])
