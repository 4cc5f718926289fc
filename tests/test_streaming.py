"""StreamingEmbedder: whatever the chunk sizes pushed, its segments equal the offline
Embedder.embed_segments of the same audio; frames are computed once (frontend work within 1.1× of
the offline pass, one encoder call per hop); memory stays bounded; a saved state resumes exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from csi_runtime import Embedder, StreamingEmbedder
from csi_runtime.embedder import Segments

SR = 16000


@pytest.fixture(scope="module")
def embedder(exported_bundle: tuple[Path, Path]) -> Embedder:
    return Embedder(exported_bundle[1], backend="onnxruntime", device="cpu", threads=1)


def signal(rng: np.random.Generator, seconds: float) -> np.ndarray:
    n = int(seconds * SR)
    t = np.arange(n) / SR
    tone = sum(0.1 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in rng.uniform(60, 3000, 6))
    x = tone * (1 + 0.5 * np.sin(2 * np.pi * 0.3 * t)) + 0.02 * rng.standard_normal(n)
    return x.astype(np.float32)


def random_chunks(rng: np.random.Generator, audio: np.ndarray) -> list[np.ndarray]:
    chunks, i = [], 0
    while i < len(audio):
        size = int(rng.choice([0, 1, 7, 3199, 3200, 3201, 16000, 40000, 250000]))
        chunks.append(audio[i : i + size])
        i += size
    return chunks


def assert_same(streamed: list, offline: Segments) -> None:  # type: ignore[type-arg]
    assert len(streamed) == len(offline)
    np.testing.assert_allclose([s.start_s for s in streamed], offline.starts, atol=1e-9)
    np.testing.assert_allclose([s.end_s for s in streamed], offline.ends, atol=1e-9)
    assert [s.silent for s in streamed] == list(offline.silent)
    vectors = np.stack([s.vector for s in streamed])
    np.testing.assert_allclose(vectors, offline.vectors, atol=2e-5)
    cos = (vectors * offline.vectors).sum(1)[~offline.silent]
    assert cos.min() >= 0.9999


@pytest.mark.parametrize(
    ("seconds", "window_s", "hop_s"), [(61.7, None, None), (33.3, 8.0, 2.6), (5.1, None, None)]
)
def test_random_chunking_equals_offline(
    embedder: Embedder, rng: np.random.Generator, seconds: float, window_s: float | None, hop_s: float | None
) -> None:
    audio = signal(rng, seconds)
    audio[int(0.4 * len(audio)) : int(0.8 * len(audio))] = 0.0  # silence mid-stream
    stream = StreamingEmbedder(embedder, window_s, hop_s)
    segments = []
    for chunk in random_chunks(rng, audio):
        out = stream.push(chunk)
        for seg in out:  # emitted as soon as complete: never later than one hop + context after its end
            assert seg.end_s <= stream.position_s + 1e-9
            assert stream.position_s - seg.end_s <= stream.hop_s + 2.0 + 250000 / SR
        segments += out
    segments += stream.flush()
    assert stream.flush() == []
    offline = embedder.embed_segments(audio, SR, window_s=window_s, hop_s=hop_s)
    assert_same(segments, offline)


def test_frames_once_and_one_encoder_call_per_hop(
    embedder: Embedder, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    audio = signal(rng, 180.0)
    calls = {"frontend_samples": 0, "encoder_calls": 0}
    real_frames, real_encode = embedder.frames_valid, embedder.encode

    def frames(x: np.ndarray) -> np.ndarray:
        calls["frontend_samples"] += int(np.asarray(x).shape[-1])
        return real_frames(x)

    def encode(f: np.ndarray) -> np.ndarray:
        calls["encoder_calls"] += 1
        return real_encode(f)

    monkeypatch.setattr(embedder, "frames_valid", frames)
    monkeypatch.setattr(embedder, "encode", encode)
    stream = StreamingEmbedder(embedder)
    n = 0
    for i in range(0, len(audio), SR // 2):  # half-second chunks
        n += len(stream.push(audio[i : i + SR // 2]))
    streamed_samples, streamed_calls = calls["frontend_samples"], calls["encoder_calls"]
    offline_samples = len(audio) + 2 * embedder.context_samples
    assert streamed_samples <= 1.1 * offline_samples
    assert streamed_calls == n  # windows come one per hop here: one encoder call each
    hops = int(180.0 / stream.hop_s)
    assert abs(n - (hops - stream.window // stream.hop + 1)) <= 1


def test_memory_is_bounded(embedder: Embedder, rng: np.random.Generator) -> None:
    stream = StreamingEmbedder(embedder, window_s=6.0, hop_s=3.0)
    block = signal(rng, 7.3)
    largest_buf = largest_frames = 0
    for _ in range(100):  # 12 minutes
        stream.push(block)
        largest_buf = max(largest_buf, len(stream._buf))
        largest_frames = max(largest_frames, stream._frames.shape[1])
    assert largest_frames <= stream.window + stream.hop + len(block) // embedder.hop_samples + 1
    assert largest_buf <= 2 * embedder.context_samples + (stream.hop + 1) * embedder.hop_samples + len(block)


def test_saved_state_resumes_exactly(embedder: Embedder, rng: np.random.Generator, tmp_path: Path) -> None:
    audio = signal(rng, 50.0)
    cut = int(rng.integers(5 * SR, 40 * SR))
    straight = StreamingEmbedder(embedder)
    expected = straight.push(audio) + straight.flush()

    first = StreamingEmbedder(embedder)
    got = first.push(audio[:cut])
    first.save_state(tmp_path / "stream.npz")
    del first  # the service restarts
    resumed = StreamingEmbedder.restore(embedder, tmp_path / "stream.npz")
    got += resumed.push(audio[cut:]) + resumed.flush()
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert (a.start_s, a.end_s, a.silent) == (b.start_s, b.end_s, b.silent)
        np.testing.assert_allclose(a.vector, b.vector, atol=1e-6)


def test_state_errors(embedder: Embedder, tmp_path: Path) -> None:
    stream = StreamingEmbedder(embedder)
    stream.push(np.zeros(SR, np.float32))
    state = stream.state()
    with pytest.raises(ValueError, match="made with model"):
        StreamingEmbedder.restore(embedder, {**state, "model_id": "another-model"})
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable stream state"):
        StreamingEmbedder.restore(embedder, tmp_path / "junk.npz")
    stream.flush()
    with pytest.raises(RuntimeError, match="flushed"):
        stream.push(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="needs ≥"):
        StreamingEmbedder(embedder, window_s=1.0)


@pytest.mark.parametrize("offset", [0, -5824, 1000])
def test_frame_peaks_against_a_loop(rng: np.random.Generator, offset: int) -> None:
    from csi_runtime.embedder import frame_peaks

    x = rng.standard_normal(int(rng.integers(1, 50_000))).astype(np.float32)
    hop, n = 3200, int(rng.integers(1, 20))
    expected = np.zeros(n, np.float32)
    for t in range(n):
        lo, hi = t * hop - offset, (t + 1) * hop - offset
        part = np.abs(x[max(lo, 0) : max(min(hi, len(x)), 0)])
        expected[t] = part.max() if len(part) else 0.0
    np.testing.assert_array_equal(frame_peaks(x, hop, n, offset=offset), expected)
