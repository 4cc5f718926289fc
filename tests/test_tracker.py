"""DetectionTracker, the decision core of monitoring: detections against hand-computed ones and
against an offline reference (the same rules with the whole sequence in view) on random sequences."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

from csi_runtime import Hit
from csi_runtime.tracker import DetectionTracker, Match

W, HOP = 20.0, 10.0  # regular windows of the tracker tests: window i = [10 i, 10 i + 20]


def win(i: int) -> tuple[float, float]:
    return (HOP * i, HOP * i + W)


def H(work: str | int, score: float, **meta: Any) -> Hit:
    return Hit(work, score, meta)


SILENT = "silent"


def run(tracker: DetectionTracker, windows: list[Any], flush: bool = True) -> list[tuple[int, Match]]:
    """Feeds windows (lists of hits, or SILENT) at regular times; returns (window index or -1 for
    the flush, match) for every detection emitted."""
    out = []
    for i, hits in enumerate(windows):
        s, e = win(i)
        silent = hits is SILENT
        for m in tracker.update(s, e, [] if silent else hits, silent=silent):
            out.append((i, m))
    if flush:
        out += [(-1, m) for m in tracker.flush()]
    return out


def summary(m: Match) -> tuple[Any, float, float, int]:
    return (m.work_id, m.start_s, m.end_s, m.n_windows)


# ---------------------------------------------------------------------------------------------
# DetectionTracker, hand-computed


def test_one_play_in_the_middle_of_a_stream() -> None:
    t = DetectionTracker(threshold=0.8, min_windows=2, max_gap_windows=1)
    other = [H("B", 0.5), H("C", 0.4)]
    scores = [0.85, 0.9, 0.95, 0.95, 0.9]
    windows: list[Any] = [other, other]
    windows += [[H("A", s, version=f"v{i}"), H("B", 0.5)] for i, s in enumerate(scores)]
    windows += [other, other, other]
    got = run(t, windows)
    assert len(got) == 1
    at, m = got[0]
    # First support: window 2 (centre 30), previous centre 20 -> start 25. Last support: window 6
    # (centre 70), next centre 80 -> end 75. Closed by the second miss, window 8.
    assert at == 8
    assert summary(m) == ("A", 25.0, 75.0, 5)
    assert m.score == pytest.approx(np.mean(scores)) and m.peak_score == 0.95
    assert m.metadata == {"version": "v2"}  # the first window with the peak score
    assert m.first_window_s == (20.0, 40.0) and m.last_window_s == (60.0, 80.0)


def test_play_at_stream_start_and_end_uses_window_extent() -> None:
    t = DetectionTracker(threshold=0.8)
    got = run(t, [[H("A", 0.9)]] * 4)
    assert [(at, summary(m)) for at, m in got] == [(-1, ("A", 0.0, 50.0, 4))]


def test_flicker_within_max_gap_is_one_detection_and_splits_without_it() -> None:
    seq = [[H("A", 0.9)], [H("A", 0.9)], [H("B", 0.95), H("A", 0.9)], [H("A", 0.9)], [H("A", 0.9)]]
    got = run(DetectionTracker(0.8, min_windows=2, max_gap_windows=1), seq)
    assert [summary(m) for _, m in got] == [("A", 0.0, 60.0, 4)]
    got = run(DetectionTracker(0.8, min_windows=2, max_gap_windows=0), seq)
    # Run 1: windows 0-1, end = mid(centres 20, 30) = 25. Run 2: windows 3-4, start = mid(30, 40) = 35.
    assert [(at, summary(m)) for at, m in got] == [(2, ("A", 0.0, 25.0, 2)), (-1, ("A", 35.0, 60.0, 2))]
    # With max_rank=2, A (second, above threshold) keeps its run through window 2; B's single
    # window never becomes a detection.
    got = run(DetectionTracker(0.8, min_windows=2, max_gap_windows=0, max_rank=2), seq)
    assert [summary(m) for _, m in got] == [("A", 0.0, 60.0, 5)]


def test_min_windows_and_isolated_supports() -> None:
    seq = [[H("A", 0.9)], [], [H("A", 0.9)], [], [H("A", 0.9)], []]
    assert run(DetectionTracker(0.8, min_windows=2, max_gap_windows=0), seq) == []
    got = run(DetectionTracker(0.8, min_windows=3, max_gap_windows=1), seq)
    # supports 0, 2, 4; last support 4 (centre 50), window 5 follows (centre 60) -> end 55.
    assert [summary(m) for _, m in got] == [("A", 0.0, 55.0, 3)]
    got = run(DetectionTracker(0.8, min_windows=1, max_gap_windows=0), [[], [H("A", 0.9)], []])
    assert [summary(m) for _, m in got] == [("A", 15.0, 25.0, 1)]


def test_switch_from_one_work_to_another() -> None:
    seq = [[H("A", 0.9), H("B", 0.6)]] * 5 + [[H("B", 0.92), H("A", 0.7)]] * 5
    got = run(DetectionTracker(0.8), seq)
    # A: windows 0-4, end = mid(centres 50, 60) = 55, emitted at window 6. B: start 55, end of stream 110.
    assert [(at, summary(m)) for at, m in got] == [(6, ("A", 0.0, 55.0, 5)), (-1, ("B", 55.0, 110.0, 5))]


def test_ties_support_every_tied_work_whatever_the_order() -> None:
    seq = [[H("A", 0.9), H("B", 0.9), H("C", 0.85)], [H("B", 0.9), H("A", 0.9), H("C", 0.85)]] * 2
    got = run(DetectionTracker(0.8, max_rank=1), seq)
    assert sorted(summary(m) for _, m in got) == [("A", 0.0, 50.0, 4), ("B", 0.0, 50.0, 4)]
    # Emitted by start, then by first appearance: A was listed first in window 0.
    assert [m.work_id for _, m in got] == ["A", "B"]
    # A strictly lower second score is not a tie.
    got = run(DetectionTracker(0.8, max_rank=1), [[H("A", 0.9), H("B", 0.89)]] * 3)
    assert [m.work_id for _, m in got] == ["A"]


def test_two_works_alternating() -> None:
    seq = [[H("A", 0.9), H("B", 0.7)], [H("B", 0.9), H("A", 0.7)]] * 3
    got = run(DetectionTracker(0.8, max_gap_windows=1), seq)
    # A: supports 0, 2, 4 -> start 0, end = mid(50, 60) = 55; B: supports 1, 3, 5 -> start 15, end 70.
    assert [summary(m) for _, m in got] == [("A", 0.0, 55.0, 3), ("B", 15.0, 70.0, 3)]
    assert run(DetectionTracker(0.8, max_gap_windows=0), seq) == []


def test_silence_closes_and_never_matches() -> None:
    a = [H("A", 0.9)]
    seq = [a] * 4 + [SILENT, SILENT] + [a] * 4
    got = run(DetectionTracker(0.8, max_gap_windows=1), seq)
    # end = mid(centres 40, 50) = 45; restart start = mid(centres 60, 70) = 65, end of window 9 = 110.
    assert [(at, summary(m)) for at, m in got] == [(5, ("A", 0.0, 45.0, 4)), (-1, ("A", 65.0, 110.0, 4))]
    # A silent window ignores any hits it is given.
    t = DetectionTracker(0.8, min_windows=1)
    assert t.update(0, 20, [H("A", 0.99)], silent=True) == [] and t.flush() == []


def test_below_threshold_and_decision_rule_is_inclusive() -> None:
    got = run(DetectionTracker(0.8), [[H("A", 0.8)], [H("A", 0.8)], [H("A", 0.7999)]])
    # score == threshold matches; 0.7999 does not: end = mid(centres 20, 30) = 25.
    assert [summary(m) for _, m in got] == [("A", 0.0, 25.0, 2)]


def test_flush_is_a_break_and_active_reports_open_detections() -> None:
    t = DetectionTracker(0.8)
    t.update(0, 20, [H("A", 0.9)])
    assert t.active() == []  # one window: a candidate, not yet a detection
    t.update(10, 30, [H("A", 0.95)])
    (act,) = t.active()
    assert summary(act) == ("A", 0.0, 30.0, 2)
    assert t.earliest_pending_s() == 0.0
    t.update(20, 40, [])
    (m,) = t.flush()  # e.g. a gap: the window after the last support is known -> midpoint end
    assert summary(m) == ("A", 0.0, 25.0, 2)
    # After a flush the next window has no predecessor: a play starts at its start.
    t.update(100, 120, [H("A", 0.9)])
    t.update(110, 130, [H("A", 0.9)])
    assert [summary(m) for m in t.flush()] == [("A", 100.0, 130.0, 2)]
    assert t.earliest_pending_s() is None


def test_bad_input_is_refused() -> None:
    for bad in [float("nan"), float("inf"), "0.5", None, True]:
        with pytest.raises(ValueError, match="threshold"):
            DetectionTracker(bad)  # type: ignore[arg-type]
    for kw in [{"min_windows": 0}, {"max_gap_windows": -1}, {"max_rank": 0}, {"min_windows": 1.5}]:
        with pytest.raises(ValueError, match=next(iter(kw))):
            DetectionTracker(0.5, **kw)  # type: ignore[arg-type]
    t = DetectionTracker(0.5)
    with pytest.raises(ValueError, match="start < end"):
        t.update(10, 10, [])
    with pytest.raises(ValueError, match="best first"):
        t.update(0, 20, [H("A", 0.5), H("B", 0.6)])
    with pytest.raises(ValueError, match="non-finite"):
        t.update(0, 20, [H("A", float("nan"))])
    t.update(0, 20, [])
    with pytest.raises(ValueError, match="increasing start"):
        t.update(0, 20, [])


# ---------------------------------------------------------------------------------------------
# DetectionTracker against an offline reference on random sequences


def offline_reference(
    windows: list[tuple[float, float]],
    hits: list[list[Hit] | None],
    threshold: float,
    min_windows: int,
    max_gap: int,
    max_rank: int,
) -> list[tuple[int, Match]]:
    """The same rules computed with the whole sequence in view: per work, runs of supporting
    windows split where more than max_gap windows in a row do not support it."""
    n = len(windows)
    centres = [(s + e) / 2 for s, e in windows]
    support: list[dict[Any, Hit]] = []
    created: dict[Any, tuple[int, int]] = {}
    for hs in hits:
        sup: dict[Any, Hit] = {}
        if hs:
            cut = hs[min(max_rank, len(hs)) - 1].score
            for h in hs:
                if h.score >= cut and h.score >= threshold and h.work_id not in sup:
                    sup[h.work_id] = h
        support.append(sup)
    out = []
    works = list(dict.fromkeys(w for sup in support for w in sup))
    for w in works:
        idx = [i for i in range(n) if w in support[i]]
        runs: list[list[int]] = [[idx[0]]]
        for a, b in itertools.pairwise(idx):
            if b - a - 1 > max_gap:
                runs.append([b])
            else:
                runs[-1].append(b)
        prev_end = -math.inf
        for r in runs:
            f, last = r[0], r[-1]
            created[(w, f)] = (f, list(support[f]).index(w))
            if len(r) < min_windows:
                continue
            start = windows[f][0] if f == 0 else max(windows[f][0], (centres[f - 1] + centres[f]) / 2)
            start = max(start, prev_end)
            end = windows[last][1]
            if last < n - 1:
                end = min(end, (centres[last] + centres[last + 1]) / 2)
            end = max(end, start)
            prev_end = end
            scores = [support[i][w].score for i in r]
            peak = max(scores)
            meta = support[r[scores.index(peak)]][w].metadata
            closed_at = last + max_gap + 1 if last + max_gap + 1 < n else -1
            m = Match(w, start, end, sum(scores) / len(scores), peak, len(r), meta, windows[f], windows[last])
            out.append((closed_at, created[(w, f)], m))
    out.sort(key=lambda x: (x[0] if x[0] >= 0 else n, x[2].start_s, x[1]))
    return [(at, m) for at, _, m in out]


def test_tracker_equals_offline_reference_on_random_sequences(rng: np.random.Generator) -> None:
    works: list[str | int] = ["a", "b", "c", 7]
    levels = [0.3, 0.5, 0.7, 0.8, 0.9]
    for _ in range(300):
        n = int(rng.integers(1, 50))
        length = float(rng.choice([5.0, 20.0]))
        starts = np.cumsum(rng.choice([1.0, 5.0, 10.0, 25.0], size=n)) - 1.0
        windows = [(float(s), float(s) + length) for s in starts]
        hits: list[list[Hit] | None] = []
        for i in range(n):
            u = rng.random()
            if u < 0.1:
                hits.append(None)  # silent
                continue
            chosen = [w for w in works if rng.random() < 0.6] if u > 0.15 else []
            scored = [(float(rng.choice(levels)), w) for w in chosen]
            scored.sort(key=lambda x: -x[0])  # stable: ties keep a random order
            hits.append([Hit(w, s, {"w": str(w), "i": i}) for s, w in scored])
        params = {
            "threshold": 0.7,
            "min_windows": int(rng.integers(1, 4)),
            "max_gap_windows": int(rng.integers(0, 3)),
            "max_rank": int(rng.integers(1, 4)),
        }
        tracker = DetectionTracker(**params)  # type: ignore[arg-type]
        got = []
        for i, (s, e) in enumerate(windows):
            got += [(i, m) for m in tracker.update(s, e, hits[i] or [], silent=hits[i] is None)]
        got += [(-1, m) for m in tracker.flush()]
        expected = offline_reference(
            windows, hits, 0.7, params["min_windows"], params["max_gap_windows"], params["max_rank"]
        )
        assert got == expected, (params, windows, hits)
        for w in works:  # one work never overlaps itself
            spans = sorted((m.start_s, m.end_s) for _, m in got if m.work_id == w)
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
            assert all(s <= e for s, e in spans)
