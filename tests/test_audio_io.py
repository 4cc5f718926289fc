"""Audio decoding: formats, resampling vs analytic sines, excerpts, damaged files, missing ffmpeg, scans."""

from __future__ import annotations

import logging
import shutil
import stat
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile

from csi_runtime import audio as runtime_audio
from csi_training.data import (
    AudioDecodeError,
    AudioError,
    EmptyAudioError,
    FFmpegMissingError,
    InvalidAudioError,
    ManifestEntry,
    NonFiniteAudioError,
    SilentAudioError,
    check_audio,
    load_audio,
    scan_manifest,
)
from csi_training.data import audio as audio_module

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")

MODEL_RATE = 16000


def sine(n: int, rate: int, freq: float, amp: float, phase: float = 0.0) -> np.ndarray:
    """float64 [n]: the analytic reference."""
    return amp * np.sin(2 * np.pi * freq * np.arange(n) / rate + phase)


def expected_length(n: int, rate_in: int, rate_out: int) -> int:
    """round(n * rate_out / rate_in), halves rounded up, in exact arithmetic."""
    return int(Fraction(n * rate_out, rate_in) + Fraction(1, 2))


def ffmpeg_encode(src: Path, dst: Path, *args: str) -> Path:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), *args, str(dst)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return dst


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    window = np.hanning(len(x))
    spectrum = np.abs(np.fft.rfft(x * window, n=8 * len(x)))
    return float(np.argmax(spectrum) * rate / (8 * len(x)))


# ---------------------------------------------------------------------------------------------
# formats and sample encodings read by libsndfile


@pytest.mark.parametrize(
    ("fmt", "subtype", "step"),
    [
        ("WAV", "PCM_U8", 2.0**-7),
        ("WAV", "PCM_16", 2.0**-15),
        ("WAV", "PCM_24", 2.0**-23),
        ("WAV", "PCM_32", 2.0**-31),
        ("WAV", "FLOAT", 0.0),
        ("WAV", "DOUBLE", 0.0),
        ("FLAC", "PCM_16", 2.0**-15),
        ("FLAC", "PCM_24", 2.0**-23),
        ("AIFF", "PCM_16", 2.0**-15),
    ],
)
def test_pcm_encodings_at_native_rate(
    tmp_path: Path, rng: np.random.Generator, fmt: str, subtype: str, step: float
) -> None:
    rate = int(rng.choice([8000, 16000, 22050]))
    n = int(rng.integers(2000, 6000))
    x = rng.uniform(-0.9, 0.9, n)
    path = tmp_path / f"x.{fmt.lower()}"
    soundfile.write(path, x, rate, format=fmt, subtype=subtype)
    y = load_audio(path, rate)
    assert y.dtype == np.float32 and y.shape == (n,)
    # Quantisation: at most one step (rounding or truncation) plus float32 rounding.
    np.testing.assert_allclose(y, x, rtol=0, atol=step + 1e-6)


def test_ogg_vorbis_decodes_a_sine(tmp_path: Path, rng: np.random.Generator) -> None:
    rate, n = 44100, 44100
    freq, amp = float(rng.uniform(300, 2000)), float(rng.uniform(0.3, 0.8))
    path = tmp_path / "x.ogg"
    soundfile.write(path, sine(n, rate, freq, amp), rate, format="OGG", subtype="VORBIS")
    y = load_audio(path, MODEL_RATE)
    assert y.shape == (expected_length(n, rate, MODEL_RATE),)
    assert abs(dominant_frequency(y, MODEL_RATE) - freq) < 2.0
    assert abs(np.sqrt(2 * np.mean(y[1000:-1000] ** 2)) - amp) < 0.05 * amp


def test_stereo_is_mixed_by_mean_or_kept(tmp_path: Path, rng: np.random.Generator) -> None:
    n, rate = 3000, 16000
    stereo = rng.uniform(-0.5, 0.5, (n, 2))
    path = tmp_path / "st.wav"
    soundfile.write(path, stereo, rate, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, rate), stereo.mean(axis=1), atol=1e-7)
    both = load_audio(path, rate, mono=False)
    assert both.shape == (n, 2) and both.dtype == np.float32
    np.testing.assert_allclose(both, stereo, atol=1e-7)
    six = rng.uniform(-0.5, 0.5, (n, 6))
    soundfile.write(path, six, rate, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, rate), six.mean(axis=1), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# resampling, checked against the analytic sine at the output rate


@pytest.mark.parametrize("rate_in", [44100, 22050, 48000, 8000, 16000])
def test_resampling_preserves_a_sine(tmp_path: Path, rng: np.random.Generator, rate_in: int) -> None:
    for _ in range(3):
        n = int(rng.integers(rate_in // 4, rate_in))
        freq = float(rng.uniform(100, 0.4 * min(rate_in, MODEL_RATE)))
        amp = float(rng.uniform(0.1, 0.9))
        phase = float(rng.uniform(0, 2 * np.pi))
        path = tmp_path / "s.wav"
        soundfile.write(path, sine(n, rate_in, freq, amp, phase), rate_in, subtype="FLOAT")
        y = load_audio(path, MODEL_RATE)
        assert y.shape == (expected_length(n, rate_in, MODEL_RATE),)
        reference = sine(len(y), MODEL_RATE, freq, amp, phase)  # same instants, t = k / 16000
        edge = MODEL_RATE // 50  # the filter's start/end transients: 20 ms
        np.testing.assert_allclose(y[edge:-edge], reference[edge:-edge], rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# excerpts: max_duration_s / offset_s read only what is needed


def test_excerpt_matches_the_slice_and_reads_only_what_is_needed(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    rate = 22050
    n = rate * 20
    x = rng.uniform(-0.5, 0.5, n).astype(np.float32)
    path = tmp_path / "long.wav"
    soundfile.write(path, x, rate, subtype="FLOAT")

    requested: list[int] = []
    real_read = soundfile.SoundFile.read

    def spy_read(self: soundfile.SoundFile, frames: int = -1, **kwargs: object) -> np.ndarray:
        requested.append(frames)
        return real_read(self, frames, **kwargs)

    monkeypatch.setattr(soundfile.SoundFile, "read", spy_read)
    offset, duration = float(rng.uniform(1, 5)), float(rng.uniform(0.5, 2))
    y = load_audio(path, rate, offset_s=offset, max_duration_s=duration)
    start = round(offset * rate)
    np.testing.assert_array_equal(y, x[start : start + int(np.ceil(duration * rate))])
    assert requested == [int(np.ceil(duration * rate))]  # one bounded read after a seek

    tail = load_audio(path, rate, offset_s=19.5)
    np.testing.assert_array_equal(tail, x[round(19.5 * rate) :])
    short = load_audio(path, rate, max_duration_s=100.0)  # longer than the file: the whole file
    np.testing.assert_array_equal(short, x)
    with pytest.raises(EmptyAudioError, match=r"long\.wav: no audio samples after 25 s"):
        load_audio(path, rate, offset_s=25.0)


def test_excerpt_then_resample_has_the_expected_length(tmp_path: Path) -> None:
    rate = 44100
    path = tmp_path / "long.wav"
    soundfile.write(path, sine(rate * 5, rate, 440.0, 0.5), rate, subtype="PCM_16")
    y = load_audio(path, MODEL_RATE, max_duration_s=1.5)
    assert y.shape == (expected_length(int(np.ceil(1.5 * rate)), rate, MODEL_RATE),)


def test_bad_excerpt_arguments() -> None:
    with pytest.raises(ValueError, match="offset_s"):
        load_audio("x.wav", MODEL_RATE, offset_s=-1.0)
    with pytest.raises(ValueError, match="max_duration_s"):
        load_audio("x.wav", MODEL_RATE, max_duration_s=0.0)
    with pytest.raises(InvalidAudioError, match="sample_rate"):
        load_audio("x.wav", 16000.0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# ffmpeg formats


@needs_ffmpeg
@pytest.mark.parametrize(
    ("ext", "codec_args"),
    [(".mp3", ["-c:a", "libmp3lame", "-b:a", "192k"]), (".m4a", ["-c:a", "aac", "-b:a", "192k"])],
)
def test_compressed_formats_via_ffmpeg(
    tmp_path: Path, rng: np.random.Generator, ext: str, codec_args: list[str]
) -> None:
    rate = int(rng.choice([44100, 48000, 22050]))
    n = rate * 2
    freq, amp = float(rng.uniform(200, 3000)), float(rng.uniform(0.2, 0.6))
    stereo = np.stack([sine(n, rate, freq, amp), sine(n, rate, freq, amp, 0.3)], axis=1)
    wav = tmp_path / "src.wav"
    soundfile.write(wav, stereo, rate, subtype="PCM_16")
    encoded = ffmpeg_encode(wav, tmp_path / f"enc{ext}", *codec_args)
    y = load_audio(encoded, MODEL_RATE)
    # ffmpeg trims the encoder delay/padding (gapless info) for MP3; AAC may keep a frame or two.
    slack = 0 if ext == ".mp3" else 2 * 1024 * MODEL_RATE // rate + 1
    assert abs(len(y) - expected_length(n, rate, MODEL_RATE)) <= slack
    assert abs(dominant_frequency(y, MODEL_RATE) - freq) < 2.0
    mixed_amp = amp * abs(np.cos(0.15))  # mean of two sines 0.3 rad apart
    middle = y[len(y) // 4 : 3 * len(y) // 4]
    # Encoders change the level a little (LAME: about -3 % at 44.1/48 kHz, -5 % at 22.05 kHz).
    assert abs(np.sqrt(2 * np.mean(middle**2)) - mixed_amp) < 0.1 * mixed_amp
    # At the file's own rate the samples are exactly what a plain ffmpeg decode gives.
    raw = subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-i",
            str(encoded),
            "-f",
            "f32le",
            "-c:a",
            "pcm_f32le",
            "-",
        ],
        check=True,
        capture_output=True,
    ).stdout
    reference = np.frombuffer(raw, np.float32).reshape(-1, 2)
    both = load_audio(encoded, rate, mono=False)
    np.testing.assert_array_equal(both, reference)
    np.testing.assert_allclose(load_audio(encoded, rate), reference.mean(axis=1), atol=1e-7)


@needs_ffmpeg
def test_ffmpeg_excerpt_uses_seek_and_duration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rate = 16000
    wav = tmp_path / "src.wav"
    soundfile.write(wav, sine(rate * 12, rate, 500.0, 0.5), rate, subtype="PCM_16")
    mp3 = ffmpeg_encode(wav, tmp_path / "long.mp3", "-b:a", "64k")
    commands: list[list[str]] = []
    real_run = subprocess.run

    def spy_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        commands.append(list(cmd))
        return real_run(cmd, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(runtime_audio.subprocess, "run", spy_run)
    y = load_audio(mp3, rate, offset_s=3.0, max_duration_s=2.5)
    assert len(y) == 2.5 * rate
    (cmd,) = commands
    assert cmd[cmd.index("-ss") + 1].startswith("3.0") and cmd.index("-ss") < cmd.index("-i")
    assert cmd[cmd.index("-t") + 1].startswith("2.5")
    assert "-nostdin" in cmd


# ---------------------------------------------------------------------------------------------
# damaged files


def test_truncated_wav_yields_its_intact_prefix(tmp_path: Path, rng: np.random.Generator) -> None:
    rate, n = 16000, 8000
    x = rng.uniform(-0.5, 0.5, n)
    good = tmp_path / "good.wav"
    soundfile.write(good, x, rate, subtype="PCM_16")
    blob = good.read_bytes()
    cut = tmp_path / "cut.wav"
    keep_samples = int(rng.integers(100, n - 100))
    cut.write_bytes(blob[: 44 + 2 * keep_samples])
    y = load_audio(cut, rate)
    np.testing.assert_allclose(y, x[:keep_samples], atol=2.0**-15 + 1e-6)


@pytest.mark.parametrize("ext", [".wav", ".flac", ".mp3", ".m4a"])
def test_header_only_and_random_bytes_are_decode_errors(
    tmp_path: Path, rng: np.random.Generator, ext: str
) -> None:
    if ext in (".mp3", ".m4a") and shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    junk = tmp_path / f"junk{ext}"
    junk.write_bytes(rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes())
    with pytest.raises(AudioDecodeError) as info:
        load_audio(junk, MODEL_RATE)
    assert f"junk{ext}" in str(info.value) and info.value.path == junk
    assert info.value.decoder_message  # the decoder's own words are kept


def test_wav_cut_inside_its_header(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    soundfile.write(good, np.full(100, 0.5), 16000, subtype="PCM_16")
    cut = tmp_path / "cut_header.wav"
    cut.write_bytes(good.read_bytes()[:30])
    with pytest.raises(AudioDecodeError, match=r"cut_header\.wav: cannot decode.*libsndfile"):
        load_audio(cut, MODEL_RATE)


@pytest.mark.parametrize("ext", [".wav", ".mp3", ".flac", ".m4a"])
def test_zero_length_file(tmp_path: Path, ext: str) -> None:
    empty = tmp_path / f"empty{ext}"
    empty.touch()
    with pytest.raises(EmptyAudioError, match=rf"empty{ext}: the file is empty \(0 bytes\)"):
        load_audio(empty, MODEL_RATE)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(AudioDecodeError, match=r"nope\.wav: no such file"):
        load_audio(tmp_path / "nope.wav", MODEL_RATE)
    with pytest.raises(AudioDecodeError, match="not a regular file"):
        load_audio(tmp_path, MODEL_RATE)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_wav(tmp_path: Path, rng: np.random.Generator, bad: float) -> None:
    x = rng.uniform(-0.5, 0.5, 1000)
    where = int(rng.integers(0, 1000))
    x[where] = bad
    path = tmp_path / "nan.wav"
    soundfile.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(
        NonFiniteAudioError, match=rf"nan\.wav: 1 NaN/Inf sample value\(s\), the first at sample {where}"
    ):
        load_audio(path, MODEL_RATE)


def test_silent_and_quiet_files(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "quiet.wav"
    soundfile.write(path, np.zeros(4000), 16000, subtype="PCM_16")
    with pytest.raises(SilentAudioError, match=r"quiet\.wav: silent \(peak digital silence"):
        load_audio(path, MODEL_RATE)
    # -80 dBFS peak: below the default -70 dBFS threshold.
    soundfile.write(path, sine(4000, 16000, 440.0, 10 ** (-80 / 20)), 16000, subtype="FLOAT")
    with pytest.raises(SilentAudioError, match=r"peak -80\.0 dBFS"):
        load_audio(path, MODEL_RATE)
    assert load_audio(path, MODEL_RATE, silence_peak_dbfs=None).shape == (4000,)
    assert load_audio(path, MODEL_RATE, silence_peak_dbfs=-90.0).shape == (4000,)
    # -60 dBFS is quiet but usable.
    soundfile.write(path, sine(4000, 16000, 440.0, 10 ** (-60 / 20)), 16000, subtype="PCM_16")
    assert load_audio(path, MODEL_RATE).shape == (4000,)


# ---------------------------------------------------------------------------------------------
# ffmpeg missing, hanging or misbehaving


def _fake_ffmpeg(folder: Path, script: str) -> None:
    folder.mkdir(exist_ok=True)
    exe = folder / "ffmpeg"
    exe.write_text("#!/bin/sh\n" + script + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_ffmpeg_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> None:
    mp3 = tmp_path / "song.mp3"
    mp3.write_bytes(b"ID3" + bytes(100))
    wav = tmp_path / "song.wav"
    x = rng.uniform(-0.5, 0.5, 1000)
    soundfile.write(wav, x, 16000, subtype="FLOAT")
    junk_wav = tmp_path / "junk.wav"
    junk_wav.write_bytes(b"not a wav at all" * 10)
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))
    with pytest.raises(FFmpegMissingError) as info:
        load_audio(mp3, MODEL_RATE)
    assert "song.mp3" in str(info.value) and "apt install ffmpeg" in str(info.value)
    # libsndfile formats do not need ffmpeg; a file libsndfile cannot read reports libsndfile's error.
    np.testing.assert_allclose(load_audio(wav, 16000), x, atol=1e-7)
    with pytest.raises(AudioDecodeError, match=r"junk\.wav: cannot decode with libsndfile"):
        load_audio(junk_wav, MODEL_RATE)
    # A scan stops on a missing ffmpeg instead of skipping every MP3 one by one.
    with pytest.raises(FFmpegMissingError):
        scan_manifest([ManifestEntry(wav, "w"), ManifestEntry(mp3, "w")], MODEL_RATE)


def test_hanging_ffmpeg_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_ffmpeg(tmp_path / "bin", f"exec {shutil.which('sleep')} 30")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    mp3 = tmp_path / "slow.mp3"
    mp3.write_bytes(bytes(1000))
    with pytest.raises(AudioDecodeError, match=r"slow\.mp3: ffmpeg did not finish within 0\.5 s"):
        load_audio(mp3, MODEL_RATE, ffmpeg_timeout_s=0.5)


def test_misbehaving_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mp3 = tmp_path / "odd.mp3"
    mp3.write_bytes(bytes(1000))
    _fake_ffmpeg(tmp_path / "bin", "echo garbage; exit 0")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(
        AudioDecodeError, match=r"odd\.mp3: unexpected ffmpeg output \(not a RIFF/WAVE stream\)"
    ):
        load_audio(mp3, MODEL_RATE)
    _fake_ffmpeg(tmp_path / "bin", "echo 'odd.mp3: Invalid data found when processing input' >&2; exit 1")
    with pytest.raises(AudioDecodeError, match=r"odd\.mp3: ffmpeg cannot decode it: .*Invalid data found"):
        load_audio(mp3, MODEL_RATE)


# ---------------------------------------------------------------------------------------------
# arrays


@pytest.mark.parametrize(
    ("dtype", "to_float"),
    [
        (np.int8, lambda v: v / 128.0),
        (np.int16, lambda v: v / 32768.0),
        (np.int32, lambda v: v / 2147483648.0),
        (np.uint8, lambda v: (v - 128.0) / 128.0),
        (np.uint16, lambda v: (v - 32768.0) / 32768.0),
        (np.float16, lambda v: v),
        (np.float64, lambda v: v),
    ],
)
def test_check_audio_scales_pcm_by_its_full_range(
    rng: np.random.Generator, dtype: type[np.generic], to_float: object
) -> None:
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None  # type: ignore[type-var]
    if info is not None:
        x = rng.integers(info.min, int(info.max) + 1, 500).astype(dtype)
    else:
        x = rng.uniform(-1, 1, 500).astype(dtype)
    y = check_audio(x, 16000)
    assert y.dtype == np.float32 and y.shape == (500,)
    np.testing.assert_allclose(y, to_float(x.astype(np.float64)), rtol=1e-6, atol=1e-7)  # type: ignore[operator]
    if info is not None:
        assert y.min() >= -1.0 and y.max() < 1.0


def test_check_audio_channels_and_errors(rng: np.random.Generator) -> None:
    stereo = rng.integers(-30000, 30000, (400, 2)).astype(np.int16)
    np.testing.assert_allclose(check_audio(stereo, 8000), stereo.mean(axis=1) / 32768.0, atol=1e-6)
    assert check_audio(stereo, 8000, mono=False).shape == (400, 2)
    with pytest.raises(InvalidAudioError, match="query: dtype complex128"):
        check_audio(np.ones(10, complex), 16000, "query")
    with pytest.raises(InvalidAudioError, match="dtype bool"):
        check_audio(np.ones(10, bool), 16000)
    with pytest.raises(InvalidAudioError, match=r"shape \(2, 400\) has more channels than samples"):
        check_audio(stereo.T, 8000)
    with pytest.raises(InvalidAudioError, match=r"shape \(2, 3, 4\)"):
        check_audio(np.ones((2, 3, 4)), 16000)
    with pytest.raises(EmptyAudioError, match="clip: no samples"):
        check_audio(np.zeros(0, np.float32), 16000, "clip")
    x = rng.uniform(-1, 1, 100)
    x[7] = np.nan
    with pytest.raises(NonFiniteAudioError, match="first at sample 7"):
        check_audio(x, 16000)
    with pytest.raises(SilentAudioError):
        check_audio(np.zeros(100, np.int16), 16000)
    for bad_rate in (0, -16000, 16000.0, True, None):
        with pytest.raises(InvalidAudioError, match="sample_rate must be a positive integer"):
            check_audio(np.ones(10), bad_rate)  # type: ignore[arg-type]
    assert issubclass(SilentAudioError, AudioError) and issubclass(SilentAudioError, ValueError)


# ---------------------------------------------------------------------------------------------
# scanning a manifest


def _scan_fixture(tmp_path: Path, rng: np.random.Generator) -> tuple[list[ManifestEntry], list[str]]:
    def wav(name: str, x: np.ndarray, subtype: str = "PCM_16") -> Path:
        path = tmp_path / name
        soundfile.write(path, x, 22050, subtype=subtype)
        return path

    good1 = wav("good1.wav", rng.uniform(-0.5, 0.5, 5000))
    silent = wav("silent.wav", np.zeros(5000))
    nan = rng.uniform(-0.5, 0.5, 5000)
    nan[10] = np.nan
    nan_path = wav("nan.wav", nan, "FLOAT")
    good2 = wav("good2.wav", rng.uniform(-0.5, 0.5, 7000))
    junk = tmp_path / "junk.flac"
    junk.write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.wav"
    empty.touch()
    paths = [good1, silent, nan_path, tmp_path / "gone.wav", good2, junk, empty]
    expected_errors = [
        "",
        "SilentAudioError",
        "NonFiniteAudioError",
        "AudioDecodeError",
        "",
        "AudioDecodeError",
        "EmptyAudioError",
    ]
    return [ManifestEntry(p, f"w{i % 2}") for i, p in enumerate(paths)], expected_errors


@pytest.mark.parametrize("workers", [1, 3])
def test_scan_manifest_sorts_good_from_bad(
    tmp_path: Path, rng: np.random.Generator, caplog: pytest.LogCaptureFixture, workers: int
) -> None:
    entries, expected_errors = _scan_fixture(tmp_path, rng)
    with caplog.at_level(logging.WARNING, logger="csi_training.data.audio"):
        report = scan_manifest(entries, MODEL_RATE, workers=workers)
    assert report.usable == [e for e, err in zip(entries, expected_errors) if not err]
    assert [(s.entry, s.error) for s in report.skipped] == [
        (e, err) for e, err in zip(entries, expected_errors) if err
    ]
    for skipped in report.skipped:
        assert skipped.entry.path.name in skipped.reason
    assert (report.n_total, report.n_usable, report.n_skipped) == (7, 2, 5)
    assert report.durations_s[entries[0].path] == pytest.approx(5000 / 22050, abs=1 / MODEL_RATE)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 6  # one per bad file, then the summary
    for skipped in report.skipped:
        assert sum(skipped.entry.path.name in w for w in warnings[:-1]) == 1
    assert "2 of 7 files usable, 5 skipped" in warnings[-1]
    assert "2 AudioDecodeError" in warnings[-1] and "1 SilentAudioError" in warnings[-1]


def test_scan_manifest_survives_unexpected_exceptions(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries, _ = _scan_fixture(tmp_path, rng)
    real_load = audio_module.load_audio

    def flaky_load(path: Path, *args: object, **kwargs: object) -> np.ndarray:
        if Path(path).name == "good2.wav":
            raise MemoryError("simulated")
        return real_load(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(audio_module, "load_audio", flaky_load)
    report = scan_manifest(entries, MODEL_RATE)
    assert [e.path.name for e in report.usable] == ["good1.wav"]
    assert ("good2.wav", "MemoryError") in [(s.entry.path.name, s.error) for s in report.skipped]
    with pytest.raises(ValueError, match="workers"):
        scan_manifest(entries, MODEL_RATE, workers=0)
