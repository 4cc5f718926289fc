"""Broadcast monitoring: a stream's windows → ranked against the catalog → detections of works.

Pieces, each usable alone:

- :class:`DetectionTracker`: the decision core (pure logic, stream seconds). Fed each window's
  ranked hits, it turns runs of windows that agree on a work into detections with start/end
  times (:class:`Match`).
- :class:`Monitor`: one stream. Audio chunks → ``StreamingEmbedder`` windows → batched
  ``ReferenceIndex.search`` → tracker → :class:`Detection` records with UTC times, written to a sink.
- :class:`DetectionSink`: detections appended to per-channel, per-day JSON lines and CSV files,
  flushed and fsynced one by one (a killed monitor loses none it emitted), a gaps log, and
  :func:`plot_timeline` PNGs.
- :func:`run_monitor`: drives a monitor with the events of a source (chunks and gaps).

Threads: one Monitor per stream; monitors may share one embedder, one index, one sink and one
``MonitorMetrics`` across threads.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import importlib
import io
import json
import logging
import math
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

import numpy as np

from csi_runtime.atomic import atomic_write_bytes, fsync_dir
from csi_runtime.calibrate import is_match
from csi_runtime.streaming import Segment

__all__ = [
    "CSV_FIELDS",
    "Detection",
    "DetectionSink",
    "DetectionTracker",
    "GapRecord",
    "Match",
    "Monitor",
    "RunSummary",
    "Segment",
    "StreamClock",
    "plot_timeline",
    "read_jsonl",
    "run_monitor",
]

logger = logging.getLogger(__name__)

# A chunk whose start differs from where the previous one ended by more than this is a discontinuity.
CONTINUITY_TOLERANCE_S = 0.005
# Chunk wall-clock stamps re-anchor the stream clock only when they disagree by more than this
# (network and buffering jitter is smaller; sample-clock drift accumulates beyond it).
DEFAULT_CLOCK_TOLERANCE_S = 1.0
SECONDS_PER_HOUR = 3600.0


class _Hit(Protocol):
    @property
    def work_id(self) -> str | int: ...
    @property
    def score(self) -> float: ...
    @property
    def metadata(self) -> dict[str, Any]: ...


# ---------------------------------------------------------------------------------------------
# Decision core


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
        for name, value, low in (
            ("min_windows", min_windows, 1),
            ("max_gap_windows", max_gap_windows, 0),
            ("max_rank", max_rank, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low} (got {value!r})")
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


# ---------------------------------------------------------------------------------------------
# Records


def utc_iso(epoch_s: float) -> str:
    """POSIX seconds → ISO 8601 UTC with milliseconds, e.g. ``2024-05-01T12:00:03.500Z``."""
    ms = round(epoch_s * 1000.0)
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def parse_utc(value: datetime | str | float | int) -> float:
    """A UTC instant as POSIX seconds: an aware datetime, an ISO 8601 string with an offset or ``Z``,
    or POSIX seconds. Naive datetimes and strings are refused (their zone would be a guess)."""
    if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"UTC time must be finite (got {value})")
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"UTC time must carry a time zone (got naive {value.isoformat()})")
        return value.timestamp()
    raise TypeError(
        f"UTC time must be a datetime, ISO 8601 string or POSIX seconds (got {type(value).__name__})"
    )


CSV_FIELDS = (
    "channel",
    "start_utc",
    "end_utc",
    "played_duration_s",
    "query_offset_s",
    "work_id",
    "score",
    "peak_score",
    "n_windows",
    "model_id",
    "metadata",
)


@dataclass(frozen=True)
class Detection:
    """One play of a known work on a channel, as broadcast-monitoring reports carry it.

    Attributes:
        channel: the stream's name.
        start_utc, end_utc: ISO 8601 UTC with milliseconds (``...Z``).
        played_duration_s: end minus start, seconds.
        query_offset_s: stream seconds (since the monitor's stream origin) of the start.
        work_id: the work played; metadata: the catalog's metadata of the best-matching
            reference vector (e.g. the recording, title, artist).
        score: smoothed score (mean of the supporting windows); peak_score: the best window's.
        model_id: the embedding model; n_windows: supporting windows.
    """

    channel: str
    start_utc: str
    end_utc: str
    played_duration_s: float
    query_offset_s: float
    work_id: str | int
    score: float
    peak_score: float
    metadata: dict[str, Any]
    model_id: str | None
    n_windows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """One line of JSON (no newline)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False, separators=(",", ":"))

    def csv_row(self) -> list[Any]:
        d = self.to_dict()
        d["metadata"] = json.dumps(self.metadata, ensure_ascii=False, separators=(",", ":"))
        return [d[k] for k in CSV_FIELDS]

    @property
    def day(self) -> date:
        """UTC day of the start (the day whose files hold this detection)."""
        return datetime.fromisoformat(self.start_utc.replace("Z", "+00:00")).date()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Detection:
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__})
        except KeyError as exc:
            raise ValueError(f"detection record lacks field {exc}") from None


@dataclass(frozen=True)
class GapRecord:
    """A stretch of a stream with no audio (dropout, reconnect, discontinuity)."""

    channel: str
    start_utc: str
    end_utc: str
    duration_s: float
    stream_offset_s: float
    reason: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, allow_nan=False, separators=(",", ":"))

    @property
    def day(self) -> date:
        return datetime.fromisoformat(self.start_utc.replace("Z", "+00:00")).date()


# ---------------------------------------------------------------------------------------------
# Stream clock


class StreamClock:
    """Maps stream seconds to UTC (POSIX seconds): ``utc(t) = t + offset``, the offset piecewise
    constant (it changes where wall-clock stamps re-anchor the stream or after a gap)."""

    def __init__(self, origin_utc: float) -> None:
        self._points: list[tuple[float, float]] = [(-math.inf, float(origin_utc))]  # (from t, offset)

    def offset_at(self, t: float) -> float:
        offset = self._points[0][1]
        for since, off in self._points:
            if since > t:
                break
            offset = off
        return offset

    def utc(self, t: float) -> float:
        return t + self.offset_at(t)

    def set_from(self, t: float, offset: float) -> None:
        """From stream second ``t`` on, ``utc(t) = t + offset``."""
        self._points = [p for p in self._points if p[0] < t] + [(t, float(offset))]

    def reset(self, t: float, utc: float) -> None:
        """Forget the past (the stream's clock went backwards): one offset from here on."""
        self._points = [(-math.inf, float(utc) - t)]

    def prune(self, before: float) -> None:
        """Drop offsets that no stream second >= ``before`` uses (bounds memory)."""
        keep = 0
        for i, (since, _) in enumerate(self._points):
            if since <= before:
                keep = i
        self._points = self._points[keep:]


# ---------------------------------------------------------------------------------------------
# Monitor


class _Sink(Protocol):
    def write(self, detection: Detection) -> None: ...
    def write_gap(self, gap: GapRecord) -> None: ...


def _is_gap(item: Any) -> bool:
    return hasattr(item, "duration_s") and hasattr(item, "start_s") and not hasattr(item, "samples")


def _is_segment(item: Any) -> bool:
    return hasattr(item, "vector") and hasattr(item, "start_s")


class Monitor:
    """Monitors one stream: windows → catalog ranking → smoothed decisions → detections.

    Args:
        embedder: an ``Embedder`` (``model_id``, ``dim``, ``sample_rate``), or None to feed
            precomputed segments only. Checked against the index (``index.check_model``).
        index: the catalog; may be shared with other monitors and threads.
        channel: the stream's name (in every record and file name).
        threshold: the match threshold (``csi calibrate``); decision ``score >= threshold``. With
            an ``"l2"`` index the squared distance d of unit vectors is turned into the cosine
            ``1 - d / 2`` first, so thresholds are always similarities.
        k: works ranked per window. min_windows, max_gap_windows, max_rank: see
            :class:`DetectionTracker`.
        window_s, hop_s: windows of the StreamingEmbedder (None: the model's defaults).
        start_utc: UTC time of stream second 0 (aware datetime, ISO string or POSIX seconds;
            None: now). Chunks that carry ``wall_utc`` re-anchor the clock when it drifts by more
            than ``clock_tolerance_s``.
        sink: receives each detection and gap as it is made (e.g. :class:`DetectionSink`).
        metrics: a ``csi_runtime.metrics.MonitorMetrics``.
        search_device, search_threads: passed to ``ReferenceIndex.search``; with many monitors
            in one process, ``search_threads=1`` avoids oversubscribing the cores.
        stream_factory: builds the windowing stream (default
            ``StreamingEmbedder(embedder, window_s, hop_s)``); it must offer ``push(samples) ->
            segments`` and ``flush() -> segments``, with times counted from its first sample.

    Time: stream seconds count audio received. A gap (``on_gap``, or a chunk whose ``start_s``
    jumps ahead) ends the windows before it, closes open detections and is logged; the audio after
    it is windowed afresh and its UTC time is the gap's end (or the chunk's ``wall_utc``), whether
    the source's stream seconds skip the gap's duration or not. A chunk whose ``start_s`` goes
    backwards restarts the tracking with UTC time continuing.
    """

    def __init__(
        self,
        embedder: Any,
        index: Any,
        *,
        channel: str,
        threshold: float,
        k: int = 10,
        min_windows: int = 2,
        max_gap_windows: int = 1,
        max_rank: int = 1,
        window_s: float | None = None,
        hop_s: float | None = None,
        start_utc: datetime | str | float | None = None,
        sink: _Sink | None = None,
        metrics: Any = None,
        search_device: str = "auto",
        search_threads: int | None = None,
        clock_tolerance_s: float = DEFAULT_CLOCK_TOLERANCE_S,
        stream_factory: Callable[[], Any] | None = None,
    ) -> None:
        if not isinstance(channel, str) or not channel.strip():
            raise ValueError(f"channel must be a non-empty string (got {channel!r})")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer (got {k!r})")
        self._new_tracker = functools.partial(
            DetectionTracker,
            threshold,
            min_windows=min_windows,
            max_gap_windows=max_gap_windows,
            max_rank=max_rank,
        )
        self._tracker = self._new_tracker()
        if k < max_rank:
            raise ValueError(f"k ({k}) must be at least max_rank ({max_rank})")
        if not (math.isfinite(clock_tolerance_s) and clock_tolerance_s >= 0):
            raise ValueError(f"clock_tolerance_s must be finite and >= 0 (got {clock_tolerance_s})")
        if embedder is not None:
            index.check_model(embedder.model_id, int(embedder.dim))
            self.model_id: str | None = embedder.model_id
            self.sample_rate: int | None = int(embedder.sample_rate)
        else:
            self.model_id, self.sample_rate = index.model_id, None
        self.channel = channel
        self.embedder, self.index = embedder, index
        self.k = int(k)
        self.window_s, self.hop_s = window_s, hop_s
        self.sink, self.metrics = sink, metrics
        self._search_device, self._search_threads = search_device, search_threads
        self._clock_tolerance_s = float(clock_tolerance_s)
        self._stream_factory = stream_factory
        self._clock = StreamClock(time.time() if start_utc is None else parse_utc(start_utc))
        self._lock = threading.RLock()
        self._stream: Any = None  # the windowing stream of the current stretch of audio
        self._stream_origin_s = 0.0  # stream seconds of its first sample
        self._position_s = 0.0  # stream seconds reached by the audio (or segments) received
        self._pending_gap_end_utc: float | None = None
        self._started = False
        self._closed = False
        self.detections_emitted = 0
        self.gaps_recorded = 0
        if metrics is not None:
            metrics.stream_started(channel)

    # -- properties ---------------------------------------------------------------------------

    @property
    def position_s(self) -> float:
        """Stream seconds of audio (or of segments) consumed so far."""
        return self._position_s

    @property
    def tracker(self) -> DetectionTracker:
        return self._tracker

    def utc_at(self, stream_s: float) -> str:
        """ISO 8601 UTC time of a stream second (as the monitor maps it now)."""
        return utc_iso(self._clock.utc(stream_s))

    def active(self) -> list[Match]:
        """Detections open now (provisional; see ``DetectionTracker.active``)."""
        with self._lock:
            return self._tracker.active()

    # -- feeding ------------------------------------------------------------------------------

    def feed(self, item: Any) -> list[Detection]:
        """Feeds what a source yields: an audio chunk (``Chunk(samples, start_s, wall_utc)`` or a
        float array [n] at ``embedder.sample_rate``), a ``Gap(start_s, duration_s, reason)``, a
        segment or a list of segments. Returns the detections completed (already sent to the sink)."""
        if _is_gap(item):
            return self.on_gap(item)
        if _is_segment(item):
            return self.process([item])
        if isinstance(item, (list, tuple)) and all(_is_segment(s) for s in item):  # [] included
            return self.process(item)
        if hasattr(item, "samples"):
            rate = getattr(item, "sample_rate", None)
            if rate is not None and self.sample_rate is not None and int(rate) != self.sample_rate:
                raise ValueError(
                    f"chunk is at {rate} Hz, the embedder expects {self.sample_rate} Hz (resample it first)"
                )
            return self.push_audio(
                item.samples, start_s=getattr(item, "start_s", None), wall_utc=getattr(item, "wall_utc", None)
            )
        return self.push_audio(item)

    def push_audio(
        self, samples: Any, *, start_s: float | None = None, wall_utc: datetime | str | float | None = None
    ) -> list[Detection]:
        """Audio at ``embedder.sample_rate``: float [n] (or [n, channels]).

        Args:
            start_s: stream seconds of the first sample (None: right after the previous chunk).
            wall_utc: UTC time of the first sample, when the source knows it.
        """
        with self._lock, self._counting_errors():
            self._check_open()
            if self.embedder is None and self._stream_factory is None:
                raise ValueError("this Monitor has no embedder: feed it segments, not audio")
            x = np.asarray(samples)
            if x.ndim not in (1, 2):
                raise ValueError(f"audio must be [n] or [n, channels] (got shape {x.shape})")
            n = int(x.shape[0])
            sr = self._sample_rate()
            t0 = self._position_s if start_s is None else float(start_s)
            if not math.isfinite(t0):
                raise ValueError(f"chunk start must be finite (got {start_s})")
            out: list[Detection] = []
            jump = t0 - self._position_s
            if self._started and jump < -CONTINUITY_TOLERANCE_S:
                out += self._restart_backwards(t0)
            elif self._stream is not None and jump > CONTINUITY_TOLERANCE_S:
                logger.warning(
                    "%s: audio jumps from %.3f s to %.3f s without a gap event; treating it as a gap",
                    self.channel,
                    self._position_s,
                    t0,
                )
                out += self._gap(self._position_s, jump, "discontinuity")
            self._resolve_gap(t0)
            if wall_utc is not None:
                self._anchor(t0, parse_utc(wall_utc))
            if self._stream is None:
                self._stream = self._new_stream()
                self._stream_origin_s = t0
            self._started = True
            segments = self._stream.push(x)
            self._position_s = t0 + n / sr
            if self.metrics is not None:
                self.metrics.audio(self.channel, n / sr)
            out += self._rank_and_track(self._shifted(segments))
            return out

    def process(self, segments: Iterable[Any]) -> list[Detection]:
        """Feeds precomputed windows (``Segment(start_s, end_s, vector[, silent])``, stream seconds,
        in order). The vectors of non-silent windows are ranked in one batched search."""
        with self._lock, self._counting_errors():
            self._check_open()
            segs = list(segments)
            if not segs:
                return []
            self._resolve_gap(float(segs[0].start_s))
            self._started = True
            out = self._rank_and_track(segs)
            self._position_s = max(self._position_s, max(float(s.end_s) for s in segs))
            return out

    def on_gap(self, gap: Any) -> list[Detection]:
        """A stretch with no audio (``Gap(start_s, duration_s, reason)``; start_s None: where the
        audio stopped). Emits what the audio before it completes, closes open detections, records
        the gap (sink, metrics); the audio after it starts afresh at the gap's end in UTC."""
        with self._lock, self._counting_errors():
            self._check_open()
            start = getattr(gap, "start_s", None)
            start = self._position_s if start is None else float(start)
            duration = float(gap.duration_s)
            if not (math.isfinite(start) and math.isfinite(duration) and duration >= 0):
                raise ValueError(f"a gap needs a finite start and duration >= 0 (got {start}, {duration})")
            return self._gap(start, duration, str(getattr(gap, "reason", "") or "gap"))

    def flush(self) -> list[Detection]:
        """End of the stream: emits the last windows and closes open detections."""
        with self._lock, self._counting_errors():
            self._check_open()
            return self._end_stretch()

    def close(self) -> list[Detection]:
        """Flushes, then refuses further input. Idempotent. Does not close the sink (it may be shared)."""
        with self._lock:
            if self._closed:
                return []
            try:
                return self.flush()
            finally:
                self._closed = True
                if self.metrics is not None:
                    self.metrics.stream_stopped(self.channel)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _counting_errors(self) -> Any:
        try:
            yield
        except Exception:
            if self.metrics is not None:
                self.metrics.error(self.channel)
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"monitor of {self.channel!r} is closed")

    def _sample_rate(self) -> int:
        if self.sample_rate is None:
            raise ValueError("audio needs an embedder (its sample_rate)")
        return self.sample_rate

    def _new_stream(self) -> Any:
        if self._stream_factory is not None:
            return self._stream_factory()
        # Imported on first use: it pulls in the embedder's inference backends.
        streaming = importlib.import_module("csi_runtime.streaming")
        kwargs = {k: v for k, v in (("window_s", self.window_s), ("hop_s", self.hop_s)) if v is not None}
        return streaming.StreamingEmbedder(self.embedder, **kwargs)

    def _shifted(self, segments: Iterable[Any]) -> list[Segment]:
        o = self._stream_origin_s
        return [
            Segment(o + float(s.start_s), o + float(s.end_s), s.vector, bool(getattr(s, "silent", False)))
            for s in segments
        ]

    def _anchor(self, t: float, utc: float) -> None:
        if abs(self._clock.utc(t) - utc) > self._clock_tolerance_s:
            logger.info(
                "%s: stream clock re-anchored at %.3f s by %+.3f s", self.channel, t, utc - self._clock.utc(t)
            )
            self._clock.set_from(t, utc - t)

    def _resolve_gap(self, t: float) -> None:
        """The first audio after a gap starts at stream second t: it is at the gap's end in UTC."""
        if self._pending_gap_end_utc is not None:
            self._clock.set_from(t, self._pending_gap_end_utc - t)
            self._pending_gap_end_utc = None

    def _end_stretch(self) -> list[Detection]:
        out: list[Detection] = []
        if self._stream is not None:
            stream, self._stream = self._stream, None
            out += self._rank_and_track(self._shifted(stream.flush()))
        out += self._emit(self._tracker.flush())
        return out

    def _gap(self, start: float, duration: float, reason: str) -> list[Detection]:
        out = self._end_stretch()
        utc0 = self._clock.utc(start)
        record = GapRecord(
            channel=self.channel,
            start_utc=utc_iso(utc0),
            end_utc=utc_iso(utc0 + duration),
            duration_s=round(duration, 3),
            stream_offset_s=round(start, 3),
            reason=reason,
        )
        self._pending_gap_end_utc = utc0 + duration
        self.gaps_recorded += 1
        logger.info("%s: gap of %.3f s at %s (%s)", self.channel, duration, record.start_utc, reason)
        if self.sink is not None:
            self.sink.write_gap(record)
        if self.metrics is not None:
            self.metrics.gap(self.channel)
        return out

    def _restart_backwards(self, t: float) -> list[Detection]:
        logger.warning(
            "%s: stream time goes back from %.3f s to %.3f s; restarting the tracking",
            self.channel,
            self._position_s,
            t,
        )
        out = self._end_stretch()
        utc_now = self._clock.utc(self._position_s)
        if self._pending_gap_end_utc is not None:
            utc_now, self._pending_gap_end_utc = self._pending_gap_end_utc, None
        self._clock.reset(t, utc_now)
        self._tracker = self._new_tracker()
        self._position_s = t
        return out

    def _scores(self, hits: list[Any]) -> list[Any]:
        if self.index.metric != "l2":
            return hits
        return [h._replace(score=1.0 - 0.5 * h.score) for h in hits]

    def _rank_and_track(self, segments: list[Any]) -> list[Detection]:
        if not segments:
            return []
        dim = int(self.index.dim)
        silent = []
        rows = []
        for s in segments:
            v = np.asarray(s.vector)
            if v.shape != (dim,) or v.dtype.kind != "f":
                raise ValueError(
                    f"window at {float(s.start_s):.3f} s: vector must be float [{dim}] "
                    f"(got {v.dtype} {v.shape})"
                )
            if not np.isfinite(v).all():
                raise ValueError(f"window at {float(s.start_s):.3f} s: vector holds NaN or Inf")
            quiet = bool(getattr(s, "silent", False)) or not v.any()
            silent.append(quiet)
            if not quiet:
                rows.append(v)
        ranked: list[list[Any]] = []
        if rows:
            ranked = self.index.search(
                np.stack(rows).astype(np.float32, copy=False),
                self.k,
                device=self._search_device,
                threads=self._search_threads,
            )
        it = iter(ranked)
        matches: list[Match] = []
        for s, quiet in zip(segments, silent):
            hits = [] if quiet else self._scores(next(it))
            matches += self._tracker.update(float(s.start_s), float(s.end_s), hits, silent=quiet)
        detections = self._emit(matches)  # maps their times: before the clock forgets them
        if self.metrics is not None:
            self.metrics.windows(self.channel, len(segments))
            self.metrics.lag(self.channel, time.time() - self._clock.utc(float(segments[-1].end_s)))
        # Later detections start at or after the earliest open run, or after the last window.
        pending = self._tracker.earliest_pending_s()
        self._clock.prune(float(segments[-1].start_s) if pending is None else pending)
        return detections

    def _emit(self, matches: list[Match]) -> list[Detection]:
        out = []
        for m in matches:
            u0, u1 = self._clock.utc(m.start_s), self._clock.utc(m.end_s)
            d = Detection(
                channel=self.channel,
                start_utc=utc_iso(u0),
                end_utc=utc_iso(u1),
                played_duration_s=round(u1 - u0, 3),
                query_offset_s=round(m.start_s, 3),
                work_id=m.work_id,
                score=round(m.score, 6),
                peak_score=round(m.peak_score, 6),
                metadata=m.metadata,
                model_id=self.model_id,
                n_windows=m.n_windows,
            )
            if self.sink is not None:
                self.sink.write(d)
            self.detections_emitted += 1
            if self.metrics is not None:
                self.metrics.detection(self.channel)
            logger.info("%s: %s %s..%s score %.3f", self.channel, d.work_id, d.start_utc, d.end_utc, d.score)
            out.append(d)
        return out


@dataclass(frozen=True)
class RunSummary:
    """What :func:`run_monitor` did: detections emitted, gaps recorded, stream seconds consumed."""

    detections: int
    gaps: int
    stream_s: float


def run_monitor(
    events: Iterable[Any],
    monitor: Monitor,
    *,
    progress: Callable[[Monitor], None] | None = None,
    close: bool = True,
) -> RunSummary:
    """Feeds every event of a source (chunks, gaps, arrays, segments) to ``monitor``; calls
    ``progress(monitor)`` after each. The monitor is closed at the end (``close=True``) — also when
    the source fails or the run is interrupted, so detections open at that point are emitted."""
    try:
        for event in events:
            monitor.feed(event)
            if progress is not None:
                progress(monitor)
    finally:
        if close:
            monitor.close()
    return RunSummary(monitor.detections_emitted, monitor.gaps_recorded, monitor.position_s)


# ---------------------------------------------------------------------------------------------
# Sink


def _channel_slug(channel: str) -> str:
    """The channel as a file-name part: percent-encoded, so distinct channels get distinct files."""
    return urllib.parse.quote(channel, safe="-_.")


@dataclass
class _OpenFile:
    fh: IO[bytes]
    day: date


@dataclass
class DetectionSink:
    """Writes detections and gaps under ``out_dir`` as they happen, one file per channel and UTC day:

    - ``detections-<channel>-<YYYYMMDD>.jsonl``: one :meth:`Detection.to_json` per line;
    - ``detections-<channel>-<YYYYMMDD>.csv``: the same rows (:data:`CSV_FIELDS`, metadata as JSON);
    - ``gaps-<channel>-<YYYYMMDD>.jsonl``: one :class:`GapRecord` per line;
    - ``timeline-<channel>-<YYYYMMDD>.png`` (``plots=True``): :func:`plot_timeline` of the day,
      written when the channel's day rolls over and at :meth:`close`.

    A detection belongs to the day of its start. Each line is written, flushed and fsynced before
    ``write`` returns, so a monitor killed at any point loses no detection it had emitted; files are
    appended to, and a partial last line left by a crash is cut off when the file is reopened.
    Thread-safe: monitors of many channels may share one sink.
    """

    out_dir: str | os.PathLike[str]
    csv: bool = True
    plots: bool = False
    fsync: bool = True
    _files: dict[tuple[str, str], _OpenFile] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _touched: set[tuple[str, date]] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise NotADirectoryError(f"monitor output folder is a file: {self.out_dir}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.plots:
            _require_matplotlib()

    def path(self, kind: str, channel: str, day: date) -> Path:
        """``kind``: "detections.jsonl", "detections.csv", "gaps.jsonl" or "timeline.png"."""
        stem, ext = kind.split(".")
        return Path(self.out_dir) / f"{stem}-{_channel_slug(channel)}-{day:%Y%m%d}.{ext}"

    def write(self, detection: Detection) -> None:
        """Appends one detection (JSON line, CSV row); durable when this returns."""
        day, channel = detection.day, detection.channel
        with self._lock:
            finished = self._append("detections.jsonl", channel, day, (detection.to_json() + "\n").encode())
            if self.csv:
                self._append("detections.csv", channel, day, _csv_line(detection.csv_row()))
            self._touched.add((channel, day))
        self._plot_days(finished)

    def write_gap(self, gap: GapRecord) -> None:
        """Appends one gap to the gaps log; durable when this returns."""
        day, channel = gap.day, gap.channel
        with self._lock:
            finished = self._append("gaps.jsonl", channel, day, (gap.to_json() + "\n").encode())
            self._touched.add((channel, day))
        self._plot_days(finished)

    def plot(self, channel: str, day: date) -> Path:
        """Writes the timeline PNG of one channel and day from its files; returns its path."""
        detections = [Detection.from_dict(d) for d in read_jsonl(self.path("detections.jsonl", channel, day))]
        gaps = read_jsonl(self.path("gaps.jsonl", channel, day))
        out = self.path("timeline.png", channel, day)
        plot_timeline(detections, gaps, out, channel=channel, day=day)
        return out

    def close(self) -> None:
        """Closes the files (and writes the plots of the days written to, with ``plots=True``)."""
        with self._lock:
            for f in self._files.values():
                f.fh.close()
            self._files.clear()
            touched, self._touched = sorted(self._touched), set()
        if self.plots:
            for channel, day in touched:
                self.plot(channel, day)

    def __enter__(self) -> DetectionSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _append(self, kind: str, channel: str, day: date, line: bytes) -> list[tuple[str, date]]:
        """Writes one line; returns the (channel, day) pairs finished by a day change (to plot)."""
        key = (kind, channel)
        f = self._files.get(key)
        finished: list[tuple[str, date]] = []
        if f is not None and f.day != day:
            f.fh.close()
            del self._files[key]
            f = None
            finished = sorted(t for t in self._touched if t[0] == channel and t[1] != day)
            self._touched.difference_update(finished)
        if f is None:
            f = _OpenFile(self._open(self.path(kind, channel, day), kind), day)
            self._files[key] = f
        f.fh.write(line)
        f.fh.flush()
        if self.fsync:
            os.fsync(f.fh.fileno())
        return finished

    def _plot_days(self, days: list[tuple[str, date]]) -> None:
        """Plots days a rollover finished (outside the lock; a failed plot never loses records)."""
        if not self.plots:
            return
        for channel, day in days:
            try:
                self.plot(channel, day)
            except Exception:
                logger.exception("timeline plot of %s on %s failed", channel, day)

    def _open(self, path: Path, kind: str) -> IO[bytes]:
        created = not path.exists()
        fh = open(path, "a+b")  # noqa: SIM115 - kept open across writes
        try:
            size = fh.seek(0, os.SEEK_END)
            if size:
                _cut_partial_line(fh, path, size)
            if kind == "detections.csv":
                header = _csv_line(list(CSV_FIELDS))
                fh.seek(0)
                first = fh.readline()
                fh.seek(0, os.SEEK_END)
                if not first:
                    fh.write(header)
                elif first != header:
                    raise ValueError(f"{path} exists with other columns than {','.join(CSV_FIELDS)}")
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
        except BaseException:
            fh.close()
            raise
        if created and self.fsync:
            fsync_dir(path.parent)
        return fh


def _csv_line(row: list[Any]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue().encode()


def _cut_partial_line(fh: IO[bytes], path: Path, size: int) -> None:
    """Truncates a last line without its newline (a write cut short by a crash)."""
    tail = min(size, 1 << 16)
    fh.seek(size - tail)
    data = fh.read(tail)
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n")
    keep = size - tail + cut + 1 if cut >= 0 else (0 if tail == size else None)
    if keep is None:  # a line longer than 64 KiB without a newline: keep it, start a new line
        fh.write(b"\n")
        return
    logger.warning(
        "%s: dropping a partial last line (%d bytes) left by an interrupted write", path, size - keep
    )
    fh.truncate(keep)
    fh.seek(0, os.SEEK_END)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (missing file: none); unreadable lines are skipped with a warning."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    with open(p, "rb") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                logger.warning("%s:%d is not valid JSON; skipped", p, i)
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


# ---------------------------------------------------------------------------------------------
# Plot


def _require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "timeline plots need matplotlib, which is not installed: pip install matplotlib"
        ) from exc
    return matplotlib


def _lanes(spans: list[tuple[float, float]]) -> list[int]:
    """Greedy interval colouring: each span gets the first lane free at its start."""
    lane_end: list[float] = []
    out = []
    for a, b in spans:
        for i, end in enumerate(lane_end):
            if end <= a:
                lane_end[i] = b
                out.append(i)
                break
        else:
            lane_end.append(b)
            out.append(len(lane_end) - 1)
    return out


def plot_timeline(
    detections: Sequence[Detection],
    gaps: Sequence[GapRecord | dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    channel: str,
    day: date,
    dpi: int = 100,
) -> Path:
    """PNG of one channel's day (00:00–24:00 UTC): each detection a bar labelled with its work id
    and coloured by score (overlapping detections on separate lanes), gaps shaded. Written
    atomically. Uses matplotlib's Agg canvas directly (no pyplot, no global backend change)."""
    _require_matplotlib()
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()

    def hours(iso: str) -> float:
        return (parse_utc(iso) - midnight) / SECONDS_PER_HOUR

    rows = sorted(detections, key=lambda d: (d.start_utc, d.end_utc))
    spans = [(hours(d.start_utc), hours(d.end_utc)) for d in rows]
    lanes = _lanes(spans)
    n_lanes = max(lanes, default=0) + 1
    scores = [d.score for d in rows] or [0.0, 1.0]
    lo, hi = min(scores), max(scores)
    norm = Normalize(vmin=lo, vmax=max(hi, lo + 1e-6))
    fig = Figure(figsize=(24, 1.6 + 0.9 * n_lanes))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    viridis = colormaps["viridis"]
    for d, (a, b), lane in zip(rows, spans, lanes):
        ax.broken_barh([(a, max(b - a, 1e-3))], (lane + 0.1, 0.8), facecolors=viridis(norm(d.score)))
        mid = 0.5 * (a + b)
        ax.text(mid, lane + 0.5, str(d.work_id), ha="center", va="center", rotation=90, fontsize=6)
    for g in gaps:
        g0 = hours(g["start_utc"] if isinstance(g, dict) else g.start_utc)
        g1 = hours(g["end_utc"] if isinstance(g, dict) else g.end_utc)
        ax.axvspan(g0, max(g1, g0 + 1e-3), color="0.6", alpha=0.35, hatch="//", linewidth=0)
    ax.set_xlim(0, 24)
    ax.set_ylim(0, n_lanes)
    ax.set_yticks([])
    ax.set_xticks(range(25))
    ax.set_xticklabels([f"{h:02d}:00" for h in range(25)], fontsize=7)
    ax.set_xlabel("UTC")
    ax.set_title(f"{channel} — {day.isoformat()} — {len(rows)} detections, {len(gaps)} gaps")
    if rows:
        fig.colorbar(ScalarMappable(norm=norm, cmap=viridis), ax=ax, pad=0.01, fraction=0.02, label="score")
    if gaps:
        ax.legend(handles=[Patch(facecolor="0.6", alpha=0.35, hatch="//", label="gap")], loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out
