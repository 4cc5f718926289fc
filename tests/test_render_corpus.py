"""The rendered-versions corpus on disk (manifest, provenance, resume, failures) and the online dataset."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from csi_training.render import corpus, notes, online, versions

SR = 16000


def _work(work_id: str, pitches: list[int], qpm: float = 132.0, parts: int = 1) -> notes.Work:
    ev = np.zeros(len(pitches), dtype=notes.NOTE_DTYPE)
    ev["onset_beats"] = np.arange(len(pitches), dtype=np.float64)
    ev["duration_beats"] = 1.0
    ev["pitch"] = pitches
    ev["velocity"] = 90
    return notes.make_work(work_id, [(f"p{i}", -1, ev) for i in range(parts)], tempo_bpm=qpm, source="test")


@pytest.fixture
def works(rng: np.random.Generator) -> list[notes.Work]:
    return [
        _work("m21:test/a.abc#1", rng.integers(60, 76, 32).tolist()),
        _work("m21:test/b.mxl", rng.integers(55, 72, 40).tolist(), parts=2),
        _work("m21:test/c.abc#7", rng.integers(62, 79, 36).tolist()),
    ]


def _render(out, works, **kw):
    calls = []
    kw.setdefault("max_duration_s", 6.0)
    kw.setdefault("version_config", versions.VersionConfig(min_duration_s=8.0))
    manifest = corpus.render_corpus(out, works, 2, progress=lambda d, n: calls.append((d, n)), **kw)
    return manifest, calls


def test_render_corpus_writes_manifest_audio_and_provenance(tmp_path, works, seed: int) -> None:
    out = tmp_path / "corpus"
    manifest, calls = _render(out, works, seed=seed, limit=2)
    assert manifest == out / "manifest.csv"
    with open(manifest, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "work_id", "version_id"]
    assert [(r[1], r[2]) for r in rows[1:]] == [
        ("m21:test/a.abc#1", "v00"), ("m21:test/a.abc#1", "v01"),
        ("m21:test/b.mxl", "v00"), ("m21:test/b.mxl", "v01"),
    ]  # fmt: skip
    assert corpus.read_manifest(manifest) == [tuple(r) for r in rows[1:]]
    for path, _, vid in rows[1:]:
        assert not path.startswith("/") and path.startswith("audio/") and path.endswith(f"/{vid}.flac")
        audio, rate = sf.read(out / path, dtype="float32")
        assert rate == SR and audio.ndim == 1
        assert 1.0 * SR < len(audio) <= 6.0 * SR
        assert 0.01 < np.max(np.abs(audio)) <= 1.0
    assert len({r[0].split("/")[1] for r in rows[1:]}) == 2  # one folder per work
    assert calls[0] == (0, 4) and calls[-1] == (4, 4)
    meta = json.loads((out / "versions.json").read_text())
    assert meta["format"] == corpus.CORPUS_FORMAT and meta["failed"] == {}
    assert meta["settings"]["seed"] == seed and meta["settings"]["renderer"] == "synth"
    assert meta["settings"]["version_config"]["min_duration_s"] == 8.0
    params = [versions.VersionParams.from_dict(d) for d in meta["versions"]]
    assert [(p.work_id, p.version_index) for p in params] == [(r[1], int(r[2][1:])) for r in rows[1:]]
    # provenance is complete: the recorded params are exactly what make_versions gives
    expected = versions.make_versions(works[0], 2, seed, versions.VersionConfig(min_duration_s=8.0))
    assert params[:2] == expected
    # and rendering them again gives the same audio (up to the 16-bit FLAC quantisation)
    again = corpus.render_version(works[0], expected[1], "synth", SR, 6.0)
    stored, _ = sf.read(out / rows[2][0], dtype="float32")
    np.testing.assert_allclose(stored, again, atol=1.0 / 32768 + 1e-6)


def test_render_corpus_resumes(tmp_path, works) -> None:
    out = tmp_path / "corpus"
    _render(out, works, seed=3)
    files = sorted((out / "audio").rglob("*.flac"))
    assert len(files) == 6
    stamps = {f: f.stat().st_mtime_ns for f in files}
    victim = files[3]
    victim.unlink()
    (victim.parent / ".v99.flac.tmp").write_bytes(b"half a file")  # a crash leftover is ignored
    _, calls = _render(out, works, seed=3)
    assert calls[0] == (5, 6) and calls[-1] == (6, 6)  # only the missing file was rendered
    for f in files:
        if f != victim:
            assert f.stat().st_mtime_ns == stamps[f]
    assert victim.is_file() and len(corpus.read_manifest(out / "manifest.csv")) == 6
    # a truncated FLAC is not complete: rendered again
    victim.write_bytes(victim.read_bytes()[:20])
    _, calls = _render(out, works, seed=3)
    assert calls[0] == (5, 6)
    with pytest.raises(ValueError, match="other settings"):
        _render(out, works, seed=4)


def test_render_corpus_grows_with_more_versions(tmp_path, works) -> None:
    out = tmp_path / "corpus"
    _render(out, works, seed=3)
    first = {f: f.read_bytes() for f in sorted((out / "audio").rglob("*.flac"))}
    kw = {"max_duration_s": 6.0, "version_config": versions.VersionConfig(min_duration_s=8.0), "seed": 3}
    corpus.render_corpus(out, works, 3, **kw)  # one more version per work: only those are rendered
    rows = corpus.read_manifest(out / "manifest.csv")
    assert len(rows) == 9 and sorted({r[2] for r in rows}) == ["v00", "v01", "v02"]
    for f, data in first.items():
        assert f.read_bytes() == data  # the versions already there are kept
    # the grown corpus equals one rendered with 3 versions from the start
    fresh = tmp_path / "fresh"
    corpus.render_corpus(fresh, works, 3, **kw)
    for f in sorted((out / "audio").rglob("v02.flac")):
        assert f.read_bytes() == (fresh / f.relative_to(out)).read_bytes()
    with pytest.raises(ValueError, match="other settings"):
        corpus.render_corpus(out, works, 2, **kw)  # fewer versions is not a resume


def test_render_corpus_skips_and_reports_failures(tmp_path, works, monkeypatch: pytest.MonkeyPatch) -> None:
    real = corpus.render_version

    def flaky(work, params, *args, **kw):
        if work.work_id == "m21:test/b.mxl" and params.version_index == 1:
            raise RuntimeError("synthetic failure")
        return real(work, params, *args, **kw)

    monkeypatch.setattr(corpus, "render_version", flaky)
    out = tmp_path / "corpus"
    manifest, _ = _render(out, works, seed=1)
    rows = corpus.read_manifest(manifest)
    assert len(rows) == 5 and ("m21:test/b.mxl", "v01") not in [(r[1], r[2]) for r in rows]
    failed = json.loads((out / "versions.json").read_text())["failed"]
    assert len(failed) == 1 and "synthetic failure" in next(iter(failed.values()))


def test_render_corpus_selection_and_arguments(tmp_path, works) -> None:
    manifest, _ = _render(tmp_path / "c1", works, work_ids=["m21:test/c.abc#7"])
    assert {r[1] for r in corpus.read_manifest(manifest)} == {"m21:test/c.abc#7"}
    with pytest.raises(ValueError, match="not among the works"):
        _render(tmp_path / "c2", works, work_ids=["m21:nope"])
    with pytest.raises(ValueError, match="no works selected"):
        _render(tmp_path / "c3", works, sources=["other"])
    with pytest.raises(ValueError, match="renderer"):
        corpus.render_corpus(tmp_path / "c4", works, 1, renderer="timidity")
    with pytest.raises(ValueError, match="max_duration_s"):
        corpus.render_corpus(tmp_path / "c5", works, 1, max_duration_s=0)
    assert corpus.work_dir_name("m21:a/b.abc#1") != corpus.work_dir_name("m21:a_b.abc#1")
    assert "/" not in corpus.work_dir_name("m21:a/b.abc#1")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx,y\n")
    with pytest.raises(ValueError, match="expected header"):
        corpus.read_manifest(bad)


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth is not installed")
def test_render_corpus_with_fluidsynth(tmp_path, works) -> None:
    from csi_training.render import fluidsynth

    names = fluidsynth.available_soundfonts()
    if not names:
        pytest.skip("no General-MIDI soundfont installed (apt install fluid-soundfont-gm timgm6mb-soundfont)")
    config = versions.VersionConfig(
        min_duration_s=4.0, soundfonts=(names[-1],), codec_probabilities=(0, 1, 0)
    )
    manifest = corpus.render_corpus(
        tmp_path / "fs", works[:1], 2, renderer="fluidsynth", max_duration_s=4.0, version_config=config
    )
    rows = corpus.read_manifest(manifest)
    assert len(rows) == 2
    for path, _, _ in rows:
        audio, rate = sf.read(tmp_path / "fs" / path, dtype="float32")
        assert rate == SR and len(audio) <= 4 * SR and np.sqrt(np.mean(audio**2)) > 1e-3


# ---------------------------------------------------------------------------------------------
# Online dataset


def test_online_versions_are_deterministic_per_epoch(works) -> None:
    ds = online.OnlineVersions(works, clip_s=3.0, seed=5, versions_per_work=3)
    assert len(ds) == 9
    wave, k = ds[4]
    assert k == 1 and wave.dtype == torch.float32 and wave.shape == (3 * SR,)
    assert torch.equal(wave, ds[(1, 1)][0]) and torch.equal(wave, ds[(1, 1, 0)][0])
    assert not torch.equal(ds[(1, 1, 0)][0], ds[(1, 2, 0)][0])  # another version
    ds.set_epoch(1)
    assert not torch.equal(wave, ds[4][0])  # a new version next epoch
    assert torch.equal(ds[4][0], ds[(1, 1, 1)][0])
    other = online.OnlineVersions(works, clip_s=3.0, seed=6, versions_per_work=3)
    assert not torch.equal(ds[(0, 0, 0)][0], other[(0, 0, 0)][0])
    with pytest.raises(IndexError):
        ds[9]
    with pytest.raises(IndexError):
        ds[(3, 0, 0)]


def test_online_whole_versions_and_collate(works) -> None:
    config = versions.VersionConfig(min_duration_s=0.0, original_first=True)
    ds = online.OnlineVersions(works, clip_s=None, version_config=config, versions_per_work=2, effects=False)
    original, _ = ds[0]
    # the original: the work as written, at its tempo, plus the release/reverb tail
    assert works[0].duration_s < len(original) / SR < works[0].duration_s + 2.0
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=online.collate_padded)
    batch, lengths, labels = next(iter(loader))
    assert batch.shape == (3, int(lengths.max())) and labels.tolist() == [0, 0, 1]
    for i in range(3):
        assert not batch[i, lengths[i] :].any()
    assert float(batch.abs().max()) <= 0.99


def test_online_clip_matches_the_excerpt_of_the_whole_version(works) -> None:
    """A clip is the stretch of the whole (dry) version it claims to be, after its pre-roll."""
    config = versions.VersionConfig(min_duration_s=0.0, original_first=False, humanize_max_s=0.0)
    clip_ds = online.OnlineVersions(works, clip_s=2.0, version_config=config, seed=9, effects=False)
    whole_ds = online.OnlineVersions(works, clip_s=None, version_config=config, seed=9, effects=False)
    clip = clip_ds.render(2, 1, 0)
    whole = whole_ds.render(2, 1, 0)
    # both are level-normalised separately: compare shapes by the best-aligned correlation
    corr = np.correlate(whole, clip, mode="valid")
    best = int(np.argmax(corr))
    seg = whole[best : best + len(clip)]
    cos = float(np.dot(seg, clip) / (np.linalg.norm(seg) * np.linalg.norm(clip)))
    assert cos > 0.9999
