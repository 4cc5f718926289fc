"""Soak and load: the packaged model monitoring 6 hours of stream (faster than real time) with bounded
memory, and 16 streams monitored concurrently in one process giving what each gives alone."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from csi_runtime import Embedder, ReferenceIndex
from csi_runtime.monitor import DetectionSink, Monitor

SR = 16000
START = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def melody(rng: np.random.Generator, seconds: float) -> np.ndarray:
    n = int(seconds * SR)
    out = 0.003 * rng.standard_normal(n)
    t0 = 0.0
    while t0 < seconds:
        f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
        start = int(t0 * SR)
        t = np.arange(min(n - start, int(SR))) / SR
        out[start : start + len(t)] += 0.3 * np.exp(-4 * t) * np.sin(2 * np.pi * f0 * t)
        t0 += float(rng.choice([0.25, 0.5]))
    return (out / np.abs(out).max() * 0.7).astype(np.float32)


@pytest.fixture(scope="module")
def setup() -> dict[str, object]:
    embedder = Embedder(backend="onnxruntime", device="cpu", threads=1)
    rng = np.random.default_rng(11)
    songs = {f"song{i}": melody(rng, 60.0) for i in range(4)}
    index = ReferenceIndex(embedder.dim, model_id=embedder.model_id)
    for work, audio in songs.items():
        segs = embedder.embed_segments(audio, SR, hop_s=5.0)
        index.add(segs.vectors, work)
    filler = (0.05 * rng.standard_normal(60 * SR)).astype(np.float32)  # talk-like noise between songs
    return {"embedder": embedder, "index": index, "songs": songs, "filler": filler}


def programme(setup: dict[str, object], minutes: int, offset: int = 0) -> list[tuple[str, np.ndarray]]:
    """Minute blocks of a station: songs and filler in turn ((work or "", audio))."""
    songs: dict[str, np.ndarray] = setup["songs"]  # type: ignore[assignment]
    names = sorted(songs)
    blocks = []
    for m in range(minutes):
        if (m + offset) % 3 == 2:
            blocks.append(("", setup["filler"]))  # type: ignore[arg-type]
        else:
            name = names[(m + offset) % len(names)]
            blocks.append((name, songs[name]))
    return blocks


@pytest.mark.slow
def test_six_hours_with_bounded_memory(setup: dict[str, object], tmp_path: Path, record_property) -> None:  # type: ignore[no-untyped-def]
    sink = DetectionSink(tmp_path, plots=False)
    monitor = Monitor(
        setup["embedder"], setup["index"], channel="soak", threshold=0.95, start_utc=START, sink=sink
    )
    blocks = programme(setup, 6 * 60)
    rss_after_warmup = 0
    detections = []
    chunk = 10 * SR
    for minute, (_, audio) in enumerate(blocks):
        gain = np.float32(0.6 + 0.4 * np.sin(minute))  # vary the level so no two hours are identical
        for i in range(0, len(audio), chunk):
            detections += monitor.feed(audio[i : i + chunk] * gain)
        if minute == 30:
            rss_after_warmup = rss_bytes()
    detections += monitor.close()
    sink.close()
    growth = rss_bytes() - rss_after_warmup
    record_property("rss_growth_mb_over_5_5_hours", round(growth / 2**20, 1))
    record_property("rss_mb", round(rss_bytes() / 2**20, 1))
    assert monitor.position_s == pytest.approx(6 * 3600)
    assert growth < 64 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB over 5.5 hours"
    # every song minute is found: songs fill two of every three minutes
    expected = sum(1 for work, _ in blocks if work)
    assert len(detections) >= 0.95 * expected and len(detections) <= expected * 1.05
    jsonl = list(tmp_path.glob("detections-soak-*.jsonl"))
    assert sum(len(p.read_text().splitlines()) for p in jsonl) == len(detections)


@pytest.mark.slow
def test_sixteen_concurrent_streams(setup: dict[str, object]) -> None:
    def run(stream: int) -> list[tuple[str, str, str]]:
        monitor = Monitor(setup["embedder"], setup["index"], channel=f"ch{stream}", threshold=0.95,
                          start_utc=START, search_threads=1)  # fmt: skip
        rng = np.random.default_rng(stream)
        out = []
        for _, audio in programme(setup, 8, offset=stream):
            i = 0
            while i < len(audio):
                n = int(rng.integers(SR // 4, 6 * SR))
                out += monitor.feed(audio[i : i + n])
                i += n
        out += monitor.close()
        return [(d.work_id, d.start_utc, d.end_utc) for d in out]

    alone = {s: run(s) for s in range(16)}
    together: dict[int, list[tuple[str, str, str]]] = {}
    errors: list[BaseException] = []

    def worker(s: int) -> None:
        try:
            together[s] = run(s)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert together == alone
    assert all(len(v) >= 4 for v in alone.values())
