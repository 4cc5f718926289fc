"""Audio for training: the runtime's decoding and validation, plus manifest scans.

Decoding and validation live in :mod:`csi_runtime.audio` (file / URL → mono float32 at the model
rate through soundfile or ffmpeg and soxr; empty, NaN/Inf and silent audio raise the matching
:class:`AudioError`); they are re-exported here so that ``from csi_training.data import
load_audio, AudioError, …`` keeps working. This module adds ``scan_manifest``: it runs
``load_audio`` over a manifest and returns the usable entries plus the skipped files with their
reasons, so that one bad file among 100,000 never kills, nor silently poisons, a training run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from csi_runtime.audio import (
    FFMPEG_INSTALL_HINT,
    FFMPEG_TIMEOUT_S,
    MAX_DECODE_S,
    SILENCE_PEAK_DBFS,
    SOUNDFILE_EXTENSIONS,
    AudioDecodeError,
    AudioError,
    AudioTooLongError,
    EmptyAudioError,
    FFmpegMissingError,
    InvalidAudioError,
    NonFiniteAudioError,
    SilentAudioError,
    check_audio,
    check_sample_rate,
    load_audio,
    resample,
)

from .manifest import ManifestEntry

logger = logging.getLogger(__name__)

__all__ = [
    "FFMPEG_INSTALL_HINT",
    "FFMPEG_TIMEOUT_S",
    "MAX_DECODE_S",
    "SILENCE_PEAK_DBFS",
    "SOUNDFILE_EXTENSIONS",
    "AudioDecodeError",
    "AudioError",
    "AudioTooLongError",
    "EmptyAudioError",
    "FFmpegMissingError",
    "InvalidAudioError",
    "NonFiniteAudioError",
    "ScanReport",
    "SilentAudioError",
    "SkippedFile",
    "check_audio",
    "load_audio",
    "resample",
    "scan_manifest",
]


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
    check_sample_rate(sample_rate)
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
