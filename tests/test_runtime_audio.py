"""csi_runtime.audio for the runtime: caller arrays (as_mono_float32, prepare_waveform), rate checks,
URLs, the MAX_DECODE_S guard, and the re-exports that keep csi_training.data working."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr

from csi_runtime import audio as runtime_audio
from csi_runtime.audio import (
    MAX_CHANNELS,
    AudioDecodeError,
    AudioError,
    AudioTooLongError,
    EmptyAudioError,
    FFmpegMissingError,
    InvalidAudioError,
    NonFiniteAudioError,
    as_mono_float32,
    check_sample_rate,
    is_url,
    load_audio,
    prepare_waveform,
)

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")

INT_DTYPES = [np.int8, np.int16, np.int32, np.int64]
UINT_DTYPES = [np.uint8, np.uint16, np.uint32]
FLOAT_DTYPES = [np.float16, np.float32, np.float64]


def reference_float64(x: np.ndarray) -> np.ndarray:
    """The documented scaling in float64: ints / 2**(bits-1), unsigned (x - half) / half, floats as such."""
    if np.issubdtype(x.dtype, np.signedinteger):
        return x.astype(np.float64) / 2.0 ** (8 * x.dtype.itemsize - 1)
    if np.issubdtype(x.dtype, np.unsignedinteger):
        half = 2.0 ** (8 * x.dtype.itemsize - 1)
        return (x.astype(np.float64) - half) / half
    return x.astype(np.float64)


def random_audio(rng: np.random.Generator, dtype: type[np.generic], shape: tuple[int, ...]) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)  # type: ignore[type-var]
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return rng.uniform(-1.0, 1.0, shape).astype(dtype)


def expected_length(n: int, rate_in: int, rate_out: int) -> int:
    return int(Fraction(n * rate_out, rate_in) + Fraction(1, 2))


# ---------------------------------------------------------------------------------------------
# as_mono_float32


@pytest.mark.parametrize("dtype", INT_DTYPES + UINT_DTYPES + FLOAT_DTYPES)
def test_as_mono_float32_scales_every_dtype(rng: np.random.Generator, dtype: type[np.generic]) -> None:
    for n in (1, 2, int(rng.integers(3, 50)), int(rng.integers(1000, 5000))):
        x = random_audio(rng, dtype, (n,))
        y = as_mono_float32(x)
        assert y.dtype == np.float32 and y.shape == (n,) and y.flags.c_contiguous
        np.testing.assert_allclose(y, reference_float64(x), rtol=1e-6, atol=1e-9)
        assert np.all(np.abs(y) <= 1.0)
        channels = int(rng.integers(2, 7))
        xs = random_audio(rng, dtype, (n, channels))
        ys = as_mono_float32(xs, "stereo")
        assert ys.dtype == np.float32 and ys.shape == (n,) and ys.flags.c_contiguous
        np.testing.assert_allclose(ys, reference_float64(xs).mean(axis=1), rtol=1e-5, atol=1e-7)


def test_as_mono_float32_full_scale_points() -> None:
    np.testing.assert_array_equal(as_mono_float32(np.array([-128, 0, 127], np.int8)), [-1.0, 0.0, 127 / 128])
    np.testing.assert_array_equal(as_mono_float32(np.array([0, 128, 255], np.uint8)), [-1.0, 0.0, 127 / 128])
    np.testing.assert_array_equal(
        as_mono_float32(np.array([-(2**63), 0], np.int64)), np.array([-1.0, 0.0], np.float32)
    )


def test_as_mono_float32_layouts(rng: np.random.Generator) -> None:
    n = int(rng.integers(100, 1000))
    # Non-contiguous inputs: Fortran order, strided slices, a column of a wider array.
    wide = rng.uniform(-1, 1, (n, 4))
    np.testing.assert_allclose(as_mono_float32(np.asfortranarray(wide)), wide.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(as_mono_float32(wide[::2, 1:3]), wide[::2, 1:3].mean(axis=1), atol=1e-6)
    column = as_mono_float32(wide[:, 2:3])
    assert column.flags.c_contiguous
    np.testing.assert_allclose(column, wide[:, 2], atol=1e-7)
    # Python lists, and silence (callers decide what to do with it).
    np.testing.assert_allclose(as_mono_float32([0.5, -0.25]), [0.5, -0.25])
    np.testing.assert_array_equal(as_mono_float32(np.zeros(50, np.int16)), np.zeros(50, np.float32))
    # Up to MAX_CHANNELS channels; 9 frames of 20 channels is not "channels first" (9 > 8).
    many = rng.uniform(-1, 1, (n, MAX_CHANNELS))
    np.testing.assert_allclose(as_mono_float32(many), many.mean(axis=1), atol=1e-6)
    odd = rng.uniform(-1, 1, (9, 20))
    np.testing.assert_allclose(as_mono_float32(odd), odd.mean(axis=1), atol=1e-6)


def test_as_mono_float32_refuses_channels_first_and_too_many_channels(rng: np.random.Generator) -> None:
    for channels in (1, 2, 6, 8):
        x = rng.uniform(-1, 1, (channels, int(rng.integers(9, 5000))))
        with pytest.raises(
            InvalidAudioError, match=r"clip: shape .* looks like \[channels, n_samples\]"
        ) as info:
            as_mono_float32(x, "clip")
        assert "clip.T" in str(info.value) and isinstance(info.value, ValueError)
        assert as_mono_float32(x.T).shape == (x.shape[1],)
    with pytest.raises(InvalidAudioError, match=rf"65 channels, more than the {MAX_CHANNELS} supported"):
        as_mono_float32(np.zeros((100, 65)))
    with pytest.raises(InvalidAudioError, match=r"got shape \(2, 3, 4\)"):
        as_mono_float32(np.zeros((2, 3, 4)))
    with pytest.raises(InvalidAudioError, match=r"got shape \(\)"):
        as_mono_float32(np.float32(0.5))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_as_mono_float32_names_non_finite_samples(rng: np.random.Generator, bad: float) -> None:
    for dtype in (np.float16, np.float32, np.float64):
        x = rng.uniform(-1, 1, (int(rng.integers(20, 500)), 2)).astype(dtype)
        where = int(rng.integers(0, x.shape[0]))
        x[where, int(rng.integers(0, 2))] = bad
        with pytest.raises(NonFiniteAudioError, match=rf"query: 1 NaN/Inf .* the first at sample {where}"):
            as_mono_float32(x, "query")
    # A float64 beyond float32's range is not audio either.
    with pytest.raises(NonFiniteAudioError, match="the first at sample 1"):
        as_mono_float32(np.array([0.0, 1e39, 0.0]))


def test_as_mono_float32_empty_and_non_audio_dtypes() -> None:
    for shape in [(0,), (0, 2), (5, 0)]:
        with pytest.raises(EmptyAudioError, match=re.escape(f"clip: no samples (shape {shape})")):
            as_mono_float32(np.zeros(shape, np.float32), "clip")
    for bad in (np.ones(10, bool), np.ones(10, complex), np.array(["a", "b"]), np.array([None, 1.0])):
        with pytest.raises(InvalidAudioError, match=rf"dtype {bad.dtype} is not real audio"):
            as_mono_float32(bad)


# ---------------------------------------------------------------------------------------------
# prepare_waveform and rates


def test_prepare_waveform_matches_a_direct_soxr_call(rng: np.random.Generator) -> None:
    rates = [8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000]
    for _ in range(6):
        rate_in, rate_out = (int(r) for r in rng.choice(rates, 2))
        n = int(rng.integers(1, 3 * rate_in))
        channels = int(rng.integers(1, 4))
        x = rng.integers(-32768, 32768, (n, channels)).astype(np.int16)
        y = prepare_waveform(x, rate_in, rate_out, "song")
        assert y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous
        assert y.shape == (expected_length(n, rate_in, rate_out),)
        mono = (x.astype(np.float64) / 32768.0).mean(axis=1).astype(np.float32)
        if rate_in == rate_out:
            np.testing.assert_allclose(y, mono, atol=1e-7)
            continue
        direct = soxr.resample(mono, rate_in, rate_out, quality="HQ")
        m = min(len(direct), len(y))
        np.testing.assert_allclose(y[:m], direct[:m], rtol=0, atol=2e-6)
        assert np.all(y[m:] == 0)  # any padding up to the exact length is silence


def test_prepare_waveform_keeps_a_sine(rng: np.random.Generator) -> None:
    rate_in, rate_out = 44100, 16000
    freq = float(rng.uniform(100, 6000))
    t = np.arange(rate_in) / rate_in
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    y = prepare_waveform(np.stack([x, x], axis=1).astype(np.float32), rate_in, rate_out)
    reference = 0.5 * np.sin(2 * np.pi * freq * np.arange(len(y)) / rate_out)
    edge = rate_out // 50
    np.testing.assert_allclose(y[edge:-edge], reference[edge:-edge], atol=1e-3)


def test_bad_sample_rates_are_named() -> None:
    x = np.zeros(100, np.float32)
    for bad in (0, -16000, 16000.0, True, None, "16000"):
        with pytest.raises(
            InvalidAudioError, match=rf"clip: sample_rate must be a positive integer \(Hz\), got {bad!r}"
        ):
            prepare_waveform(x, bad, 16000, "clip")  # type: ignore[arg-type]
    for bad in (999, 768_001, 10**9):
        with pytest.raises(
            InvalidAudioError,
            match=rf"sample_rate {bad} Hz is outside the supported range 1000\.\.768000 Hz",
        ):
            prepare_waveform(x, bad, 16000)
    with pytest.raises(InvalidAudioError, match="target_rate must be a positive integer"):
        prepare_waveform(x, 16000, 16000.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidAudioError, match="target_rate 500 Hz is outside"):
        prepare_waveform(x, 16000, 500)
    assert check_sample_rate(np.int64(22050)) == 22050 and type(check_sample_rate(np.int32(8000))) is int
    assert check_sample_rate(1000) == 1000 and check_sample_rate(768_000) == 768_000


# ---------------------------------------------------------------------------------------------
# URLs and the decode-length guard


def test_is_url() -> None:
    for url in ("http://x/y.mp3", "https://a.b/c?d=e", "rtmp://host/live", "srt://h:1", "file:///tmp/a.wav"):
        assert is_url(url)
    for not_url in ("a.wav", "/tmp/a:b.wav", "C:\\music\\a.wav", "C:/a.wav", "x:/y", Path("http://x/y")):
        assert not is_url(not_url)


@needs_ffmpeg
def test_file_url_goes_through_ffmpeg(tmp_path: Path, rng: np.random.Generator) -> None:
    x = rng.uniform(-0.5, 0.5, (22050, 2))
    path = tmp_path / "url_source.wav"
    soundfile.write(path, x, 22050, subtype="PCM_16")
    url = f"file://{path}"
    np.testing.assert_array_equal(load_audio(url, 16000), load_audio(path, 16000))
    excerpt = load_audio(url, 22050, offset_s=0.5, max_duration_s=0.25)
    np.testing.assert_array_equal(excerpt, load_audio(path, 22050, offset_s=0.5, max_duration_s=0.25))
    with pytest.raises(AudioDecodeError, match=r"file:///.*nope\.wav: ffmpeg cannot decode it") as info:
        load_audio(url.replace("url_source", "nope"), 16000)
    assert info.value.path is None and info.value.source is not None and info.value.source.startswith("file:")


@needs_ffmpeg
def test_odd_local_names_reach_ffmpeg_as_files(tmp_path: Path, rng: np.random.Generator) -> None:
    x = rng.uniform(-0.5, 0.5, 8000)
    wav = tmp_path / "src.wav"
    soundfile.write(wav, x, 8000, subtype="FLOAT")
    for name in ("-starts-with-dash.mka", "has:colon.mka"):
        encoded = tmp_path / name
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-i",
                str(wav),
                "-c:a",
                "pcm_f32le",
                str(encoded),
            ],
            check=True,
            capture_output=True,
        )
        np.testing.assert_allclose(load_audio(encoded, 8000), x, atol=1e-7)
        cwd = os.getcwd()
        try:  # a relative name is passed as it is, with the "file:" protocol in front
            os.chdir(tmp_path)
            np.testing.assert_allclose(load_audio(name, 8000), x, atol=1e-7)
        finally:
            os.chdir(cwd)


def test_url_without_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))
    url = "https://radio.example/stream.mp3"
    with pytest.raises(FFmpegMissingError) as info:
        load_audio(url, 16000)
    message = str(info.value)
    assert message.startswith(url) and "read URLs" in message and "apt install ffmpeg" in message
    assert info.value.source == url and info.value.path is None


def test_too_long_for_one_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    rate = 8000
    x = rng.uniform(-0.5, 0.5, 3 * rate)
    path = tmp_path / "long.flac"
    soundfile.write(path, x, rate, subtype="PCM_24")
    monkeypatch.setattr(runtime_audio, "MAX_DECODE_S", 2)
    with pytest.raises(AudioTooLongError) as info:
        load_audio(path, 16000)
    message = str(info.value)
    assert "long.flac: 3.0 s (0:00:03) of audio is longer than the 2 s (0:00:02)" in message
    assert "max_duration_s" in message and "FileSource" in message
    assert (
        isinstance(info.value, ValueError) and isinstance(info.value, AudioError) and info.value.path == path
    )
    # An explicit max_duration_s or an offset that leaves less than the limit is fine.
    np.testing.assert_allclose(load_audio(path, rate, max_duration_s=2.5), x[: int(2.5 * rate)], atol=2**-23)
    np.testing.assert_allclose(load_audio(path, rate, offset_s=1.5), x[int(1.5 * rate) :], atol=2**-23)
    soundfile.write(path, x[: 2 * rate], rate, subtype="PCM_24")  # exactly at the limit
    assert load_audio(path, rate).shape == (2 * rate,)


@needs_ffmpeg
def test_too_long_through_ffmpeg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    rate = 8000
    wav = tmp_path / "src.wav"
    soundfile.write(wav, rng.uniform(-0.5, 0.5, 3 * rate), rate, subtype="FLOAT")
    mka = tmp_path / "long.mka"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "pcm_f32le", str(mka)],
        check=True,
        capture_output=True,
    )
    commands: list[list[str]] = []
    real_run = subprocess.run

    def spy_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        commands.append(list(cmd))
        return real_run(cmd, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(runtime_audio.subprocess, "run", spy_run)
    monkeypatch.setattr(runtime_audio, "MAX_DECODE_S", 2)
    with pytest.raises(
        AudioTooLongError, match=r"long\.mka: 3\.0 s \(0:00:03\) of audio is longer than the 2 s"
    ):
        load_audio(mka, 16000)
    decode = commands[0]
    assert float(decode[decode.index("-t") + 1]) == pytest.approx(
        3.0
    )  # the limit plus a second, not the file
    monkeypatch.setattr(runtime_audio, "MAX_DECODE_S", 4)
    assert load_audio(mka, rate).shape == (3 * rate,)


# ---------------------------------------------------------------------------------------------
# the move: one implementation, reachable from csi_training.data as before; no torch


def test_training_reexports_are_the_runtime_objects() -> None:
    import csi_training.data as data
    from csi_training.data import audio as training_audio

    for name in ("load_audio", "check_audio", "resample", "AudioError", "AudioDecodeError", "EmptyAudioError",
                 "SilentAudioError", "NonFiniteAudioError", "InvalidAudioError", "FFmpegMissingError",
                 "AudioTooLongError", "SILENCE_PEAK_DBFS"):  # fmt: skip
        assert getattr(data, name) is getattr(runtime_audio, name), name
        assert getattr(training_audio, name) is getattr(runtime_audio, name), name
    assert training_audio.scan_manifest is data.scan_manifest


def test_runtime_audio_and_sources_never_import_torch() -> None:
    code = (
        "import sys; import csi_runtime.audio, csi_runtime.sources; "
        "bad = [m for m in ('torch', 'librosa', 'csi_training') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=os.environ.copy())
