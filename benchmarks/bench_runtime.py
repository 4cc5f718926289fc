"""The runtime with the packaged default model on CPU: files, streams and monitoring.

- ``embed_file`` real-time factor (seconds of audio per second of one core) on a 10-minute FLAC;
- streaming: ``StreamingEmbedder`` pushed 1 s chunks against the naive way (re-embed the last window
  from its audio at every hop), same audio, same windows; plus the frontend work per pushed second
  relative to one offline frontend pass over the same audio;
- monitoring: one core (1 inference thread, 1 search thread) runs ``Monitor`` over a stream against a
  1e5-work index (4 windows per work, float16), and the headline figure — concurrent real-time
  streams per core = audio seconds monitored per CPU second.
Results: benchmarks/results/runtime.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
pytest.importorskip("onnxruntime")

from csi_runtime import Embedder, ReferenceIndex, StreamingEmbedder  # noqa: E402
from csi_runtime.catalog import REFERENCE_WINDOW_SCALES  # noqa: E402
from csi_runtime.monitor import Monitor  # noqa: E402

from conftest import SMOKE, record  # noqa: E402

SR = 16000
FILE_S = 60.0 if SMOKE else 600.0
STREAM_S = 120.0 if SMOKE else 1200.0
INDEX_WORKS = 2_000 if SMOKE else 100_000
# reference windows per work: 4 positions × the catalog's window lengths (csi index build's default)
WINDOWS_PER_WORK = 4 * len(REFERENCE_WINDOW_SCALES)


def _music(seconds: float, seed: int) -> np.ndarray:
    """Plucked random melodies with a bass, float32 [n] at 16 kHz (fast to generate)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = 0.005 * rng.standard_normal(n)
    t0 = 0.0
    while t0 < seconds:
        dur = float(rng.choice([0.25, 0.5, 0.75]))
        f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
        start = int(t0 * SR)
        t = np.arange(min(n - start, int(1.2 * SR))) / SR
        out[start : start + len(t)] += (
            0.3 * np.exp(-4 * t) * (np.sin(2 * np.pi * f0 * t) + 0.4 * np.sin(4 * np.pi * f0 * t))
        )
        t0 += dur
    return (out / np.abs(out).max() * 0.8).astype(np.float32)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(backend="onnxruntime", device="cpu", threads=1)


def _cpu_timed(fn: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def test_embed_file_real_time_factor(
    benchmark: Any, machine: dict[str, Any], embedder: Embedder, tmp_path: Path
) -> None:
    path = tmp_path / "long.flac"
    sf.write(path, _music(FILE_S, 1), SR)
    embedder.embed_file(path)  # warm-up
    benchmark.pedantic(lambda: embedder.embed_file(path), rounds=1 if SMOKE else 3, iterations=1)
    if benchmark.stats is None:
        return
    seconds = float(benchmark.stats.stats.median)
    key = {"what": f"embed_file, {FILE_S / 60:.0f} min FLAC at 16 kHz (decode + embed)", "threads": 1}
    record("runtime", key, {"result": f"{FILE_S / seconds:,.0f}× real time", "detail": f"{seconds:.2f} s"})


def test_streaming_vs_naive(benchmark: Any, machine: dict[str, Any], embedder: Embedder) -> None:
    audio = _music(STREAM_S / 4, 2)
    chunk = SR  # 1 s chunks

    def streaming() -> int:
        s = StreamingEmbedder(embedder)
        n = 0
        for i in range(0, len(audio), chunk):
            n += len(s.push(audio[i : i + chunk]))
        return n

    hop = round(embedder.hop_s * SR)
    window = round(embedder.window_s * SR)

    def naive() -> int:
        n = 0
        for end in range(window, len(audio) + 1, hop):  # the same windows, each embedded from its audio
            embedder.embed(audio[end - window : end], SR)
            n += 1
        return n

    streaming()
    benchmark.pedantic(streaming, rounds=1 if SMOKE else 3, iterations=1)
    if benchmark.stats is None:
        return
    t_stream = float(benchmark.stats.stats.median)
    t_naive = min(_cpu_timed(naive)[0] for _ in range(1 if SMOKE else 3))
    # frontend work per pushed second, relative to one offline frontend pass over the same audio
    padded = embedder.bundle.pad_for_file(audio)
    t_offline_frontend = min(_cpu_timed(lambda: embedder.frames_valid(padded))[0] for _ in range(3))
    calls: list[float] = []
    real = embedder.frames_valid

    def counted(x: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = real(x)
        calls.append(time.perf_counter() - t)
        return out

    embedder.frames_valid = counted  # type: ignore[method-assign]
    try:
        streaming()
    finally:
        del embedder.frames_valid
    minutes = len(audio) / SR / 60
    what = f"streaming, {minutes:.0f} min in 1 s chunks"
    what += f" (window {embedder.window_s:.0f} s, hop {embedder.hop_s:.0f} s)"
    record(
        "runtime",
        {"what": what, "threads": 1},
        {
            "result": f"{t_naive / t_stream:.1f}× faster than re-embedding each window",
            "detail": f"streaming {t_stream:.2f} s, naive {t_naive:.2f} s; frontend time "
            f"{sum(calls) / t_offline_frontend:.2f}× one offline pass over the same audio",
        },
    )


def test_streams_per_core(benchmark: Any, machine: dict[str, Any], embedder: Embedder) -> None:
    rng = np.random.default_rng(3)
    index = ReferenceIndex(embedder.dim, dtype="float16", model_id=embedder.model_id)
    for start in range(0, INDEX_WORKS, 10_000):
        works = range(start, min(start + 10_000, INDEX_WORKS))
        v = rng.standard_normal((len(works) * WINDOWS_PER_WORK, embedder.dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        index.add(v, [f"w{w}" for w in works for _ in range(WINDOWS_PER_WORK)])
    audio = _music(STREAM_S, 4)

    def monitor() -> None:
        m = Monitor(embedder, index, channel="bench", threshold=0.9, search_threads=1)
        for i in range(0, len(audio), SR):
            m.feed(audio[i : i + SR])
        m.close()

    from csi_runtime import set_num_threads

    set_num_threads(1)
    benchmark.pedantic(monitor, rounds=1, iterations=1)
    if benchmark.stats is None:
        return
    wall, cpu = _cpu_timed(monitor)
    streams = STREAM_S / max(cpu, 1e-9)
    what = f"monitor: real-time streams per core, index {INDEX_WORKS:,} works × {WINDOWS_PER_WORK} windows"
    detail = f"{STREAM_S / 60:.0f} min of stream in {cpu:.2f} CPU s ({wall:.2f} s wall)"
    record("runtime", {"what": what, "threads": 1}, {"result": f"{streams:,.0f} streams", "detail": detail})
