"""The audio commands of ``csi`` as a user runs them, with the packaged default model: index build
(folder, --update, --remove), identify, monitor (file and raw PCM on stdin), calibrate, and an index
made with another model refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
pytest.importorskip("onnxruntime")

from csi_runtime import ReferenceIndex  # noqa: E402
from csi_runtime.embedder import default_bundle_path  # noqa: E402

SR = 16000
ENV_THREADS = {"OMP_NUM_THREADS": "1", "CSI_NUM_THREADS": "1"}


def csi(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "csi_runtime", *map(str, args)],
        input=stdin,
        capture_output=True,
        timeout=300,
        env={**os.environ, **ENV_THREADS},
    )


def tune(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A random melody with a bass line, plucked-string-like notes: float32 [n] at 16 kHz."""
    n = int(seconds * SR)
    out = np.zeros(n)
    t_note = 0.0
    pitch = 60 + int(rng.integers(-5, 6))
    while t_note < seconds:
        dur = float(rng.choice([0.25, 0.5, 0.5, 0.75, 1.0]))
        pitch = int(np.clip(pitch + rng.integers(-4, 5), 48, 84))
        start = int(t_note * SR)
        t = np.arange(min(n - start, int(dur * 1.5 * SR))) / SR
        f0 = 440 * 2 ** ((pitch - 69) / 12)
        out[start : start + len(t)] += (
            0.3 * np.exp(-3 * t) * sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3, 4))
        )
        t_note += dur
    return (out / np.abs(out).max() * 0.7).astype(np.float32)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    rng = np.random.default_rng(20261121)
    root = tmp_path_factory.mktemp("catalog")
    refs = {f"work{i}": tune(rng, 40.0) for i in range(3)}
    for work, audio in refs.items():
        (root / "catalog" / work).mkdir(parents=True)
        sf.write(root / "catalog" / work / "reference.wav", audio, SR)
    noise = (rng.standard_normal(SR * 15) * 0.05).astype(np.float32)
    # a broadcast: work2 from 10 s for 25 s, noise, work0 from 0 s for 25 s (exact excerpts)
    stream = np.concatenate([refs["work2"][10 * SR : 35 * SR], noise, refs["work0"][: 25 * SR]])
    sf.write(root / "stream.wav", stream, SR)
    index = root / "cat.csi"
    built = csi("index", "build", root / "catalog", "-o", index)
    assert built.returncode == 0, built.stderr.decode()
    assert b"3 recordings added" in built.stdout
    return {"root": root, "index": index, "refs": refs, "stream": stream}


def test_index_knows_its_model_and_updates(catalog: dict[str, object], tmp_path: Path) -> None:
    index = ReferenceIndex.load(catalog["index"])  # type: ignore[arg-type]
    assert index.num_works == 3 and index.model_id is not None
    assert index.model_id.startswith("move-cqtnet")
    root: Path = catalog["root"]  # type: ignore[assignment]
    copy = tmp_path / "cat.csi"
    copy.write_bytes(Path(catalog["index"]).read_bytes())  # type: ignore[arg-type]
    (root / "more" / "work9").mkdir(parents=True)
    sf.write(root / "more" / "work9" / "ref.flac", catalog["refs"]["work1"][::-1].copy(), SR)  # type: ignore[index]
    refused = csi("index", "build", root / "more", "-o", copy)
    assert refused.returncode != 0 and b"--update" in refused.stderr
    updated = csi("index", "build", root / "more", "-o", copy, "--update")
    assert updated.returncode == 0, updated.stderr.decode()
    assert ReferenceIndex.load(copy).num_works == 4
    again = csi("index", "build", root / "more", "-o", copy, "--update")
    assert b"0 recordings added, 1 skipped" in again.stdout
    removed = csi("index", "build", "-o", copy, "--remove", "work9")
    assert removed.returncode == 0 and ReferenceIndex.load(copy).num_works == 3


def test_identify_finds_the_work_of_an_excerpt(catalog: dict[str, object], tmp_path: Path) -> None:
    refs: dict[str, np.ndarray] = catalog["refs"]  # type: ignore[assignment]
    query = tmp_path / "query.wav"
    sf.write(query, refs["work1"][7 * SR : 29 * SR], SR)
    out = csi("identify", query, "--index", catalog["index"], "--json", "-k", "3")
    assert out.returncode == 0, out.stderr.decode()
    result = json.loads(out.stdout)
    assert result["matches"][0]["work_id"] == "work1"
    # windows of the excerpt are offset by 7 s from the reference's: close, not identical (the
    # packaged model's whitening spreads such near-duplicates to ~0.85; other works score < 0.5)
    assert result["matches"][0]["best_window_score"] > 0.75
    assert result["matches"][0]["score"] > result["matches"][1]["score"] + 0.1


def test_monitor_reports_the_plays_of_a_broadcast(catalog: dict[str, object], tmp_path: Path) -> None:
    out_dir = tmp_path / "detections"
    # with the packaged model, windows of the played excerpts score 0.58-1.0 against their
    # reference, the noise's windows < 0.55 against any work
    run = csi("monitor", Path(catalog["root"]) / "stream.wav", "--index", catalog["index"], "--out", out_dir,  # type: ignore[arg-type]
              "--threshold", "0.75", "--channel", "radio1", "--start-utc", "2026-11-21T10:00:00Z",
              "--hop-s", "2")  # fmt: skip
    assert run.returncode == 0, run.stderr.decode()
    (jsonl,) = out_dir.glob("detections-radio1-20261121.jsonl")
    detections = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [d["work_id"] for d in detections] == ["work2", "work0"]
    # truth: work2 0-25 s, work0 40-65 s; a window of 20 s matches once most of it is the work, so
    # boundaries are found within half a window
    for d, (start, end) in zip(detections, [(0.0, 25.0), (40.0, 65.0)], strict=True):
        assert abs(d["query_offset_s"] - start) <= 10.0
        assert abs(d["query_offset_s"] + d["played_duration_s"] - end) <= 10.0
    assert detections[0]["start_utc"].startswith("2026-11-21T10:00:0")
    assert all(d["model_id"].startswith("move-cqtnet") for d in detections)
    assert list(out_dir.glob("*.csv")) and list(out_dir.glob("*.png"))


def test_monitor_reads_raw_pcm_from_stdin(catalog: dict[str, object], tmp_path: Path) -> None:
    stream: np.ndarray = catalog["stream"]  # type: ignore[assignment]
    pcm = (np.clip(stream, -1, 1) * 32767).astype("<i2").tobytes()
    out_dir = tmp_path / "pcm"
    run = csi("monitor", "-", "--pcm-rate", "16000", "--index", catalog["index"], "--out", out_dir,
              "--threshold", "0.75", "--channel", "tv", "--hop-s", "2", "--no-plots",
              stdin=pcm)  # fmt: skip
    assert run.returncode == 0, run.stderr.decode()
    lines = next(out_dir.glob("detections-tv-*.jsonl")).read_text().splitlines()
    assert [json.loads(x)["work_id"] for x in lines] == ["work2", "work0"]
    missing = csi(
        "monitor", "-", "--index", catalog["index"], "--out", out_dir, "--threshold", "0.9", stdin=b""
    )
    assert missing.returncode != 0 and b"--pcm-rate" in missing.stderr


def calibration_set(
    catalog: dict[str, object], root: Path, start_s: int, n_negatives: int, seed: int
) -> None:
    """root/positives.csv: a 30 s excerpt of each reference from start_s; root/neg: n_negatives
    other tunes of 30 s."""
    refs: dict[str, np.ndarray] = catalog["refs"]  # type: ignore[assignment]
    (root / "pos").mkdir()
    rows = ["path,work_id"]
    for work, audio in refs.items():
        sf.write(root / "pos" / f"{work}.wav", audio[start_s * SR : (start_s + 30) * SR], SR)
        rows.append(f"pos/{work}.wav,{work}")
    (root / "positives.csv").write_text("\n".join(rows) + "\n")
    (root / "neg").mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n_negatives):
        sf.write(root / "neg" / f"other{i}.wav", tune(rng, 30.0), SR)


def monitored_works(catalog: dict[str, object], calibration: Path, out_dir: Path) -> list[str]:
    """The works csi monitor --calibration reports in the catalog's stream, in order."""
    stream = Path(catalog["root"]) / "stream.wav"  # type: ignore[arg-type]
    run = csi("monitor", stream, "--index", catalog["index"], "--out", out_dir, "--calibration", calibration,
              "--no-plots", "--channel", "tv")  # fmt: skip
    assert run.returncode == 0, run.stderr.decode()
    lines = next(out_dir.rglob("*.jsonl")).read_text().splitlines()
    return [json.loads(line)["work_id"] for line in lines]


def test_calibrate_picks_a_threshold(catalog: dict[str, object], tmp_path: Path) -> None:
    # 6 negatives give 12 windows of 20 s: enough for a 10% false-alarm target
    calibration_set(catalog, tmp_path, start_s=5, n_negatives=6, seed=3)
    out = csi("calibrate", "--index", catalog["index"], "--positives", tmp_path / "positives.csv",
              "--negatives", tmp_path / "neg", "--far", "0.1", "--cohort", "2",
              "-o", tmp_path / "cal.json")  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()
    cal = json.loads((tmp_path / "cal.json").read_text())
    assert cal["far"] <= 0.1 and cal["n_neg"] >= 10 and 0 < cal["threshold"] <= 1.0
    assert cal["frr"] < 0.5  # exact excerpts of the references pass the threshold
    assert cal["cohort"] == 2  # recorded with the threshold, which csi monitor then uses
    stream = Path(catalog["root"]) / "stream.wav"  # type: ignore[arg-type]
    run = csi("monitor", stream, "--index", catalog["index"], "--out", tmp_path / "m",
              "--calibration", tmp_path / "cal.json", "--cohort", "0")  # fmt: skip
    assert run.returncode != 0 and b"calibrated with a cohort of 2, not 0" in run.stderr
    run = csi("monitor", stream, "--index", catalog["index"], "--out", tmp_path / "m", "--threshold", "0.5",
              "--cohort", "-2")  # fmt: skip
    assert run.returncode == 2 and b"--cohort must be an integer >= 0" in run.stderr
    # without impostors the default cohort is 4, which needs 5 works; this catalog has 3
    run = csi("calibrate", "--index", catalog["index"], "--positives", tmp_path / "positives.csv",
              "--negatives", tmp_path / "neg", "--no-impostors")  # fmt: skip
    assert run.returncode != 0 and b"a cohort of 4 works needs an index of at least 5 works" in run.stderr


def test_calibrate_detections_sets_the_monitor(catalog: dict[str, object], tmp_path: Path) -> None:
    """--per detection: one score per recording; csi monitor takes the tracker settings from it."""
    # 10 negative recordings: enough for a 10% target of false detections
    calibration_set(catalog, tmp_path, start_s=3, n_negatives=10, seed=4)
    out = csi("calibrate", "--index", catalog["index"], "--positives", tmp_path / "positives.csv",
              "--negatives", tmp_path / "neg", "--far", "0.1", "--cohort", "0", "--per", "detection",
              "--hop-s", "5", "--min-windows", "2", "--max-gap-windows", "1",
              "-o", tmp_path / "cal.json")  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()
    cal = json.loads((tmp_path / "cal.json").read_text())
    assert cal["per"] == "detection" and cal["n_neg"] == 10 and cal["n_pos"] == 3
    assert cal["recordings"] == {"positive": 3, "negative": 10}
    assert (cal["min_windows"], cal["max_gap_windows"], cal["hop_s"]) == (2, 1, 5.0)
    assert cal["frr"] == 0.0 and cal["far"] <= 0.1  # exact excerpts are detected
    stream = Path(catalog["root"]) / "stream.wav"  # type: ignore[arg-type]
    run = csi("monitor", stream, "--index", catalog["index"], "--out", tmp_path / "m",
              "--calibration", tmp_path / "cal.json", "--hop-s", "10", "--no-plots")  # fmt: skip
    assert run.returncode != 0 and b"calibrated detections with --hop-s 5.0, not 10.0" in run.stderr
    assert monitored_works(catalog, tmp_path / "cal.json", tmp_path / "m") == ["work2", "work0"]
    # too few negatives for the target: a clear error, not a threshold that promises nothing
    few = csi("calibrate", "--index", catalog["index"], "--positives", tmp_path / "positives.csv",
              "--negatives", tmp_path / "neg", "--far", "0.05", "--cohort", "0",
              "--per", "detection")  # fmt: skip
    assert few.returncode != 0 and b"10 negative recordings; give more negatives" in few.stderr


def test_calibrate_and_monitor_with_impostors(catalog: dict[str, object], tmp_path: Path) -> None:
    """--impostors: the packaged bundle's impostor set normalises the scores; the calibration names
    the set, csi monitor applies it, and a model or index without it is refused by name."""
    calibration_set(catalog, tmp_path, start_s=3, n_negatives=10, seed=5)
    out = csi("calibrate", "--index", catalog["index"], "--positives", tmp_path / "positives.csv",
              "--negatives", tmp_path / "neg", "--far", "0.1", "--per", "detection", "--impostors",
              "--hop-s", "5", "-o", tmp_path / "cal.json")  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()
    cal = json.loads((tmp_path / "cal.json").read_text())
    manifest = json.loads((default_bundle_path() / "model.json").read_text())
    assert cal["impostors"] == manifest["files"]["impostors.npy"] and cal["cohort"] == 0
    assert cal["frr"] == 0.0 and cal["far"] <= 0.1  # exact excerpts are detected
    stream = Path(catalog["root"]) / "stream.wav"  # type: ignore[arg-type]
    assert monitored_works(catalog, tmp_path / "cal.json", tmp_path / "m") == ["work2", "work0"]
    # by default (no --impostors, no --cohort) the bundle's impostor set is used: the same threshold
    auto = csi("calibrate", "--index", catalog["index"], "--positives", tmp_path / "positives.csv",
               "--negatives", tmp_path / "neg", "--far", "0.1", "--per", "detection",
               "--hop-s", "5")  # fmt: skip
    assert auto.returncode == 0, auto.stderr.decode()
    assert json.loads(auto.stdout)["threshold"] == cal["threshold"]
    assert json.loads(auto.stdout)["impostors"] == cal["impostors"]
    # the same model without its impostor set
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(default_bundle_path(), bare)
    del manifest["impostors"], manifest["files"]["impostors.npy"]
    (bare / "model.json").write_text(json.dumps(manifest))
    (bare / "impostors.npy").unlink()
    run = csi("monitor", stream, "--index", catalog["index"], "--out", tmp_path / "m2", "--model", bare,
              "--calibration", tmp_path / "cal.json", "--no-plots")  # fmt: skip
    assert run.returncode != 0 and b"which model" in run.stderr and b"does not have" in run.stderr
    run = csi("calibrate", "--index", catalog["index"], "--positives", tmp_path / "positives.csv",
              "--negatives", tmp_path / "neg", "--impostors", "--model", bare)  # fmt: skip
    assert run.returncode != 0 and b"has no impostor set" in run.stderr
    # without a set, the default is the catalog cohort (here 4 > the 3 works: refused by name)
    run = csi("calibrate", "--index", catalog["index"], "--positives", tmp_path / "positives.csv",
              "--negatives", tmp_path / "neg", "--model", bare)  # fmt: skip
    assert run.returncode != 0 and b"a cohort of 4 works" in run.stderr
    # an index built without impostor means (another bundle's build)
    no_means = tmp_path / "no_means.csi"
    built = csi("index", "build", Path(catalog["root"]) / "catalog", "-o", no_means, "--model", bare)  # type: ignore[arg-type]
    assert built.returncode == 0, built.stderr.decode()
    # one index is all with means or all without: --update refuses to mix them, both ways
    with_means = tmp_path / "with_means.csi"
    with_means.write_bytes(Path(catalog["index"]).read_bytes())  # type: ignore[arg-type]
    more = Path(catalog["root"]) / "catalog" / "work1"  # type: ignore[arg-type]
    for index, model in ((with_means, bare), (no_means, default_bundle_path())):
        run = csi("index", "build", more.parent, "-o", index, "--update", "--model", model)
        assert run.returncode != 0 and b"an index must be all one or the other" in run.stderr
    run = csi("monitor", stream, "--index", no_means, "--out", tmp_path / "m3",
              "--calibration", tmp_path / "cal.json", "--no-plots")  # fmt: skip
    assert run.returncode != 0 and b"built without impostor means" in run.stderr
    # --threshold with --impostors: a threshold on impostor-normalised scores, the model's own set
    run = csi("monitor", stream, "--index", catalog["index"], "--out", tmp_path / "m5", "--threshold", "0.05",
              "--impostors", "--no-plots")  # fmt: skip
    assert run.returncode == 0, run.stderr.decode()
    run = csi("monitor", stream, "--index", catalog["index"], "--out", tmp_path / "m6", "--threshold", "0.05",
              "--impostors", "--no-plots", "--model", bare)  # fmt: skip
    assert run.returncode != 0 and b"has no impostor set" in run.stderr
    # a calibration without impostors cannot be used with --impostors
    plain = dict(cal, impostors=None)
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    run = csi("monitor", stream, "--index", catalog["index"], "--out", tmp_path / "m4", "--impostors",
              "--calibration", tmp_path / "plain.json", "--no-plots")  # fmt: skip
    assert run.returncode != 0 and b"calibrated without impostors" in run.stderr


def test_index_of_another_model_is_refused(catalog: dict[str, object], tmp_path: Path) -> None:
    other = ReferenceIndex(256, model_id="some-other-model")
    other.add(np.eye(256, dtype=np.float32)[:3], ["a", "b", "c"])
    other.save(tmp_path / "other.csi")
    query = Path(catalog["root"]) / "catalog" / "work0" / "reference.wav"  # type: ignore[arg-type]
    out = csi("identify", query, "--index", tmp_path / "other.csi")
    assert out.returncode == 2
    assert b"some-other-model" in out.stderr and b"rebuild the index" in out.stderr
    assert default_bundle_path().is_dir()
