"""Covers80, SHS100K and Da-TACOS loaders on tiny fixtures built in tmp_path in the published layouts."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from csi_training.data import (
    Covers80Error,
    DaTacosError,
    ManifestEntry,
    SHS100KError,
    load_audio,
    load_covers80,
    load_covers80_queries_refs,
    load_datacos,
    load_features,
    load_shs100k,
    read_covers80,
    read_datacos_metadata,
    read_feature_file,
    read_manifest,
    read_shs100k_metadata,
    read_shs100k_split,
    scan_manifest,
    write_manifest,
)
from csi_training.data.datacos import FRAME_RATE_HZ, DaTacosItem

HAVE_FFMPEG = shutil.which("ffmpeg") is not None
needs_ffmpeg = pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg is not installed")

# ---------------------------------------------------------------------------------------------
# Covers80: coversongs/covers32k/{list1.list,list2.list,<Work>/<artist+Album+NN-Work>.mp3}

WORK_NAMES = [
    "Abracadabra",
    "A_Whiter_Shade_Of_Pale",
    "Summertime_Blues",
    "Gold_Dust_Woman",
    "Ive_Been_Loving_You_Too_Long",
    "Lodi",
    "Tomorrow_Never_Knows",
    "Wish_You_Were_Here",
]
ARTISTS = ["steve_miller_band", "sugar_ray", "annie_lennox", "tori_amos", "beatles", "procol_harum"]


def _tiny_mp3(path: Path, freq: float) -> None:
    """0.4 s, 16 kHz mono, 32 kbps: the Covers80 encoding."""
    source = ["-f", "lavfi", "-i", f"sine=frequency={freq}:duration=0.4"]
    encoding = ["-ar", "16000", "-ac", "1", "-b:a", "32k"]
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *source, *encoding, str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def mp3_templates(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny MP3s copied into every Covers80 fixture (random bytes when ffmpeg is absent)."""
    folder = tmp_path_factory.mktemp("mp3")
    templates = [folder / "a.mp3", folder / "b.mp3"]
    for template, freq in zip(templates, (330.0, 440.0)):
        if HAVE_FFMPEG:
            _tiny_mp3(template, freq)
        else:
            template.write_bytes(b"ID3" + bytes(64))
    return templates


def make_covers80(
    base: Path, rng: np.random.Generator, templates: list[Path], n_works: int, list_ext: str = ".list"
) -> Path:
    """Builds <base>/coversongs/covers32k like covers80.tgz; returns the covers32k folder."""
    folder = base / "coversongs" / "covers32k"
    folder.mkdir(parents=True)
    works = [str(w) for w in rng.choice(WORK_NAMES, n_works, replace=False)]
    lines1: list[str] = []
    lines2: list[str] = []
    for work in works:
        for which, lines in enumerate((lines1, lines2)):
            artist = ARTISTS[int(rng.integers(len(ARTISTS)))]
            track = f"{artist}+{artist.title()}_Album_{which}+{int(rng.integers(1, 15)):02d}-{work}"
            (folder / work).mkdir(exist_ok=True)
            audio = folder / work / f"{track}.mp3"
            shutil.copyfile(templates[which], audio)
            lines.append(f"{work}/{track}")
    (folder / f"list1{list_ext}").write_text("\n".join(lines1) + "\n", encoding="utf-8")
    (folder / f"list2{list_ext}").write_text("\n".join(lines2) + "\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("level", ["parent", "coversongs", "covers32k"])
def test_covers80_both_protocols(
    tmp_path: Path, rng: np.random.Generator, mp3_templates: list[Path], level: str
) -> None:
    n_works = int(rng.integers(3, 7))
    folder = make_covers80(tmp_path, rng, mp3_templates, n_works)
    root = {"parent": tmp_path, "coversongs": folder.parent, "covers32k": folder}[level]
    lines1 = (folder / "list1.list").read_text().split()
    lines2 = (folder / "list2.list").read_text().split()

    everything = load_covers80(root)
    assert len(everything) == 2 * n_works
    assert [f"{e.work_id}/{e.version_id}" for e in everything] == lines1 + lines2
    for entry in everything:
        assert entry.path == folder / entry.work_id / f"{entry.version_id}.mp3"
        assert entry.path.is_file()

    queries, refs = load_covers80_queries_refs(root)
    assert [f"{e.work_id}/{e.version_id}" for e in queries] == lines1
    assert [f"{e.work_id}/{e.version_id}" for e in refs] == lines2
    assert [q.work_id for q in queries] == [r.work_id for r in refs]


def test_covers80_txt_list_names_and_other_extensions(
    tmp_path: Path, rng: np.random.Generator, mp3_templates: list[Path]
) -> None:
    folder = make_covers80(tmp_path, rng, mp3_templates, 3, list_ext=".txt")
    for mp3 in folder.glob("*/*.mp3"):
        mp3.rename(mp3.with_suffix(".wav"))
    with pytest.raises(Covers80Error, match="6 of 6 audio files are missing"):
        load_covers80(tmp_path)
    entries = load_covers80(tmp_path, extensions=(".mp3", ".wav"))
    assert len(entries) == 6 and all(e.path.suffix == ".wav" for e in entries)


def test_covers80_missing_audio(
    tmp_path: Path, rng: np.random.Generator, mp3_templates: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    folder = make_covers80(tmp_path, rng, mp3_templates, 4)
    lines2 = (folder / "list2.list").read_text().split()
    gone = lines2[int(rng.integers(len(lines2)))]
    (folder / f"{gone}.mp3").unlink()
    with pytest.raises(Covers80Error) as info:
        load_covers80(tmp_path)
    assert "1 of 8 audio files are missing" in str(info.value) and gone in str(info.value)

    with caplog.at_level(logging.WARNING):
        data = read_covers80(tmp_path, on_missing="skip")
    assert data.missing == (folder / gone,)
    assert any(gone in r.getMessage() for r in caplog.records)
    assert len(data.leave_one_out()) == 7
    queries, refs = data.queries_refs()
    assert len(queries) == len(refs) == 3  # the incomplete pair is dropped
    assert gone.split("/")[0] not in {q.work_id for q in queries}


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda l1, l2: (l1, l2[:-1]), ["has 4 tracks", "has 3"]),
        (lambda l1, l2: (l1, [l2[1], l2[0], *l2[2:]]), ["line 1", "name different works"]),
        (
            lambda l1, l2: (l1, [*l2[:2], "no_slash_here", *l2[3:]]),
            ["list2.list, line 3", "<Work_Dir>/<track>"],
        ),
        (lambda l1, l2: ([l1[0], l1[0], *l1[2:]], l2), ["list1.list, line 2", "already listed on line 1"]),
        (lambda l1, l2: ([], l2), ["list1.list: empty list file"]),
    ],
)
def test_covers80_malformed_lists(
    tmp_path: Path, rng: np.random.Generator, mp3_templates: list[Path], mutate: object, expected: list[str]
) -> None:
    folder = make_covers80(tmp_path, rng, mp3_templates, 4)
    l1 = (folder / "list1.list").read_text().split()
    l2 = (folder / "list2.list").read_text().split()
    new1, new2 = mutate(l1, l2)  # type: ignore[operator]
    (folder / "list1.list").write_text("\n".join(new1) + "\n")
    (folder / "list2.list").write_text("\n".join(new2) + "\n")
    with pytest.raises(Covers80Error) as info:
        load_covers80(folder)
    for part in expected:
        assert part in str(info.value), (part, str(info.value))


def test_covers80_not_found(tmp_path: Path, rng: np.random.Generator, mp3_templates: list[Path]) -> None:
    with pytest.raises(Covers80Error, match=r"no Covers80 list files under .*covers80\.tgz"):
        load_covers80(tmp_path)
    folder = make_covers80(tmp_path, rng, mp3_templates, 2)
    (folder / "list2.list").unlink()
    with pytest.raises(Covers80Error, match=r"list1\.list exists but .*list2\.list does not"):
        load_covers80(tmp_path)


@needs_ffmpeg
def test_covers80_end_to_end_manifest_and_scan(
    tmp_path: Path, rng: np.random.Generator, mp3_templates: list[Path]
) -> None:
    folder = make_covers80(tmp_path / "ds", rng, mp3_templates, 3)
    entries = load_covers80(tmp_path / "ds")
    # Damage one file: the scan must skip it, name it, and keep the rest.
    victim = entries[int(rng.integers(len(entries)))]
    victim.path.write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    manifest = folder.parent / "covers80.csv"
    write_manifest(manifest, entries)
    assert read_manifest(manifest) == entries
    report = scan_manifest(read_manifest(manifest), 16000, workers=2)
    assert [s.entry for s in report.skipped] == [victim]
    assert victim.path.name in report.skipped[0].reason
    assert report.usable == [e for e in entries if e != victim]
    audio = load_audio(report.usable[0].path, 16000)
    assert abs(len(audio) - 0.4 * 16000) <= 1152  # 0.4 s, give or take an MP3 frame


# ---------------------------------------------------------------------------------------------
# SHS100K: SHS100K-{TRAIN,VAL,TEST} ("<set_id>\t<ver_id>") + list (6 tab-separated columns)


def make_shs100k(
    base: Path, rng: np.random.Generator
) -> tuple[Path, Path, list[tuple[str, str]], set[tuple[str, str]]]:
    meta = base / "meta"
    audio = base / "audio"
    meta.mkdir(parents=True)
    audio.mkdir()
    pairs = []
    for set_id in sorted(rng.choice(10000, 6, replace=False).tolist()):
        for ver_id in sorted(rng.choice(12, int(rng.integers(2, 5)), replace=False).tolist()):
            pairs.append((str(set_id), str(ver_id)))
    (meta / "SHS100K-TEST").write_text("".join(f"{s}\t{v}\n" for s, v in pairs), encoding="utf-8")
    rows = [
        f"{s}\t{v}\tSong {s}\tPerformer {v}\thttps://www.youtube.com/watch?v=x{s}{v}\t{rng.random() < 0.7}\n"
        for s, v in pairs
    ]
    (meta / "list").write_text("".join(rows), encoding="utf-8")
    present = set()
    for s, v in pairs:
        if rng.random() < 0.6:
            ext = str(rng.choice([".mp3", ".m4a", ".webm", ".wav"]))
            (audio / f"{s}_{v}{ext}").write_bytes(b"x")
            present.add((s, v))
    return meta, audio, pairs, present


def test_shs100k_split_against_partial_audio(
    tmp_path: Path, rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    meta, audio, pairs, present = make_shs100k(tmp_path, rng)
    assert read_shs100k_split(meta / "SHS100K-TEST") == pairs
    with caplog.at_level(logging.WARNING):
        split = load_shs100k(meta / "SHS100K-TEST", audio)
    assert split.n_listed == len(pairs)
    assert [(e.work_id, e.version_id) for e in split.entries] == [
        (s, f"{s}_{v}") for s, v in pairs if (s, v) in present
    ]
    for entry in split.entries:
        assert entry.path.parent == audio.resolve() and entry.path.stem == entry.version_id
    assert list(split.missing) == [p for p in pairs if p not in present]
    if split.missing:
        assert any(f"{len(split.missing)} missing" in r.getMessage() for r in caplog.records)


def test_shs100k_template_and_extension_order(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "SHS100K-VAL").write_text("12\t0\n12\t3\n40\t1\n", encoding="utf-8")
    audio = tmp_path / "audio"
    for rel in ("12/0.m4a", "12/0.mp3", "12/3.flac", "40/1.opus"):
        (audio / rel).parent.mkdir(parents=True, exist_ok=True)
        (audio / rel).write_bytes(b"x")
    split = load_shs100k(meta / "SHS100K-VAL", audio, template="{set_id}/{ver_id}")
    assert [e.path.relative_to(audio.resolve()).as_posix() for e in split.entries] == [
        "12/0.mp3",
        "12/3.flac",
        "40/1.opus",
    ]
    split = load_shs100k(meta / "SHS100K-VAL", audio, template="{set_id}/{ver_id}", extensions=(".m4a",))
    assert [e.version_id for e in split.entries] == ["12_0"] and split.missing == (("12", "3"), ("40", "1"))
    with pytest.raises(ValueError, match="template"):
        load_shs100k(meta / "SHS100K-VAL", audio, template="{work}/{ver_id}")
    with pytest.raises(SHS100KError, match="audio folder not found"):
        load_shs100k(meta / "SHS100K-VAL", tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1\t0\n2\tx\n", ["line 2", "ver_id must be a non-negative integer"]),
        ("1\t0\n\n1\t0\n", ["line 3", "already listed on line 1"]),
        ("1 0\n", ["line 1", "expected '<set_id>\\t<ver_id>'"]),
        ("1\t0\tSong\n", ["line 1"]),
        ("\n", ["empty split list"]),
    ],
)
def test_shs100k_malformed_split(tmp_path: Path, text: str, expected: list[str]) -> None:
    split = tmp_path / "SHS100K-TRAIN"
    split.write_text(text, encoding="utf-8")
    with pytest.raises(SHS100KError) as info:
        read_shs100k_split(split)
    assert "SHS100K-TRAIN" in str(info.value)
    for part in expected:
        assert part in str(info.value), (part, str(info.value))
    with pytest.raises(SHS100KError, match="not found"):
        read_shs100k_split(tmp_path / "SHS100K-NOPE")


def test_shs100k_metadata(tmp_path: Path, rng: np.random.Generator) -> None:
    meta, _, pairs, _ = make_shs100k(tmp_path, rng)
    records = read_shs100k_metadata(meta / "list")
    assert list(records) == pairs
    s, v = pairs[0]
    record = records[(s, v)]
    assert (record.title, record.performer, record.url) == (
        f"Song {s}",
        f"Performer {v}",
        f"https://www.youtube.com/watch?v=x{s}{v}",
    )
    assert record.status in (True, False)
    (meta / "list").write_text(
        "5\t0\tTitle\tArtist\thttp://u\tmaybe\n5\t1\tTitle\tonly four\n", encoding="utf-8"
    )
    with pytest.raises(SHS100KError, match=r"list, line 2: 4 tab-separated fields, expected 6"):
        read_shs100k_metadata(meta / "list")
    (meta / "list").write_text("5\t0\tTitle\tArtist\thttp://u\tmaybe\n", encoding="utf-8")
    assert read_shs100k_metadata(meta / "list")[("5", "0")].status is None


# ---------------------------------------------------------------------------------------------
# Da-TACOS: da-tacos_metadata/*.json + da-tacos_<subset>_subset_<feature>/<W>_<f>/<P>_<f>.h5


def write_deepdish_like(path: Path, arrays: dict[str, np.ndarray], label: str, track_id: str) -> None:
    """An .h5 laid out as deepdish.io.save writes it via PyTables: arrays as root datasets (zlib +
    shuffle above 300 values), strings as root attributes, PyTables' CLASS/VERSION attributes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh.attrs["CLASS"] = np.bytes_("GROUP")
        fh.attrs["PYTABLES_FORMAT_VERSION"] = np.bytes_("2.1")
        fh.attrs["DEEPDISH_IO_VERSION"] = np.int64(12)
        fh.attrs["label"] = np.bytes_(label)
        fh.attrs["track_id"] = np.bytes_(track_id)
        for key, value in arrays.items():
            if value.size > 300:
                ds = fh.create_dataset(
                    key, data=value, chunks=True, compression="gzip", compression_opts=9, shuffle=True
                )
                ds.attrs["CLASS"] = np.bytes_("CARRAY")
            else:
                ds = fh.create_dataset(key, data=value)
                ds.attrs["CLASS"] = np.bytes_("ARRAY")
            ds.attrs["VERSION"] = np.bytes_("2.4")
        key_group = fh.create_group("key_extractor")
        key_group.attrs["key"] = np.bytes_("F")
        key_group.attrs["scale"] = np.bytes_("major")


def make_datacos(
    base: Path, rng: np.random.Generator, subset: str = "benchmark"
) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """Metadata for a few works; hpcp/crema/cens/mfcc per-feature files for most performances,
    a single file for one of them, nothing for another. Returns the arrays written per (W, P)."""
    metadata: dict[str, dict[str, dict[str, object]]] = {}
    written: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    perf_ids = iter(rng.choice(900000, 40, replace=False).tolist())
    for work_number in rng.choice(200000, 4, replace=False).tolist():
        work_id = f"W_{work_number}"
        metadata[work_id] = {}
        for _ in range(int(rng.integers(1, 4))):
            perf_id = f"P_{next(perf_ids)}"
            metadata[work_id][perf_id] = {
                "work_title": f"Work {work_number}",
                "work_artist": "Someone",
                "perf_title": f"Perf {perf_id}",
                "perf_artist": f"Artist {perf_id}",
                "release_year": "1961",
                "work_id": work_id,
                "perf_id": perf_id,
                "instrumental": "No",
            }
    (base / "da-tacos_metadata").mkdir(parents=True)
    with open(
        base / "da-tacos_metadata" / f"da-tacos_{subset}_subset_metadata.json", "w", encoding="utf-8"
    ) as fh:
        json.dump(metadata, fh)
    performances = [(w, p) for w, ps in metadata.items() for p in ps]
    single, absent = performances[0], performances[1]
    for work_id, perf_id in performances:
        if (work_id, perf_id) == absent:
            continue
        n_frames = int(rng.integers(1, 400))
        arrays: dict[str, np.ndarray] = {
            "hpcp": rng.random((n_frames, 12)),
            "crema": rng.random((n_frames, 12)).astype(np.float32),
            "chroma_cens": rng.random((n_frames, 12)),
            "mfcc_htk": rng.normal(size=(13, n_frames)).astype(np.float32),
        }
        written[(work_id, perf_id)] = arrays
        if (work_id, perf_id) == single:
            path = base / f"da-tacos_{subset}_subset_single_files" / work_id / f"{perf_id}.h5"
            write_deepdish_like(path, arrays, work_id, perf_id)
            continue
        for feature, key in (
            ("hpcp", "hpcp"),
            ("crema", "crema"),
            ("cens", "chroma_cens"),
            ("mfcc", "mfcc_htk"),
        ):
            path = (
                base
                / f"da-tacos_{subset}_subset_{feature}"
                / f"{work_id}_{feature}"
                / f"{perf_id}_{feature}.h5"
            )
            write_deepdish_like(path, {key: arrays[key]}, work_id, perf_id)
    return written


@pytest.mark.parametrize("subset", ["benchmark", "coveranalysis"])
def test_datacos_items_and_features(tmp_path: Path, rng: np.random.Generator, subset: str) -> None:
    written = make_datacos(tmp_path, rng, subset)
    metadata = read_datacos_metadata(tmp_path, subset)
    listed = [(w, p) for w, ps in metadata.items() for p in ps]

    everything = load_datacos(tmp_path, subset, feature=None)
    assert [(i.work_id, i.version_id) for i in everything.items] == listed
    assert everything.items[0].perf_artist == f"Artist {listed[0][1]}"

    for feature, key in (("hpcp", "hpcp"), ("crema", "crema"), ("cens", "chroma_cens")):
        data = load_datacos(tmp_path, subset, feature=feature)
        assert [(i.work_id, i.version_id) for i in data.items] == [k for k in listed if k in written]
        assert [(i.work_id, i.version_id) for i in data.missing] == [k for k in listed if k not in written]
        for item in data.items:
            frames = load_features(item, feature)
            expected = written[(item.work_id, item.version_id)][key]
            assert frames.dtype == np.float32 and frames.shape == expected.shape
            np.testing.assert_array_equal(frames, expected.astype(np.float32))
    for item in load_datacos(tmp_path, subset, feature="mfcc").items:
        mfcc = load_features(item, "mfcc")
        np.testing.assert_array_equal(mfcc, written[(item.work_id, item.version_id)]["mfcc_htk"].T)
        assert mfcc.shape[1] == 13
    assert FRAME_RATE_HZ == 44100 / 512


def test_datacos_paths_follow_the_published_names(tmp_path: Path) -> None:
    item = DaTacosItem(tmp_path, "benchmark", "W_163992", "P_547131")
    assert (
        item.feature_file("hpcp")
        == tmp_path / "da-tacos_benchmark_subset_hpcp" / "W_163992_hpcp" / "P_547131_hpcp.h5"
    )
    assert (
        item.single_file() == tmp_path / "da-tacos_benchmark_subset_single_files" / "W_163992" / "P_547131.h5"
    )


def test_datacos_missing_features(
    tmp_path: Path, rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    written = make_datacos(tmp_path, rng)
    with caplog.at_level(logging.WARNING):
        data = load_datacos(tmp_path, feature="hpcp")
    assert len(data.missing) == 1 and "no 'hpcp' file for 1 of" in caplog.text
    with pytest.raises(DaTacosError, match=r"no 'hpcp' file for 1 of .*_hpcp\.h5"):
        load_datacos(tmp_path, feature="hpcp", on_missing="raise")
    with pytest.raises(DaTacosError, match=r"neither .* nor .* exists"):
        load_features(data.missing[0], "hpcp")
    assert len(written) == len(data.items)
    with pytest.raises(ValueError, match="unknown Da-TACOS feature 'chroma'"):
        load_datacos(tmp_path, feature="chroma")
    with pytest.raises(DaTacosError, match="'key' is not a frame-wise array feature"):
        load_features(data.items[0], "key")
    with pytest.raises(ValueError, match="subset must be one of"):
        load_datacos(tmp_path, "train")


def test_datacos_damaged_files(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "P_1_hpcp.h5"
    path.write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(DaTacosError, match=r"P_1_hpcp\.h5: cannot read the HDF5 file"):
        read_feature_file(path, "hpcp")
    write_deepdish_like(path, {"hpcp": rng.random((50, 12))}, "W_1", "P_1")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DaTacosError, match=r"P_1_hpcp\.h5: cannot read"):
        read_feature_file(path, "hpcp")
    cases = [
        (
            {"crema": rng.random((50, 12))},
            "no dataset 'hpcp' \\(the file holds \\['crema', 'key_extractor'\\]\\)",
        ),
        ({"hpcp": rng.random((12, 50))}, "shape \\(12, 50\\), expected \\[n_frames, 12\\]"),
        ({"hpcp": rng.random(50)}, "shape \\(50,\\)"),
        ({"hpcp": np.zeros((0, 12))}, "zero frames"),
        ({"hpcp": np.array([[np.nan] + [0.5] * 11] * 3)}, "3 NaN/Inf value"),
        ({"hpcp": np.array([[b"a"] * 12])}, "dtype"),
    ]
    for arrays, message in cases:
        write_deepdish_like(path, arrays, "W_1", "P_1")
        with pytest.raises(DaTacosError, match=rf"P_1_hpcp\.h5: .*{message}"):
            read_feature_file(path, "hpcp")
    # deepdish stores an array with a zero dimension as its shape plus a 'zeroarray_dtype' attribute.
    with h5py.File(path, "w") as fh:
        fh.create_dataset("hpcp", data=np.array([0, 12], np.int64)).attrs["zeroarray_dtype"] = np.bytes_(
            "<f8"
        )
    with pytest.raises(DaTacosError, match="'hpcp' is empty"):
        read_feature_file(path, "hpcp")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "metadata not found: .*da-tacos_benchmark_subset_metadata.json"),
        ("{not json", "not valid JSON"),
        ("[]", "expected a non-empty object"),
        ('{"W_1": []}', "work 'W_1' must map to a non-empty object"),
        ('{"W_1": {"P_1": 3}}', "W_1/P_1 must be an object"),
        ('{"W_1": {"P_1": {}}, "W_2": {"P_1": {}}}', "P_1 is listed under W_1 and W_2"),
    ],
)
def test_datacos_bad_metadata(tmp_path: Path, content: str | None, expected: str) -> None:
    if content is not None:
        (tmp_path / "da-tacos_metadata").mkdir()
        (tmp_path / "da-tacos_metadata" / "da-tacos_benchmark_subset_metadata.json").write_text(content)
    with pytest.raises(DaTacosError, match=expected):
        load_datacos(tmp_path, feature=None)


def test_layout_entries_are_manifest_entries(tmp_path: Path, rng: np.random.Generator) -> None:
    meta, audio, _, present = make_shs100k(tmp_path, rng)
    split = load_shs100k(meta / "SHS100K-TEST", audio)
    assert all(isinstance(e, ManifestEntry) for e in split.entries)
    if split.entries:
        write_manifest(tmp_path / "shs.csv", split.entries)
        assert tuple(read_manifest(tmp_path / "shs.csv")) == split.entries
    assert len(split.entries) == len(present)
