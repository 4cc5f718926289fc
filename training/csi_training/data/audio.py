"""Audio decoding: any file → mono float32 at the model's sample rate, or a clear error.

- WAV / FLAC / OGG / AIFF / … are read with soundfile (libsndfile); everything else (MP3, M4A,
  AAC, Opus in WebM, …) is decoded by an ``ffmpeg`` subprocess at the file's own rate and channel
  count. A file libsndfile cannot read is retried with ffmpeg when ffmpeg is installed.
- Channels are mixed down by their mean; resampling is soxr "HQ" and gives exactly
  ``round(n * sample_rate / file_rate)`` samples.
- ``max_duration_s`` / ``offset_s`` read only what is needed (soundfile seeks and reads that many
  frames; ffmpeg gets ``-ss`` / ``-t``), so an hour-long file costs what the excerpt costs.
- The ffmpeg subprocess has a timeout and its stderr is captured into the error message; it
  never waits on stdin.
- Decoded audio is validated: empty, NaN/Inf and silent (peak below ``SILENCE_PEAK_DBFS``)
  signals raise the matching :class:`AudioError` subclass naming the file.

``check_audio`` applies the same validation to arrays handed in by callers (any numeric dtype;
integer PCM is scaled by its full range). ``scan_manifest`` runs ``load_audio`` over a manifest
and returns the usable entries plus the skipped files with their reasons, so that one bad file
among 100,000 never kills, nor silently poisons, a training run.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import struct
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
import soxr

from .manifest import ManifestEntry

logger = logging.getLogger(__name__)

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
_STDERR_TAIL_CHARS = 2000


class AudioError(Exception):
    """Base of every audio loading / validation error. ``path`` names the file (None for arrays)."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


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
    """An array is not audio: wrong dtype (complex, object, bool…), wrong rank, bad sample rate."""


class FFmpegMissingError(AudioError, RuntimeError):
    """ffmpeg is needed to decode this file but is not on PATH."""


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
    """Decodes an audio file and resamples it to ``sample_rate``.

    path: any file soundfile or ffmpeg can read.
    sample_rate: output rate in Hz.
    mono: True → float32 [n_samples] (mean of the channels); False → float32 [n_samples, n_channels].
    max_duration_s: read at most this many seconds (None: to the end).
    offset_s: start this many seconds into the file.
    silence_peak_dbfs: raise SilentAudioError when the peak is below this (None: no check).
    ffmpeg_timeout_s: wall-clock limit for the ffmpeg subprocess.

    Raises AudioDecodeError, EmptyAudioError, SilentAudioError, NonFiniteAudioError or
    FFmpegMissingError, each naming the file.
    """
    source = Path(path)
    rate_out = _check_sample_rate(sample_rate, source)
    if offset_s < 0 or not math.isfinite(offset_s):
        raise ValueError(f"offset_s must be a finite number >= 0, got {offset_s}")
    if max_duration_s is not None and (not math.isfinite(max_duration_s) or max_duration_s <= 0):
        raise ValueError(f"max_duration_s must be a positive number or None, got {max_duration_s}")
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
        raise EmptyAudioError(f"{source}: no audio samples{where}", source)
    _validate(samples, str(source), source, silence_peak_dbfs)
    if mono:
        samples = samples.mean(axis=1, dtype=np.float32)[:, None]
    return _finish(samples, rate_in, rate_out, mono)


def check_audio(
    x: np.ndarray,
    sample_rate: int,
    name: str = "waveform",
    *,
    mono: bool = True,
    silence_peak_dbfs: float | None = SILENCE_PEAK_DBFS,
) -> np.ndarray:
    """Validates an in-memory signal and returns it as float32.

    x: [n_samples] or [n_samples, n_channels] (more channels than samples is refused as a likely
       [channels, samples] mix-up), any real numeric dtype. Integer PCM is scaled by its full range
       (int16 / 32768, uint8 → (x - 128) / 128, …); floats are taken as they are.
    sample_rate: the signal's rate in Hz (checked to be a positive integer).
    name: how to call the signal in error messages.
    Returns float32 [n_samples] when mono (mean of the channels), else [n_samples, n_channels].
    """
    _check_sample_rate(sample_rate, None, name)
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
    samples = _to_float32(arr, name)
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
    n_in = samples.shape[0]
    n_out = (2 * n_in * rate_out + rate_in) // (2 * rate_in)
    out = soxr.resample(np.ascontiguousarray(samples, dtype=np.float32), rate_in, rate_out, quality="HQ")
    out = np.asarray(out, dtype=np.float32)
    if out.shape[0] > n_out:
        out = out[:n_out]
    elif out.shape[0] < n_out:
        pad = [(0, n_out - out.shape[0])] + [(0, 0)] * (out.ndim - 1)
        out = np.pad(out, pad)
    return out


# ---------------------------------------------------------------------------------------------
# decoders


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
        frames = -1 if max_duration_s is None else math.ceil(max_duration_s * rate)
        data = fh.read(frames=frames, dtype="float32", always_2d=True)
    return data, rate


def _read_ffmpeg(
    source: Path, offset_s: float, max_duration_s: float | None, timeout_s: float
) -> tuple[np.ndarray, int]:
    """Decodes with ffmpeg into 32-bit float WAV on a pipe; returns float32 [n, channels], rate."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise FFmpegMissingError(
            f"{source}: ffmpeg is needed to decode {source.suffix or 'this'} files "
            f"and was not found on PATH; {FFMPEG_INSTALL_HINT}",
            source,
        )
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error"]
    if offset_s > 0:
        cmd += ["-ss", f"{offset_s:.6f}"]
    cmd += ["-i", str(source)]
    if max_duration_s is not None:
        cmd += ["-t", f"{max_duration_s:.6f}"]
    # No LIST/metadata chunk, first audio stream only, no video/subtitles/data.
    cmd += ["-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1", "-fflags", "+bitexact"]
    cmd += ["-flags:a", "+bitexact", "-c:a", "pcm_f32le", "-f", "wav", "-"]
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
        message = _tail(stderr) or f"exit status {proc.returncode}"
        raise AudioDecodeError(f"{source}: ffmpeg cannot decode it: {message}", source, message)
    try:
        return _parse_pipe_wav(proc.stdout)
    except ValueError as exc:
        raise AudioDecodeError(f"{source}: unexpected ffmpeg output ({exc})", source, str(exc)) from None


def _tail(text: str) -> str:
    if len(text) <= _STDERR_TAIL_CHARS:
        return text
    return "…" + text[-_STDERR_TAIL_CHARS:]


def _parse_pipe_wav(blob: bytes) -> tuple[np.ndarray, int]:
    """Parses the float32 WAV ffmpeg writes to a pipe (size fields unset): all bytes after 'data'."""
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE stream")
    pos = 12
    channels = rate = bits = 0
    while pos + 8 <= len(blob):
        chunk_id = blob[pos : pos + 4]
        size = struct.unpack_from("<I", blob, pos + 4)[0]
        if chunk_id == b"fmt ":
            _tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", blob, pos + 8)
        elif chunk_id == b"data":
            if channels <= 0 or rate <= 0 or bits != 32:
                raise ValueError(f"bad format chunk (channels={channels}, rate={rate}, bits={bits})")
            payload = blob[pos + 8 :]
            usable = len(payload) - len(payload) % (4 * channels)
            samples = np.frombuffer(payload[:usable], dtype="<f4").reshape(-1, channels)
            return samples.astype(np.float32, copy=True), rate
        pos += 8 + size + (size & 1)
    raise ValueError("no 'data' chunk")


# ---------------------------------------------------------------------------------------------
# validation and conversion


def _check_sample_rate(sample_rate: int, source: Path | None, name: str = "sample_rate") -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        where = f"{source}: " if source is not None else f"{name}: "
        raise InvalidAudioError(
            f"{where}sample_rate must be a positive integer (Hz), got {sample_rate!r}", source
        )
    return int(sample_rate)


def _to_float32(arr: np.ndarray, name: str) -> np.ndarray:
    kind = arr.dtype.kind
    if kind == "f":
        return arr.astype(np.float32, copy=False)
    if kind == "i":
        full_scale = float(2 ** (arr.dtype.itemsize * 8 - 1))
        return (arr.astype(np.float64) / full_scale).astype(np.float32)
    if kind == "u":
        half = 2 ** (arr.dtype.itemsize * 8 - 1)
        return ((arr.astype(np.float64) - half) / half).astype(np.float32)
    raise InvalidAudioError(f"{name}: dtype {arr.dtype} is not real audio (expected float or integer PCM)")


def _validate(samples: np.ndarray, name: str, source: Path | None, silence_peak_dbfs: float | None) -> None:
    """samples: float32 [n, channels], n > 0."""
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(samples.size - np.count_nonzero(finite))
        first = int(np.argmin(finite.all(axis=1)))
        raise NonFiniteAudioError(
            f"{name}: {bad} NaN/Inf sample value(s), the first at sample {first}", source
        )
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


# ---------------------------------------------------------------------------------------------
# manifest scanning


@dataclass(frozen=True)
class SkippedFile:
    """A manifest entry that cannot be used, and why (the loader's error message)."""

    entry: ManifestEntry
    error: str  # the exception's class name, e.g. "SilentAudioError"
    reason: str  # its message, which names the file

    @property
    def path(self) -> Path:
        return self.entry.path


@dataclass
class ScanReport:
    """Outcome of ``scan_manifest``.

    usable: entries that decoded and validated, in manifest order.
    skipped: the others, each with the reason, in manifest order.
    durations_s: decoded duration in seconds per usable path (capped by ``max_duration_s``).
    """

    usable: list[ManifestEntry] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    durations_s: dict[Path, float] = field(default_factory=dict)

    @property
    def n_total(self) -> int:
        return len(self.usable) + len(self.skipped)

    @property
    def n_usable(self) -> int:
        return len(self.usable)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        """One line: how many entries are usable and how many were skipped, grouped by error type."""
        text = f"{self.n_usable} of {self.n_total} files usable, {self.n_skipped} skipped"
        if self.skipped:
            kinds: dict[str, int] = {}
            for item in self.skipped:
                kinds[item.error] = kinds.get(item.error, 0) + 1
            text += " (" + ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())) + ")"
        return text


def scan_manifest(
    entries: Sequence[ManifestEntry],
    sample_rate: int,
    *,
    max_duration_s: float | None = None,
    silence_peak_dbfs: float | None = SILENCE_PEAK_DBFS,
    workers: int = 1,
    ffmpeg_timeout_s: float = FFMPEG_TIMEOUT_S,
) -> ScanReport:
    """Decodes every entry once and sorts them into usable and skipped.

    One warning is logged per bad file (with the reason) and one summary line at the end. A
    missing ffmpeg is not a per-file problem: FFmpegMissingError propagates instead of skipping
    every MP3. ``max_duration_s`` limits each decode (a faster but partial check: a fault past
    that point, or a long silent intro, is judged on the excerpt only). ``workers`` > 1 decodes
    in a thread pool (libsndfile and ffmpeg run outside the GIL); results keep manifest order.
    """
    _check_sample_rate(sample_rate, None)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    def probe(entry: ManifestEntry) -> tuple[float | None, tuple[str, str] | None]:
        try:
            audio = load_audio(
                entry.path,
                sample_rate,
                max_duration_s=max_duration_s,
                silence_peak_dbfs=silence_peak_dbfs,
                ffmpeg_timeout_s=ffmpeg_timeout_s,
            )
        except FFmpegMissingError:
            raise
        except AudioError as exc:
            return None, (type(exc).__name__, str(exc))
        except Exception as exc:  # a scan must survive any per-file failure, expected or not
            return None, (type(exc).__name__, f"{entry.path}: {exc}")
        return audio.shape[0] / sample_rate, None

    if workers == 1:
        outcomes = [probe(entry) for entry in entries]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="csi-scan") as pool:
            outcomes = list(pool.map(probe, entries))

    report = ScanReport()
    for entry, (duration, failure) in zip(entries, outcomes):
        if failure is None:
            assert duration is not None
            report.usable.append(entry)
            report.durations_s[entry.path] = duration
        else:
            error, reason = failure
            logger.warning("skipping %s: [%s] %s", entry.path, error, reason)
            report.skipped.append(SkippedFile(entry, error, reason))
    if report.skipped:
        logger.warning("audio scan: %s", report.summary())
    else:
        logger.info("audio scan: %s", report.summary())
    return report
