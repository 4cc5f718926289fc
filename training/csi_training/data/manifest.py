"""CSV manifests: one row per audio file, naming the musical work it is a version of.

Format (UTF-8, a byte-order mark is tolerated)::

    path,work_id,version_id
    covers32k/Yesterday/beatles+Help+13-Yesterday.mp3,Yesterday,beatles+Help+13-Yesterday
    /data/shs/8110_0.mp3,8110,

- The first row is the header. ``path`` and ``work_id`` are required, ``version_id`` is optional;
  columns may come in any order. Any other column is an error (the message lists the allowed
  ones): a typo such as ``work`` must not silently drop a column.
- ``path`` is relative to the folder holding the manifest, or absolute. Entries hold it resolved.
- ``version_id`` defaults to the file stem when the column is absent or the cell is empty.
- Cells are stripped of surrounding whitespace; blank lines are skipped.
- Every path appears once; a duplicate (after resolution) is an error naming both lines.

Errors are :class:`ManifestError` (a ``ValueError``) naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from csi_runtime.atomic import atomic_write_text

REQUIRED_COLUMNS = ("path", "work_id")
OPTIONAL_COLUMNS = ("version_id",)
ALLOWED_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS


class ManifestError(ValueError):
    """A manifest file is malformed: missing column, empty cell, duplicate path, unknown column."""


@dataclass(frozen=True)
class ManifestEntry:
    """One audio file and the work it is a version of.

    path: the audio file, resolved to an absolute path.
    work_id: the musical work (clique) label; two entries are versions of each other iff equal.
    version_id: this version's id; defaults to ``path.stem``.
    """

    path: Path
    work_id: str
    version_id: str = field(default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).expanduser().resolve())
        if not isinstance(self.work_id, str) or not self.work_id.strip():
            raise ValueError(f"ManifestEntry for {self.path}: work_id must be a non-empty string")
        if not isinstance(self.version_id, str):
            raise ValueError(f"ManifestEntry for {self.path}: version_id must be a string")
        if not self.version_id:
            object.__setattr__(self, "version_id", self.path.stem)


def read_manifest(path: str | os.PathLike[str]) -> list[ManifestEntry]:
    """Reads a manifest CSV (see the module docstring) into entries, in file order."""
    manifest = Path(path)
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {manifest}") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{manifest}: not UTF-8 text ({exc})") from None
    base = manifest.resolve().parent
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = _read_header(manifest, reader)
        columns = {name: i for i, name in enumerate(header)}
        entries: list[ManifestEntry] = []
        first_line: dict[Path, int] = {}
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ManifestError(
                    f"{manifest}, line {line}: {len(row)} fields but the header has {len(header)} "
                    f"({','.join(header)})"
                )
            cells = {name: row[i].strip() for name, i in columns.items()}
            if not cells["path"]:
                raise ManifestError(f"{manifest}, line {line}: empty path")
            if not cells["work_id"]:
                raise ManifestError(f"{manifest}, line {line}: empty work_id for {cells['path']!r}")
            file_path = (base / Path(cells["path"]).expanduser()).resolve()
            if file_path in first_line:
                raise ManifestError(
                    f"{manifest}, line {line}: duplicate path {cells['path']!r} "
                    f"(already on line {first_line[file_path]})"
                )
            first_line[file_path] = line
            entries.append(ManifestEntry(file_path, cells["work_id"], cells.get("version_id", "")))
    except csv.Error as exc:
        raise ManifestError(f"{manifest}, line {reader.line_num}: malformed CSV ({exc})") from None
    return entries


def _read_header(manifest: Path, reader: Iterable[list[str]]) -> list[str]:
    for line, row in enumerate(reader, start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        header = [cell.strip() for cell in row]
        unknown = [name for name in header if name not in ALLOWED_COLUMNS]
        if unknown:
            raise ManifestError(
                f"{manifest}, line {line}: unknown column(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(ALLOWED_COLUMNS)} (the first row must be the header)"
            )
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise ManifestError(
                f"{manifest}, line {line}: column(s) repeated in the header: {', '.join(repeated)}"
            )
        missing = [name for name in REQUIRED_COLUMNS if name not in header]
        if missing:
            raise ManifestError(
                f"{manifest}, line {line}: missing required column(s) {', '.join(missing)} "
                f"(header: {','.join(header)})"
            )
        return header
    raise ManifestError(f"{manifest}: empty manifest (no header row 'path,work_id[,version_id]')")


def write_manifest(path: str | os.PathLike[str], entries: Iterable[ManifestEntry]) -> None:
    """Writes entries as a manifest CSV, atomically (temp file + fsync + rename).

    Paths under the manifest's folder are written relative to it (POSIX separators), others
    absolute, so a dataset folder holding its manifest can be moved as a whole.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    base = target.parent.resolve()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ALLOWED_COLUMNS)
    seen: set[Path] = set()
    for entry in entries:
        if entry.path in seen:
            raise ManifestError(f"cannot write {target}: duplicate path {entry.path}")
        seen.add(entry.path)
        writer.writerow((_relative_if_under(entry.path, base), entry.work_id, entry.version_id))
    _write_text_atomic(target, buffer.getvalue())


def _relative_if_under(file_path: Path, base: Path) -> str:
    try:
        return file_path.relative_to(base).as_posix()
    except ValueError:
        return str(file_path)


def _write_text_atomic(target: Path, text: str) -> None:
    if target.is_dir():
        raise IsADirectoryError(f"cannot write a manifest over a directory: {target}")
    atomic_write_text(target, text)
