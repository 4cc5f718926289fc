"""Match / no-match threshold from scored examples, for a target false-alarm rate.

The decision rule, used everywhere a score is compared with a threshold (the monitor's
``DetectionTracker`` included), is :func:`is_match`: **a score matches when score >= threshold**.
Scores are similarities, larger is better (inner products of unit vectors, as
``ReferenceIndex.search`` returns for ``metric="ip"``).

``calibrate_threshold`` picks the smallest threshold whose false-alarm rate on the negative
scores (pairs of different works, or stream windows where no catalog work plays) is at most the
target, and reports the miss rate it leaves on the positive scores (pairs of versions of one work).

**Cohort-normalised scores** (``cohort`` > 0, :func:`normalize_hits`): a window's score for a work
becomes its similarity minus the mean similarity of the ``cohort`` best *other* works of the same
window. Music that is not in the catalog tends to resemble many references a little (its best
similarity is high, but so are the next ones), while a version of a catalog work stands out from
the rest; the margin separates the two far better than the raw similarity (on held-out rendered
works at a 2% false-alarm rate, windows detected: 0.25 with a cohort of 4 against 0.13 raw). The
transform keeps every window's ranking of works. Thresholds are only meaningful for the cohort
they were calibrated with: ``csi calibrate`` records it, and ``csi monitor`` uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "COHORT_WORKS",
    "Calibration",
    "calibrate_threshold",
    "check_tracker_settings",
    "default_cohort",
    "detection_score",
    "is_match",
    "min_negatives",
    "normalize_hits",
    "search_k",
    "spread_over_windows",
    "window_scores",
]

#: default cohort of the normalised score in ``csi calibrate`` / ``csi monitor`` (works)
COHORT_WORKS = 4


def default_cohort(impostors: bool) -> int:
    """The cohort used when none is given: COHORT_WORKS, or 0 for impostor-normalised scores (a
    cohort on top of them detected fewer covers at the same false-alarm rate: 0.20 against 0.30)."""
    return 0 if impostors else COHORT_WORKS


def is_match(score: Any, threshold: float) -> Any:
    """The decision rule: ``score >= threshold`` (a bool, or a bool array for an array of scores)."""
    return score >= threshold


#: score given to a positive window whose top-1 work is another one: a miss at any threshold
MISS_SCORE = -1.0


def _check_cohort(cohort: Any) -> int:
    if isinstance(cohort, bool) or not isinstance(cohort, (int, np.integer)) or cohort < 0:
        raise ValueError(f"cohort must be an integer >= 0 (got {cohort!r})")
    return int(cohort)


def search_k(k: int, cohort: int) -> int:
    """Works to ask ``ReferenceIndex.search`` for so that ``k`` hits can be normalised: k, or
    cohort + 1 when that is more."""
    return max(int(k), _check_cohort(cohort) + 1)


def normalize_hits(hits: Sequence[Any], cohort: int) -> list[Any]:
    """One window's ranked hits (distinct works, best first) with cohort-normalised scores.

    Each hit's score s becomes s minus the mean score of the ``cohort`` best other works among
    ``hits`` (hits are ``ReferenceIndex.search`` rows: named tuples with ``score``). cohort 0
    returns the hits unchanged. The order of the hits is kept (the transform is monotone).

    Raises:
        ValueError: fewer than cohort + 1 hits (ask the index for ``search_k(k, cohort)`` works;
            a catalog needs at least cohort + 1 works).
    """
    cohort = _check_cohort(cohort)
    if cohort == 0 or not hits:
        return list(hits)
    if len(hits) < cohort + 1:
        raise ValueError(
            f"a cohort of {cohort} works needs {cohort + 1} ranked works per window, got {len(hits)} "
            "(search more works, or use a catalog with more works or a smaller cohort)"
        )
    top = np.array([float(h.score) for h in hits[: cohort + 1]], dtype=np.float64)
    total = float(top.sum())
    out = []
    for i, h in enumerate(hits):
        # the cohort of hit i: the cohort best works other than i
        others = (total - top[i]) if i <= cohort else (total - top[cohort])
        out.append(h._replace(score=float(h.score) - others / cohort))
    return out


def window_scores(
    hits_per_window: Sequence[Sequence[Any]], work_id: Any = None, cohort: int = 0
) -> list[float]:
    """Calibration scores of windows from their ranked hits (``ReferenceIndex.search`` output).

    A monitor reports a work when it is a window's top-1 and its score passes the threshold, so a
    positive window (``work_id`` given) scores its top-1 score if that is ``work_id`` and MISS_SCORE
    otherwise; a negative window (``work_id`` None) scores its top-1 score, whatever the work.
    Scores are cohort-normalised first when ``cohort`` > 0 (:func:`normalize_hits`; the hits must
    then hold at least cohort + 1 works).
    """
    scores = []
    for hits in hits_per_window:
        hits = normalize_hits(hits, cohort)
        top = hits[0] if hits else None
        if top is None or (work_id is not None and top.work_id != work_id):
            scores.append(MISS_SCORE)
        else:
            scores.append(float(top.score))
    return scores


def spread_over_windows(hits: Sequence[Sequence[Any]], silent: Any) -> list[Sequence[Any]]:
    """The ranked hits of a recording's audible windows (``index.search`` of them, in order) spread
    over all its windows (``silent`` bool [S]): an empty list for each silent window, as the monitor
    feeds them to its tracker. The input of :func:`detection_score`."""
    quiet = np.asarray(silent, bool)
    if len(hits) != np.count_nonzero(~quiet):
        raise ValueError(f"{len(hits)} hit lists for {np.count_nonzero(~quiet)} audible windows")
    found = iter(hits)
    return [[] if q else next(found) for q in quiet]


def check_tracker_settings(min_windows: Any, max_gap_windows: Any, max_rank: Any) -> None:
    """Raises ValueError unless the detection settings are integers: min_windows >= 1,
    max_gap_windows >= 0, max_rank >= 1 (``DetectionTracker``, :func:`detection_score`)."""
    for name, value, low in (
        ("min_windows", min_windows, 1),
        ("max_gap_windows", max_gap_windows, 0),
        ("max_rank", max_rank, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low} (got {value!r})")


def _chain_exists(ok: np.ndarray, min_windows: int, max_gap_windows: int) -> bool:
    """Whether ``min_windows`` True entries of ``ok`` [n] follow each other with at most
    ``max_gap_windows`` False entries between consecutive ones."""
    run, last = 0, -(10**9)
    for i in np.flatnonzero(ok):
        run = run + 1 if i - last - 1 <= max_gap_windows else 1
        last = int(i)
        if run >= min_windows:
            return True
    return False


def detection_score(
    hits_per_window: Sequence[Sequence[Any]],
    work_id: Any = None,
    cohort: int = 0,
    min_windows: int = 2,
    max_gap_windows: int = 1,
    max_rank: int = 1,
) -> float:
    """Calibration score of a whole recording, for the monitor's *detections* rather than its windows.

    The largest threshold at which a ``DetectionTracker(threshold, min_windows, max_gap_windows,
    max_rank)`` fed these windows in order would detect ``work_id`` (a positive recording), or any
    work (``work_id`` None: a recording of music that is not in the catalog); MISS_SCORE when it
    never would. At a threshold t the tracker detects a work when ``min_windows`` windows support
    it (the work ranks within ``max_rank``, ties included, and scores >= t) with at most
    ``max_gap_windows`` other windows between consecutive ones, so the score is the largest t for
    which such a chain exists. Calibrating on these scores (:func:`calibrate_threshold`) sets the
    false-alarm rate of detections per recording, the unit a monitoring service counts, instead of
    per window: one stray window never makes a detection when ``min_windows`` > 1, so the threshold
    can sit lower and more versions are found at the same rate of false detections.

    hits_per_window: each window's ranked hits (``ReferenceIndex.search`` rows, best first); an
    empty list for a window that supports nothing (a silent one). Scores are cohort-normalised first
    when ``cohort`` > 0, as the monitor does.
    """
    check_tracker_settings(min_windows, max_gap_windows, max_rank)
    n = len(hits_per_window)
    per_work: dict[Any, np.ndarray] = {}
    for i, hits in enumerate(hits_per_window):
        hits = normalize_hits(hits, cohort)
        if not hits:
            continue
        cut = float(hits[min(max_rank, len(hits)) - 1].score)
        for h in hits:
            if float(h.score) < cut:
                break
            if work_id is not None and h.work_id != work_id:
                continue
            scores = per_work.setdefault(h.work_id, np.full(n, -np.inf))
            scores[i] = max(scores[i], float(h.score))
    best = MISS_SCORE
    for scores in per_work.values():
        finite = np.isfinite(scores)
        candidates = np.unique(scores[finite])  # ascending
        if np.count_nonzero(finite) < min_windows or candidates[-1] <= best:
            continue
        # detection at t is monotone (a lower t only adds supporting windows): bisect the candidates
        lo, hi = -1, candidates.size - 1  # invariant: candidates[lo] detects (lo = -1: unknown)
        if not _chain_exists(scores >= candidates[0], min_windows, max_gap_windows):
            continue
        lo = 0
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _chain_exists(scores >= candidates[mid], min_windows, max_gap_windows):
                lo = mid
            else:
                hi = mid - 1
        best = max(best, float(candidates[lo]))
    return best


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold and the error rates it gives on the calibration scores.

    Attributes:
        threshold: the smallest (float32) threshold with ``far <= target_far`` under :func:`is_match`.
        far: false-alarm rate on the negatives: share of negative scores >= threshold.
        frr: miss rate on the positives: share of positive scores < threshold.
        n_pos, n_neg: how many positive and negative scores were used.
        target_far: the false-alarm rate asked for.
    """

    threshold: float
    far: float
    frr: float
    n_pos: int
    n_neg: int
    target_far: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _max_alarms(target_far: float, n_neg: int) -> int:
    """Largest m with m / n_neg <= target_far, evaluated exactly as the caller will check it."""
    m = min(n_neg, math.floor(target_far * n_neg))
    while m + 1 <= n_neg and (m + 1) / n_neg <= target_far:
        m += 1
    while m > 0 and m / n_neg > target_far:
        m -= 1
    return m


def min_negatives(target_far: float) -> int:
    """Fewest negative scores that can resolve ``target_far``: the smallest n with 1 / n <= target_far.

    With fewer, even a single false alarm exceeds the target, so the threshold would only say
    "above every negative seen" and the false-alarm rate it promises could not be measured.
    """
    _check_target(target_far)
    n = max(1, math.ceil(1.0 / target_far))
    while n > 1 and 1.0 / (n - 1) <= target_far:
        n -= 1
    while 1.0 / n > target_far:
        n += 1
    return n


def _check_target(target_far: float) -> None:
    if (
        isinstance(target_far, bool)
        or not isinstance(target_far, (int, float, np.floating))
        or not 0.0 < float(target_far) < 1.0
    ):
        raise ValueError(f"target_far must be a number in (0, 1) (got {target_far!r})")


def _scores(values: npt.ArrayLike, name: str) -> np.ndarray:
    x = np.asarray(values)
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise TypeError(f"{name} must be real numbers (got dtype {x.dtype})")
    if x.ndim > 1:
        raise ValueError(f"{name} must be a 1-D sequence of scores (got shape {x.shape})")
    x = x.astype(np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    finite = np.isfinite(x)
    if not finite.all():
        raise ValueError(f"{name} holds NaN or infinite values (first at position {int(np.argmin(finite))})")
    return x


def _float32_above(v: float) -> float:
    """The smallest float32 strictly greater than v (as a Python float)."""
    with np.errstate(over="ignore"):
        t = np.float32(v)  # nearest float32, maybe below v
    if float(t) <= v:
        t = np.nextafter(t, np.float32(np.inf))
    if not np.isfinite(t):  # beyond the float32 range: fall back to float64 resolution
        return float(np.nextafter(v, np.inf))
    return float(t)


def calibrate_threshold(
    positive_scores: npt.ArrayLike, negative_scores: npt.ArrayLike, target_far: float = 0.01
) -> Calibration:
    """The smallest threshold whose false-alarm rate on ``negative_scores`` is at most ``target_far``.

    Args:
        positive_scores: float [P] scores of pairs that should match (versions of one work).
        negative_scores: float [N] scores of pairs that should not match; N >= ``min_negatives``.
        target_far: the false-alarm rate allowed, in (0, 1).

    Returns:
        A :class:`Calibration`. Exact on the given scores, ties included: with m the largest
        number of false alarms the target allows (m / N <= target_far) and v the (m+1)-th largest
        negative score, every threshold <= v lets at least m + 1 negatives match, and the smallest
        one above v lets at most m match — fewer when negatives tie with v, since a tie is decided
        as a block.

        The threshold is a float32 value (the smallest float32 above v): the runtime's scores are
        float32, and NumPy compares a float32 array with a Python float in float32, so a float64
        threshold a hair above a float32 score would round back onto it and turn a rejection into
        a match. A float32 threshold gives the same decisions whether float32 scores are compared
        as float32 or float64.

    Raises:
        ValueError: empty or non-finite scores, a target outside (0, 1), or too few negatives.
    """
    _check_target(target_far)
    target = float(target_far)
    pos = _scores(positive_scores, "positive_scores")
    neg = _scores(negative_scores, "negative_scores")
    need = min_negatives(target)
    if neg.size < need:
        raise ValueError(
            f"calibrating for a false-alarm rate of {target:g} needs at least {need} negative scores "
            f"(got {neg.size}): with fewer, one false alarm already exceeds the target"
        )
    m = _max_alarms(target, neg.size)
    # (m+1)-th largest negative: every threshold at or below it admits too many false alarms.
    v = float(np.partition(neg, neg.size - 1 - m)[neg.size - 1 - m])
    threshold = _float32_above(v)
    far = int(np.count_nonzero(is_match(neg, threshold))) / neg.size
    frr = int(np.count_nonzero(~is_match(pos, threshold))) / pos.size
    return Calibration(
        threshold=threshold, far=far, frr=frr, n_pos=int(pos.size), n_neg=int(neg.size), target_far=target
    )
