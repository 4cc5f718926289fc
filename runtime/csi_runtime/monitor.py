"""Broadcast monitoring: a stream's windows → ranked against the catalog → detections of works.

This module holds the orchestration:

- :class:`Monitor`: one stream. Audio chunks → ``StreamingEmbedder`` windows → batched
  ``ReferenceIndex.search`` → tracker → :class:`Detection` records with UTC times, written to a sink.
- :func:`run_monitor`: drives a monitor with the events of a source (chunks and gaps);
  :class:`RunSummary` says what it did.

The pieces it assembles, each usable alone, live in their own modules and are re-exported here:

- ``csi_runtime.tracker``: :class:`DetectionTracker`, the decision core (pure logic, stream
  seconds), and its :class:`Match` records;
- ``csi_runtime.detections``: :class:`Detection`, :class:`GapRecord`, :func:`utc_iso` /
  :func:`parse_utc` and :class:`StreamClock`;
- ``csi_runtime.sink``: :class:`DetectionSink` (per-channel, per-day JSON lines and CSV files,
  fsynced line by line, a gaps log), :func:`read_jsonl` and :func:`plot_timeline` PNGs.

Threads: one Monitor per stream; monitors may share one embedder, one index, one sink and one
``MonitorMetrics`` across threads.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from csi_runtime.calibrate import normalize_hits, search_k
from csi_runtime.detections import CSV_FIELDS, Detection, GapRecord, StreamClock, parse_utc, utc_iso
from csi_runtime.sink import SECONDS_PER_HOUR, DetectionSink, plot_timeline, read_jsonl
from csi_runtime.streaming import Segment
from csi_runtime.tracker import DetectionTracker, Match

__all__ = [
    "CSV_FIELDS",
    "SECONDS_PER_HOUR",
    "Detection",
    "DetectionSink",
    "DetectionTracker",
    "GapRecord",
    "Match",
    "Monitor",
    "RunSummary",
    "Segment",
    "StreamClock",
    "parse_utc",
    "plot_timeline",
    "read_jsonl",
    "run_monitor",
    "utc_iso",
]

logger = logging.getLogger(__name__)

# A chunk whose start differs from where the previous one ended by more than this is a discontinuity.
CONTINUITY_TOLERANCE_S = 0.005
# Chunk wall-clock stamps re-anchor the stream clock only when they disagree by more than this
# (network and buffering jitter is smaller; sample-clock drift accumulates beyond it).
DEFAULT_CLOCK_TOLERANCE_S = 1.0


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
        cohort: 0 for raw similarities, or the cohort of cohort-normalised scores
            (:func:`csi_runtime.calibrate.normalize_hits`); the threshold must have been
            calibrated with the same cohort. The index needs at least cohort + 1 works.
        impostors: an :class:`csi_runtime.impostors.ImpostorSet` (usually ``embedder.impostors``)
            for impostor-normalised scores, or None. The threshold must have been calibrated with
            it (``csi calibrate --impostors``) and the index built with it (each window's
            metadata holds its impostor mean). Applied before the cohort normalisation.
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
        cohort: int = 0,
        impostors: Any = None,
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
        self._search_k = search_k(int(k), cohort)  # also validates cohort
        self.cohort = int(cohort)
        if self.cohort and index.num_works < self.cohort + 1:
            raise ValueError(
                f"a cohort of {self.cohort} works needs an index of at least {self.cohort + 1} works "
                f"(this one has {index.num_works})"
            )
        if impostors is not None:
            from csi_runtime.impostors import check_index_has_means

            if impostors.dim != int(index.dim):
                raise ValueError(f"the impostor set is {impostors.dim}-d, the index {index.dim}-d")
            check_index_has_means(index)
        self.impostors = impostors
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

    def _scores(self, ranked: list[list[Any]], queries: np.ndarray) -> list[list[Any]]:
        """Each window's hits as similarities, impostor- then cohort-normalised, cut to k."""
        if self.index.metric == "l2":
            ranked = [[h._replace(score=1.0 - 0.5 * h.score) for h in hits] for hits in ranked]
        if self.impostors is not None:
            ranked = self.impostors.rescore(ranked, queries, threads=self._search_threads)
        return [normalize_hits(hits, self.cohort)[: self.k] for hits in ranked]

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
            queries = np.stack(rows).astype(np.float32, copy=False)
            found = self.index.search(
                queries, self._search_k, device=self._search_device, threads=self._search_threads
            )
            ranked = self._scores(found, queries)
        it = iter(ranked)
        matches: list[Match] = []
        for s, quiet in zip(segments, silent):
            hits = [] if quiet else next(it)
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
