"""CSV manifests: round trips, path handling, clear errors naming file and line, atomic writes."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest

from csi_training.data import ManifestEntry, ManifestError, read_manifest, write_manifest
from csi_training.data import manifest as manifest_module

# Names that stress CSV quoting and path handling.
AWKWARD_NAMES = ["a,b.wav", 'quote"d.mp3', "space name.flac", "ünïcødé ♫.ogg", "x.y.z.wav", "-dash.mp3"]


def _random_entries(rng: np.random.Generator, inside: Path, outside: Path, n: int) -> list[ManifestEntry]:
    entries = []
    for i in range(n):
        folder = inside / f"w{rng.integers(0, 5)}" if rng.random() < 0.7 else outside / "elsewhere"
        name = AWKWARD_NAMES[i % len(AWKWARD_NAMES)] if rng.random() < 0.5 else f"track_{i}.wav"
        name = f"{i}_{name}"
        version = "" if rng.random() < 0.4 else f"v,{i}"
        entries.append(ManifestEntry(folder / name, f'work {rng.integers(0, 7)}, "x"', version))
    return entries


@pytest.mark.parametrize("n", [0, 1, 7, 60])
def test_round_trip_random_entries(tmp_path: Path, rng: np.random.Generator, n: int) -> None:
    inside = tmp_path / "data"
    entries = _random_entries(rng, inside, tmp_path / "other", n)
    target = inside / "manifest.csv"
    write_manifest(target, entries)
    assert read_manifest(target) == entries
    rows = list(csv.reader(io.StringIO(target.read_text(encoding="utf-8"), newline="")))
    assert rows[0] == ["path", "work_id", "version_id"]
    assert len(rows) == n + 1
    # Files under the manifest folder are written relative (POSIX), others absolute.
    for entry, (written, work_id, version_id) in zip(entries, rows[1:]):
        if inside in entry.path.parents:
            assert written == entry.path.relative_to(inside).as_posix()
        else:
            assert written == str(entry.path)
        assert (work_id, version_id) == (entry.work_id, entry.version_id)


def test_relative_manifest_survives_moving_the_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    entries = [ManifestEntry(data / "w1" / "a.wav", "w1"), ManifestEntry(data / "w2" / "b.mp3", "w2", "B")]
    write_manifest(data / "m.csv", entries)
    moved = tmp_path / "moved"
    os.rename(data, moved)
    back = read_manifest(moved / "m.csv")
    assert [e.path for e in back] == [moved / "w1" / "a.wav", moved / "w2" / "b.mp3"]
    assert [(e.work_id, e.version_id) for e in back] == [("w1", "a"), ("w2", "B")]


def test_version_id_defaults_to_stem_and_columns_may_be_reordered(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text("work_id,path\nW1,songs/one.live.mp3\nW2,/abs/two.wav\n", encoding="utf-8")
    entries = read_manifest(m)
    assert entries == [
        ManifestEntry(tmp_path / "songs" / "one.live.mp3", "W1", "one.live"),
        ManifestEntry(Path("/abs/two.wav"), "W2", "two"),
    ]
    m.write_text("path,version_id,work_id\n a.wav , ,  W \n\n b.wav,vb,W\n", encoding="utf-8")
    entries = read_manifest(m)
    assert [(e.path.name, e.work_id, e.version_id) for e in entries] == [
        ("a.wav", "W", "a"),
        ("b.wav", "W", "vb"),
    ]


def test_byte_order_mark_and_crlf_are_tolerated(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_bytes("\ufeffpath,work_id\r\nx.wav,1\r\n".encode())
    assert read_manifest(m) == [ManifestEntry(tmp_path / "x.wav", "1")]


def test_header_only_is_an_empty_manifest(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text("path,work_id,version_id\n", encoding="utf-8")
    assert read_manifest(m) == []


def test_paths_are_resolved(tmp_path: Path) -> None:
    m = tmp_path / "sub" / "m.csv"
    m.parent.mkdir()
    m.write_text("path,work_id\n../a/./b/../c.wav,w\n", encoding="utf-8")
    (entry,) = read_manifest(m)
    assert entry.path == (tmp_path / "a" / "c.wav").resolve()
    assert entry.path.is_absolute()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("path\nx.wav\n", ["line 1", "missing required column", "work_id"]),
        ("work_id,version_id\nw,v\n", ["line 1", "missing required column", "path"]),
        ("path,work_id,artist\nx.wav,w,a\n", ["line 1", "unknown column", "'artist'", "allowed"]),
        ("path,work_id,path\nx.wav,w,y.wav\n", ["line 1", "repeated", "path"]),
        ("path,work_id\nx.wav,w\ny.wav, \n", ["line 3", "empty work_id", "y.wav"]),
        ("path,work_id\n,w\n", ["line 2", "empty path"]),
        ("path,work_id\nx.wav,w,extra\n", ["line 2", "3 fields", "header has 2"]),
        ("path,work_id\nx.wav\n", ["line 2", "1 fields", "header has 2"]),
        ("path,work_id\nx.wav,w\n\nsub/../x.wav,w2\n", ["line 4", "duplicate path", "line 2"]),
        ("", ["empty manifest"]),
        ("\n\n", ["empty manifest"]),
    ],
)
def test_errors_name_file_line_and_problem(tmp_path: Path, text: str, expected: list[str]) -> None:
    m = tmp_path / "bad_manifest.csv"
    m.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        read_manifest(m)
    message = str(info.value)
    assert "bad_manifest.csv" in message
    for part in expected:
        assert part in message, (part, message)


def test_missing_and_non_utf8_manifests(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"manifest not found: .*nope\.csv"):
        read_manifest(tmp_path / "nope.csv")
    m = tmp_path / "latin1.csv"
    m.write_bytes("path,work_id\ncaf\xe9.wav,w\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"latin1\.csv: not UTF-8"):
        read_manifest(m)


def test_manifest_entry_validation() -> None:
    with pytest.raises(ValueError, match="work_id"):
        ManifestEntry(Path("/a.wav"), "  ")
    entry = ManifestEntry("/x/y/song.mp3", "w")  # type: ignore[arg-type]
    assert entry.path == Path("/x/y/song.mp3") and entry.version_id == "song"
    with pytest.raises(AttributeError):
        entry.work_id = "other"  # type: ignore[misc]
    assert hash(entry) == hash(ManifestEntry(Path("/x/y/song.mp3"), "w", "song"))


def test_write_refuses_duplicates_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "m.csv"
    good = [ManifestEntry(tmp_path / "a.wav", "w")]
    write_manifest(target, good)
    before = target.read_bytes()
    dup = [ManifestEntry(tmp_path / "b.wav", "w"), ManifestEntry(tmp_path / "b.wav", "w2")]
    with pytest.raises(ManifestError, match=r"duplicate path .*b\.wav"):
        write_manifest(target, dup)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


def test_write_is_atomic_when_the_rename_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "m.csv"
    write_manifest(target, [ManifestEntry(tmp_path / "a.wav", "w")])
    before = target.read_bytes()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(manifest_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        write_manifest(target, [ManifestEntry(tmp_path / "b.wav", "w")])
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]  # temp file removed


def test_write_creates_folders_and_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "m.csv"
    write_manifest(target, [ManifestEntry(tmp_path / "a.wav", "w")])
    write_manifest(target, [ManifestEntry(tmp_path / "b.wav", "w")])
    assert [e.path.name for e in read_manifest(target)] == ["b.wav"]
    with pytest.raises(IsADirectoryError):
        write_manifest(tmp_path / "new", [])
