"""On-disk format of a reference index (``.csi`` file): versioned, checksummed, memory-mappable.

Layout (little-endian)::

    [0, 64)            preamble: b"CSIINDEX", uint32 format version, zero padding
    [64, footer)       sections, each starting on a 64-byte boundary (raw arrays or JSON)
    [footer, end-32)   footer: UTF-8 JSON describing the index and every section
                       ({"offset", "nbytes", "dtype", "shape", "crc32"})
    [end-32, end)      trailer: uint64 footer offset, uint64 footer length, uint32 footer crc32,
                       uint32 format version, b"CSIEND\\0\\0"

The footer sits at the end so a file is written in one sequential pass (section checksums are
known only once a section is written). A file cut short anywhere loses its trailer, so
truncation is always detected. Files are written to a temporary name in the same directory,
fsynced, then renamed over the target and the directory fsynced: a crash at any point leaves
either the old file or the new one, never a mix.

Versioning: ``FORMAT_VERSION`` is bumped only when a reader of the previous version would
misread a new file (a changed section layout or meaning); readers refuse newer versions. Footer
keys that only add information are optional and need no bump: readers ignore keys they do not
know, and a file without such a key loads with its default. ``model_id`` (the embedding model the
vectors come from, or null) is one: version-1 readers that predate it load new files correctly
and simply do not check the model; files that predate it load with ``model_id`` None.

This module knows nothing about works or search; ``csi_runtime.index`` builds on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from csi_runtime.atomic import atomic_open
from csi_runtime.errors import IndexFileError

MAGIC = b"CSIINDEX"
END_MAGIC = b"CSIEND\0\0"
FORMAT_VERSION = 1
PREAMBLE_BYTES = 64
ALIGN = 64
TRAILER = struct.Struct("<QQII8s")  # footer offset, footer length, footer crc32, version, end magic
CRC_CHUNK_BYTES = 64 << 20
MAX_FOOTER_BYTES = 1 << 30


@dataclass(frozen=True)
class SectionSpec:
    """Where one section lives in the file."""

    name: str
    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]
    crc32: int


def _bytes_of(arr: np.ndarray) -> memoryview:
    """A flat byte view of an array (empty arrays included)."""
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data


def _crc32_of(buffer: memoryview, crc: int = 0) -> int:
    for start in range(0, len(buffer), CRC_CHUNK_BYTES):
        crc = zlib.crc32(buffer[start : start + CRC_CHUNK_BYTES], crc)
    return crc


class _SectionWriter:
    """Appends aligned sections to an open file, tracking offsets and checksums."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self._pos = PREAMBLE_BYTES
        self.sections: dict[str, SectionSpec] = {}

    def _pad(self) -> None:
        pad = (-self._pos) % ALIGN
        if pad:
            self._fh.write(b"\0" * pad)
            self._pos += pad

    def write_array(
        self, name: str, dtype: np.dtype, shape: tuple[int, ...], chunks: Iterable[np.ndarray]
    ) -> None:
        """Writes an array given as consecutive C-ordered chunks (rows of the full array)."""
        self._pad()
        offset, crc, nbytes = self._pos, 0, 0
        for chunk in chunks:
            view = _bytes_of(np.ascontiguousarray(chunk, dtype=dtype))
            self._fh.write(view)
            crc = _crc32_of(view, crc)
            nbytes += len(view)
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes != expected:
            raise ValueError(f"section {name}: wrote {nbytes} bytes, shape {shape} needs {expected}")
        self._pos += nbytes
        self.sections[name] = SectionSpec(name, offset, nbytes, dtype.str, tuple(shape), crc)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.write_array(name, np.dtype(np.uint8), (len(data),), [np.frombuffer(data, np.uint8)])

    def finish(self, header: dict[str, Any]) -> None:
        self._pad()
        footer = dict(header)
        footer["sections"] = {
            s.name: {
                "offset": s.offset,
                "nbytes": s.nbytes,
                "dtype": s.dtype,
                "shape": list(s.shape),
                "crc32": s.crc32,
            }
            for s in self.sections.values()
        }
        blob = json.dumps(footer, sort_keys=True, allow_nan=False).encode()
        self._fh.write(blob)
        self._fh.write(TRAILER.pack(self._pos, len(blob), zlib.crc32(blob), FORMAT_VERSION, END_MAGIC))


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[_SectionWriter]:
    """Yields a section writer on a temporary file that replaces ``path`` only on success."""
    target = Path(path)
    if target.exists() and target.is_dir():
        raise IsADirectoryError(f"cannot save an index over a directory: {target}")
    with atomic_open(target, "wb") as fh:
        fh.write(MAGIC + struct.pack("<I", FORMAT_VERSION) + b"\0" * (PREAMBLE_BYTES - len(MAGIC) - 4))
        yield _SectionWriter(fh)


@dataclass
class IndexFile:
    """An opened index file: its footer and its sections as arrays (memory-mapped or loaded)."""

    path: Path
    header: dict[str, Any]
    sections: dict[str, SectionSpec]
    arrays: dict[str, np.ndarray]


def _fail(path: Path, why: str) -> IndexFileError:
    return IndexFileError(f"{path}: {why}")


def _parse_sections(path: Path, footer: dict[str, Any], footer_offset: int) -> dict[str, SectionSpec]:
    raw = footer.get("sections")
    if not isinstance(raw, dict):
        raise _fail(path, "footer has no section table")
    out: dict[str, SectionSpec] = {}
    for name, s in raw.items():
        try:
            spec = SectionSpec(
                name,
                int(s["offset"]),
                int(s["nbytes"]),
                str(s["dtype"]),
                tuple(int(x) for x in s["shape"]),
                int(s["crc32"]),
            )
            dtype = np.dtype(spec.dtype)
        except (KeyError, TypeError, ValueError) as exc:
            raise _fail(path, f"section {name!r} is malformed ({exc})") from None
        if dtype.hasobject or any(x < 0 for x in spec.shape):
            raise _fail(path, f"section {name!r} has an invalid dtype or shape")
        if int(np.prod(spec.shape, dtype=np.int64)) * dtype.itemsize != spec.nbytes:
            raise _fail(path, f"section {name!r}: shape {spec.shape} x {spec.dtype} != {spec.nbytes} bytes")
        if spec.offset < PREAMBLE_BYTES or spec.offset % ALIGN or spec.offset + spec.nbytes > footer_offset:
            raise _fail(path, f"section {name!r} lies outside the data area (file damaged?)")
        out[name] = spec
    return out


def read_footer(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, SectionSpec]]:
    """Reads and checks the preamble, trailer and footer. Raises IndexFileError on any damage."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(PREAMBLE_BYTES)
            if len(head) < len(MAGIC) + 4 or head[: len(MAGIC)] != MAGIC:
                raise _fail(p, "not a csi reference index (bad magic)")
            (version,) = struct.unpack_from("<I", head, len(MAGIC))
            if version > FORMAT_VERSION:
                raise _fail(
                    p,
                    f"format version {version} is newer than this csi supports ({FORMAT_VERSION}); "
                    "upgrade csi",
                )
            if version < 1:
                raise _fail(p, f"unknown format version {version}")
            if size < PREAMBLE_BYTES + TRAILER.size:
                raise _fail(p, "file is truncated")
            fh.seek(size - TRAILER.size)
            foff, flen, fcrc, tversion, end = TRAILER.unpack(fh.read(TRAILER.size))
            if end != END_MAGIC:
                raise _fail(p, "file is truncated or damaged (no end marker)")
            if tversion != version:
                raise _fail(p, "preamble and trailer disagree on the format version (file damaged)")
            if foff < PREAMBLE_BYTES or flen > MAX_FOOTER_BYTES or foff + flen != size - TRAILER.size:
                raise _fail(p, "footer location is inconsistent with the file size (file damaged)")
            fh.seek(foff)
            blob = fh.read(flen)
    except OSError as exc:
        raise IndexFileError(f"{p}: cannot read index file ({exc.strerror or exc})") from exc
    if zlib.crc32(blob) != fcrc:
        raise _fail(p, "footer checksum mismatch (file damaged)")
    try:
        footer = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(p, f"footer is not valid JSON ({exc})") from None
    if not isinstance(footer, dict) or footer.get("format") != "csi.reference_index":
        raise _fail(p, "footer does not describe a csi reference index")
    return footer, _parse_sections(p, footer, foff)


def open_index_file(
    path: str | os.PathLike[str], *, mmap: bool, verify: Iterable[str] | None = None
) -> IndexFile:
    """Opens an index file; ``verify`` names the sections whose checksums are checked (None: all)."""
    p = Path(path)
    footer, sections = read_footer(p)
    check = set(sections) if verify is None else set(verify)
    arrays: dict[str, np.ndarray] = {}
    try:
        with open(p, "rb") as fh:
            for name, spec in sections.items():
                dtype = np.dtype(spec.dtype)
                if spec.nbytes == 0:
                    arr = np.zeros(spec.shape, dtype)
                elif mmap:
                    arr = np.memmap(p, dtype=dtype, mode="r", offset=spec.offset, shape=spec.shape)
                else:
                    fh.seek(spec.offset)
                    arr = np.empty(spec.shape, dtype)
                    if fh.readinto(_bytes_of(arr)) != spec.nbytes:
                        raise _fail(p, f"section {name!r} is truncated")
                if name in check and _crc32_of(_bytes_of(arr)) != spec.crc32:
                    raise _fail(p, f"checksum mismatch in section {name!r} (file damaged)")
                arrays[name] = arr
    except OSError as exc:
        raise IndexFileError(f"{p}: cannot read index file ({exc.strerror or exc})") from exc
    return IndexFile(p, footer, sections, arrays)
