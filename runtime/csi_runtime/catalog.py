"""Reference catalogs: audio files of known works → a ``ReferenceIndex`` of their window embeddings.

Sources:
- a CSV manifest ``path,work_id[,version_id][,more columns…]`` (relative paths are relative to the
  manifest; extra columns such as title or artist become each entry's metadata);
- a folder: each sub-folder is a work (its name is the work id) holding one or more recordings;
  audio files directly in the folder are works of their own (file stem = work id).

Each reference recording contributes the embeddings of its windows (a quarter of the model's
window apart by default), so a 20 s excerpt from anywhere in a broadcast matches the part of the
reference it comes from; the index ranks works by their best window. Windows come in several
lengths (``REFERENCE_WINDOW_SCALES`` of the model's window): a cover played at another tempo
holds in one query window the material of a longer or shorter stretch of the reference. Metadata
of each window: the entry's metadata plus path, version_id, the window's start in the recording,
its length and, when the model bundle has an impostor set, its impostor mean
(``csi_runtime.impostors.META_KEY``, for impostor-normalised scores).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from csi_runtime.embedder import Embedder
from csi_runtime.impostors import META_KEY as IMPOSTOR_META_KEY
from csi_runtime.index import ReferenceIndex

__all__ = [
    "AUDIO_EXTENSIONS",
    "REFERENCE_HOP_FRACTION",
    "REFERENCE_WINDOW_SCALES",
    "CatalogEntry",
    "add_recording",
    "add_to_index",
    "check_window_scales",
    "read_catalog",
]

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset(
    {
        ".wav",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".mp3",
        ".m4a",
        ".aac",
        ".aif",
        ".aiff",
        ".wma",
        ".webm",
        ".mp4",
    }
)


#: reference windows overlap more than stream windows: a broadcast excerpt starts anywhere, and its
#: windows score best against reference windows that start within half a reference hop of them
REFERENCE_HOP_FRACTION = 0.25

#: lengths of reference windows, as fractions of the model's window. Versions differ in tempo by
#: x0.75-1.3, so a query window holds the material of 0.75-1.3 model windows of the reference;
#: windows of 0.7 and 1.4 windows beside the model's own cover that range. On held-out rendered
#: works (csi_training.experiments.robustness) they raise the top-1 accuracy of degraded 20 s
#: excerpts from 0.667 to 0.700 and of 10 s excerpts from 0.358 to 0.508, for 3x the windows.
REFERENCE_WINDOW_SCALES = (1.0, 0.7, 1.4)


@dataclass(frozen=True)
class CatalogEntry:
    path: str
    work_id: str
    version_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


def _read_manifest(path: Path) -> list[CatalogEntry]:
    entries = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"path", "work_id"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: a catalog manifest needs a header with at least path,work_id")
        for lineno, row in enumerate(reader, 2):
            if not row.get("path") or not row.get("work_id"):
                raise ValueError(f"{path}:{lineno}: empty path or work_id")
            file = Path(row["path"])
            if not file.is_absolute():
                file = path.parent / file
            extra = {k: v for k, v in row.items() if k not in ("path", "work_id", "version_id") and v}
            entries.append(CatalogEntry(str(file), row["work_id"], row.get("version_id") or "", extra))
    return entries


def _scan_folder(root: Path) -> list[CatalogEntry]:
    entries = []
    for item in sorted(root.iterdir()):
        if item.is_dir():
            for file in sorted(item.rglob("*")):
                if file.is_file() and file.suffix.lower() in AUDIO_EXTENSIONS:
                    entries.append(CatalogEntry(str(file), item.name, file.stem))
        elif item.is_file() and item.suffix.lower() in AUDIO_EXTENSIONS:
            entries.append(CatalogEntry(str(item), item.stem, item.stem))
    return entries


def read_catalog(source: str | os.PathLike[str]) -> list[CatalogEntry]:
    """Entries of a catalog manifest (.csv) or folder; raises ValueError if none are found."""
    path = Path(source)
    if not path.exists():
        raise ValueError(f"catalog source {path} does not exist")
    entries = _scan_folder(path) if path.is_dir() else _read_manifest(path)
    if not entries:
        raise ValueError(
            f"no audio files found in {path} (extensions: {', '.join(sorted(AUDIO_EXTENSIONS))})"
        )
    return entries


def indexed_paths(index: ReferenceIndex) -> set[str]:
    """Paths of the recordings already in an index (from their windows' metadata)."""
    paths: set[str] = set()
    for _, meta in index.iter_metadata():
        if "path" in meta:
            paths.add(str(meta["path"]))
    return paths


def check_window_scales(window_scales: Sequence[float]) -> tuple[float, ...]:
    """The scales as floats; ValueError unless they are distinct positive numbers."""
    scales = tuple(float(x) for x in window_scales)
    if not scales or not all(math.isfinite(x) and x > 0 for x in scales) or len(set(scales)) != len(scales):
        raise ValueError(f"window_scales must be distinct positive numbers (got {window_scales!r})")
    return scales


def add_recording(
    embedder: Embedder,
    index: ReferenceIndex,
    work_id: str,
    audio: Any,
    sample_rate: int | None = None,
    metadata: dict[str, Any] | None = None,
    hop_s: float | None = None,
    window_scales: Sequence[float] = REFERENCE_WINDOW_SCALES,
    impostors: Any = "bundle",
) -> int:
    """Add the non-silent windows of one reference recording (a path/URL, or a waveform with its
    sample_rate) to ``index`` under ``work_id``; returns how many windows were added.

    hop_s: hop between reference windows (default: REFERENCE_HOP_FRACTION of the model's window).
    window_scales: window lengths as fractions of the model's window (REFERENCE_WINDOW_SCALES;
    ``(1.0,)`` for the model's window only). Each window's metadata: ``metadata`` plus its start
    in the recording (start_s) and its length (window_s), in seconds, and its impostor mean
    (``impostor_mean``) when ``impostors`` is an ``ImpostorSet`` ("bundle": the embedder's, if its
    bundle has one; None: none).
    """
    scales = check_window_scales(window_scales)
    if isinstance(impostors, str) and impostors == "bundle":
        impostors = embedder.impostors
    hop = hop_s if hop_s is not None else embedder.window_s * REFERENCE_HOP_FRACTION
    windows_s = [embedder.window_s * scale for scale in scales]
    added = 0
    for window_s, segments in zip(
        windows_s, embedder.embed_segments_multi(audio, sample_rate, windows_s, hop)
    ):
        keep = np.flatnonzero(~segments.silent)
        if len(keep):
            meta = [
                {
                    **(metadata or {}),
                    "start_s": round(float(segments.starts[i]), 3),
                    "window_s": round(window_s, 3),
                }
                for i in keep
            ]
            if impostors is not None:
                for m, mean in zip(meta, impostors.means(segments.vectors[keep])):
                    m[IMPOSTOR_META_KEY] = round(float(mean), 6)
            index.add(segments.vectors[keep], [work_id] * len(keep), meta)
            added += len(keep)
    return added


def add_to_index(
    embedder: Embedder,
    index: ReferenceIndex,
    entries: Iterable[CatalogEntry],
    progress: Callable[[int], None] | None = None,
    skip_paths: set[str] | None = None,
    hop_s: float | None = None,
    window_scales: Sequence[float] = REFERENCE_WINDOW_SCALES,
) -> tuple[int, list[tuple[str, str]]]:
    """Embed each entry's windows and add them to ``index`` (:func:`add_recording`).

    Returns (recordings added, [(path, reason)] of recordings skipped: unreadable, silent, too short,
    or already present in ``skip_paths``). One bad file never stops a catalog build.
    """
    from csi_runtime.audio import AudioError

    added, skipped = 0, []
    for entry in entries:
        try:
            if skip_paths is not None and entry.path in skip_paths:
                skipped.append((entry.path, "already in the index"))
                continue
            meta = {**entry.metadata, "path": entry.path, "version_id": entry.version_id}
            try:
                windows = add_recording(
                    embedder,
                    index,
                    entry.work_id,
                    entry.path,
                    metadata=meta,
                    hop_s=hop_s,
                    window_scales=window_scales,
                )
            except (AudioError, ValueError, OSError) as exc:
                skipped.append((entry.path, str(exc)))
                logger.warning("skipped %s: %s", entry.path, exc)
                continue
            if windows == 0:
                skipped.append((entry.path, "silent"))
                continue
            added += 1
        finally:
            if progress is not None:
                progress(1)
    return added, skipped
