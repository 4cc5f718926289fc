"""Covers80, the LabROSA cover-song set: 80 musical works, 2 performances each.

Layout of ``covers80.tgz`` from http://labrosa.ee.columbia.edu/projects/coversongs/covers80/
(32 kbps, 16 kHz mono MP3; the archive unpacks to ``coversongs/covers32k/``)::

    coversongs/covers32k/list1.list      the "A" version of each work, one per line
    coversongs/covers32k/list2.list      the "B" version of the same works, in the same order
    coversongs/covers32k/<Work_Dir>/<artist+Album+NN-Track>.mp3

Each list line is ``<Work_Dir>/<track>`` without extension, e.g.
``Abracadabra/steve_miller_band+Steve_Miller_Band_Live_+09-Abracadabra``. Sources read for this
layout: the covers80 page ("list1 is a list of the 'A' versions of the 80 songs, and list2 is
the 'B' versions of the same 80 songs, listed in the same order. There is no system behind
whether a version appears in list1 or list2."; it calls the files list1.txt / list2.txt, the
archive ships them as ``list1.list`` / ``list2.list``, both names are accepted here), acoss
``preprocess/covers80.py`` (``covers32k/list1.list``, ``"covers32k/%s.mp3" % line``) and the
MATLAB/Python scripts of ctralie's cover-song repos that read ``covers32k/list{1,2}.list``.

Two evaluation protocols appear in papers; record which one you report:

- leave-one-out over all 160 tracks (:func:`load_covers80`): every track queries the other 159;
- 80 queries (list1) against 80 references (list2) (:func:`load_covers80_queries_refs`).

``work_id`` is the work directory name, ``version_id`` the track name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .manifest import ManifestEntry

logger = logging.getLogger(__name__)

COVERS80_N_WORKS = 80
LIST_NAMES = (("list1.list", "list2.list"), ("list1.txt", "list2.txt"))
_SHOWN_MISSING = 10

OnMissing = Literal["raise", "skip"]


class Covers80Error(ValueError):
    """The Covers80 folder or its list files are not in the published layout, or audio is missing."""


@dataclass(frozen=True)
class Covers80:
    """Covers80 as listed: ``list1[i]`` and ``list2[i]`` are the two versions of work i.

    An entry is None where its audio file is missing (only with ``on_missing="skip"``).
    missing: the expected audio paths (without extension) that were not found.
    """

    root: Path
    list1: tuple[ManifestEntry | None, ...]
    list2: tuple[ManifestEntry | None, ...]
    missing: tuple[Path, ...]

    def leave_one_out(self) -> list[ManifestEntry]:
        """Every present track, list1 then list2 (160 when complete)."""
        return [e for e in (*self.list1, *self.list2) if e is not None]

    def queries_refs(self) -> tuple[list[ManifestEntry], list[ManifestEntry]]:
        """(queries = list1, references = list2), keeping only works whose two versions are present."""
        pairs = [(a, b) for a, b in zip(self.list1, self.list2) if a is not None and b is not None]
        if len(pairs) < len(self.list1):
            logger.warning(
                "Covers80 queries/refs: %d of %d works dropped (a version is missing)",
                len(self.list1) - len(pairs),
                len(self.list1),
            )
        return [a for a, _ in pairs], [b for _, b in pairs]


def find_covers80_dir(root: str | os.PathLike[str]) -> Path:
    """The ``covers32k`` folder, given it, ``coversongs/`` or the folder that holds ``coversongs/``."""
    base = Path(root).expanduser()
    for candidate in (base, base / "covers32k", base / "coversongs" / "covers32k"):
        if any((candidate / first).is_file() for first, _ in LIST_NAMES):
            return candidate.resolve()
    raise Covers80Error(
        f"no Covers80 list files under {base}: expected covers32k/list1.list and list2.list "
        "(unpack covers80.tgz from http://labrosa.ee.columbia.edu/projects/coversongs/covers80/ "
        "and pass the coversongs/ or covers32k/ folder)"
    )


def read_covers80(
    root: str | os.PathLike[str],
    *,
    extensions: Sequence[str] = (".mp3",),
    on_missing: OnMissing = "raise",
) -> Covers80:
    """Reads the two list files and locates every track's audio.

    extensions: audio file extensions tried in order (e.g. (".mp3", ".wav") after a conversion).
    on_missing: "raise" → Covers80Error naming the missing files; "skip" → one warning with
        the count, the entries become None and are listed in ``Covers80.missing``.
    """
    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    if not extensions:
        raise ValueError("extensions must name at least one audio extension, e.g. ('.mp3',)")
    folder = find_covers80_dir(root)
    list1_path, list2_path = _list_paths(folder)
    lines1 = _read_list(list1_path)
    lines2 = _read_list(list2_path)
    if len(lines1) != len(lines2):
        raise Covers80Error(
            f"{list1_path} has {len(lines1)} tracks but {list2_path} has {len(lines2)}; "
            "the two lists must pair the versions of the same works line by line"
        )
    for (line_a, work_a, _), (line_b, work_b, _) in zip(lines1, lines2):
        if work_a != work_b:
            raise Covers80Error(
                f"{list1_path}, line {line_a} ({work_a!r}) and {list2_path}, line {line_b} ({work_b!r}) "
                "name different works; the lists must be in the same work order"
            )
    if len(lines1) != COVERS80_N_WORKS:
        logger.warning(
            "%s lists %d works; the published Covers80 has %d", list1_path, len(lines1), COVERS80_N_WORKS
        )

    missing: list[Path] = []

    def locate(work: str, track: str) -> ManifestEntry | None:
        stem = folder / work / track
        for ext in extensions:
            candidate = stem.with_name(stem.name + ext)
            if candidate.is_file():
                return ManifestEntry(candidate, work, track)
        missing.append(stem)
        return None

    list1 = tuple(locate(work, track) for _, work, track in lines1)
    list2 = tuple(locate(work, track) for _, work, track in lines2)
    if missing:
        shown = "\n  ".join(str(p) for p in missing[:_SHOWN_MISSING])
        more = f"\n  … and {len(missing) - _SHOWN_MISSING} more" if len(missing) > _SHOWN_MISSING else ""
        message = (
            f"Covers80 under {folder}: {len(missing)} of {2 * len(lines1)} audio files are missing "
            f"(tried extensions {', '.join(extensions)}):\n  {shown}{more}"
        )
        if on_missing == "raise":
            raise Covers80Error(message)
        logger.warning("%s", message)
    return Covers80(folder, list1, list2, tuple(missing))


def load_covers80(
    root: str | os.PathLike[str],
    *,
    extensions: Sequence[str] = (".mp3",),
    on_missing: OnMissing = "raise",
) -> list[ManifestEntry]:
    """All Covers80 tracks for the leave-one-out protocol: list1 then list2 (160 entries)."""
    return read_covers80(root, extensions=extensions, on_missing=on_missing).leave_one_out()


def load_covers80_queries_refs(
    root: str | os.PathLike[str],
    *,
    extensions: Sequence[str] = (".mp3",),
    on_missing: OnMissing = "raise",
) -> tuple[list[ManifestEntry], list[ManifestEntry]]:
    """(80 queries from list1, 80 references from list2), query i and reference i the same work."""
    return read_covers80(root, extensions=extensions, on_missing=on_missing).queries_refs()


def _list_paths(folder: Path) -> tuple[Path, Path]:
    for first, second in LIST_NAMES:
        a, b = folder / first, folder / second
        if a.is_file() and b.is_file():
            return a, b
        if a.is_file():
            raise Covers80Error(f"{a} exists but {b} does not; Covers80 needs both list files")
    raise Covers80Error(f"{folder}: no list1/list2 files")


def _read_list(path: Path) -> list[tuple[int, str, str]]:
    """(line number, work dir, track name) per non-blank line of a Covers80 list file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise Covers80Error(f"{path}: not UTF-8 text ({exc})") from None
    rows: list[tuple[int, str, str]] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split("/")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise Covers80Error(f"{path}, line {number}: expected '<Work_Dir>/<track>', got {line!r}")
        work, track = parts
        if work in seen:
            raise Covers80Error(f"{path}, line {number}: work {work!r} already listed on line {seen[work]}")
        seen[work] = number
        rows.append((number, work, track))
    if not rows:
        raise Covers80Error(f"{path}: empty list file")
    return rows
