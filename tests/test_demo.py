"""csi demo: the report of a tiny run is complete and its metrics agree with its own CSVs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from csi_runtime.embedder import default_bundle_path
from csi_training.demo import DEMO_WORKS_PATH, StreamItem, build_demo_works, run_demo, score_detections
from csi_training.render.notes import load_note_corpus

REPO = Path(__file__).resolve().parents[1]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "report"
    seed = int.from_bytes(os.urandom(2), "little")
    metrics = run_demo(out, seed=seed, n_catalog=6, n_covers=4, n_unknown=2, n_calibration_unknown=10,
                       target_far=0.1, save_audio=False, threads=1)  # fmt: skip
    return out, metrics


def test_report_files_exist(tiny_report: tuple[Path, dict]) -> None:
    out, metrics = tiny_report
    for name in ("metrics.json", "truth.csv", "detections.csv", "timeline.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    lines = (out / "detections.jsonl").read_text().splitlines()
    assert len(lines) == metrics["detections"]
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    if metrics["similarity_pair"] is not None:
        assert (out / "similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bool(list((out / "monitor").glob("detections-demo-*.jsonl"))) == (metrics["detections"] > 0)
    # the packaged bundle has an impostor set: calibration and monitor normalise with it
    manifest = json.loads((default_bundle_path() / "model.json").read_text())
    assert metrics["calibration"]["impostors"] == manifest["files"]["impostors.npy"]
    assert metrics["calibration"]["cohort"] == 0


def test_truth_is_a_consistent_programme(tiny_report: tuple[Path, dict]) -> None:
    out, metrics = tiny_report
    truth = _read_csv(out / "truth.csv")
    kinds = [t["kind"] for t in truth]
    assert kinds.count("cover") == 4 and kinds.count("unknown") == 2
    assert kinds[0] == kinds[-1] == "speech"  # talk between all items
    starts, ends = (
        np.array([float(t["start_s"]) for t in truth]),
        np.array([float(t["end_s"]) for t in truth]),
    )
    assert starts[0] == 0 and np.allclose(starts[1:], ends[:-1]) and np.all(ends > starts)
    assert ends[-1] == pytest.approx(metrics["stream_s"], abs=1e-3)
    catalog_ids = {w.work_id for w in load_note_corpus(DEMO_WORKS_PATH)}
    covers = {t["work_id"] for t in truth if t["kind"] == "cover"}
    unknown = {t["work_id"] for t in truth if t["kind"] == "unknown"}
    assert len(covers) == 4 and covers <= catalog_ids and not covers & unknown
    for t in truth:
        if t["kind"] != "speech":
            assert 0 < float(t["end_s"]) - float(t["start_s"]) <= 40.0 + 1e-3  # excerpts of 20-40 s or less


def test_metrics_recomputed_from_the_csvs(tiny_report: tuple[Path, dict]) -> None:
    out, metrics = tiny_report
    truth = _read_csv(out / "truth.csv")
    dets = _read_csv(out / "detections.csv")
    covers = [(t["work_id"], float(t["start_s"]), float(t["end_s"])) for t in truth if t["kind"] == "cover"]
    correct = 0
    for d in dets:
        s0, s1 = float(d["start_s"]), float(d["end_s"])
        ok = any(w == d["work_id"] and min(s1, e) - max(s0, s) > 0 for w, s, e in covers)
        assert ok == bool(int(d["correct"]))
        correct += ok
    found = sum(
        any(d["work_id"] == w and min(float(d["end_s"]), e) - max(float(d["start_s"]), s) > 0 for d in dets)
        for w, s, e in covers
    )
    assert metrics["detections"] == len(dets)
    assert metrics["correct_detections"] == correct
    assert metrics["precision"] == (pytest.approx(correct / len(dets)) if dets else None)
    assert metrics["recall"] == pytest.approx(found / len(covers))
    lines = (out / "detections.jsonl").read_text().splitlines()
    assert [json.loads(line)["work_id"] for line in lines] == [d["work_id"] for d in dets]
    # the monitor's own log holds the same detections
    logs = list((out / "monitor").glob("detections-demo-*.csv"))
    monitor_rows = _read_csv(logs[0]) if logs else []
    assert [r["work_id"] for r in monitor_rows] == [d["work_id"] for d in dets]


def test_score_detections_against_a_naive_count(rng: np.random.Generator) -> None:
    truth, t = [], 0.0
    for i in range(int(rng.integers(3, 12))):
        kind = str(rng.choice(["cover", "unknown", "speech"]))
        length = float(rng.uniform(5, 40))
        truth.append(StreamItem(kind, "" if kind == "speech" else f"w{i % 4}", t, t + length, 1, "clean"))
        t += length
    dets = []
    for _ in range(int(rng.integers(0, 10))):
        s0 = float(rng.uniform(0, t))
        dets.append((f"w{int(rng.integers(0, 5))}", s0, s0 + float(rng.uniform(1, 50)), 0.9, 0.95, 2))
    scored, m = score_detections(dets, truth)
    covers = [x for x in truth if x.kind == "cover"]
    naive = [
        any(c.work_id == w and c.start_s < s1 and s0 < c.end_s for c in covers) for w, s0, s1, *_ in dets
    ]
    assert [d.correct for d in scored] == naive
    assert m["precision"] == (sum(naive) / len(dets) if dets else None)
    hit = [any(c.work_id == w and c.start_s < s1 and s0 < c.end_s for w, s0, s1, *_ in dets) for c in covers]
    assert m["recall"] == (sum(hit) / len(covers) if covers else None)
    assert m["detected_covers"] == sum(hit)
    assert m["false_detections"] == len(dets) - sum(naive) == sum(m["false_detections_by_content"].values())


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        run_demo(tmp_path, n_catalog=2)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_packaged_works_are_the_baselines_test_works(tmp_path: Path) -> None:
    notes = REPO / "data" / "rendered_baseline_notes.npz"
    if not notes.exists():
        pytest.skip("data/rendered_baseline_notes.npz is not in this checkout")
    ids = build_demo_works(notes, tmp_path / "works.npz")
    assert ids == [w.work_id for w in load_note_corpus(DEMO_WORKS_PATH)]
    from csi_training.batching import split_works

    works = load_note_corpus(notes)[:1400]
    train = split_works([w.work_id for w in works], val=0, test=200, seed=0).train
    assert not set(ids) & train


def test_cli_help() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-m", "csi_runtime", "demo", "--help"], capture_output=True,
                       text=True, env=env, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    for flag in ("--out", "--seed", "--catalog-works", "--force", "--model", "--no-impostors"):
        assert flag in r.stdout


def test_cli_model_option(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-m", "csi_runtime", "demo", "--out", str(tmp_path / "r"),
                        "--model", str(tmp_path / "missing")], capture_output=True, text=True, env=env,
                       timeout=120)  # fmt: skip
    assert r.returncode != 0 and f"csi demo: model bundle {tmp_path / 'missing'} does not exist" in r.stderr
