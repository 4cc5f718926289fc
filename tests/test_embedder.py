"""Embedder: the bundle's graphs on onnxruntime compute what the checkpoint's torch modules compute,
for arrays of any dtype/channels/rate, files, batches, segments and long tracks; bad input is named;
many threads may share one Embedder; the runtime never imports torch."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
sf = pytest.importorskip("soundfile")
soxr = pytest.importorskip("soxr")

from csi_runtime import Embedder  # noqa: E402
from csi_runtime.audio import AudioError  # noqa: E402
from csi_runtime.backends import BackendUnavailableError  # noqa: E402
from csi_runtime.embedder import window_starts  # noqa: E402

SR = 16000


@pytest.fixture(scope="module")
def embedder(exported_bundle: tuple[Path, Path]) -> Embedder:
    return Embedder(exported_bundle[1], backend="onnxruntime", device="cpu", threads=1)


@pytest.fixture(scope="module")
def torch_encoder(exported_bundle: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    from csi_training.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    return load_checkpoint(exported_bundle[0]).encoder.eval()


def music(rng: np.random.Generator, seconds: float, sr: int = SR) -> np.ndarray:
    """Random harmonic notes with decaying envelopes over a little noise: float32 [n]."""
    n = int(seconds * sr)
    out = 0.01 * rng.standard_normal(n)
    for _ in range(int(seconds * 2)):
        f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
        start, dur = int(rng.uniform(0, seconds) * sr), rng.uniform(0.2, 1.5)
        t = np.arange(min(n - start, int(5 * dur * sr))) / sr  # the note's support only
        env = np.clip(t / 0.02, 0, 1) * np.exp(-t / dur)
        out[start : start + len(t)] += 0.2 * env * sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3))
    return out.astype(np.float32)


def reference(torch_encoder, audio: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    import torch

    with torch.inference_mode():
        return torch_encoder(torch.from_numpy(audio[None])).numpy()[0].astype(np.float64)


def test_embed_matches_torch_for_any_dtype_channels_and_rate(
    embedder: Embedder, torch_encoder, rng: np.random.Generator
) -> None:  # type: ignore[no-untyped-def]
    audio = music(rng, rng.uniform(5, 25))
    ref = reference(torch_encoder, audio)
    v = embedder.embed(audio, SR)
    assert v.dtype == np.float32 and v.shape == (embedder.dim,)
    assert abs(np.linalg.norm(v) - 1) < 1e-5
    np.testing.assert_allclose(v, ref, atol=1e-4)
    # int16 PCM is scaled by 32768; stereo is mixed by the mean
    pcm = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)
    np.testing.assert_allclose(
        embedder.embed(pcm, SR), reference(torch_encoder, pcm / np.float32(32768)), atol=1e-4
    )
    stereo = np.stack([audio * 0.5, audio * 1.5], axis=1).astype(np.float64)
    np.testing.assert_allclose(embedder.embed(stereo, SR), ref, atol=1e-4)
    # another rate goes through soxr to the model's rate
    audio44 = soxr.resample(audio, SR, 44100)
    np.testing.assert_allclose(
        embedder.embed(audio44, 44100), reference(torch_encoder, soxr.resample(audio44, 44100, SR)), atol=1e-4
    )


def test_batch_file_and_long_track(
    embedder: Embedder, torch_encoder, rng: np.random.Generator, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    clips = [music(rng, s) for s in (6.0, 9.5, 6.0, 12.25)]
    batch = embedder.embed_batch(clips, SR)
    assert batch.shape == (4, embedder.dim)
    for clip, row in zip(clips, batch, strict=True):
        np.testing.assert_allclose(row, reference(torch_encoder, clip), atol=1e-4)
    path = tmp_path / "clip.flac"
    sf.write(path, np.stack([clips[1], clips[1]], 1), 44100 if False else SR, subtype="PCM_24")
    np.testing.assert_allclose(embedder.embed_file(path), batch[1], atol=2e-4)
    # a track longer than max_frames: the mean of consecutive max_frames pieces, re-normalised
    seconds = (embedder.max_frames * 2 + 30) / embedder.frame_rate
    long = music(rng, seconds)
    feats = embedder.features(long, SR)
    starts = window_starts(feats.shape[1], embedder.max_frames, embedder.max_frames, embedder.min_frames)
    assert len(starts) == 3
    import torch

    with torch.inference_mode():
        full = torch_encoder.frontend(torch.from_numpy(long[None]))
        pieces = torch_encoder.backbone(torch.cat([full[..., s : s + embedder.max_frames] for s in starts]))
    mean = pieces.numpy().astype(np.float64).mean(0)
    np.testing.assert_allclose(embedder.embed(long, SR), mean / np.linalg.norm(mean), atol=1e-4)


def test_segments_are_windows_of_one_framing(
    embedder: Embedder, torch_encoder, rng: np.random.Generator
) -> None:  # type: ignore[no-untyped-def]
    import torch

    audio = music(rng, 47.3)
    audio[int(20.0 * SR) : int(42.0 * SR)] = 0.0  # a silent stretch longer than a window
    segs = embedder.embed_segments(audio, SR, window_s=10.0, hop_s=4.0)
    window = embedder.window_frames(10.0)
    with torch.inference_mode():
        feats = torch_encoder.frontend(torch.from_numpy(audio[None]))
    n_frames = feats.shape[-1]
    starts = window_starts(n_frames, window, embedder.hop_frames(4.0), embedder.min_frames)
    assert len(segs) == len(starts) and starts[-1] == n_frames - window  # end-aligned last window
    np.testing.assert_allclose(segs.starts, np.array(starts) / embedder.frame_rate)
    np.testing.assert_allclose(segs.ends, (np.array(starts) + window) / embedder.frame_rate)
    for i, s in enumerate(starts):
        t0, t1 = s / embedder.frame_rate, (s + window) / embedder.frame_rate
        expect_silent = t0 >= 20.0 + 0.3 and t1 <= 42.0 - 0.3
        if expect_silent:
            assert segs.silent[i] and not segs.vectors[i].any()
        if not segs.silent[i]:
            with torch.inference_mode():
                ref = torch_encoder.backbone(feats[..., s : s + window]).numpy()[0]
            np.testing.assert_allclose(segs.vectors[i], ref, atol=1e-4)
    assert segs.silent.any() and not segs.silent.all()


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: np.zeros(0, np.float32), AudioError, "no samples"),
        (lambda: np.zeros(SR * 8, np.float32), AudioError, "silent"),
        (lambda: np.full(SR * 8, np.nan, np.float32), AudioError, "NaN"),
        (lambda: np.r_[np.ones(SR * 8, np.float32) * 0.1, np.inf].astype(np.float32), AudioError, "Inf"),
        (
            lambda: (np.random.default_rng(0).standard_normal(SR // 2) * 0.1).astype(np.float32),
            AudioError,
            "needs at least",
        ),
        (lambda: np.ones(SR * 8, bool), ValueError, "bool"),
        (lambda: np.ones((2, SR * 8), np.float32) * 0.1, ValueError, "channels"),
    ],
)
def test_bad_audio_is_named(embedder: Embedder, make, error: type, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message):
        embedder.embed(make(), SR)


def test_bad_rates_and_files(embedder: Embedder, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sample"):
        embedder.embed(np.ones(SR * 5, np.float32) * 0.1, 0)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    with pytest.raises(AudioError, match=r"broken\.wav"):
        embedder.embed_file(broken)
    with pytest.raises(AudioError):
        embedder.embed_file(tmp_path / "missing.wav")


def test_eight_threads_share_one_embedder(embedder: Embedder, rng: np.random.Generator) -> None:
    clips = [music(rng, rng.uniform(5, 12)) for _ in range(8)]
    expected = [embedder.embed(c, SR) for c in clips]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for r in range(3):
                for i in ((t + r) % 8, (t * 3 + r) % 8):
                    results[(t, r * 8 + i)] = embedder.embed(clips[i], SR)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for (_, key), v in results.items():
        assert np.array_equal(v, expected[key % 8])


def test_backends(exported_bundle: tuple[Path, Path], embedder: Embedder, rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        Embedder(exported_bundle[1], backend="magic")
    with pytest.raises(ValueError, match="device must be one of"):
        Embedder(exported_bundle[1], device="tpu")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailableError, match="no CUDA execution provider"):
            Embedder(exported_bundle[1], backend="onnxruntime", device="cuda")
    try:
        import tensorrt  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
            Embedder(exported_bundle[1], backend="tensorrt")
    assert Embedder(exported_bundle[1]).backend == "onnxruntime"  # auto without engines
    pytest.importorskip("torch")
    torch_backend = Embedder(exported_bundle[1], backend="torch", device="cpu", threads=1)
    audio = music(rng, 9.0)
    np.testing.assert_allclose(torch_backend.embed(audio, SR), embedder.embed(audio, SR), atol=1e-4)


def test_runtime_never_imports_torch(exported_bundle: tuple[Path, Path]) -> None:
    code = (
        "import sys, numpy as np\n"
        "from csi_runtime import Embedder, StreamingEmbedder\n"
        f"e = Embedder({str(exported_bundle[1])!r})\n"
        "x = (np.random.default_rng(0).standard_normal(16000 * 30) * 0.1).astype('float32')\n"
        "e.embed(x, 16000); s = StreamingEmbedder(e); s.push(x); s.flush()\n"
        "print('torch' in sys.modules, 'csi_training' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
