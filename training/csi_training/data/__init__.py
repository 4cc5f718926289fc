"""Manifests, real dataset layouts and audio decoding.

- ``manifest``: CSV manifests (``path,work_id[,version_id]``) → :class:`ManifestEntry`.
- ``audio``: manifest scans, and csi_runtime.audio's decoding (file → mono float32 at the model
  rate through soundfile / ffmpeg and soxr) and validation, re-exported.
- ``covers80``, ``shs100k``, ``datacos``: the published layouts of Covers80, SHS100K and Da-TACOS.
"""

from .audio import (
    SILENCE_PEAK_DBFS,
    AudioDecodeError,
    AudioError,
    AudioTooLongError,
    EmptyAudioError,
    FFmpegMissingError,
    InvalidAudioError,
    NonFiniteAudioError,
    ScanReport,
    SilentAudioError,
    SkippedFile,
    check_audio,
    load_audio,
    resample,
    scan_manifest,
)
from .covers80 import (
    Covers80,
    Covers80Error,
    load_covers80,
    load_covers80_queries_refs,
    read_covers80,
)
from .datacos import (
    DaTacosError,
    DaTacosItem,
    DaTacosSet,
    load_datacos,
    load_features,
    read_datacos_metadata,
    read_feature_file,
)
from .manifest import ManifestEntry, ManifestError, read_manifest, write_manifest
from .shs100k import (
    SHS100KError,
    SHS100KRecord,
    SHS100KSplit,
    load_shs100k,
    read_shs100k_metadata,
    read_shs100k_split,
)

__all__ = [
    "SILENCE_PEAK_DBFS",
    "AudioDecodeError",
    "AudioError",
    "AudioTooLongError",
    "Covers80",
    "Covers80Error",
    "DaTacosError",
    "DaTacosItem",
    "DaTacosSet",
    "EmptyAudioError",
    "FFmpegMissingError",
    "InvalidAudioError",
    "ManifestEntry",
    "ManifestError",
    "NonFiniteAudioError",
    "SHS100KError",
    "SHS100KRecord",
    "SHS100KSplit",
    "ScanReport",
    "SilentAudioError",
    "SkippedFile",
    "check_audio",
    "load_audio",
    "load_covers80",
    "load_covers80_queries_refs",
    "load_datacos",
    "load_features",
    "load_shs100k",
    "read_covers80",
    "read_datacos_metadata",
    "read_feature_file",
    "read_manifest",
    "read_shs100k_metadata",
    "read_shs100k_split",
    "resample",
    "scan_manifest",
    "write_manifest",
]
