"""DetectionSink and the timeline plot: durability under SIGKILL, reopening after a crash, day
rollover, plots, many threads sharing one sink."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import threading
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from csi_runtime.detections import CSV_FIELDS, Detection, GapRecord, parse_utc, utc_iso
from csi_runtime.sink import DetectionSink, plot_timeline, read_jsonl

MODEL = "fake-model@1"


def detection(
    start: str, end: str, work: str | int = "w1", channel: str = "c", score: float = 0.9
) -> Detection:
    u0, u1 = parse_utc(start), parse_utc(end)
    return Detection(
        channel=channel,
        start_utc=utc_iso(u0),
        end_utc=utc_iso(u1),
        played_duration_s=round(u1 - u0, 3),
        query_offset_s=0.0,
        work_id=work,
        score=score,
        peak_score=score,
        metadata={"title": 'Ça va, "quoted", with,commas'},
        model_id=MODEL,
        n_windows=3,
    )


def gap_record(start: str, seconds: float, channel: str = "c") -> GapRecord:
    u0 = parse_utc(start)
    return GapRecord(channel, utc_iso(u0), utc_iso(u0 + seconds), seconds, 0.0, "dropout")


KILL_CHILD = """
import sys
import numpy as np
from csi_runtime import ReferenceIndex
from csi_runtime.monitor import DetectionSink, Monitor, Segment

d = 16
refs = np.random.default_rng(0).standard_normal((4, d))
refs = (refs / np.linalg.norm(refs, axis=1, keepdims=True)).astype(np.float32)
index = ReferenceIndex(d, dtype="float32")
index.add(refs, ["a", "b", "c", 4])
mon = Monitor(None, index, channel="kill", threshold=0.9, start_utc=0, sink=DetectionSink(sys.argv[1]),
              search_threads=1)
t, i = 0.0, 0
while True:  # each work for 3 windows, then 2 silent windows that close its detection
    segs = [Segment(t + 10 * j, t + 10 * j + 20, refs[i % 4]) for j in range(3)]
    segs += [Segment(t + 30 + 10 * j, t + 50 + 10 * j, np.zeros(d, np.float32)) for j in range(2)]
    for det in mon.process(segs):
        print(det.to_json(), flush=True)  # after the sink returned
    t, i = t + 50, i + 1
"""


def test_killed_monitor_loses_no_emitted_detection(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(KILL_CHILD)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    emitted: list[str] = []
    try:
        assert proc.stdout is not None
        while len(emitted) < 25:
            line = proc.stdout.readline()
            if not line:
                break
            emitted.append(line.rstrip("\n"))
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(emitted) == 25, err
    jsonl = out / "detections-kill-19700101.jsonl"
    lines = jsonl.read_bytes().split(b"\n")
    complete = [ln.decode() for ln in lines[:-1]]  # the part after the last newline may be cut short
    assert complete[: len(emitted)] == emitted  # every emitted detection is on disk, in order
    assert all(json.loads(ln)["channel"] == "kill" for ln in complete)
    with open(out / "detections-kill-19700101.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == CSV_FIELDS
    emitted_starts = [json.loads(e)["start_utc"] for e in emitted]
    assert [r[1] for r in rows[1 : 1 + len(emitted)]] == emitted_starts
    # A new sink continues the files cleanly (a partial last line, if any, is cut off).
    with DetectionSink(out) as sink:
        sink.write(detection("1970-01-01T23:00:00Z", "1970-01-01T23:03:00Z", channel="kill"))
    records = read_jsonl(jsonl)
    assert [
        json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in records[: len(emitted)]
    ] == emitted
    assert records[-1]["start_utc"] == "1970-01-01T23:00:00.000Z"
    assert jsonl.read_bytes().endswith(b"\n")


def test_reopening_cuts_a_partial_line_and_checks_the_csv_header(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d1 = detection("2024-02-29T10:00:00Z", "2024-02-29T10:03:00Z", work=17)
    d2 = detection("2024-02-29T11:00:00Z", "2024-02-29T11:04:30.250Z", work="w2")
    with DetectionSink(tmp_path) as sink:
        sink.write(d1)
    jsonl = sink.path("detections.jsonl", "c", date(2024, 2, 29))
    csv_path = sink.path("detections.csv", "c", date(2024, 2, 29))
    with open(jsonl, "ab") as fh:
        fh.write(b'{"channel":"c","start_u')
    with open(csv_path, "ab") as fh:
        fh.write(b"c,2024-02-29T1")
    with caplog.at_level("WARNING", logger="csi_runtime.sink"), DetectionSink(tmp_path) as sink:
        sink.write(d2)
    assert sum("partial last line" in r.getMessage() for r in caplog.records) == 2
    assert [Detection.from_dict(r) for r in read_jsonl(jsonl)] == [d1, d2]
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["work_id"], r["end_utc"], json.loads(r["metadata"])) for r in rows] == [
        ("17", d1.end_utc, d1.metadata),
        ("w2", "2024-02-29T11:04:30.250Z", d2.metadata),
    ]
    other = tmp_path / "other"
    other.mkdir()
    (other / "detections-c-20240229.csv").write_text("a,b,c\n")
    with DetectionSink(other) as sink, pytest.raises(ValueError, match="other columns"):
        sink.write(d1)
    with pytest.raises(NotADirectoryError):
        DetectionSink(other / "detections-c-20240229.csv")


def test_day_rollover_opens_new_files_and_plots_finished_days(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.image

    sink = DetectionSink(tmp_path, plots=True)
    day1, day2 = date(2024, 12, 31), date(2025, 1, 1)
    sink.write(detection("2024-12-31T02:00:00Z", "2024-12-31T04:00:00Z", work="early"))
    sink.write_gap(gap_record("2024-12-31T10:00:00Z", 1800))
    sink.write(detection("2024-12-31T20:00:00Z", "2024-12-31T22:00:00Z", work="late"))
    sink.write(detection("2024-12-31T23:58:00Z", "2025-01-01T00:02:00Z", work="midnight"))  # day of start
    assert not sink.path("timeline.png", "c", day1).exists()
    sink.write(detection("2025-01-01T00:10:00Z", "2025-01-01T00:13:00Z", work="new year"))
    png1 = sink.path("timeline.png", "c", day1)
    assert png1.exists()  # the rollover finished day 1
    assert [r["work_id"] for r in read_jsonl(sink.path("detections.jsonl", "c", day1))] == [
        "early",
        "late",
        "midnight",
    ]
    assert [r["work_id"] for r in read_jsonl(sink.path("detections.jsonl", "c", day2))] == ["new year"]
    assert len(read_jsonl(sink.path("gaps.jsonl", "c", day1))) == 1
    sink.close()
    assert sink.path("timeline.png", "c", day2).exists()
    assert png1.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(png1)
    assert img.ndim == 3 and img.shape[0] > 150 and img.shape[1] > 1000
    # All bars have the same colour (equal scores); find its pixel columns in the bar lane: the
    # bars at 02-04 h and 20-22 h must sit 18 bar-widths apart (the colour bar lies beyond 24 h).
    rgb = img[..., :3]
    bar = np.array(matplotlib.colormaps["viridis"](0.0)[:3])
    cols = np.flatnonzero((np.abs(rgb - bar).sum(axis=2) < 0.05).sum(axis=0) > 5)
    runs = np.split(cols, np.flatnonzero(np.diff(cols) > 1) + 1)
    (a0, a1), (b0, _) = (runs[0][0], runs[0][-1]), (runs[1][0], runs[1][-1])
    assert (b0 - a0) / (a1 - a0 + 1) == pytest.approx(9.0, rel=0.05)


def test_plot_timeline_of_an_empty_day_and_many_overlaps(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = plot_timeline([], [], tmp_path / "empty.png", channel="c", day=date(2024, 1, 1))
    assert out.read_bytes()[:4] == b"\x89PNG"
    many = [detection(f"2024-01-01T10:{m:02d}:00Z", "2024-01-01T11:00:00Z", work=f"w{m}") for m in range(30)]
    out = plot_timeline(
        many,
        [gap_record("2024-01-01T12:00:00Z", 60)],
        tmp_path / "many.png",
        channel="c",
        day=date(2024, 1, 1),
    )
    assert out.stat().st_size > 1000


def test_sink_is_safe_for_many_threads(tmp_path: Path) -> None:
    sink = DetectionSink(tmp_path, fsync=False)
    per_thread = 50

    def writer(k: int) -> None:
        for i in range(per_thread):
            sink.write(
                detection(
                    f"2024-01-01T{k:02d}:{i // 60:02d}:{i % 60:02d}Z",
                    "2024-01-01T23:00:00Z",
                    work=i,
                    channel=f"ch{k % 4}",
                )
            )

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    for ch in range(4):
        records = read_jsonl(sink.path("detections.jsonl", f"ch{ch}", date(2024, 1, 1)))
        assert len(records) == 2 * per_thread
        with open(sink.path("detections.csv", f"ch{ch}", date(2024, 1, 1)), newline="") as fh:
            assert len(list(csv.DictReader(fh))) == 2 * per_thread
