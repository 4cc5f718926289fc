"""SHS100K: split lists and metadata published with TPPNet/CQTNet, plus audio the user downloaded.

Files (NovaFrost/SHS100K2, also copied into yzspku/TPPNet ``data/`` and CQTNet ``data/``)::

    SHS100K-TRAIN, SHS100K-VAL, SHS100K-TEST   one version per line: "<set_id>\\t<ver_id>"
    list                                       metadata, tab-separated, no header:
                                               set_id, ver_id, title, performer, url, status

Sources read: NovaFrost/SHS100K2 ``meta/README.md`` ("List contains the metadata of this dataset,
including the set_id, ver_id, title, performer, URL, status … status: Whether the track could be
downloaded by youtube-dl"; "SHS100K-TRAIN: only contains set_id and ver_id"), its ``SHS100K-TEST``
file (lines such as ``8110\\t0``), and third-party loaders that read ``list`` with
``sep="\\t", names=["set_id", "ver_id", "title", "performer", "url", "status"]``. The features
those repos ship are named ``<set_id>_<ver_id>.npy``, so audio is looked up by default as
``<audio_root>/<set_id>_<ver_id>.<ext>`` (configurable ``template``, several extensions tried).

The audio itself is not distributed and many YouTube links are dead, so users hold partial
copies: versions without audio are counted, logged once and returned in ``SHS100KSplit.missing``
rather than failing the load. ``work_id`` is the set_id, ``version_id`` is ``<set_id>_<ver_id>``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .manifest import ManifestEntry

logger = logging.getLogger(__name__)

SPLIT_FILES = {"train": "SHS100K-TRAIN", "val": "SHS100K-VAL", "test": "SHS100K-TEST"}
METADATA_FILE = "list"
METADATA_COLUMNS = ("set_id", "ver_id", "title", "performer", "url", "status")
DEFAULT_TEMPLATE = "{set_id}_{ver_id}"
DEFAULT_EXTENSIONS = (".mp3", ".m4a", ".webm", ".opus", ".ogg", ".wav", ".flac", ".aac", ".mp4")
_TRUE = frozenset({"true", "1", "yes", "y"})
_FALSE = frozenset({"false", "0", "no", "n"})


class SHS100KError(ValueError):
    """A split list or the metadata list is malformed; the message names the file and line."""


@dataclass(frozen=True)
class SHS100KRecord:
    """One row of the ``list`` metadata file. status: downloadable per the list (None: unknown)."""

    set_id: str
    ver_id: str
    title: str
    performer: str
    url: str
    status: bool | None


@dataclass(frozen=True)
class SHS100KSplit:
    """A split matched against local audio.

    entries: versions whose audio was found, in list order.
    missing: (set_id, ver_id) of listed versions without audio, in list order.
    """

    split_file: Path
    entries: tuple[ManifestEntry, ...]
    missing: tuple[tuple[str, str], ...]

    @property
    def n_listed(self) -> int:
        return len(self.entries) + len(self.missing)


def read_shs100k_split(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(set_id, ver_id) per line of an SHS100K split list, validated (integers, no duplicates)."""
    split_file = Path(path)
    pairs: list[tuple[str, str]] = []
    seen: dict[tuple[str, str], int] = {}
    for number, fields in _tsv_rows(split_file):
        if len(fields) != 2:
            raise SHS100KError(f"{split_file}, line {number}: expected '<set_id>\\t<ver_id>', got {fields!r}")
        key = (
            _int_field(split_file, number, "set_id", fields[0]),
            _int_field(split_file, number, "ver_id", fields[1]),
        )
        if key in seen:
            raise SHS100KError(
                f"{split_file}, line {number}: {key[0]}\\t{key[1]} already listed on line {seen[key]}"
            )
        seen[key] = number
        pairs.append(key)
    if not pairs:
        raise SHS100KError(f"{split_file}: empty split list")
    return pairs


def read_shs100k_metadata(path: str | os.PathLike[str]) -> dict[tuple[str, str], SHS100KRecord]:
    """The ``list`` metadata keyed by (set_id, ver_id); columns as in ``METADATA_COLUMNS``."""
    list_file = Path(path)
    records: dict[tuple[str, str], SHS100KRecord] = {}
    for number, fields in _tsv_rows(list_file):
        if len(fields) != len(METADATA_COLUMNS):
            raise SHS100KError(
                f"{list_file}, line {number}: {len(fields)} tab-separated fields, expected "
                f"{len(METADATA_COLUMNS)} ({', '.join(METADATA_COLUMNS)})"
            )
        set_id = _int_field(list_file, number, "set_id", fields[0])
        ver_id = _int_field(list_file, number, "ver_id", fields[1])
        status_text = fields[5].strip().lower()
        status = True if status_text in _TRUE else False if status_text in _FALSE else None
        key = (set_id, ver_id)
        if key in records:
            raise SHS100KError(f"{list_file}, line {number}: {set_id}\\t{ver_id} listed twice")
        records[key] = SHS100KRecord(set_id, ver_id, fields[2], fields[3], fields[4].strip(), status)
    return records


def load_shs100k(
    split_file: str | os.PathLike[str],
    audio_root: str | os.PathLike[str],
    *,
    template: str = DEFAULT_TEMPLATE,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
) -> SHS100KSplit:
    """Matches a split list against locally stored audio.

    split_file: SHS100K-TRAIN / -VAL / -TEST (or any list in that format).
    audio_root: folder holding the downloaded audio.
    template: path of a version's audio under audio_root, without extension; fields {set_id}
        and {ver_id} (e.g. "{set_id}/{ver_id}" for one folder per work).
    extensions: tried in order; the first existing file is used.
    """
    root = Path(audio_root).expanduser()
    if not root.is_dir():
        raise SHS100KError(f"SHS100K audio folder not found: {root}")
    if not extensions:
        raise ValueError("extensions must name at least one audio extension")
    try:
        template.format(set_id="0", ver_id="0")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"template {template!r} may only use the fields {{set_id}} and {{ver_id}} ({exc})"
        ) from None
    pairs = read_shs100k_split(split_file)
    entries: list[ManifestEntry] = []
    missing: list[tuple[str, str]] = []
    for set_id, ver_id in pairs:
        stem = root / template.format(set_id=set_id, ver_id=ver_id)
        found = next(
            (c for c in (stem.with_name(stem.name + ext) for ext in extensions) if c.is_file()),
            None,
        )
        if found is None:
            missing.append((set_id, ver_id))
        else:
            entries.append(ManifestEntry(found, set_id, f"{set_id}_{ver_id}"))
    split = SHS100KSplit(Path(split_file), tuple(entries), tuple(missing))
    if missing:
        example = root / template.format(set_id=missing[0][0], ver_id=missing[0][1])
        logger.warning(
            "SHS100K %s: audio found for %d of %d versions under %s; %d missing (e.g. %s{%s})",
            Path(split_file).name,
            len(entries),
            split.n_listed,
            root,
            len(missing),
            example,
            ",".join(extensions),
        )
    else:
        logger.info("SHS100K %s: audio found for all %d versions", Path(split_file).name, len(entries))
    return split


def _tsv_rows(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SHS100KError(f"SHS100K file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise SHS100KError(f"{path}: not UTF-8 text ({exc})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            rows.append((number, line.rstrip("\r\n").split("\t")))
    return rows


def _int_field(path: Path, line: int, name: str, value: str) -> str:
    """Validates a non-negative integer id and returns it canonical (no padding or spaces)."""
    text = value.strip()
    if not text.isdigit():
        raise SHS100KError(f"{path}, line {line}: {name} must be a non-negative integer, got {value!r}")
    return str(int(text))
