"""The robustness evaluation's mechanics (csi_training.experiments.robustness): conditions differ
from the reference in only their factor, excerpts are excerpts, metrics match a naive count, and
a tiny run writes its report. Accuracy is not checked (the tiny run uses a random 64-d model)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import signal

from csi_runtime.index import Hit
from csi_training.experiments import robustness as rb
from csi_training.render.versions import VersionParams, make_versions

NOTES = Path(__file__).resolve().parents[1] / "data" / "rendered_baseline_notes.npz"
DEMO_WORKS = Path(__file__).resolve().parents[1] / "training" / "csi_training" / "demo_works.npz"


@pytest.fixture(scope="module")
def works() -> list:  # type: ignore[type-arg]
    from csi_training.render.notes import load_note_corpus

    return load_note_corpus(DEMO_WORKS)


def test_factor_fields_partition_the_version_params() -> None:
    fields = [f.name for f in dataclasses.fields(VersionParams)]
    grouped = [f for group in rb.FACTOR_FIELDS.values() for f in group]
    assert len(grouped) == len(set(grouped))  # no field in two factors
    assert sorted(grouped + list(rb.IDENTITY_FIELDS)) == sorted(fields)


def test_factor_variants_differ_in_only_their_factor(works: list, rng: np.random.Generator) -> None:  # type: ignore[type-arg]
    seed = int(rng.integers(1000))
    for i in rng.choice(len(works), 4, replace=False):
        versions = make_versions(works[i], rb.DONOR_VERSIONS, seed=seed)
        reference, donors = versions[0], versions[1:]
        for factor, group in rb.FACTOR_FIELDS.items():
            variant = rb.factor_variant(reference, donors, factor)
            if variant is None:  # no donor changes it: every donor agrees with the reference there
                assert all(getattr(d, f) == getattr(reference, f) for d in donors for f in group)
                continue
            differing = {
                f.name
                for f in dataclasses.fields(VersionParams)
                if getattr(variant, f.name) != getattr(reference, f.name)
            }
            assert differing and differing <= set(group), (factor, differing)
            # the values come from the first donor that differs in this factor
            donor = next(d for d in donors if any(getattr(d, f) != getattr(reference, f) for f in group))
            assert all(getattr(variant, f) == getattr(donor, f) for f in group)
        assert rb.factor_variant(reference, [reference], "key") is None


def test_query_audio_conditions(works: list, rng: np.random.Generator) -> None:  # type: ignore[type-arg]
    from csi_training.render.broadcast import MUSIC_DBFS, degrade
    from csi_training.render.corpus import render_version
    from csi_training.render.effects import rms_db

    work = works[int(rng.integers(len(works)))]
    seed, max_s = int(rng.integers(1000)), 25.0
    names = ["factor: key", "factor: mix", "cover: clean", "cover: pitch", "cover: speed", "excerpt 10 s",
             "excerpt 20 s", "broadcast 20 s"]  # fmt: skip
    queries = rb.query_audio(work, seed, max_s, names)
    versions = make_versions(work, rb.DONOR_VERSIONS, seed=seed)
    reference = render_version(work, versions[0], "synth", rb.SAMPLE_RATE, max_s, offline=False)
    cover = render_version(work, versions[1], "synth", rb.SAMPLE_RATE, max_s, offline=False)
    clean = degrade(cover, "clean", rng, rb.SAMPLE_RATE, MUSIC_DBFS)
    np.testing.assert_array_equal(queries["cover: clean"][0], clean)
    assert len(queries["cover: pitch"][0]) == len(cover)
    assert abs(len(queries["cover: speed"][0]) - len(cover)) > 0.025 * len(cover)
    for name in ("factor: key", "factor: mix"):
        if name in queries:
            audio = queries[name][0]
            assert audio.dtype == np.float32 and audio.size > 0
            n = min(len(audio), len(reference))
            assert not np.allclose(audio[:n], reference[:n], atol=1e-3)
    for name, seconds in (("excerpt 10 s", 10.0), ("excerpt 20 s", 20.0)):
        x = queries[name][0]
        assert len(x) == min(len(cover), int(seconds * rb.SAMPLE_RATE))
        # a stretch of the cover (found by cross-correlation), scaled to the music level
        corr = signal.correlate(cover.astype(np.float64), x.astype(np.float64), "valid", method="fft")
        start = int(np.argmax(corr))
        piece = cover[start : start + len(x)].astype(np.float64)
        gain = float(np.dot(piece, x) / np.dot(piece, piece))
        np.testing.assert_allclose(x, gain * piece, rtol=1e-4, atol=1e-6)
        assert rms_db(x) == pytest.approx(MUSIC_DBFS, abs=0.01)
    broadcast, chain = queries["broadcast 20 s"]
    assert 1 <= len(chain.split("+")) <= 3 and all(k in rb.CHAIN_ORDER for k in chain.split("+"))
    assert broadcast.size > 0 and np.all(np.isfinite(broadcast))
    # the same seed gives the same queries
    again = rb.query_audio(work, seed, max_s, ["broadcast 20 s", "factor: key"])
    np.testing.assert_array_equal(again["broadcast 20 s"][0], broadcast)


def _random_hits(rng: np.random.Generator, works: list[str], n_windows: int) -> list[list[Hit]]:
    hits = []
    for _ in range(n_windows):
        k = int(rng.integers(1, len(works) + 1))
        chosen = rng.choice(works, k, replace=False)
        scores = np.sort(np.round(rng.uniform(-1, 1, k), 1))[::-1]  # rounded: ties happen
        hits.append([Hit(str(w), float(s), {}) for w, s in zip(chosen, scores)])
    return hits


def test_scores_and_metrics_against_a_naive_count(rng: np.random.Generator) -> None:
    works = [f"w{i}" for i in range(int(rng.integers(3, 9)))]
    threshold = float(rng.uniform(-0.5, 0.8))
    outcomes, naive = [], []
    for q in range(int(rng.integers(5, 30))):
        true = works[int(rng.integers(len(works)))] if q % 3 else "unknown"
        hits = _random_hits(rng, works, int(rng.integers(0, 5)))
        in_catalog = true != "unknown"
        outcomes.append(rb._outcome("c", true, in_catalog, hits, len(works), threshold, 1.0))
        # naive: every work's best score, then the rank with ties against the true work
        best = {w: max((h.score for win in hits for h in win if h.work_id == w), default=None) for w in works}
        mine = best.get(true)
        if in_catalog:
            rank = (
                len(works)
                if mine is None
                else 1 + sum(1 for w, s in best.items() if w != true and s is not None and s >= mine)
            )
        else:
            rank = 0
        alarms = sum(1 for win in hits if win and win[0].score >= threshold)
        correct = sum(1 for win in hits if win and win[0].work_id == true and win[0].score >= threshold)
        naive.append((in_catalog, rank, alarms, correct, len(hits)))
        assert rb.work_scores(hits) == {w: s for w, s in best.items() if s is not None}
    for o, (in_catalog, rank, alarms, correct, n) in zip(outcomes, naive):
        assert (o.rank, o.alarm_windows, o.windows) == (rank, alarms, n)
        assert o.correct_windows == (correct if in_catalog else 0)
    m = rb.condition_metrics(outcomes)
    known = [x for x in naive if x[0]]
    unknown = [x for x in naive if not x[0]]
    assert m["queries"] == len(known) and m["unknown_queries"] == len(unknown)
    if known:
        assert m["top1"] == pytest.approx(sum(x[1] == 1 for x in known) / len(known))
        assert m["MAP"] == pytest.approx(sum(1 / x[1] for x in known) / len(known))
        assert m["detected"] == pytest.approx(sum(x[3] > 0 for x in known) / len(known))
        assert m["wrong_alarms"] == pytest.approx(sum(x[2] > x[3] for x in known) / len(known))
    if unknown:
        assert m["false_detections"] == pytest.approx(sum(x[2] > 0 for x in unknown) / len(unknown))
        windows = sum(x[4] for x in unknown)
        expected = sum(x[2] for x in unknown) / windows if windows else None
        assert m["false_alarm_windows"] == (pytest.approx(expected) if expected is not None else None)
    empty = rb.condition_metrics([])
    assert empty["top1"] is None and empty["false_detections"] is None


def test_rank_ties_count_against_the_true_work() -> None:
    assert rb.rank_of_work({"a": 0.5, "b": 0.5, "c": 0.1}, "a", 3) == 2
    assert rb.rank_of_work({"a": 0.6, "b": 0.5}, "a", 3) == 1
    assert rb.rank_of_work({"b": 0.5}, "a", 3) == 3


def test_held_out_works_are_the_baseline_test_works() -> None:
    from csi_training.render.notes import load_note_corpus

    held = rb.held_out_works(NOTES)
    assert len(held) == 200
    # the packaged demo works are the first 60 of them, in the same order
    assert [w.work_id for w in held[:60]] == [w.work_id for w in load_note_corpus(DEMO_WORKS)]
    assert [w.work_id for w in rb.held_out_works(NOTES, 7)] == [w.work_id for w in held[:7]]
    with pytest.raises(ValueError, match="--works"):
        rb.held_out_works(NOTES, 0)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not on PATH (the mp3 condition)")
def test_tiny_run_writes_its_report(exported_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    conditions = ["factor: key", "cover: clean", "cover: mp3", "excerpt 10 s", "broadcast 20 s"]
    seen: list[rb.QueryOutcome] = []
    results = rb.run_robustness(
        exported_bundle[1],
        NOTES,
        10,
        max_recording_s=25.0,
        conditions=conditions,
        target_far=0.25,
        progress=False,
        on_query=seen.append,
    )
    assert results["works"] == {
        "held_out": 10,
        "catalog": 6,
        "calibration_unknown": 2,
        "evaluation_unknown": 2,
    }
    assert [r["condition"] for r in results["conditions"]] == conditions
    assert len(results["queries"]) == len(seen)
    for row in results["conditions"]:
        mine = [o for o in seen if o.condition == row["condition"]]
        assert row["queries"] + row["unknown_queries"] + row["skipped"] == 8
        recomputed = rb.condition_metrics(mine)
        assert {k: row[k] for k in recomputed} == recomputed
    assert all(o.rank >= 1 for o in seen if o.in_catalog) and all(
        o.rank == 0 for o in seen if not o.in_catalog
    )
    command = "python -m csi_training.experiments.robustness --works 10"
    md, js = rb.write_report(results, tmp_path / "out" / "robustness.md", command)
    text = md.read_text()
    assert command in text and results["model_id"] in text
    assert all(f"| {c} |" in text for c in conditions)
    data = json.loads(js.read_text())
    assert data["command"] == command and data["conditions"] == results["conditions"]
    assert not list((tmp_path / "out").glob("*.tmp*"))  # atomic writes leave no temporaries
    with pytest.raises(ValueError, match="unknown conditions"):
        rb.run_robustness(exported_bundle[1], NOTES, 10, conditions=["factor: colour"], progress=False)
    with pytest.raises(ValueError, match="has no impostor set"):  # the exported bundle has none
        rb.run_robustness(exported_bundle[1], NOTES, 10, impostors=True, progress=False)
    assert results["calibration"]["impostors"] is None and results["calibration"]["cohort"] == 4


def test_cli_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--works"):
        rb.main(["--works", "0", "--notes", str(NOTES), "--out", str(tmp_path / "r.md"), "--no-progress"])
    assert not (tmp_path / "r.md").exists()


def test_without_ffmpeg_the_run_stops_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from csi_training.render.effects import FFmpegError

    monkeypatch.setenv("PATH", "")
    with pytest.raises(FFmpegError, match="ffmpeg"):
        rb.run_robustness(None, NOTES, 10, progress=False)
    with pytest.raises(SystemExit, match="ffmpeg"):
        rb.main(["--works", "10", "--notes", str(NOTES), "--out", str(tmp_path / "r.md"), "--no-progress"])
