"""Audio decoding and validation: any file, URL or array → mono float32 at the model's rate, or a clear error.

- WAV / FLAC / OGG / AIFF / … are read with soundfile (libsndfile); everything else (MP3, M4A,
  AAC, Opus in WebM, …) and every URL (http, https, rtmp, …) is decoded by an ``ffmpeg``
  subprocess at the source's own rate and channel count. A file libsndfile cannot read is retried
  with ffmpeg when ffmpeg is installed.
- Channels are mixed down by their mean; resampling is soxr "HQ" and gives exactly
  ``round(n * sample_rate / file_rate)`` samples.
- ``max_duration_s`` / ``offset_s`` read only what is needed (soundfile seeks and reads that many
  frames; ffmpeg gets ``-ss`` / ``-t``), so an hour-long file costs what the excerpt costs.
  Without ``max_duration_s`` at most ``MAX_DECODE_S`` (6 h) is decoded in one piece: a longer
  source raises :class:`AudioTooLongError` instead of filling memory (stream it with
  ``csi_runtime.sources.FileSource``).
- The ffmpeg subprocess has a timeout and its stderr is captured into the error message; it
  never waits on stdin.
- Decoded audio is validated: empty, NaN/Inf and silent (peak below ``SILENCE_PEAK_DBFS``)
  signals raise the matching :class:`AudioError` subclass naming the file.

For arrays handed in by callers: ``as_mono_float32`` turns any numeric [n] / [n, channels] array
into mono float32 (integer PCM scaled by its full range), ``prepare_waveform`` also resamples it
to the model's rate, and ``check_audio`` adds the silence check of the file loader.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile
import soxr

logger = logging.getLogger(__name__)

__all__ = [
    "FFMPEG_INSTALL_HINT",
    "FFMPEG_TIMEOUT_S",
    "MAX_CHANNELS",
    "MAX_DECODE_S",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "SILENCE_PEAK_DBFS",
    "SOUNDFILE_EXTENSIONS",
    "AudioDecodeError",
    "AudioError",
    "AudioTooLongError",
    "EmptyAudioError",
    "FFmpegMissingError",
    "InvalidAudioError",
    "NonFiniteAudioError",
    "SilentAudioError",
    "TooShortAudioError",
    "as_mono_float32",
    "check_audio",
    "check_sample_rate",
    "is_url",
    "load_audio",
    "prepare_waveform",
    "resample",
]

# File extensions handed to libsndfile first (lower case, with the dot).
SOUNDFILE_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc", ".w64", ".rf64", ".caf", ".au"}
)
# A signal whose absolute peak stays below this is treated as silence (-70 dBFS ≈ 3.2e-4, ten
# times the 16-bit quantisation step): nothing useful can be learnt or matched from it.
SILENCE_PEAK_DBFS = -70.0
# Wall-clock limit for one ffmpeg decode; generous (an hour of MP3 decodes in seconds).
FFMPEG_TIMEOUT_S = 300.0
FFMPEG_INSTALL_HINT = (
    "install ffmpeg: `apt install ffmpeg` (Debian/Ubuntu), `brew install ffmpeg` (macOS) "
    "or `conda install -c conda-forge ffmpeg`"
)
# load_audio decodes at most this much audio (seconds) in one piece when no max_duration_s is
# given: 6 h of 48 kHz stereo float32 is already 8.3 GB. Longer sources are streamed.
MAX_DECODE_S = 6 * 3600
# Sample rates (Hz) accepted for requested rates and caller arrays.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
# Most channels an in-memory array may have (more is almost surely a layout mistake).
MAX_CHANNELS = 64
# A 2-D array of shape (c, n) with c <= this < n is taken for [channels, samples] and refused.
_CHANNELS_FIRST_MAX = 8
# ffmpeg decodes this much past MAX_DECODE_S so that a longer source is recognised as such.
_DECODE_CAP_MARGIN_S = 1.0
_STDERR_TAIL_CHARS = 2000
# "scheme://…": URLs go to ffmpeg (http, https, rtmp, rtsp, srt, udp, …).
_URL_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")


class AudioError(Exception):
    """Base of every audio loading / validation error.

    ``source``: the file path or URL as given (None for arrays); ``path``: it as a Path for local
    files (None for URLs and arrays).
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.source = os.fspath(path) if path is not None else None
        self.path = Path(path) if path is not None and not is_url(path) else None


class AudioDecodeError(AudioError):
    """The file is missing, unreadable, corrupt or in a format neither decoder understands.

    ``decoder_message`` holds what the decoder (libsndfile or ffmpeg's stderr) said, when it said something.
    """

    def __init__(
        self, message: str, path: str | os.PathLike[str] | None = None, decoder_message: str = ""
    ) -> None:
        super().__init__(message, path)
        self.decoder_message = decoder_message


class EmptyAudioError(AudioError, ValueError):
    """The file or array holds no samples (zero-length file, offset past the end, empty array)."""


class SilentAudioError(AudioError, ValueError):
    """Every sample is below the silence threshold (``SILENCE_PEAK_DBFS`` peak by default)."""


class NonFiniteAudioError(AudioError, ValueError):
    """The signal contains NaN or infinite samples."""


class InvalidAudioError(AudioError, ValueError):
    """An array is not audio: wrong dtype (complex, object, bool…), wrong shape, bad sample rate."""


class TooShortAudioError(AudioError, ValueError):
    """The audio is shorter than the model needs (the encoder's minimum number of frames)."""


class AudioTooLongError(AudioError, ValueError):
    """The source is longer than ``MAX_DECODE_S`` and no ``max_duration_s`` was given."""


class FFmpegMissingError(AudioError, RuntimeError):
    """ffmpeg is needed to decode this file or URL but is not on PATH."""


def is_url(source: str | os.PathLike[str]) -> bool:
    """True for "scheme://…" strings (http, https, rtmp, rtsp, srt, udp, file, …), which ffmpeg reads."""
    return isinstance(source, str) and _URL_PATTERN.match(source) is not None


def load_audio(
    path: str | os.PathLike[str],
    sample_rate: int,
    *,
    mono: bool = True,
    max_duration_s: float | None = None,
    offset_s: float = 0.0,
    silence_peak_dbfs: float | None = SILENCE_PEAK_DBFS,
    ffmpeg_timeout_s: float = FFMPEG_TIMEOUT_S,
) -> np.ndarray:
    """Decodes an audio file or URL and resamples it to ``sample_rate``.

    path: any file soundfile or ffmpeg can read, or a URL (always read by ffmpeg; for a live
        stream give ``max_duration_s`` or use ``csi_runtime.sources.FFmpegSource``).
    sample_rate: output rate in Hz.
    mono: True → float32 [n_samples] (mean of the channels); False → float32 [n_samples, n_channels].
    max_duration_s: read at most this many seconds (None: to the end, at most ``MAX_DECODE_S``).
    offset_s: start this many seconds into the file.
    silence_peak_dbfs: raise SilentAudioError when the peak is below this (None: no check).
    ffmpeg_timeout_s: wall-clock limit for the ffmpeg subprocess.

    Raises AudioDecodeError, EmptyAudioError, SilentAudioError, NonFiniteAudioError,
    AudioTooLongError or FFmpegMissingError, each naming the file.
    """
    url = is_url(path)
    label = os.fspath(path)
    try:
        rate_out = check_sample_rate(sample_rate, context=label)
    except InvalidAudioError as exc:
        raise InvalidAudioError(str(exc), path) from None
    if offset_s < 0 or not math.isfinite(offset_s):
        raise ValueError(f"offset_s must be a finite number >= 0, got {offset_s}")
    if max_duration_s is not None and (not math.isfinite(max_duration_s) or max_duration_s <= 0):
        raise ValueError(f"max_duration_s must be a positive number or None, got {max_duration_s}")

    if url:
        samples, rate_in = _read_ffmpeg(label, offset_s, max_duration_s, ffmpeg_timeout_s)
    else:
        source = Path(path)
        check_local_file(source)
        if source.suffix.lower() in SOUNDFILE_EXTENSIONS:
            try:
                samples, rate_in = _read_soundfile(source, offset_s, max_duration_s)
            except soundfile.LibsndfileError as exc:
                if shutil.which("ffmpeg") is None:
                    raise AudioDecodeError(
                        f"{source}: cannot decode with libsndfile: {exc}", source, str(exc)
                    ) from None
                logger.debug("libsndfile cannot read %s (%s); trying ffmpeg", source, exc)
                try:
                    samples, rate_in = _read_ffmpeg(source, offset_s, max_duration_s, ffmpeg_timeout_s)
                except AudioDecodeError as ff_exc:
                    both = f"libsndfile says {exc}; ffmpeg says {ff_exc.decoder_message}"
                    raise AudioDecodeError(f"{source}: cannot decode: {both}", source, both) from None
        else:
            samples, rate_in = _read_ffmpeg(source, offset_s, max_duration_s, ffmpeg_timeout_s)

    if samples.shape[0] == 0:
        where = f" after {offset_s:g} s" if offset_s > 0 else ""
        raise EmptyAudioError(f"{label}: no audio samples{where}", path)
    _validate(samples, label, path, silence_peak_dbfs)
    if mono:
        samples = samples.mean(axis=1, dtype=np.float32)[:, None]
    return _finish(samples, rate_in, rate_out, mono)


def as_mono_float32(waveform: np.ndarray, name: str = "waveform") -> np.ndarray:
    """Any numeric audio array → float32 [n_samples], C-contiguous (may share memory with the input).

    waveform: [n_samples] or [n_samples, n_channels] (at most ``MAX_CHANNELS``), mixed down by the
        mean of the channels. A (c, n) array with c <= 8 < n is refused as a likely
        [channels, samples] array (pass ``waveform.T``).
        Integer PCM is scaled by its full range (int16 / 32768, int32 / 2**31, …; unsigned
        integers are offset by half their range: uint8 → (x - 128) / 128); floats are taken as
        they are; bool, complex and object arrays are refused.
    name: how to call the signal in error messages.

    Raises InvalidAudioError (dtype, shape, layout), EmptyAudioError, NonFiniteAudioError.
    Silence is not an error here (callers decide).
    """
    arr = np.asarray(waveform)
    if arr.ndim not in (1, 2):
        raise InvalidAudioError(
            f"{name}: expected [n_samples] or [n_samples, n_channels], got shape {arr.shape}"
        )
    _check_dtype(arr, name)
    if arr.size == 0:
        raise EmptyAudioError(f"{name}: no samples (shape {arr.shape})")
    if arr.ndim == 2:
        rows, cols = arr.shape
        if rows <= _CHANNELS_FIRST_MAX < cols:
            raise InvalidAudioError(
                f"{name}: shape {arr.shape} looks like [channels, n_samples]; "
                f"pass [n_samples, n_channels] ({name}.T)"
            )
        if cols > MAX_CHANNELS:
            raise InvalidAudioError(
                f"{name}: shape {arr.shape} has {cols} channels, more than the {MAX_CHANNELS} supported; "
                "expected [n_samples] or [n_samples, n_channels]"
            )
    return mix_to_mono(arr, name)


def prepare_waveform(
    waveform: np.ndarray, sample_rate: int, target_rate: int, name: str = "waveform"
) -> np.ndarray:
    """A caller's array at ``sample_rate`` → float32 [round(n * target_rate / sample_rate)] at target_rate.

    ``as_mono_float32`` (any dtype, [n] or [n, channels]) followed by soxr HQ resampling when the
    rates differ. Both rates must be integers in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] Hz
    (InvalidAudioError naming the rate otherwise).
    """
    rate_in = check_sample_rate(sample_rate, context=name)
    rate_out = check_sample_rate(target_rate, "target_rate")
    return resample(as_mono_float32(waveform, name), rate_in, rate_out)


def check_audio(
    x: np.ndarray,
    sample_rate: int,
    name: str = "waveform",
    *,
    mono: bool = True,
    silence_peak_dbfs: float | None = SILENCE_PEAK_DBFS,
) -> np.ndarray:
    """Validates an in-memory signal the way ``load_audio`` validates files; returns it as float32.

    x: [n_samples] or [n_samples, n_channels] (more channels than samples is refused as a likely
       [channels, samples] mix-up), any real numeric dtype. Integer PCM is scaled by its full range
       (int16 / 32768, uint8 → (x - 128) / 128, …); floats are taken as they are.
    sample_rate: the signal's rate in Hz (checked to be a positive integer).
    name: how to call the signal in error messages.
    Returns float32 [n_samples] when mono (mean of the channels), else [n_samples, n_channels].
    """
    check_sample_rate(sample_rate, context=name)
    arr = np.asarray(x)
    if arr.ndim not in (1, 2):
        raise InvalidAudioError(
            f"{name}: expected [n_samples] or [n_samples, n_channels], got shape {arr.shape}"
        )
    if arr.ndim == 2 and arr.shape[1] > arr.shape[0]:
        raise InvalidAudioError(
            f"{name}: shape {arr.shape} has more channels than samples; "
            "pass [n_samples, n_channels] (transpose a [channels, samples] array)"
        )
    samples = to_float32(arr, name)
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.shape[0] == 0 or samples.shape[1] == 0:
        raise EmptyAudioError(f"{name}: no samples (shape {arr.shape})")
    _validate(samples, name, None, silence_peak_dbfs)
    if mono:
        return samples.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(samples)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """soxr HQ resampling of float32 [n] or [n, channels] to exactly round(n * rate_out / rate_in) samples."""
    if rate_in == rate_out:
        return np.ascontiguousarray(samples, dtype=np.float32)
    n_out = resampled_length(samples.shape[0], rate_in, rate_out)
    out = soxr.resample(np.ascontiguousarray(samples, dtype=np.float32), rate_in, rate_out, quality="HQ")
    out = np.asarray(out, dtype=np.float32)
    if out.shape[0] > n_out:
        out = out[:n_out]
    elif out.shape[0] < n_out:
        pad = [(0, n_out - out.shape[0])] + [(0, 0)] * (out.ndim - 1)
        out = np.pad(out, pad)
    return out


def resampled_length(n_in: int, rate_in: int, rate_out: int) -> int:
    """round(n_in * rate_out / rate_in) with halves rounded up, in exact integer arithmetic."""
    return (2 * n_in * rate_out + rate_in) // (2 * rate_in)


def check_sample_rate(sample_rate: int, name: str = "sample_rate", *, context: str | None = None) -> int:
    """Returns ``sample_rate`` as an int, or raises InvalidAudioError naming it.

    Accepted: an integer (not bool, not float) in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] Hz.
    context: what the rate belongs to (a file, an array's name), prefixed to the message.
    """
    where = f"{context}: " if context is not None else ""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise InvalidAudioError(f"{where}{name} must be a positive integer (Hz), got {sample_rate!r}")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise InvalidAudioError(
            f"{where}{name} {int(sample_rate)} Hz is outside the supported range "
            f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )
    return int(sample_rate)


# ---------------------------------------------------------------------------------------------
# conversion helpers shared with csi_runtime.sources


def to_float32(arr: np.ndarray, name: str) -> np.ndarray:
    """Real numeric array of any shape → float32 of the same shape (integer PCM scaled by its full range)."""
    _check_dtype(arr, name)
    kind = arr.dtype.kind
    if kind == "f":
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes Inf, caught as such
            return arr.astype(np.float32, copy=False)
    if kind == "i":
        full_scale = float(2 ** (arr.dtype.itemsize * 8 - 1))
        return (arr.astype(np.float64) / full_scale).astype(np.float32)
    half = 2 ** (arr.dtype.itemsize * 8 - 1)
    return ((arr.astype(np.float64) - half) / half).astype(np.float32)


def mix_to_mono(arr: np.ndarray, name: str) -> np.ndarray:
    """[n] or [n, channels] numeric → float32 [n], C-contiguous: the mean of the channels.

    Raises NonFiniteAudioError for NaN/Inf samples. No layout heuristics (internal blocks may
    legitimately have fewer frames than channels).
    """
    samples = to_float32(arr, name)
    if arr.dtype.kind == "f":  # (a float64 beyond the float32 range also ends up here, as Inf)
        _check_finite(samples.reshape(samples.shape[0], -1), name, None)
    if samples.ndim == 2:
        samples = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(samples)


def _check_dtype(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind not in "fiu":
        raise InvalidAudioError(
            f"{name}: dtype {arr.dtype} is not real audio (expected float or integer PCM)"
        )


# ---------------------------------------------------------------------------------------------
# decoders


def check_local_file(source: Path) -> None:
    """Raises AudioDecodeError / EmptyAudioError unless ``source`` is a non-empty regular file."""
    try:
        size = source.stat().st_size
    except FileNotFoundError:
        raise AudioDecodeError(f"{source}: no such file", source) from None
    except OSError as exc:
        raise AudioDecodeError(f"{source}: cannot access the file ({exc})", source) from None
    if not source.is_file():
        raise AudioDecodeError(f"{source}: not a regular file", source)
    if size == 0:
        raise EmptyAudioError(f"{source}: the file is empty (0 bytes)", source)


def _read_soundfile(source: Path, offset_s: float, max_duration_s: float | None) -> tuple[np.ndarray, int]:
    """float32 [n, channels] at the file's own rate, reading only the requested excerpt."""
    with soundfile.SoundFile(str(source)) as fh:
        rate = int(fh.samplerate)
        start = round(offset_s * rate)
        if start > 0:
            if fh.seekable():
                if fh.frames > 0 and start >= fh.frames:
                    return np.zeros((0, fh.channels), np.float32), rate
                fh.seek(start)
            else:
                fh.read(frames=start, dtype="float32", always_2d=True)
        if max_duration_s is None:
            remaining = fh.frames - start
            if remaining > MAX_DECODE_S * rate:
                raise _too_long(str(source), source, remaining / rate)
            frames = -1
        else:
            frames = math.ceil(max_duration_s * rate)
        data = fh.read(frames=frames, dtype="float32", always_2d=True)
    return data, rate


def ffmpeg_decode_command(
    ffmpeg: str,
    source: str | os.PathLike[str],
    *,
    offset_s: float = 0.0,
    duration_s: float | None = None,
    input_args: Sequence[str] = (),
) -> list[str]:
    """The ffmpeg command that decodes the first audio stream of ``source`` into a 32-bit float
    WAV stream on stdout, at the source's own rate and channel count."""
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", *input_args]
    if offset_s > 0:
        cmd += ["-ss", f"{offset_s:.6f}"]
    target = os.fspath(source)
    if not is_url(target):
        # "file:" keeps local names that start with "-" or contain ":" from being read as options/protocols.
        target = "file:" + target
    cmd += ["-i", target]
    if duration_s is not None:
        cmd += ["-t", f"{duration_s:.6f}"]
    # No LIST/metadata chunk, first audio stream only, no video/subtitles/data.
    cmd += ["-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1", "-fflags", "+bitexact"]
    cmd += ["-flags:a", "+bitexact", "-c:a", "pcm_f32le", "-f", "wav", "-"]
    return cmd


def ffmpeg_missing(source: str | os.PathLike[str], what: str | None = None) -> FFmpegMissingError:
    """The error for a source that needs ffmpeg when none is found."""
    label = os.fspath(source)
    if what is None:
        what = "read URLs" if is_url(source) else f"decode {Path(label).suffix or 'these'} files"
    return FFmpegMissingError(
        f"{label}: ffmpeg is needed to {what} and was not found on PATH; {FFMPEG_INSTALL_HINT}", source
    )


def _read_ffmpeg(
    source: str | Path, offset_s: float, max_duration_s: float | None, timeout_s: float
) -> tuple[np.ndarray, int]:
    """Decodes with ffmpeg into 32-bit float WAV on a pipe; returns float32 [n, channels], rate."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise ffmpeg_missing(source)
    limit_s = MAX_DECODE_S
    duration_s = max_duration_s if max_duration_s is not None else limit_s + _DECODE_CAP_MARGIN_S
    cmd = ffmpeg_decode_command(ffmpeg, source, offset_s=offset_s, duration_s=duration_s)
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise AudioDecodeError(
            f"{source}: ffmpeg did not finish within {timeout_s:g} s", source, "timed out"
        ) from None
    except FileNotFoundError:
        raise FFmpegMissingError(
            f"{source}: ffmpeg disappeared from PATH; {FFMPEG_INSTALL_HINT}", source
        ) from None
    stderr = proc.stderr.decode("utf-8", errors="replace").strip()
    if proc.returncode != 0:
        message = tail(stderr) or f"exit status {proc.returncode}"
        raise AudioDecodeError(f"{source}: ffmpeg cannot decode it: {message}", source, message)
    try:
        samples, rate = _parse_pipe_wav(proc.stdout)
    except ValueError as exc:
        raise AudioDecodeError(f"{source}: unexpected ffmpeg output ({exc})", source, str(exc)) from None
    if max_duration_s is None and samples.shape[0] > round(limit_s * rate):
        raise _too_long(str(source), source, _probe_duration_s(ffmpeg, source, offset_s))
    return samples, rate


def _probe_duration_s(ffmpeg: str, source: str | Path, offset_s: float) -> float | None:
    """The source's duration after ``offset_s`` as ffprobe reports it (None when unknown)."""
    ffprobe = shutil.which("ffprobe") or shutil.which(str(Path(ffmpeg).with_name("ffprobe")))
    if ffprobe is None:
        return None
    target = os.fspath(source) if is_url(source) else "file:" + os.fspath(source)
    cmd = [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", target]
    try:
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
        return float(out.stdout.decode().strip()) - offset_s
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def _too_long(label: str, path: str | os.PathLike[str], duration_s: float | None) -> AudioTooLongError:
    limit = f"{MAX_DECODE_S:g} s ({_hms(MAX_DECODE_S)})"
    if duration_s is not None and duration_s > MAX_DECODE_S:
        what = f"{duration_s:.1f} s ({_hms(duration_s)}) of audio is"
    else:
        what = "the audio is"
    return AudioTooLongError(
        f"{label}: {what} longer than the {limit} load_audio decodes in one piece; pass "
        "max_duration_s (with offset_s) to read a part, or stream it with csi_runtime.sources.FileSource",
        path,
    )


def _hms(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def tail(text: str) -> str:
    """The last ``_STDERR_TAIL_CHARS`` characters of a decoder's message."""
    if len(text) <= _STDERR_TAIL_CHARS:
        return text
    return "…" + text[-_STDERR_TAIL_CHARS:]


def parse_wav_header(blob: bytes) -> tuple[int, int, int] | None:
    """Reads the float32 WAV header ffmpeg writes to a pipe (size fields unset).

    Returns (channels, sample_rate, offset of the first sample byte), or None while ``blob`` is
    too short to hold the whole header. Raises ValueError for anything but 32-bit float WAV.
    """
    if (len(blob) >= 4 and blob[:4] != b"RIFF") or (len(blob) >= 12 and blob[8:12] != b"WAVE"):
        raise ValueError("not a RIFF/WAVE stream")
    if len(blob) < 12:
        return None
    pos = 12
    channels = rate = bits = 0
    while pos + 8 <= len(blob):
        chunk_id = blob[pos : pos + 4]
        size = struct.unpack_from("<I", blob, pos + 4)[0]
        if chunk_id == b"data":
            if channels <= 0 or rate <= 0 or bits != 32:
                raise ValueError(f"bad format chunk (channels={channels}, rate={rate}, bits={bits})")
            return channels, rate, pos + 8
        if chunk_id == b"fmt ":
            if pos + 24 > len(blob):
                return None
            _tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", blob, pos + 8)
        pos += 8 + size + (size & 1)
    return None


def _parse_pipe_wav(blob: bytes) -> tuple[np.ndarray, int]:
    """Parses the float32 WAV ffmpeg writes to a pipe (size fields unset): all bytes after 'data'."""
    header = parse_wav_header(blob)
    if header is None:
        raise ValueError("no 'data' chunk" if len(blob) >= 12 else "not a RIFF/WAVE stream")
    channels, rate, start = header
    payload = memoryview(blob)[start:]
    usable = len(payload) - len(payload) % (4 * channels)
    samples = np.frombuffer(payload[:usable], dtype="<f4").reshape(-1, channels)
    return samples.astype(np.float32, copy=True), rate


# ---------------------------------------------------------------------------------------------
# validation


def _check_finite(samples: np.ndarray, name: str, source: str | os.PathLike[str] | None) -> None:
    """samples: float [n, channels]. Raises NonFiniteAudioError naming the first bad sample."""
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(samples.size - np.count_nonzero(finite))
        first = int(np.argmin(finite.all(axis=1)))
        raise NonFiniteAudioError(
            f"{name}: {bad} NaN/Inf sample value(s), the first at sample {first}", source
        )


def _validate(
    samples: np.ndarray, name: str, source: str | os.PathLike[str] | None, silence_peak_dbfs: float | None
) -> None:
    """samples: float32 [n, channels], n > 0."""
    _check_finite(samples, name, source)
    if silence_peak_dbfs is not None:
        peak = float(np.max(np.abs(samples)))
        threshold = 10.0 ** (silence_peak_dbfs / 20.0)
        if peak < threshold:
            level = f"{20 * math.log10(peak):.1f} dBFS" if peak > 0 else "digital silence"
            raise SilentAudioError(
                f"{name}: silent (peak {level}, below the {silence_peak_dbfs:g} dBFS threshold)", source
            )


def _finish(samples: np.ndarray, rate_in: int, rate_out: int, mono: bool) -> np.ndarray:
    out = resample(samples, rate_in, rate_out)
    if mono:
        return np.ascontiguousarray(out[:, 0])
    return np.ascontiguousarray(out)
