"""The decision core of broadcast monitoring: per-window rankings → detections of works.

:class:`DetectionTracker` is pure logic on window times (stream seconds) and ranked hits: fed each
window's hits, it turns runs of windows that agree on a work into :class:`Match` records with
start/end times. No audio, no clock, no files (see ``csi_runtime.monitor`` for the orchestration).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from csi_runtime.calibrate import check_tracker_settings, is_match

__all__ = ["DetectionTracker", "Match"]


class _Hit(Protocol):
    @property
    def work_id(self) -> str | int: ...
    @property
    def score(self) -> float: ...
    @property
    def metadata(self) -> dict[str, Any]: ...


class Match(NamedTuple):
    """A detection in stream seconds, as the tracker makes it.

    Attributes:
        work_id: the work detected.
        start_s, end_s: estimated start and end of the play (see :class:`DetectionTracker`).
        score: mean score of the supporting windows (the smoothed score).
        peak_score: best score of a supporting window.
        n_windows: number of supporting windows.
        metadata: metadata of the reference vector that gave the peak score (first on ties).
        first_window_s: (start, end) of the first supporting window.
        last_window_s: (start, end) of the last supporting window.
    """

    work_id: str | int
    start_s: float
    end_s: float
    score: float
    peak_score: float
    n_windows: int
    metadata: dict[str, Any]
    first_window_s: tuple[float, float]
    last_window_s: tuple[float, float]


@dataclass
class _Track:
    work_id: str | int
    seq: int
    start_s: float
    first_window: tuple[float, float]
    last_window: tuple[float, float]
    supports: int
    score_sum: float
    peak: float
    peak_metadata: dict[str, Any]
    misses: int = 0
    next_center: float | None = None  # centre of the window right after the last supporting one
    opened: bool = False


class DetectionTracker:
    """Turns per-window rankings into detections: deterministic, pure logic, stream seconds.

    A window *supports* a work when the work's score matches (:func:`csi_runtime.calibrate.is_match`:
    ``score >= threshold``) and ranks within the first ``max_rank`` hits of the window — works
    tied with the ``max_rank``-th score count as within, so a tie never depends on which tied work
    the index lists first. Silent windows and windows without hits support nothing.

    For each work the tracker follows a *run*: supporting windows separated by at most
    ``max_gap_windows`` consecutive non-supporting windows. A run becomes a detection once it has
    ``min_windows`` supporting windows; it ends when ``max_gap_windows + 1`` windows in a row do
    not support the work (the detection is emitted then), or at :meth:`flush` (end of stream or a
    gap in it). Several works may be detected at once (a medley, or two works the catalog
    confuses); one work never has two overlapping detections.

    Timing. A window is won by the work that fills most of it, i.e. the work playing at its
    centre, so a change of work lies between the centre of the last window that supports the
    old work and the centre of the next window. The tracker places each boundary at that
    midpoint:

    - start = midpoint of the centres of the first supporting window and the window before it,
      or the first window's start when no window precedes it (stream start, after a gap);
    - end = midpoint of the centres of the last supporting window and the window after it, or
      the last window's end when no window follows it (end of stream, gap);
    - both clipped to the supporting windows' extent.

    With regular windows (length W, hop H <= W) the error of a boundary is at most H/2, and
    zero on average, instead of up to W/2 + H/2, always early for starts and late for ends,
    when boundaries are put at the first window's start and the last window's end.
    """

    def __init__(
        self, threshold: float, min_windows: int = 2, max_gap_windows: int = 1, max_rank: int = 1
    ) -> None:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float, np.floating))
            or not math.isfinite(threshold)
        ):
            raise ValueError(f"threshold must be a finite number (got {threshold!r})")
        check_tracker_settings(min_windows, max_gap_windows, max_rank)
        self.threshold = float(threshold)
        self.min_windows = int(min_windows)
        self.max_gap_windows = int(max_gap_windows)
        self.max_rank = int(max_rank)
        self._tracks: dict[str | int, _Track] = {}
        self._seq = 0
        self._prev_center: float | None = None
        self._last_start: float | None = None
        self._last_end_of: dict[str | int, float] = {}  # per work: end of its latest detection

    def supporting(self, hits: Sequence[_Hit]) -> list[_Hit]:
        """The hits of one window that support their work (best first)."""
        if not hits:
            return []
        cut = hits[min(self.max_rank, len(hits)) - 1].score
        seen: set[str | int] = set()
        out = []
        for h in hits:
            if h.score < cut:
                break
            if is_match(h.score, self.threshold) and h.work_id not in seen:
                seen.add(h.work_id)
                out.append(h)
        return out

    def update(
        self, start_s: float, end_s: float, hits: Sequence[_Hit], *, silent: bool = False
    ) -> list[Match]:
        """Feeds one window and returns the detections it completes (usually none).

        Args:
            start_s, end_s: the window's extent in stream seconds; windows must come in order of
                strictly increasing start.
            hits: the window's ranking, best first (``ReferenceIndex.search`` output for it).
            silent: a silent window supports no work.

        Returns:
            Detections that ended before this window, ordered by start (then by first appearance).
        """
        start_s, end_s = float(start_s), float(end_s)
        if not (math.isfinite(start_s) and math.isfinite(end_s) and start_s < end_s):
            raise ValueError(f"a window needs finite start < end (got {start_s}, {end_s})")
        if self._last_start is not None and start_s <= self._last_start:
            raise ValueError(
                f"windows must come in order of increasing start: {start_s} s after {self._last_start} s"
            )
        _check_hits(hits)
        self._last_start = start_s
        center = 0.5 * (start_s + end_s)
        support = {} if silent else {h.work_id: h for h in self.supporting(hits)}

        done: list[_Track] = []
        for work, track in list(self._tracks.items()):
            hit = support.get(work)
            if hit is not None:
                track.supports += 1
                track.score_sum += float(hit.score)
                if hit.score > track.peak:
                    track.peak, track.peak_metadata = float(hit.score), dict(hit.metadata)
                track.last_window = (start_s, end_s)
                track.misses, track.next_center = 0, None
            else:
                track.misses += 1
                if track.misses == 1:
                    track.next_center = center
                if track.misses > self.max_gap_windows:
                    del self._tracks[work]
                    if track.opened:
                        done.append(track)
        matches = self._close(done)

        for work, hit in support.items():
            if work in self._tracks:
                continue
            start = start_s if self._prev_center is None else max(start_s, 0.5 * (self._prev_center + center))
            previous_end = self._last_end_of.get(work)
            if previous_end is not None:
                start = max(start, previous_end)
            self._tracks[work] = _Track(
                work_id=work,
                seq=self._seq,
                start_s=start,
                first_window=(start_s, end_s),
                last_window=(start_s, end_s),
                supports=1,
                score_sum=float(hit.score),
                peak=float(hit.score),
                peak_metadata=dict(hit.metadata),
            )
            self._seq += 1
        for track in self._tracks.values():
            if not track.opened and track.supports >= self.min_windows:
                track.opened = True
        self._prev_center = center
        # A new detection starts at or after this window's start: older ends cannot overlap it.
        self._last_end_of = {w: e for w, e in self._last_end_of.items() if e > start_s}
        return matches

    def flush(self) -> list[Match]:
        """Ends the stream (or a stretch of it, before a gap): emits every open detection, drops
        runs too short to be one, and forgets the previous window (the next one starts afresh)."""
        done = [t for t in self._tracks.values() if t.opened]
        self._tracks.clear()
        self._prev_center = None
        return self._close(done)

    def active(self) -> list[Match]:
        """Detections open now, provisionally ended at their last supporting window's end."""
        return [self._match(t, provisional=True) for t in self._tracks.values() if t.opened]

    def earliest_pending_s(self) -> float | None:
        """Earliest stream second a future detection may still refer to (None when nothing is pending)."""
        starts = [t.start_s for t in self._tracks.values()]
        return min(starts) if starts else None

    def _close(self, tracks: list[_Track]) -> list[Match]:
        matches = [self._match(t) for t in sorted(tracks, key=lambda t: (t.start_s, t.seq))]
        for m in matches:
            self._last_end_of[m.work_id] = max(m.end_s, self._last_end_of.get(m.work_id, -math.inf))
        return matches

    def _match(self, t: _Track, provisional: bool = False) -> Match:
        last_start, last_end = t.last_window
        end = last_end
        if t.next_center is not None and not provisional:
            end = min(last_end, 0.5 * (0.5 * (last_start + last_end) + t.next_center))
        return Match(
            work_id=t.work_id,
            start_s=t.start_s,
            end_s=max(end, t.start_s),
            score=t.score_sum / t.supports,
            peak_score=t.peak,
            n_windows=t.supports,
            metadata=t.peak_metadata,
            first_window_s=t.first_window,
            last_window_s=t.last_window,
        )


def _check_hits(hits: Sequence[_Hit]) -> None:
    previous = math.inf
    for i, h in enumerate(hits):
        score = float(h.score)
        if not math.isfinite(score):
            raise ValueError(f"hit {i} ({h.work_id!r}) has a non-finite score {score}")
        if score > previous:
            raise ValueError(f"hits must be ordered best first (hit {i} scores {score} > {previous})")
        previous = score
