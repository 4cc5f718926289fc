"""Classical CSI baselines: HPCP chroma views, 2D Fourier-transform magnitude, essentia Qmax.

2D-FTM is checked against a naive float64 DFT, for its transposition and time-shift invariances,
and its PCA against an eigendecomposition. The essentia-based parts are checked on synthetic
"songs" (melody + chords as sums of harmonic tones); versions are transposed and tempo-changed by
re-synthesis, never by resampling.
"""

from __future__ import annotations

import math
import statistics
import sys

import numpy as np
import pytest

from csi_training.baselines import chroma_features as cf
from csi_training.baselines.ftm2d import (
    FTM2D,
    chroma_power,
    euclidean_distances,
    ftm2d_embed,
)
from csi_training.baselines.qmax import (
    QmaxConfig,
    distance_from_score,
    qmax_distance,
    qmax_distance_matrix,
    qmax_score,
)

SR = 44100
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)


def _needs_essentia() -> None:
    pytest.importorskip("essentia.standard")


# ---------------------------------------------------------------- synthetic songs


def make_song(rng: np.random.Generator, bars_per_phrase: int = 2) -> tuple[list[tuple[float, ...]], float]:
    """Notes (start_beat, beats, midi, gain) of an A A B A song in C major; returns (notes, n_beats)."""

    def phrase() -> list[tuple[float, ...]]:
        notes: list[tuple[float, ...]] = []
        chords = [0, *rng.choice([0, 1, 2, 3, 4, 5], bars_per_phrase - 1)]
        for bar, degree in enumerate(chords):
            triad = [MAJOR_SCALE[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)]
            notes += [(bar * 4.0, 4.0, 48.0 + p, 0.25) for p in triad]
            beat = 0.0
            while beat < 4.0:
                length = min(float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0])), 4.0 - beat)
                if rng.random() < 0.5:
                    pitch = 60 + triad[int(rng.integers(0, 3))]
                else:
                    step = int(rng.integers(0, 10))
                    pitch = 60 + MAJOR_SCALE[step % 7] + 12 * (step // 7)
                notes.append((bar * 4.0 + beat, length, float(pitch), 0.6))
                beat += length
        return notes

    a, b = phrase(), phrase()
    span = 4.0 * bars_per_phrase
    song = [(s + k * span, d, m, g) for k, part in enumerate([a, a, b, a]) for s, d, m, g in part]
    return song, 4 * span


def render(
    song: list[tuple[float, ...]],
    n_beats: float,
    transpose: int = 0,
    bpm: float = 120.0,
    sample_rate: int = SR,
    partials: int = 6,
) -> np.ndarray:
    """Sum of harmonic tones (1/h partial amplitudes, plucked envelope) + a soft noise tick per beat."""
    beat_s = 60.0 / bpm
    out = np.zeros(int((n_beats * beat_s + 0.5) * sample_rate))
    for start, beats, midi, gain in song:
        f0 = 440.0 * 2.0 ** ((midi + transpose - 69) / 12)
        first, length = int(start * beat_s * sample_rate), int(beats * beat_s * sample_rate)
        t = np.arange(length) / sample_rate
        envelope = (
            np.minimum(1.0, t / 0.01)
            * np.exp(-2.5 * t)
            * np.minimum(1.0, (length - 1 - t * sample_rate) / 400)
        )
        tone = sum(
            np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, partials + 1) if f0 * h < sample_rate / 2
        )
        out[first : first + length] += gain * envelope * tone
    noise = np.random.default_rng(0).standard_normal(int(0.03 * sample_rate))
    tick = 0.15 * noise * np.exp(-np.arange(noise.size) / (0.008 * sample_rate))
    for b in range(int(n_beats)):
        first = int(b * beat_s * sample_rate)
        out[first : first + tick.size] += tick[: out.size - first]
    return (0.3 * out / np.max(np.abs(out))).astype(np.float32)


def harmonic_tone(midi: float, seconds: float, sample_rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 440.0 * 2.0 ** ((midi - 69) / 12)
    return (0.2 * sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 7))).astype(np.float32)


# ---------------------------------------------------------------- 2D-FTM


def naive_chroma_power(chroma: np.ndarray, power: float) -> np.ndarray:
    out = np.zeros_like(chroma, dtype=np.float64)
    for b, row in enumerate(chroma.astype(np.float64)):
        norm = math.sqrt(sum(v * v for v in row))
        if norm == 0:
            continue
        powered = [(v / norm) ** power for v in row]
        powered_norm = math.sqrt(sum(v * v for v in powered))
        out[b] = [v / powered_norm * norm for v in powered]
    return out


def naive_ftm2d(chroma: np.ndarray, power: float, window: int, log_compression: float | None) -> np.ndarray:
    """Direct float64 DFT sums, explicit fftshift by index, median by statistics.median."""
    powered = naive_chroma_power(chroma, power)
    if powered.shape[0] < window:
        powered = np.vstack([powered, np.zeros((window - powered.shape[0], 12))])
    n_bins = powered.shape[1]
    rows_t = np.arange(window)
    cols_c = np.arange(n_bins)
    vectors = []
    for start in range(powered.shape[0] - window + 1):
        patch = powered[start : start + window]  # [window, 12]
        magnitude = np.zeros((window, n_bins))
        for k in range(window):
            for m in range(n_bins):
                phase = np.exp(
                    -2j * np.pi * (np.outer(rows_t, np.ones(n_bins)) * k / window + cols_c * m / n_bins)
                )
                value = abs(np.sum(patch * phase))
                magnitude[(k + window // 2) % window, (m + n_bins // 2) % n_bins] = value
        vector = magnitude.reshape(-1)
        if log_compression is not None:
            norm = np.sqrt(np.sum(vector**2))
            vector = np.log(1.0 + log_compression * vector / (norm if norm > 0 else 1.0))
        vectors.append(vector)
    stacked = np.array(vectors)
    summary = np.array([statistics.median(stacked[:, i]) for i in range(stacked.shape[1])])
    norm = np.sqrt(np.sum(summary**2))
    return summary / norm if norm > 0 else summary  # all-silent chroma: the zero vector


@pytest.mark.parametrize(
    ("n_beats", "window", "log_compression"), [(9, 5, None), (5, 5, None), (3, 4, 5.0), (8, 3, 2.0)]
)
def test_ftm2d_matches_naive_dft(
    rng: np.random.Generator, n_beats: int, window: int, log_compression: float | None
) -> None:
    chroma = rng.random((n_beats, 12)) * (rng.random((n_beats, 1)) > 0.2)  # some silent beats
    expected = naive_ftm2d(chroma, 1.96, window, log_compression)
    got = ftm2d_embed(chroma, power=1.96, window=window, log_compression=log_compression)
    assert got.dtype == np.float32 and got.shape == (window * 12,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("n_beats", "log_compression"), [(1, None), (3, 5.0), (12, 2.0)])
def test_ftm2d_of_silent_chroma_is_the_zero_vector(n_beats: int, log_compression: float | None) -> None:
    got = ftm2d_embed(np.zeros((n_beats, 12)), power=1.96, window=4, log_compression=log_compression)
    assert got.dtype == np.float32 and not got.any()
    np.testing.assert_array_equal(got, naive_ftm2d(np.zeros((n_beats, 12)), 1.96, 4, log_compression))


def test_chroma_power_matches_naive_and_keeps_norms(rng: np.random.Generator) -> None:
    chroma = rng.random((30, 12))
    chroma[4] = 0.0
    got = chroma_power(chroma, 1.96)
    np.testing.assert_allclose(got, naive_chroma_power(chroma, 1.96), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(chroma, axis=1), rtol=1e-12)
    assert np.all(got[4] == 0)


@pytest.mark.parametrize("n_beats", [1, 40, 75, 76, 200])
def test_ftm2d_transposition_invariance(rng: np.random.Generator, n_beats: int) -> None:
    chroma = rng.random((n_beats, 12)) ** 3
    reference = ftm2d_embed(chroma)
    assert reference.shape == (900,) and reference.dtype == np.float32
    assert abs(float(np.linalg.norm(reference)) - 1.0) < 1e-5
    for shift in range(1, 12):
        np.testing.assert_allclose(
            ftm2d_embed(np.roll(chroma, shift, axis=1)), reference, rtol=1e-5, atol=1e-6
        )
    # a non-circular change of the pitch classes (the strongest and the weakest swapped) does change
    # the vector; a reversal would not (the DFT magnitude of a real sequence is symmetric)
    order = np.arange(12)
    strong, weak = int(chroma.sum(0).argmax()), int(chroma.sum(0).argmin())
    order[[strong, weak]] = order[[weak, strong]]
    assert not np.allclose(ftm2d_embed(chroma[:, order]), reference, atol=1e-4)


@pytest.mark.parametrize("period", [1, 3, 5, 15, 25, 75])
def test_ftm2d_time_shift_invariance_of_repeated_patterns(rng: np.random.Generator, period: int) -> None:
    # every 75-beat patch of a sequence with period | 75 is a circular time shift of the first one
    pattern = rng.random((period, 12))
    sequence = np.tile(pattern, (300 // period + 2, 1))
    reference = ftm2d_embed(sequence[:200])
    for offset in rng.choice(np.arange(1, 80), size=5, replace=False):
        np.testing.assert_allclose(
            ftm2d_embed(sequence[offset : offset + 200]), reference, rtol=1e-5, atol=1e-6
        )


def test_ftm2d_single_patch_is_invariant_to_circular_time_shift(rng: np.random.Generator) -> None:
    patch = rng.random((75, 12))
    reference = ftm2d_embed(patch)
    for shift in (1, 17, 74):
        np.testing.assert_allclose(
            ftm2d_embed(np.roll(patch, shift, axis=0)), reference, rtol=1e-5, atol=1e-6
        )
    swapped = patch.copy()
    swapped[[3, 40]] = swapped[[40, 3]]  # a non-circular reordering of beats changes the vector
    assert not np.allclose(ftm2d_embed(swapped), reference, atol=1e-4)


def test_ftm2d_distinguishes_different_tracks(rng: np.random.Generator) -> None:
    a, b = rng.random((120, 12)) ** 4, rng.random((120, 12)) ** 4
    vectors = FTM2D().transform([a, np.roll(a, 5, axis=1), b])
    distances = euclidean_distances(vectors)
    assert distances[0, 1] < 1e-4 < distances[0, 2]


def test_ftm2d_pca_matches_eigendecomposition(rng: np.random.Generator) -> None:
    train = [rng.random((int(rng.integers(60, 140)), 12)) ** 2 for _ in range(40)]
    test = [rng.random((int(rng.integers(60, 140)), 12)) ** 2 for _ in range(7)]
    raw_train = np.stack([ftm2d_embed(c).astype(np.float64) for c in train])
    raw_test = np.stack([ftm2d_embed(c).astype(np.float64) for c in test])
    mean = raw_train.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh((raw_train - mean).T @ (raw_train - mean))
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    # cut where the spectrum has a clear gap, so the principal subspace is well defined
    dims = 1 + int(np.argmax(eigenvalues[:10] / eigenvalues[1:11]))
    model = FTM2D(pca_dims=dims).fit(train)
    projected = model.transform(test)
    assert projected.shape == (7, dims) and projected.dtype == np.float32
    assert model.components is not None
    np.testing.assert_allclose(model.components @ model.components.T, np.eye(dims), atol=1e-10)
    expected = (raw_test - mean) @ eigenvectors[:, :dims]
    # axes are defined up to sign (and rotation within equal eigenvalues): compare distances
    np.testing.assert_allclose(
        euclidean_distances(projected), euclidean_distances(expected), rtol=1e-3, atol=1e-5
    )
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), np.linalg.norm(expected, axis=1), rtol=1e-3)


def test_ftm2d_without_pca_is_the_plain_embedding(rng: np.random.Generator) -> None:
    tracks = [rng.random((90, 12)), rng.random((10, 12))]
    model = FTM2D()
    assert model.fit(tracks) is model and model.dim == 900
    np.testing.assert_array_equal(model.transform(tracks), np.stack([ftm2d_embed(t) for t in tracks]))


def test_ftm2d_save_load_roundtrip(tmp_path, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    train = [rng.random((80, 12)) for _ in range(12)]
    model = FTM2D(pca_dims=5, log_compression=5.0).fit(train)
    path = tmp_path / "ftm2d.npz"
    model.save(path)
    loaded = FTM2D.load(path)
    assert loaded.config() == model.config()
    np.testing.assert_array_equal(loaded.transform(train[:3]), model.transform(train[:3]))
    plain = FTM2D(window=20)
    plain.save(tmp_path / "plain.npz")
    assert FTM2D.load(tmp_path / "plain.npz").window == 20
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    (tmp_path / "broken.npz").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable FTM2D model"):
        FTM2D.load(tmp_path / "broken.npz")
    with pytest.raises(RuntimeError, match="fit"):
        FTM2D(pca_dims=3).save(tmp_path / "unfitted.npz")


def test_ftm2d_rejects_bad_input(rng: np.random.Generator) -> None:
    good = rng.random((80, 12))
    bad_inputs = {
        "NaN": np.where(np.arange(12) == 3, np.nan, good),
        "non-negative": -good,
        "shape": good[:, :11],
        "no beats": good[:0],
    }
    for message, chroma in bad_inputs.items():
        with pytest.raises(ValueError, match=message):
            ftm2d_embed(chroma)
    with pytest.raises(RuntimeError, match="fit"):
        FTM2D(pca_dims=4).transform([good])
    with pytest.raises(ValueError, match="at least 4 training tracks"):
        FTM2D(pca_dims=4).fit([good, good])
    with pytest.raises(ValueError, match="pca_dims"):
        FTM2D(pca_dims=901)


def test_euclidean_distances_match_naive(rng: np.random.Generator) -> None:
    a, b = rng.standard_normal((6, 20)), rng.standard_normal((4, 20))
    naive = np.array([[math.dist(x, y) for y in b] for x in a])
    np.testing.assert_allclose(euclidean_distances(a, b), naive, rtol=1e-10, atol=1e-10)
    assert np.all(np.diag(euclidean_distances(a)) < 1e-6)


# ---------------------------------------------------------------- chroma views


def test_beat_synchronous_chroma_matches_naive(rng: np.random.Generator) -> None:
    frames = rng.random((500, 12)).astype(np.float32)
    period = 0.02
    beats = np.sort(rng.choice(np.arange(0.05, 9.5, 0.005), size=25, replace=False))
    beats = np.append(beats, beats[-1] + 0.004)  # a beat shorter than one frame
    duration = 10.5
    for aggregate in ("mean", "median"):
        got = cf.beat_synchronous_chroma(frames, period, beats, duration, aggregate=aggregate)
        expected = []
        for b, start in enumerate(beats):
            end = beats[b + 1] if b + 1 < len(beats) else duration
            members = [frames[t] for t in range(len(frames)) if start <= t * period < end]
            if members:
                stack = np.array(members, dtype=np.float64)
                row = stack.mean(axis=0) if aggregate == "mean" else np.median(stack, axis=0)
            else:
                row = frames[min(round((start + end) / 2 / period), len(frames) - 1)].astype(np.float64)
            expected.append(row / row.max())
        np.testing.assert_allclose(got, np.array(expected), rtol=1e-6, atol=1e-7)
        assert got.shape == (len(beats), 12) and got.dtype == np.float32
    with pytest.raises(ValueError, match="increasing"):
        cf.beat_synchronous_chroma(frames, period, beats[::-1], duration)
    with pytest.raises(ValueError, match="aggregate"):
        cf.beat_synchronous_chroma(frames, period, beats, duration, aggregate="max")  # type: ignore[arg-type]


@pytest.mark.parametrize(("n_frames", "factor"), [(1, 40), (39, 40), (40, 40), (401, 40), (57, 7), (10, 1)])
def test_downsample_hpcp_matches_naive(rng: np.random.Generator, n_frames: int, factor: int) -> None:
    frames = rng.random((n_frames, 12)).astype(np.float32)
    expected = [
        [statistics.median(frames[s : s + factor, c].tolist()) for c in range(12)]
        for s in range(0, n_frames, factor)
    ]
    got = cf.downsample_hpcp(frames, factor)
    assert got.shape == (math.ceil(n_frames / factor), 12)
    np.testing.assert_allclose(got, np.array(expected), rtol=1e-6)


def test_hpcp_pitch_classes_follow_transposition() -> None:
    _needs_essentia()
    reference = cf.hpcp(harmonic_tone(60, 1.5), SR)  # C4; bin 0 is A, so C is bin 3
    n_resampled = int(1.5 * SR)
    assert reference.shape == (math.ceil(n_resampled / cf.DEFAULT_HPCP.hop_size) + 1, 12)
    assert reference.dtype == np.float32
    middle = slice(10, -10)
    assert np.all(np.argmax(reference[middle], axis=1) == 3)
    for semitones in (1, 5, 11):
        transposed = cf.hpcp(harmonic_tone(60 + semitones, 1.5), SR)
        assert np.all(np.argmax(transposed[middle], axis=1) == (3 + semitones) % 12)
    # other input rates are resampled to the analysis rate first: same frames, same pitch class
    at_16k = cf.hpcp(harmonic_tone(60, 1.5, 16000), 16000)
    assert at_16k.shape == reference.shape
    assert np.all(np.argmax(at_16k[middle], axis=1) == 3)
    stereo = np.stack([harmonic_tone(60, 1.5), harmonic_tone(60, 1.5)], axis=1)
    np.testing.assert_allclose(cf.hpcp(stereo, SR), reference, atol=1e-5)


def test_hpcp_rejects_bad_audio() -> None:
    _needs_essentia()
    tone = harmonic_tone(60, 0.5)
    cases = {
        "empty": tone[:0],
        "NaN": np.where(np.arange(tone.size) == 100, np.nan, tone).astype(np.float32),
        "silent": np.zeros(SR, dtype=np.float32),
        "shape": tone.reshape(1, 1, -1),
    }
    for message, audio in cases.items():
        with pytest.raises(ValueError, match=message):
            cf.hpcp(audio, SR)
    with pytest.raises(TypeError, match="real-valued"):
        cf.hpcp(np.array(["a", "b"]), SR)
    with pytest.raises(ValueError, match="sample_rate must be positive"):
        cf.hpcp(tone, 0)


def test_beat_times_follow_the_tempo(rng: np.random.Generator) -> None:
    _needs_essentia()
    bpm = float(rng.uniform(100, 140))
    song, n_beats = make_song(rng, bars_per_phrase=2)
    beats = cf.beat_times(render(song, n_beats, bpm=bpm), SR)
    assert beats.ndim == 1 and np.all(np.diff(beats) > 0)
    assert abs(float(np.median(np.diff(beats))) - 60.0 / bpm) < 0.03


def test_missing_essentia_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "essentia", None)
    monkeypatch.setitem(sys.modules, "essentia.standard", None)
    with pytest.raises(ImportError, match=r"pip install --pre essentia"):
        cf.hpcp(harmonic_tone(60, 0.5), SR)
    with pytest.raises(ImportError, match=r"pip install --pre essentia"):
        cf.beat_times(harmonic_tone(60, 0.5), SR)
    with pytest.raises(ImportError, match=r"pip install --pre essentia"):
        cf.chroma_for_files([tmp_path / "a.wav"])
    hpcp = np.random.default_rng(0).random((30, 12))
    with pytest.raises(ImportError, match=r"pip install --pre essentia"):
        qmax_distance(hpcp, hpcp, QmaxConfig(dis_onset=0.4999))  # a config no thread has built yet


def test_chroma_for_files_reports_bad_files(tmp_path, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    _needs_essentia()
    soundfile = pytest.importorskip("soundfile")
    song, n_beats = make_song(rng, bars_per_phrase=1)
    audio = render(song, n_beats, bpm=130.0)
    good_44k = tmp_path / "good_44k.wav"
    soundfile.write(good_44k, audio, SR, subtype="FLOAT")
    good_22k_stereo = tmp_path / "good_22k.flac"
    import soxr

    at_22k = soxr.resample(render(song, n_beats, transpose=2, bpm=120.0), SR, 22050)
    soundfile.write(good_22k_stereo, np.stack([at_22k, at_22k], axis=1), 22050)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt garbage")
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(SR, dtype=np.float32), SR)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), SR)
    paths = [good_44k, broken, good_22k_stereo, silent, tmp_path / "missing.wav", empty]

    calls: list[tuple[int, int]] = []
    result = cf.chroma_for_files(paths, workers=1, downsample=10, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (len(paths), len(paths))
    assert set(result.failures) == {str(p) for p in (broken, silent, tmp_path / "missing.wav", empty)}
    assert "cannot decode" in result.failures[str(broken)]
    assert "silent" in result.failures[str(silent)]
    assert "empty" in result.failures[str(empty)]
    for index in (0, 2):
        track = result.tracks[index]
        assert track is not None and track.beat_chroma is not None
        assert track.qmax_hpcp.shape[1] == 12 and track.beat_chroma.shape[1] == 12
        assert track.qmax_hpcp.shape[0] == math.ceil((math.ceil(track.duration_s * SR / 512) + 1) / 10)
    direct = cf.track_chroma(audio, SR, downsample=10)
    track0 = result.tracks[0]
    assert track0 is not None and track0.beat_chroma is not None and direct.beat_chroma is not None
    np.testing.assert_array_equal(track0.qmax_hpcp, direct.qmax_hpcp)
    np.testing.assert_array_equal(track0.beat_chroma, direct.beat_chroma)

    parallel = cf.chroma_for_files(paths, workers=2, downsample=10, beats=False)
    assert parallel.failures.keys() == result.failures.keys()
    track = parallel.tracks[0]
    assert track is not None and track.beat_chroma is None
    np.testing.assert_array_equal(track.qmax_hpcp, track0.qmax_hpcp)


# ---------------------------------------------------------------- Qmax


def _qmax_views(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HPCP (≈ 0.12 s frames) of a song, of a transposed + tempo-changed re-synthesis, of another song."""
    song, n_beats = make_song(rng)
    other, _ = make_song(rng)
    bpm = float(rng.uniform(100, 130))
    semitones = int(rng.integers(1, 12))
    tempo = 1.0 + float(rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.25))
    audio = [
        render(song, n_beats, 0, bpm),
        render(song, n_beats, semitones, bpm * tempo),
        render(other, n_beats, 0, bpm),
    ]
    a, b, c = (cf.downsample_hpcp(cf.hpcp(x, SR), 10) for x in audio)
    return a, b, c


def test_qmax_cover_is_much_closer_than_an_unrelated_song(rng: np.random.Generator) -> None:
    _needs_essentia()
    original, cover, unrelated = _qmax_views(rng)
    for query, reference in ((original, cover), (cover, original)):
        assert qmax_distance(query, reference) < 0.6 * qmax_distance(query, unrelated)
    # identical input gives the minimum distance
    self_distance = qmax_distance(original, original)
    assert self_distance <= min(qmax_distance(original, x) for x in (cover, unrelated, original[::-1]))


def test_qmax_distance_is_essentias_normalised_score(rng: np.random.Generator) -> None:
    _needs_essentia()
    import essentia.standard as es

    a, b = rng.random((40, 12)).astype(np.float32), rng.random((33, 12)).astype(np.float32)
    score, n_query, n_reference = qmax_score(a, b)
    assert (n_query, n_reference) == (40 - 9, 33 - 9)
    recurrence = es.ChromaCrossSimilarity(
        frameStackSize=9, frameStackStride=1, binarizePercentile=0.095, oti=True
    )(a, b)
    _matrix, essentia_distance = es.CoverSongSimilarity(
        disOnset=0.5, disExtension=0.5, alignmentType="serra09", distanceType="asymmetric"
    )(recurrence)
    assert qmax_distance(a, b) == pytest.approx(float(essentia_distance), rel=1e-6)
    assert qmax_distance(a, b) == distance_from_score(score, n_reference) == math.sqrt(n_reference) / score
    assert distance_from_score(0.0, 10) == math.inf


def test_qmax_matrix_equals_pairwise_calls(rng: np.random.Generator) -> None:
    _needs_essentia()
    base = rng.random((50, 12)) ** 3
    tracks = [
        base.astype(np.float32),
        np.roll(base[5:45], 4, axis=1).astype(np.float32),
        (rng.random((37, 12)) ** 3).astype(np.float32),
        np.repeat(base[:30], 2, axis=0).astype(np.float32),
        (rng.random((12, 12)) ** 3).astype(np.float32),
    ]
    n = len(tracks)
    pairwise = np.array([[qmax_distance(tracks[i], tracks[j]) for j in range(n)] for i in range(n)])
    assert not np.allclose(pairwise, pairwise.T)  # Qmax distance is asymmetric
    calls: list[tuple[int, int]] = []
    ordered = qmax_distance_matrix(tracks, progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_array_equal(ordered, pairwise)
    assert calls[-1] == (n * n, n * n)
    np.testing.assert_array_equal(qmax_distance_matrix(tracks, workers=2), pairwise)
    # symmetric=True: one alignment per unordered pair (lower index = query), both directions from it
    halved = qmax_distance_matrix(tracks, symmetric=True)
    upper = np.triu_indices(n)
    np.testing.assert_array_equal(halved[upper], pairwise[upper])
    for i, j in zip(*np.tril_indices(n, -1)):
        score, n_query, _n_reference = qmax_score(tracks[j], tracks[i])
        assert halved[i, j] == distance_from_score(score, n_query)

    some = [(0, 1), (3, 2), (4, 4)]
    partial = qmax_distance_matrix(tracks, pairs=some, workers=2)
    mask = np.zeros((n, n), dtype=bool)
    mask[tuple(np.array(some).T)] = True
    np.testing.assert_array_equal(partial[mask], pairwise[mask])
    assert np.all(np.isnan(partial[~mask]))
    partial_halved = qmax_distance_matrix(tracks, pairs=some, symmetric=True)
    np.testing.assert_array_equal(np.isnan(partial_halved), ~mask)
    np.testing.assert_array_equal(partial_halved[3, 2], halved[3, 2])


def test_qmax_rejects_bad_input(rng: np.random.Generator) -> None:
    _needs_essentia()
    good = rng.random((30, 12)).astype(np.float32)
    cases = {
        "at least 10": good[:9],
        "NaN": np.where(np.arange(12) == 2, np.nan, good),
        "all zeros": np.zeros_like(good),
        r"shape \[T, 12\]": good[:, :6],
    }
    for message, hpcp in cases.items():
        with pytest.raises(ValueError, match=message):
            qmax_distance(good, hpcp)
        with pytest.raises(ValueError, match=message):
            qmax_distance_matrix([good, hpcp])
    with pytest.raises(IndexError, match="out of range"):
        qmax_distance_matrix([good, good], pairs=[(0, 2)])
    with pytest.raises(ValueError, match="workers"):
        qmax_distance_matrix([good], workers=0)
    with pytest.raises(ValueError, match="binarize_percentile"):
        QmaxConfig(binarize_percentile=0.0)
