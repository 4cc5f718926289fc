"""Note events from music21's corpus: parsing, tempo/sections, de-duplication, the cache format."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from csi_training.render import notes

TEST_ABC = """X:1
T:Test tune
M:4/4
L:1/4
Q:1/4=120
K:C
|: C D E F :| G2 A2 | B4- | B2 [CEG]2 | c4 |]
"""


def _work_from_pitches(
    work_id: str, pitches: list[int], durations: list[float] | None = None, qpm: float = 100.0
):
    durations = durations or [1.0] * len(pitches)
    ev = np.zeros(len(pitches), dtype=notes.NOTE_DTYPE)
    ev["onset_beats"] = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    ev["duration_beats"] = durations
    ev["pitch"] = pitches
    ev["velocity"] = 80
    return notes.make_work(work_id, [("melody", -1, ev)], tempo_bpm=qpm)


@pytest.fixture(scope="module")
def bundled() -> list[notes.Work]:
    return notes.extract_works(sources=["bach/bwv269.mxl", "essenFolksong/altdeu10.abc"], limit=30)


def test_abc_tune_events_repeats_ties_chords_tempo() -> None:
    work = notes.parse_item(notes.CorpusItem("test:1", "custom/test.abc", "", TEST_ABC), min_notes=4)
    ev = work.parts[0].events
    # the repeat is expanded, the tie B4-|B2 is one note of 6 beats, the chord gives three events
    expected = [
        (0, 1, 60), (1, 1, 62), (2, 1, 64), (3, 1, 65), (4, 1, 60), (5, 1, 62), (6, 1, 64), (7, 1, 65),
        (8, 2, 67), (10, 2, 69), (12, 6, 71), (18, 2, 60), (18, 2, 64), (18, 2, 67), (20, 4, 72),
    ]  # fmt: skip
    got = list(zip(ev["onset_beats"].tolist(), ev["duration_beats"].tolist(), ev["pitch"].tolist()))
    assert got == [(float(a), float(b), c) for a, b, c in expected]
    assert work.tempo_from_score and work.tempo_bpm == 120.0
    np.testing.assert_allclose(ev["onset_s"], ev["onset_beats"] * 0.5)
    np.testing.assert_allclose(ev["duration_s"], ev["duration_beats"] * 0.5)
    assert work.meter == (4, 4) and work.duration_s == pytest.approx(12.0)
    assert np.all(ev["velocity"] == notes.DEFAULT_VELOCITY)


def test_bundled_chorale_matches_the_score(bundled: list[notes.Work]) -> None:
    chorale = next(w for w in bundled if w.work_id == "m21:bach/bwv269.mxl")
    assert [p.name for p in chorale.parts] == ["Soprano", "Alto", "Tenor", "Bass"]
    soprano = chorale.parts[0].events[:10]
    # BWV 269, soprano, bars 0-4 (3/4 with a one-beat pickup)
    assert soprano["pitch"].tolist() == [67, 67, 74, 71, 69, 67, 67, 69, 71, 69]
    assert soprano["onset_beats"].tolist() == [0, 1, 3, 4, 5.5, 6, 7, 8.5, 9, 10]
    assert soprano["duration_beats"].tolist() == [1, 2, 1, 1.5, 0.5, 1, 1.5, 0.5, 1, 2]
    assert chorale.meter == (3, 4) and not chorale.tempo_from_score
    np.testing.assert_allclose(soprano["onset_s"], soprano["onset_beats"] * 60.0 / chorale.tempo_bpm)


def test_bundled_works_are_usable(bundled: list[notes.Work]) -> None:
    assert len(bundled) == 30
    assert len({w.work_id for w in bundled}) == 30
    for w in bundled:
        assert w.duration_s >= notes.MIN_DURATION_S and w.n_notes >= notes.MIN_NOTES
        s = w.sections_beats
        assert s[0] == 0 and s[-1] == pytest.approx(w.duration_beats) and np.all(np.diff(s) > 0)
        # sections are groups of bars near TARGET_SECTION_S (the last may be shorter/longer)
        inner = np.diff(w.sections_s)[:-1]
        if len(inner):
            assert np.median(inner) == pytest.approx(notes.TARGET_SECTION_S, rel=0.6)
        for p in w.parts:
            assert np.all(np.diff(p.events["onset_beats"]) >= 0)
            assert np.all(p.events["duration_beats"] > 0) and np.all(
                (p.events["pitch"] >= 0) & (p.events["pitch"] < 128)
            )
        # default tempos keep the melody's typical note between 0.15 and 0.6 s
        if not w.tempo_from_score:
            median_ioi = np.median(np.diff(np.unique(w.melody()["onset_s"])))
            assert notes.MIN_TYPICAL_IOI_S - 1e-9 <= median_ioi <= notes.MAX_TYPICAL_IOI_S + 1e-9
    assert {w.work_id.split("#")[0] for w in bundled} == {
        "m21:bach/bwv269.mxl",
        "m21:essenFolksong/altdeu10.abc",
    }


def test_beats_to_seconds_matches_a_naive_integration(rng: np.random.Generator) -> None:
    k = int(rng.integers(1, 6))
    starts = np.concatenate([[0.0], np.sort(rng.uniform(0, 50, k - 1))])
    tempo_map = np.stack([starts, rng.uniform(40, 200, k)], axis=1)
    beats = rng.uniform(0, 60, 200)
    expected = []
    for b in beats:  # step through the tempo segments one by one
        total = 0.0
        for i in range(k):
            seg_end = starts[i + 1] if i + 1 < k else np.inf
            if b <= starts[i]:
                break
            total += (min(b, seg_end) - starts[i]) * 60.0 / tempo_map[i, 1]
        expected.append(total)
    np.testing.assert_allclose(notes.beats_to_seconds(beats, tempo_map), expected, rtol=1e-12, atol=1e-9)


def test_dedupe_catches_transposed_and_rhythm_changed_copies(rng: np.random.Generator) -> None:
    tune = rng.integers(55, 80, 60).tolist()
    other = rng.integers(55, 80, 60).tolist()
    shift = int(rng.integers(-7, 8))
    copy = [p + shift for p in tune]
    # same melody, other key, doubled note values, a repeated note split in two, one note changed
    variant = [*copy[:20], copy[20], copy[20], *copy[21:]]
    variant[40] += 1
    works = [
        _work_from_pitches("a", tune),
        _work_from_pitches("b", other),
        _work_from_pitches("a-variant", variant, [2.0] * len(variant)),
        _work_from_pitches("a-excerpt", copy[10:50]),
    ]
    kept, dropped = notes.dedupe_works(works)
    assert [w.work_id for w in kept] == ["a", "b"]
    assert dropped == {"a-variant": "a", "a-excerpt": "a"}
    # a short tune that happens to lie inside a long polyphonic line is not that line
    line = (60 + np.cumsum(rng.choice([-2, -1, 1, 2], 400))).clip(40, 90).tolist()
    kept, dropped = notes.dedupe_works(
        [_work_from_pitches("mass", line), _work_from_pitches("tune", line[100:115])]
    )
    assert dropped == {}


def test_dedupe_on_known_essen_variants(bundled: list[notes.Work]) -> None:
    # "Zwei Wasser" (#23, #25) and "Zwei Koenigskinder" (#28) are one melody in altdeu10.abc
    ids = {w.work_id for w in bundled}
    assert "m21:essenFolksong/altdeu10.abc#23" in ids
    assert not {"m21:essenFolksong/altdeu10.abc#25", "m21:essenFolksong/altdeu10.abc#28"} & ids
    # and no two kept works share a melody by the same measure
    _, dropped = notes.dedupe_works(bundled)
    assert dropped == {}


def test_cache_round_trip(tmp_path, bundled: list[notes.Work]) -> None:
    path = tmp_path / "sub" / "notes.npz"
    notes.save_note_corpus(path, bundled, extra={"note": "test"})
    assert sorted(os.listdir(path.parent)) == ["notes.npz"]  # no temporary file left behind
    loaded, extra = notes.load_note_corpus_with_extra(path)
    assert extra == {"note": "test"}
    assert len(loaded) == len(bundled)
    for a, b in zip(bundled, loaded):
        assert (a.work_id, a.title, a.source, a.composer, a.meter, a.beat_beats, a.tempo_from_score) == (
            b.work_id, b.title, b.source, b.composer, b.meter, b.beat_beats, b.tempo_from_score
        )  # fmt: skip
        np.testing.assert_array_equal(a.tempo_map, b.tempo_map)
        np.testing.assert_array_equal(a.sections_beats, b.sections_beats)
        assert [(p.name, p.program) for p in a.parts] == [(p.name, p.program) for p in b.parts]
        for pa, pb in zip(a.parts, b.parts):
            for field in ("pitch", "velocity"):
                np.testing.assert_array_equal(pa.events[field], pb.events[field])
            for field in ("onset_beats", "duration_beats", "onset_s", "duration_s"):
                np.testing.assert_allclose(pa.events[field], pb.events[field], rtol=1e-6, atol=1e-5)
    # the file is a plain npz: readable without pickle, with a JSON index
    with np.load(path, allow_pickle=False) as data:
        index = json.loads(data["index_json"].tobytes())
    assert index["format"] == notes.CACHE_FORMAT and len(index["works"]) == len(bundled)


def test_cache_errors(tmp_path, bundled: list[notes.Work]) -> None:
    with pytest.raises(notes.NoteCorpusError, match="no note corpus"):
        notes.load_note_corpus(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(notes.NoteCorpusError, match="not a readable note corpus"):
        notes.load_note_corpus(garbage)
    path = tmp_path / "notes.npz"
    notes.save_note_corpus(path, bundled[:3])
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["pitch"] = arrays["pitch"][:-1]
    truncated = tmp_path / "truncated.npz"
    np.savez(truncated, **arrays)
    with pytest.raises(notes.NoteCorpusError, match="corrupt"):
        notes.load_note_corpus(truncated)
    index = json.loads(arrays["index_json"].tobytes())
    index["version"] = 99
    arrays["index_json"] = np.frombuffer(json.dumps(index).encode(), dtype=np.uint8)
    arrays["pitch"] = np.zeros(len(arrays["onset_beats"]), np.uint8)
    other = tmp_path / "other.npz"
    np.savez(other, **arrays)
    with pytest.raises(notes.NoteCorpusError, match="v99, expected 'csi-note-corpus' v1"):
        notes.load_note_corpus(other)


def test_extract_selection_and_reasons() -> None:
    report = notes.ExtractionReport()
    ids = [
        "m21:essenFolksong/altdeu10.abc#3",
        "m21:essenFolksong/altdeu10.abc#23",
        "m21:essenFolksong/altdeu10.abc#25",
    ]
    works = notes.extract_works(sources=["essenFolksong/altdeu10.abc"], work_ids=ids, report=report)
    assert [w.work_id for w in works] == ids[:2]
    assert report.duplicates == {ids[2]: ids[1]}
    assert report.n_items == 3 and report.kept_per_source == {"essenFolksong": 2}
    with pytest.raises(ValueError, match="not in the selected corpus"):
        notes.extract_works(sources=["essenFolksong/altdeu10.abc"], work_ids=["m21:nope#1"])
    with pytest.raises(ValueError, match="no score in music21's corpus"):
        notes.extract_works(sources=["no-such-collection"])
    short = "X:1\nT:short\nM:4/4\nL:1/4\nK:C\nC D E F |]\n"
    with pytest.raises(notes.SkipWork, match="notes"):
        notes.parse_item(notes.CorpusItem("t", "t.abc", "", short))
    with pytest.raises(notes.SkipWork, match="shorter than"):
        notes.parse_item(notes.CorpusItem("t", "t.abc", "", short), min_notes=1)
    with pytest.raises(notes.SkipWork, match="notes"):
        notes.parse_item(notes.CorpusItem("t", "t.abc", "", "X:1\nT:rest\nM:4/4\nL:1/4\nK:C\nz4 |]\n"))


def test_extract_with_worker_processes_matches_in_process() -> None:
    sources = ["essenFolksong/altdeu10.abc"]
    ids = [f"m21:essenFolksong/altdeu10.abc#{i}" for i in range(1, 7)]
    serial = notes.extract_works(sources=sources, work_ids=ids)
    pooled = notes.extract_works(sources=sources, work_ids=ids, workers=2)
    assert [w.work_id for w in serial] == [w.work_id for w in pooled]
    for a, b in zip(serial, pooled):
        np.testing.assert_array_equal(a.all_events(), b.all_events())


def test_split_abc_tunes_keeps_header_fields() -> None:
    text = "%comment\nL:1/8\n\nX:1\nT:a\nK:C\nCDEF|\n\nX:2\nT:b\nK:G\nGABc|\n"
    header, tunes = notes.split_abc_tunes(text)
    assert [n for n, _ in tunes] == ["1", "2"]
    assert notes._header_fields(header) == "L:1/8\n"


def test_make_work_validates() -> None:
    ev = np.zeros(1, dtype=notes.NOTE_DTYPE)
    with pytest.raises(ValueError, match="duration_beats > 0"):
        notes.make_work("x", [("p", 0, ev)])
    ev["duration_beats"] = 1
    with pytest.raises(ValueError, match="tempo_map"):
        notes.make_work("x", [("p", 0, ev)], tempo_map=np.array([[1.0, 100.0]]))
    with pytest.raises(ValueError, match="sections_beats"):
        notes.make_work("x", [("p", 0, ev)], sections_beats=[0.0, 0.5])


def test_split_works_is_deterministic_and_order_free(bundled: list[notes.Work], seed: int) -> None:
    train, test = notes.split_works(bundled, 0.25, seed=seed)
    assert len(test) == round(0.25 * len(bundled)) and len(train) + len(test) == len(bundled)
    assert not {w.work_id for w in train} & {w.work_id for w in test}
    _, again_test = notes.split_works(bundled[::-1], 0.25, seed=seed)
    assert {w.work_id for w in again_test} == {w.work_id for w in test}
    _, other = notes.split_works(bundled, 0.25, seed=seed + 1)
    assert {w.work_id for w in other} != {w.work_id for w in test}
    three = [w.work_id for w in notes.split_works(bundled, 3, seed=seed)[1]]
    assert len(three) == 3 and three == [w.work_id for w in bundled if w.work_id in set(three)]  # input order
    with pytest.raises(ValueError, match="does not fit"):
        notes.split_works(bundled, len(bundled) + 1)


def test_leading_rests_and_tempo_changes(tmp_path) -> None:
    from music21 import meter, note, stream, tempo

    part = stream.Part()
    part.append(meter.TimeSignature("4/4"))
    part.append(tempo.MetronomeMark(number=60))
    part.append(note.Rest(quarterLength=4))
    names = ["C4", "D4", "E4", "F4", "G4", "A4", "B4", "C5", "C5", "B4", "A4", "G4", "F4", "E4", "D4", "C4"]
    for i, name in enumerate(names):
        if i == 4:
            part.append(tempo.MetronomeMark(number=120))
        part.append(note.Note(name, quarterLength=1))
    score = stream.Score([part])
    path = tmp_path / "t.musicxml"
    score.write("musicxml", fp=str(path))
    work = notes.parse_item(notes.CorpusItem("t", "t.musicxml", str(path), None))
    ev = work.parts[0].events
    assert ev["onset_beats"][0] == 0 and ev["onset_beats"][4] == 4  # the rest bar is gone
    # the tempo change stays on its note: 4 beats at 60 bpm, then 120 bpm
    np.testing.assert_array_equal(work.tempo_map, [[0.0, 60.0], [4.0, 120.0]])
    np.testing.assert_allclose(ev["onset_s"][:6], [0, 1, 2, 3, 4, 4.5])
    assert work.duration_s == pytest.approx(4 + 12 * 0.5)
    assert work.tempo_from_score and work.sections_beats[-1] == 16
    shifted = notes._shift_tempo_map(np.array([[0.0, 60.0], [2.0, 90.0], [6.0, 120.0]]), -3.0)
    np.testing.assert_array_equal(shifted, [[0.0, 90.0], [3.0, 120.0]])


def test_extraction_resumes_from_checkpoints(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = ["essenFolksong/test0.abc", "essenFolksong/teste.abc"]
    counts = [sum(1 for _ in notes.iter_corpus_items([src])) for src in sources]
    monkeypatch.setattr(notes, "CHECKPOINT_ITEMS", 3)
    first_report = notes.ExtractionReport()
    first = notes.extract_works(sources=sources, checkpoint_dir=tmp_path, report=first_report)
    expected = [
        f"{src.replace('/', '_')}.{k:03d}.npz" for src, n in zip(sources, counts) for k in range(-(-n // 3))
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == expected and len(expected) > 2

    def no_parsing(args):  # a resumed extraction must not parse again
        raise AssertionError("parsed again")

    monkeypatch.setattr(notes, "_parse_or_reason", no_parsing)
    again_report = notes.ExtractionReport()
    again = notes.extract_works(sources=sources, checkpoint_dir=tmp_path, report=again_report)
    assert [w.work_id for w in again] == [w.work_id for w in first]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.all_events()["pitch"], b.all_events()["pitch"])
    assert again_report.skipped == first_report.skipped and again_report.duplicates == first_report.duplicates
    # other settings: the checkpoint does not apply
    with pytest.raises(AssertionError, match="parsed again"):
        notes.extract_works(sources=sources, checkpoint_dir=tmp_path, min_notes=20)


def test_cache_file_gets_default_permissions(tmp_path, bundled: list[notes.Work]) -> None:
    path = tmp_path / "n.npz"
    notes.save_note_corpus(path, bundled[:2])
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
