"""Monitor: synthetic streams (segments and audio) against their planned plays, gaps, clocks,
threads and metrics; the real Embedder and StreamingEmbedder end to end; the public names of
csi_runtime.monitor. The decision core and the sink have their own tests (test_tracker.py,
test_sink.py)."""

from __future__ import annotations

import csv
import json
import math
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from csi_runtime import Embedder, Hit, IndexModelMismatchError, ReferenceIndex
from csi_runtime.monitor import (
    CSV_FIELDS,
    Detection,
    DetectionSink,
    DetectionTracker,
    Monitor,
    Segment,
    StreamClock,
    parse_utc,
    read_jsonl,
    run_monitor,
    utc_iso,
)

W, HOP = 20.0, 10.0  # regular windows of the synthetic streams: window i = [10 i, 10 i + 20]


# ---------------------------------------------------------------------------------------------
# Synthetic streams: a plan of pieces (works, other audio, silence); a window's vector mixes the
# vectors of the pieces it overlaps in proportion to their share of it, so the work filling most
# of a window wins it, as with a real embedder.

DIM = 96
THRESHOLD = 0.7
MODEL = "fake-model@1"
ORIGIN = "2024-05-01T23:45:00Z"


@dataclass
class Piece:
    kind: str  # "work", "other" or "silence"
    work: str | None
    start: float
    end: float
    vector: np.ndarray


@dataclass
class FakeEmbedder:
    model_id: str = MODEL
    dim: int = DIM
    sample_rate: int = 20


def unit_rows(rng: np.random.Generator, n: int, d: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def catalog(rng: np.random.Generator, n_works: int = 30, metric: str = "ip") -> tuple[ReferenceIndex, dict]:
    refs = dict(zip([f"work{i:02d}" for i in range(n_works)], unit_rows(rng, n_works)))
    index = ReferenceIndex(DIM, dtype="float32", metric=metric, model_id=MODEL)
    index.add(np.stack(list(refs.values())), list(refs), [{"title": f"Title of {w}"} for w in refs])
    return index, refs


def make_plan(rng: np.random.Generator, refs: dict, duration_s: float, silence: bool = False) -> list[Piece]:
    works = list(refs)
    pieces: list[Piece] = []
    t = 0.0
    while t < duration_s:
        prev = pieces[-1] if pieces else None
        kind = "work" if (prev is not None and prev.kind != "work") or rng.random() < 0.6 else "other"
        if kind == "other" and silence and rng.random() < 0.3:
            kind = "silence"
        if kind == "work":
            choices = [w for w in works if prev is None or w != prev.work]
            w = str(rng.choice(choices))
            n = float(rng.integers(45, 150))
            pieces.append(Piece("work", w, t, t + n, refs[w]))
        else:
            n = float(rng.integers(30, 60))
            vec = np.zeros(DIM, np.float32) if kind == "silence" else unit_rows(rng, 1)[0]
            pieces.append(Piece(kind, None, t, t + n, vec))
        t += n
    # Boundaries at half seconds: never exactly at a window centre, where two works would tie.
    for p in pieces:
        p.start = p.start + 0.5 if p.start else 0.0
        p.end += 0.5
    # End on a whole hop so that windows cover the stream to its end.
    pieces[-1].end = math.ceil(pieces[-1].end / HOP) * HOP
    return pieces


def window_vector(pieces: list[Piece], s: float, e: float) -> tuple[np.ndarray, bool]:
    v = np.zeros(DIM, np.float64)
    for p in pieces:
        overlap = min(e, p.end) - max(s, p.start)
        if overlap > 0:
            v += overlap / (e - s) * p.vector
    norm = np.linalg.norm(v)
    if norm == 0:
        return np.zeros(DIM, np.float32), True
    return (v / norm).astype(np.float32), False


def plan_segments(pieces: list[Piece], t0: float = 0.0, t1: float | None = None) -> list[Segment]:
    end = pieces[-1].end if t1 is None else t1
    out = []
    s = t0
    while s + W <= end + 1e-9:
        v, silent = window_vector(pieces, s, s + W)
        out.append(Segment(s, s + W, v, silent))
        s += HOP
    return out


def check_against_plan(detections: list[Detection], pieces: list[Piece], tol: float = HOP / 2 + 2.0) -> None:
    """One detection per planned play, each boundary within tol seconds of the truth."""
    plays = [p for p in pieces if p.kind == "work"]
    assert len(detections) == len(plays), ([(d.work_id, d.query_offset_s) for d in detections], plays)
    for d in detections:
        start = d.query_offset_s
        end = start + d.played_duration_s
        p = max(plays, key=lambda p: min(end, p.end) - max(start, p.start) if p.work == d.work_id else -1)
        assert p.work == d.work_id
        assert abs(start - p.start) <= tol, (d, p.start, p.end)
        assert abs(end - p.end) <= tol, (d, p.start, p.end)


def in_batches(rng: np.random.Generator, items: list[Any]) -> list[list[Any]]:
    out, i = [], 0
    while i < len(items):
        n = int(rng.integers(1, 8))
        out.append(items[i : i + n])
        i += n
    return out


# ---------------------------------------------------------------------------------------------
# Monitor on segments


def test_monitor_detects_planned_plays_with_utc_times_and_day_files(
    rng: np.random.Generator, tmp_path: Path
) -> None:
    index, refs = catalog(rng)
    pieces = make_plan(rng, refs, 1500)
    sink = DetectionSink(tmp_path / "out")
    mon = Monitor(
        FakeEmbedder(), index, channel="Radio 1/FM", threshold=THRESHOLD, start_utc=ORIGIN, sink=sink
    )
    got: list[Detection] = []
    for batch in in_batches(rng, plan_segments(pieces)):
        got += mon.process(batch)
    got += mon.close()
    check_against_plan(got, pieces)
    origin = parse_utc(ORIGIN)
    for d in got:
        assert d.channel == "Radio 1/FM" and d.model_id == MODEL
        assert d.start_utc == utc_iso(origin + d.query_offset_s)
        assert d.played_duration_s == pytest.approx(parse_utc(d.end_utc) - parse_utc(d.start_utc), abs=2e-3)
        assert d.metadata == {"title": f"Title of {d.work_id}"}
        assert THRESHOLD <= d.score <= d.peak_score <= 1.0 + 1e-6
        assert d.n_windows >= 2
        assert json.loads(d.to_json()) == d.to_dict()
    # Files: the stream starts at 23:45 UTC and runs past midnight -> two days, percent-encoded channel.
    sink.close()
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        "detections-Radio%201%2FFM-20240501.csv",
        "detections-Radio%201%2FFM-20240501.jsonl",
        "detections-Radio%201%2FFM-20240502.csv",
        "detections-Radio%201%2FFM-20240502.jsonl",
    ]
    from_files = []
    for day in (date(2024, 5, 1), date(2024, 5, 2)):
        records = read_jsonl(sink.path("detections.jsonl", "Radio 1/FM", day))
        assert records and all(r["start_utc"].startswith(day.isoformat()) for r in records)
        from_files += [Detection.from_dict(r) for r in records]
        with open(sink.path("detections.csv", "Radio 1/FM", day), newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [r["start_utc"] for r in rows] == [r["start_utc"] for r in records]
        for row, rec in zip(rows, records):
            assert tuple(row) == CSV_FIELDS
            assert row["work_id"] == str(rec["work_id"]) and float(row["score"]) == rec["score"]
            assert json.loads(row["metadata"]) == rec["metadata"]
    assert from_files == got


def test_timing_rule_beats_window_extents(rng: np.random.Generator) -> None:
    """Boundaries at window-centre midpoints: error within hop/2 (+ mixing noise), unbiased; the
    naive first-window-start / last-window-end rule is early/late by about (W - hop)/2 more."""
    index, refs = catalog(rng)
    ours, extent = [], []
    for _ in range(3):
        pieces = make_plan(rng, refs, 1200)
        tracker = DetectionTracker(THRESHOLD)
        segs = plan_segments(pieces)
        ranked = index.search(np.stack([s.vector for s in segs]), 5)
        matches = []
        for s, hits in zip(segs, ranked):
            matches += tracker.update(s.start_s, s.end_s, hits)
        matches += tracker.flush()
        plays = {(p.work, p.start): p for p in pieces if p.kind == "work"}
        for m in matches:
            same = [p for p in plays.values() if p.work == m.work_id]
            p = min(same, key=lambda p: abs(p.start - m.start_s))
            if p.start > 0 and p.end < pieces[-1].end:  # interior plays: both boundaries are transitions
                ours += [m.start_s - p.start, m.end_s - p.end]
                extent += [m.first_window_s[0] - p.start, m.last_window_s[1] - p.end]
    ours_a, extent_a = np.abs(ours), np.abs(extent)
    assert len(ours) >= 20
    # Boundaries fall uniformly between window centres: |error| averages hop/4 for our rule and
    # hop/2 for the extents (starts early, ends late).
    assert ours_a.max() <= HOP / 2 + 2.0
    assert ours_a.mean() < 0.75 * extent_a.mean()
    assert abs(np.mean(ours)) < 1.5 < abs(np.mean(extent[0::2]))


def test_gap_closes_detections_and_shifts_utc_whichever_clock_the_source_keeps(
    rng: np.random.Generator, tmp_path: Path
) -> None:
    index, refs = catalog(rng)
    pieces = [
        Piece("work", "work01", 0, 103, refs["work01"]),
        Piece("work", "work02", 103, 300, refs["work02"]),
    ]
    segs = plan_segments(pieces)
    before = [s for s in segs if s.end_s <= 150]
    after = [s for s in segs if s.start_s >= 150]
    origin = parse_utc("2024-03-01T10:00:00Z")
    for source_clock_skips_gap in (False, True):
        sink = DetectionSink(tmp_path / f"out{source_clock_skips_gap}")
        mon = Monitor(None, index, channel="c", threshold=THRESHOLD, start_utc=origin, sink=sink)
        got = mon.process(before)
        got += mon.feed(GapLike(150.0, 42.5, "reconnect"))
        shift = 42.5 if source_clock_skips_gap else 0.0
        got += mon.process([s._replace(start_s=s.start_s + shift, end_s=s.end_s + shift) for s in after])
        got += mon.close()
        assert [(d.work_id, d.query_offset_s) for d in got] == [
            ("work01", 0.0),
            ("work02", 105.0),  # window [90, 110] is mostly work01, [100, 120] mostly work02
            ("work02", 150.0 + shift),
        ]
        # The detection before the gap ends at its last window (no window after it was seen).
        assert got[1].end_utc == utc_iso(origin + 150)
        # After the gap, UTC = the gap's end + audio time since, whatever the stream seconds say.
        assert got[2].start_utc == utc_iso(origin + 150 + 42.5)
        assert got[2].end_utc == utc_iso(origin + 300 + 42.5)
        (gap,) = read_jsonl(sink.path("gaps.jsonl", "c", date(2024, 3, 1)))
        assert gap == {
            "channel": "c",
            "start_utc": utc_iso(origin + 150),
            "end_utc": utc_iso(origin + 192.5),
            "duration_s": 42.5,
            "stream_offset_s": 150.0,
            "reason": "reconnect",
        }
        assert mon.gaps_recorded == 1 and mon.detections_emitted == 3


@dataclass
class GapLike:
    start_s: float | None
    duration_s: float
    reason: str


class CountingIndex:
    """Wraps a ReferenceIndex, counting the query rows searched."""

    def __init__(self, index: ReferenceIndex) -> None:
        self.index, self.rows, self.calls = index, 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.index, name)

    def search(self, queries: np.ndarray, k: int = 10, **kw: Any) -> list[list[Hit]]:
        self.rows += len(queries)
        self.calls += 1
        return self.index.search(queries, k, **kw)


def test_silent_windows_are_not_searched_and_never_match(rng: np.random.Generator) -> None:
    index, refs = catalog(rng)
    counting = CountingIndex(index)
    mon = Monitor(FakeEmbedder(), counting, channel="c", threshold=THRESHOLD)
    v = refs["work03"]
    segs = [
        Segment(0, 20, v),
        Segment(10, 30, v),
        Segment(20, 40, v, True),  # flagged silent (its vector is ignored)
        Segment(30, 50, np.zeros(DIM, np.float32)),  # zero vector: silent too
        Segment(40, 60, v),
        Segment(50, 70, v),
    ]
    got = mon.process(segs) + mon.close()
    assert counting.rows == 4 and counting.calls == 1  # one batched search, silent rows left out
    assert [(d.work_id, d.query_offset_s, d.played_duration_s) for d in got] == [
        ("work03", 0.0, 25.0),
        ("work03", 45.0, 25.0),
    ]


def test_model_mismatch_is_refused_at_construction(rng: np.random.Generator) -> None:
    index, _ = catalog(rng)
    with pytest.raises(IndexModelMismatchError, match=r"fake-model@1 \(dim 96\), this embedder is other"):
        Monitor(FakeEmbedder(model_id="other"), index, channel="c", threshold=0.5)
    with pytest.raises(IndexModelMismatchError, match=r"dim 64"):
        Monitor(FakeEmbedder(dim=64), index, channel="c", threshold=0.5)
    # With precomputed segments only, the model is the index's.
    assert Monitor(None, index, channel="c", threshold=0.5).model_id == MODEL


def test_l2_index_gives_the_same_detections(rng: np.random.Generator) -> None:
    seed = int(rng.integers(1 << 31))
    runs = []
    for metric in ("ip", "l2"):
        r = np.random.default_rng(seed)
        index, refs = catalog(r, metric=metric)
        pieces = make_plan(r, refs, 900)
        mon = Monitor(None, index, channel="c", threshold=THRESHOLD, start_utc=0)
        runs.append(mon.process(plan_segments(pieces)) + mon.close())
    check_against_plan(runs[0], pieces)
    assert [(d.work_id, d.start_utc, d.end_utc) for d in runs[0]] == [
        (d.work_id, d.start_utc, d.end_utc) for d in runs[1]
    ]
    for a, b in zip(*runs):
        assert a.score == pytest.approx(b.score, abs=1e-5)


def test_cohort_normalised_scores_detect_the_plays(rng: np.random.Generator) -> None:

    index, refs = catalog(rng)
    pieces = make_plan(rng, refs, 900)
    segments = plan_segments(pieces)
    # a window half on a play scores ~0.71 raw; less the cohort's ~0.2 that is ~0.5
    mon = Monitor(None, index, channel="c", threshold=0.5, k=1, cohort=4, start_utc=0)
    detections = mon.process(segments) + mon.close()
    check_against_plan(detections, pieces, tol=HOP + 2.0)
    # a detection's score is the mean normalised score of its windows: here all alike, one work's
    w = "work07"
    same = [Segment(HOP * i, HOP * i + W, refs[w], False) for i in range(6)]
    mon = Monitor(None, index, channel="c", threshold=0.5, k=1, cohort=4, start_utc=0)
    (d,) = mon.process(same) + mon.close()
    hits = index.search(refs[w], 5)[0]
    expected = hits[0].score - np.mean([h.score for h in hits[1:5]])
    assert d.work_id == w and d.score == pytest.approx(expected, abs=1e-5) and d.score < hits[0].score
    with pytest.raises(ValueError, match="a cohort of 30 works needs an index of at least 31 works"):
        Monitor(None, index, channel="c", threshold=0.3, cohort=30)
    with pytest.raises(ValueError, match="cohort must be an integer >= 0"):
        Monitor(None, index, channel="c", threshold=0.3, cohort=-1)


def test_bad_segments_and_closed_monitor(rng: np.random.Generator) -> None:
    index, refs = catalog(rng)
    mon = Monitor(None, index, channel="c", threshold=THRESHOLD)
    with pytest.raises(ValueError, match=r"window at 0.000 s: vector must be float \[96\]"):
        mon.process([Segment(0, 20, np.zeros(5, np.float32))])
    bad = refs["work00"].copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        mon.process([Segment(0, 20, bad)])
    mon.process([Segment(10, 30, refs["work00"])])
    with pytest.raises(ValueError, match="increasing start"):
        mon.process([Segment(5, 25, refs["work00"])])
    with pytest.raises(ValueError, match="no embedder"):
        mon.feed(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="duration"):
        mon.on_gap(GapLike(1.0, float("nan"), "x"))
    mon.close()
    assert mon.close() == []
    with pytest.raises(RuntimeError, match="closed"):
        mon.process([Segment(100, 120, refs["work00"])])
    for bad_args, what in [
        ({"channel": ""}, "channel"),
        ({"channel": "c", "k": 0}, "k must"),
        ({"channel": "c", "k": 2, "max_rank": 3}, "at least max_rank"),
        ({"channel": "c", "clock_tolerance_s": -1.0}, "clock_tolerance_s"),
    ]:
        with pytest.raises(ValueError, match=what):
            Monitor(None, index, **{"threshold": 0.5, **bad_args})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time zone"):
        Monitor(None, index, channel="c", threshold=0.5, start_utc="2024-01-01T00:00:00")


def test_sixteen_monitors_in_sixteen_threads_share_index_and_sink(
    rng: np.random.Generator, tmp_path: Path
) -> None:
    index, refs = catalog(rng)
    plans = [make_plan(rng, refs, 900) for _ in range(16)]
    segs = [plan_segments(p) for p in plans]

    def one(i: int, sink: DetectionSink | None, out: list[list[Detection]]) -> None:
        mon = Monitor(
            FakeEmbedder(),
            index,
            channel=f"ch{i}",
            threshold=THRESHOLD,
            start_utc=ORIGIN,
            sink=sink,
            search_threads=1,
        )
        for j in range(0, len(segs[i]), 3):
            out[i] += mon.process(segs[i][j : j + 3])
        out[i] += mon.close()

    sequential: list[list[Detection]] = [[] for _ in plans]
    for i in range(16):
        one(i, None, sequential)
    sink = DetectionSink(tmp_path / "out", csv=True)
    threaded: list[list[Detection]] = [[] for _ in plans]
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            one(i, sink, threaded)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    assert not errors
    assert threaded == sequential
    for i, plan in enumerate(plans):
        check_against_plan(threaded[i], plan)
        on_disk = [
            Detection.from_dict(r)
            for day in (date(2024, 5, 1), date(2024, 5, 2))
            for r in read_jsonl(sink.path("detections.jsonl", f"ch{i}", day))
        ]
        assert on_disk == threaded[i]


# ---------------------------------------------------------------------------------------------
# Monitor on audio (a windowing stream stands in for the StreamingEmbedder: the audio's samples
# are piece numbers, each window's vector mixes the pieces it holds)

SR = 20


class FakeStream:
    """``push(samples) -> segments`` / ``flush()``, times counted from its first sample."""

    def __init__(self, pieces: list[Piece]) -> None:
        self.pieces = pieces
        self.buf = np.zeros(0, np.float32)
        self.dropped = 0  # samples trimmed from the front of buf
        self.next = 0  # next window number
        self.win, self.hop = int(W * SR), int(HOP * SR)

    def push(self, samples: np.ndarray) -> list[Segment]:
        self.buf = np.concatenate([self.buf, np.asarray(samples, np.float32)])
        out = []
        while self.next * self.hop + self.win <= self.dropped + len(self.buf):
            a = self.next * self.hop - self.dropped
            counts = np.bincount(self.buf[a : a + self.win].astype(np.int64), minlength=len(self.pieces) + 1)
            v = np.zeros(DIM)
            for k in np.flatnonzero(counts):
                v += (counts[k] / self.win) * self.pieces[k - 1].vector
            norm = float(np.linalg.norm(v))
            s = self.next * HOP
            if norm == 0:
                out.append(Segment(s, s + W, np.zeros(DIM, np.float32), True))
            else:
                out.append(Segment(s, s + W, (v / norm).astype(np.float32)))
            self.next += 1
        keep_from = self.next * self.hop - self.dropped
        self.buf, self.dropped = self.buf[keep_from:], self.dropped + keep_from
        return out

    def flush(self) -> list[Segment]:
        return []


def plan_audio(pieces: list[Piece], t0: float, t1: float) -> np.ndarray:
    """Samples of [t0, t1): the number (1-based) of the piece playing at each sample."""
    t = t0 + np.arange(round((t1 - t0) * SR)) / SR
    ends = np.array([p.end for p in pieces])
    return (np.searchsorted(ends, t, side="right") + 1).astype(np.float32)


@dataclass
class ChunkLike:
    samples: np.ndarray
    start_s: float | None
    wall_utc: Any = None


def chunks_of(
    rng: np.random.Generator, audio: np.ndarray, t0: float, wall: Callable[[float], Any] | None = None
) -> list[ChunkLike]:
    out, i = [], 0
    while i < len(audio):
        n = int(rng.integers(1, 700))
        t = t0 + i / SR
        out.append(ChunkLike(audio[i : i + n], t, None if wall is None else wall(t)))
        i += n
    return out


def audio_monitor(pieces: list[Piece], index: ReferenceIndex, **kw: Any) -> Monitor:
    return Monitor(
        FakeEmbedder(sample_rate=SR),
        index,
        channel=kw.pop("channel", "c"),
        threshold=THRESHOLD,
        start_utc=kw.pop("start_utc", ORIGIN),
        stream_factory=lambda: FakeStream(pieces),
        **kw,
    )


def key(ds: list[Detection]) -> list[tuple[Any, str, str]]:
    return [(d.work_id, d.start_utc, d.end_utc) for d in ds]


def test_audio_in_any_chunking_gives_the_segment_detections(rng: np.random.Generator) -> None:
    index, refs = catalog(rng)
    pieces = make_plan(rng, refs, 900, silence=True)
    end = pieces[-1].end
    audio = plan_audio(pieces, 0, end)
    reference = Monitor(None, index, channel="c", threshold=THRESHOLD, start_utc=ORIGIN)
    expected = reference.process(plan_segments(pieces)) + reference.close()
    assert expected
    for as_arrays in (False, True):
        mon = audio_monitor(pieces, index)
        got = []
        for c in chunks_of(rng, audio, 0.0):
            got += mon.feed(c.samples if as_arrays else c)  # bare arrays continue the stream
        got += mon.close()
        assert key(got) == key(expected)
        assert mon.position_s == pytest.approx(end)


@pytest.mark.parametrize("explicit_gap", [True, False])
def test_audio_gaps_explicit_or_from_a_jump_in_chunk_times(
    rng: np.random.Generator, tmp_path: Path, explicit_gap: bool
) -> None:
    index, refs = catalog(rng)
    pieces = [Piece("work", "work05", 0, 400, refs["work05"])]
    sink = DetectionSink(tmp_path)
    mon = audio_monitor(pieces, index, sink=sink, start_utc="2024-06-01T00:00:00Z")
    got = []
    for c in chunks_of(rng, plan_audio(pieces, 0, 150), 0.0):
        got += mon.feed(c)
    if explicit_gap:
        # A reconnect: 25 s of wall time lost; the source's stream clock continues at 150 s.
        got += mon.feed(GapLike(None, 25.0, "reconnect"))
        after = chunks_of(rng, plan_audio(pieces, 175, 400), 150.0)
    else:
        # The source's stream clock jumps by 25 s with no gap event.
        after = chunks_of(rng, plan_audio(pieces, 175, 400), 175.0)
    for c in after:
        got += mon.feed(c)
    got += mon.close()
    origin = parse_utc("2024-06-01T00:00:00Z")
    assert [(d.start_utc, d.end_utc) for d in got] == [
        (utc_iso(origin), utc_iso(origin + 150)),
        (utc_iso(origin + 175), utc_iso(origin + 175 + 220)),  # windows fit in 225 s: 21 of them
    ]
    (gap,) = read_jsonl(sink.path("gaps.jsonl", "c", date(2024, 6, 1)))
    assert gap["start_utc"] == utc_iso(origin + 150) and gap["end_utc"] == utc_iso(origin + 175)
    assert gap["reason"] == ("reconnect" if explicit_gap else "discontinuity")


def test_wall_clock_stamps_correct_sample_clock_drift(rng: np.random.Generator) -> None:
    index, refs = catalog(rng)
    pieces = make_plan(rng, refs, 1200)
    origin = parse_utc(ORIGIN)

    def wall(t: float) -> float:  # the source's samples run 1% slow against UTC
        return origin + 1.01 * t

    audio = plan_audio(pieces, 0, pieces[-1].end)
    mon = audio_monitor(pieces, index, clock_tolerance_s=1.0)
    got = []
    for c in chunks_of(rng, audio, 0.0, wall):
        got += mon.feed(c)
    got += mon.close()
    # Re-anchored at chunk starts once off by more than 1 s; chunks last up to 35 s (0.35 s drift).
    bound = 1.0 + 0.01 * 700 / SR + 2e-3
    check_against_plan(got, pieces, tol=HOP / 2 + 2.0 + bound)  # durations are wall-clock seconds
    worst_unanchored = 0.0
    for d in got:
        t0 = d.query_offset_s
        assert abs(parse_utc(d.start_utc) - wall(t0)) <= bound
        worst_unanchored = max(worst_unanchored, abs((origin + t0) - wall(t0)))
    assert worst_unanchored > 3.0  # without the stamps the report would be this far off


def test_six_hours_of_stream_keep_the_state_bounded(rng: np.random.Generator) -> None:
    index, refs = catalog(rng)
    pieces = make_plan(rng, refs, 6 * 3600)
    origin = parse_utc(ORIGIN)
    mon = audio_monitor(pieces, index, clock_tolerance_s=0.5, search_threads=1)
    got, sizes = [], []
    for c in chunks_of(rng, plan_audio(pieces, 0, pieces[-1].end), 0.0, lambda t: origin + 1.002 * t):
        got += mon.feed(c)
        tracker = mon.tracker
        sizes.append((len(mon._clock._points), len(tracker._tracks), len(tracker._last_end_of)))
    got += mon.close()
    check_against_plan(got, pieces, tol=HOP / 2 + 2.5)
    assert mon._clock._points[0][0] > 5 * 3600  # re-anchored about every 250 s, old anchors dropped
    assert max(p for p, _, _ in sizes) <= 4
    assert max(t for _, t, _ in sizes) <= 3 and max(e for _, _, e in sizes) <= 3


def test_stream_clock_going_backwards_restarts_tracking(
    rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    index, refs = catalog(rng)
    pieces = [
        Piece("work", "work01", 0, 200, refs["work01"]),
        Piece("work", "work02", 200, 400, refs["work02"]),
    ]
    mon = audio_monitor(pieces, index, start_utc=0)
    got = []
    for c in chunks_of(rng, plan_audio(pieces, 0, 200), 0.0):
        got += mon.feed(c)
    with caplog.at_level("WARNING", logger="csi_runtime.monitor"):
        # The source restarted and counts from 0 again; the audio goes on (work02).
        for c in chunks_of(rng, plan_audio(pieces, 200, 400), 0.0):
            got += mon.feed(c)
    got += mon.close()
    assert any("goes back" in r.getMessage() for r in caplog.records)
    assert [(d.work_id, d.query_offset_s, d.start_utc, d.end_utc) for d in got] == [
        ("work01", 0.0, utc_iso(0), utc_iso(200)),
        ("work02", 0.0, utc_iso(200), utc_iso(400)),
    ]


def test_run_monitor_drives_a_source_and_closes_on_failure(rng: np.random.Generator, tmp_path: Path) -> None:
    index, refs = catalog(rng)
    pieces = [Piece("work", "work07", 0, 300, refs["work07"])]
    events: list[Any] = chunks_of(rng, plan_audio(pieces, 0, 120), 0.0)
    events.append(GapLike(120.0, 10.0, "dropout"))
    events += chunks_of(rng, plan_audio(pieces, 130, 300), 120.0)
    seen = []
    mon = audio_monitor(pieces, index, sink=DetectionSink(tmp_path / "a"))
    summary = run_monitor(events, mon, progress=lambda m: seen.append(m.position_s))
    assert (summary.detections, summary.gaps) == (2, 1)
    assert summary.stream_s == pytest.approx(290.0)
    assert len(seen) == len(events) and seen == sorted(seen)
    with pytest.raises(RuntimeError, match="closed"):
        mon.feed(events[0])

    before_gap = next(i for i, e in enumerate(events) if isinstance(e, GapLike))

    def failing() -> Any:
        yield from events[:before_gap]
        raise OSError("stream died")

    sink = DetectionSink(tmp_path / "b")
    mon = audio_monitor(pieces, index, sink=sink, start_utc="2024-01-01T00:00:00Z")
    with pytest.raises(OSError, match="stream died"):
        run_monitor(failing(), mon)
    # The play open when the source died was closed and written.
    (rec,) = read_jsonl(sink.path("detections.jsonl", "c", date(2024, 1, 1)))
    assert rec["work_id"] == "work07" and rec["query_offset_s"] == 0.0


def test_audio_input_checks(rng: np.random.Generator) -> None:
    index, refs = catalog(rng)
    pieces = [Piece("work", "work01", 0, 100, refs["work01"])]
    mon = audio_monitor(pieces, index)
    assert mon.feed([]) == []  # an empty batch of segments
    with pytest.raises(ValueError, match="chunk is at 44100 Hz, the embedder expects 20 Hz"):
        mon.feed(RatedChunk(np.zeros(10, np.float32), 0.0, 44100))
    with pytest.raises(ValueError, match=r"\[n\] or \[n, channels\]"):
        mon.feed(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="finite"):
        mon.push_audio(np.zeros(10, np.float32), start_s=float("nan"))
    assert mon.feed(RatedChunk(plan_audio(pieces, 0, 100), 0.0, SR)) == []
    (d,) = mon.close()
    assert (d.work_id, d.query_offset_s, d.played_duration_s) == ("work01", 0.0, 100.0)


@dataclass
class RatedChunk:
    samples: np.ndarray
    start_s: float
    sample_rate: int


def test_stream_clock_pieces() -> None:
    clock = StreamClock(1000.0)
    assert clock.utc(5.0) == 1005.0
    clock.set_from(100.0, 1010.0)
    assert clock.utc(99.0) == 1099.0 and clock.utc(100.0) == 1110.0
    clock.set_from(50.0, 1020.0)  # replaces later pieces
    assert clock.utc(100.0) == 1120.0 and clock.utc(10.0) == 1010.0
    clock.prune(60.0)
    assert clock.utc(70.0) == 1090.0
    clock.reset(0.0, 5000.0)
    assert clock.utc(0.0) == 5000.0 and clock.utc(-10.0) == 4990.0
    assert parse_utc(datetime(2024, 1, 1, tzinfo=UTC)) == parse_utc("2024-01-01T00:00:00Z") == 1704067200.0
    assert utc_iso(1704067200.0006) == "2024-01-01T00:00:00.001Z"
    assert utc_iso(1704067199.9996) == "2024-01-01T00:00:00.000Z"
    for bad in ["yesterday", float("nan"), object()]:
        with pytest.raises((ValueError, TypeError)):
            parse_utc(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The real Embedder and StreamingEmbedder, end to end

AUDIO_SR = 16000


def harmonic_track(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A random melody in two voices, float32 [seconds × 16 kHz]: notes of 0.15–0.8 s, MIDI 36–83,
    five partials, percussive envelope, each synthesised over its own span only."""
    n = round(seconds * AUDIO_SR)
    out = np.zeros(n, np.float32)
    for _voice in range(2):
        t0 = 0.0
        while t0 < seconds:
            duration = float(rng.uniform(0.15, 0.8))
            a, b = round(t0 * AUDIO_SR), min(n, round((t0 + duration) * AUDIO_SR))
            t = np.arange(b - a) / AUDIO_SR
            f0 = 440.0 * 2.0 ** ((int(rng.integers(36, 84)) - 69) / 12)
            envelope = np.minimum(1.0, t / 0.01) * np.exp(-t * rng.uniform(1.0, 6.0))
            h = np.arange(1, 6)[:, None]
            note = (0.3 / h * np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi, (5, 1)))).sum(axis=0)
            out[a:b] += (envelope * note).astype(np.float32)
            t0 += duration
    return out


def test_real_embedder_stream_detects_reference_excerpts(rng: np.random.Generator, tmp_path: Path) -> None:
    """Three synthetic reference tracks indexed window by window; a stream of [reference 2 at 5–35 s,
    10 s of noise, reference 0 at 0–30 s] pushed in random chunks through Monitor → StreamingEmbedder:
    two detections, in order, within a hop of the truth, on disk as JSON lines."""
    pytest.importorskip("onnxruntime")
    embedder = Embedder(backend="onnxruntime", device="cpu", threads=1)  # the packaged model
    hop, window = 5.0, 10.0
    refs = [harmonic_track(rng, 40.0) for _ in range(3)]
    index = ReferenceIndex(embedder.dim, dtype="float32", model_id=embedder.model_id)
    for i, audio in enumerate(refs):
        segs = embedder.embed_segments(audio, AUDIO_SR, window_s=window, hop_s=hop)
        index.add(segs.vectors, f"ref{i}", [{"start_s": float(s)} for s in segs.starts])
    # (work, offset in the reference, start and end in the stream): offsets are whole hops, so the
    # excerpt's windows are the reference's windows, on the same audio.
    plays = [("ref2", hop, 0.0, 30.0), ("ref0", 0.0, 40.0, 70.0)]
    noise = (0.1 * rng.standard_normal(10 * AUDIO_SR)).astype(np.float32)
    excerpt, first = 30 * AUDIO_SR, round(hop * AUDIO_SR)
    stream = np.concatenate([refs[2][first : first + excerpt], noise, refs[0][:excerpt]])

    # The threshold, midway between the scores of the windows inside an excerpt against their
    # reference and those of windows against works they hold nothing of.
    offline = embedder.embed_segments(stream, AUDIO_SR, window_s=window, hop_s=hop)
    matching, unrelated = [], []
    for start, end, hits in zip(offline.starts, offline.ends, index.search(offline.vectors, 3, device="cpu")):
        inside = {w: offset - a for w, offset, a, b in plays if a <= start and end <= b}
        present = {w for w, _, a, b in plays if start < b and a < end}
        for h in hits:
            if h.work_id in inside:
                matching.append(h.score)
                # the best reference window is the one on the same audio
                assert h.metadata["start_s"] == pytest.approx(start + inside[h.work_id])
            elif h.work_id not in present:
                unrelated.append(h.score)
    assert len(matching) == 10
    # the same audio gives the same embedding, up to the frames at the edges of a window whose
    # context differs (the stream's first window has silence before it, the reference's has music)
    # (stage-4 default: 0.99898 for that first window)
    assert min(matching) > 1.0 - 3e-3 and min(matching) > max(unrelated), (matching, unrelated)
    threshold = 0.5 * (min(matching) + max(unrelated))

    origin = parse_utc("2024-05-01T12:00:00Z")
    sink = DetectionSink(tmp_path)
    mon = Monitor(
        embedder,
        index,
        channel="live",
        threshold=threshold,
        start_utc=origin,
        sink=sink,
        window_s=window,
        hop_s=hop,
    )
    got: list[Detection] = []
    i = 0
    while i < len(stream):
        n = int(rng.integers(1, 3 * AUDIO_SR))
        got += mon.feed(stream[i : i + n])
        i += n
    got += mon.close()
    sink.close()
    assert mon.position_s == pytest.approx(70.0)
    assert [d.work_id for d in got] == ["ref2", "ref0"]
    for d, (_, offset, start, end) in zip(got, plays):
        t0, t1 = parse_utc(d.start_utc) - origin, parse_utc(d.end_utc) - origin
        assert abs(t0 - start) <= hop and abs(t1 - end) <= hop, (d, start, end)
        assert d.query_offset_s == pytest.approx(t0, abs=1e-3)
        assert d.n_windows >= 5  # every window inside the excerpt supports its work
        assert threshold <= d.score <= d.peak_score and d.model_id == embedder.model_id
        assert offset <= d.metadata["start_s"] <= offset + 30.0 - window  # a reference window of the excerpt
    jsonl = sink.path("detections.jsonl", "live", date(2024, 5, 1))
    assert jsonl.read_text().splitlines() == [d.to_json() for d in got]


# ---------------------------------------------------------------------------------------------
# Public names


def test_moved_names_stay_importable_from_monitor_and_the_package() -> None:
    import csi_runtime
    from csi_runtime import detections, monitor, sink, tracker

    for module in (tracker, detections, sink):
        for name in module.__all__:
            assert name in monitor.__all__ and getattr(monitor, name) is getattr(module, name)
    for name in ("Detection", "DetectionSink", "DetectionTracker", "Monitor", "run_monitor", "Segment"):
        assert getattr(csi_runtime, name) is getattr(monitor, name)


# ---------------------------------------------------------------------------------------------
# Metrics


def test_metrics_need_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from csi_runtime.metrics import MonitorMetrics, start_http_server

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    with pytest.raises(ImportError, match="pip install prometheus-client"):
        MonitorMetrics()
    with pytest.raises(ImportError, match="prometheus_client"):
        start_http_server(0)


def test_metrics_count_what_monitors_do(rng: np.random.Generator) -> None:
    prom = pytest.importorskip("prometheus_client")
    from csi_runtime.metrics import MonitorMetrics, start_http_server

    registry = prom.CollectorRegistry()
    metrics = MonitorMetrics(registry)

    def value(name: str, channel: str | None = None) -> float | None:
        return registry.get_sample_value(name, {} if channel is None else {"channel": channel})

    index, refs = catalog(rng)
    pieces = make_plan(rng, refs, 600)
    segs = plan_segments(pieces)
    a = Monitor(None, index, channel="a", threshold=THRESHOLD, metrics=metrics)
    b = Monitor(None, index, channel="b", threshold=THRESHOLD, metrics=metrics)
    assert value("csi_monitor_streams") == 2
    got = a.process(segs[:30]) + a.on_gap(GapLike(None, 5.0, "dropout")) + a.process(segs[30:]) + a.close()
    assert value("csi_monitor_streams") == 1
    assert value("csi_monitor_detections_total", "a") == len(got) > 0
    assert value("csi_monitor_gaps_total", "a") == 1
    assert value("csi_monitor_windows_total", "a") == len(segs)
    lag = value("csi_monitor_lag_seconds", "a")
    assert lag is not None and math.isfinite(lag)
    with pytest.raises(ValueError, match="vector"):
        b.process([Segment(0, 20, np.zeros(3, np.float32))])
    assert value("csi_monitor_errors_total", "b") == 1
    b.close()
    assert value("csi_monitor_streams") == 0
    server = start_http_server(0, addr="127.0.0.1", registry=registry)
    if isinstance(server, tuple):  # prometheus_client >= 0.20 returns (server, thread)
        import urllib.request

        httpd = server[0]
        try:
            port = httpd.server_address[1]
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            assert 'csi_monitor_detections_total{channel="a"}' in body
        finally:
            httpd.shutdown()
