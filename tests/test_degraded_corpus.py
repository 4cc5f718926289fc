"""Broadcast-degraded training copies (csi_training.render.degraded_corpus): the plan is
deterministic and follows its contract, files are real degraded audio in a readable manifest,
an interrupted run resumes, and a broken source is reported and left out."""

from __future__ import annotations

import csv
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

from csi_training.data import read_manifest  # noqa: E402
from csi_training.render.broadcast import CHAIN_LENGTH, CHAIN_ORDER  # noqa: E402
from csi_training.render.degraded_corpus import degrade_corpus, plan_copies  # noqa: E402

SR = 16000


def rows(n_works: int, n_versions: int) -> list[dict[str, str]]:
    return [
        {"path": f"a/w{w}/v{v}.flac", "work_id": f"work:{w}", "version_id": f"v{v}"}
        for w in range(n_works)
        for v in range(n_versions)
    ]


def test_the_plan(rng: np.random.Generator) -> None:
    manifest = rows(40, 3)
    plan = plan_copies(manifest, 3, seed=7)
    assert len(plan) == 120
    shuffled = [manifest[i] for i in rng.permutation(len(manifest))]
    assert plan_copies(shuffled, 3, seed=7) == plan  # whatever the row order
    assert plan_copies(manifest, 3, seed=8) != plan
    assert len({c.path for c in plan}) == len(plan)
    sources = {(r["work_id"], r["path"]) for r in manifest}
    for c in plan:
        assert (c.work_id, c.source) in sources  # a recording of its own work
        assert CHAIN_LENGTH[0] <= len(c.chain) <= CHAIN_LENGTH[1]
        order = [CHAIN_ORDER.index(k) for k in c.chain]
        assert order == sorted(set(order))  # distinct, in broadcast order
        assert re.fullmatch(r"v[0-2]\+bc[0-2]", c.version_id) and c.path.endswith(c.version_id + ".flac")
    # every degradation and every chain length turns up
    assert {k for c in plan for k in c.chain} == set(CHAIN_ORDER)
    assert {len(c.chain) for c in plan} == set(range(CHAIN_LENGTH[0], CHAIN_LENGTH[1] + 1))
    with pytest.raises(ValueError, match="copies_per_work must be >= 1"):
        plan_copies(manifest, 0)


def tone(rng: np.random.Generator, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f0 = float(rng.uniform(150, 400))
    return (0.2 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(2 * np.pi * 2.5 * f0 * t)).astype(np.float32)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the mp3 degradation needs ffmpeg")
def test_copies_on_disk_resume_and_a_broken_source(
    tmp_path: Path, rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "corpus"
    lines = ["path,work_id,version_id"]
    for w in range(3):
        for v in range(2):
            path = src / f"w{w}" / f"v{v}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, tone(rng, 4.0), SR)
            lines.append(f"corpus/w{w}/v{v}.flac,w{w},v{v}")
    (src / "w3").mkdir()
    (src / "w3" / "v0.flac").write_bytes(b"not audio at all")
    lines.append("corpus/w3/v0.flac,w3,v0")
    manifest = tmp_path / "train.csv"
    manifest.write_text("\n".join(lines) + "\n")

    with caplog.at_level(logging.WARNING):
        out = degrade_corpus(manifest, tmp_path / "bc", 2, seed=1)
    assert "2 of 8 degraded copies skipped" in caplog.text  # both copies of the broken work
    entries = read_manifest(out)
    assert {e.work_id for e in entries} == {"w0", "w1", "w2"}  # the broken work is left out
    assert len(entries) == 6
    with open(tmp_path / "bc" / "copies.csv", newline="") as fh:
        copies = list(csv.DictReader(fh))
    assert len(copies) == 6 and all(c["chain"] and c["source"].startswith("corpus/") for c in copies)
    for e, c in zip(entries, copies):
        y, sr = sf.read(e.path, dtype="float32")
        assert sr == SR and np.isfinite(y).all() and np.abs(y).max() <= 1.0
        rms_db = 10 * np.log10(np.mean(np.square(y.astype(np.float64))))
        assert abs(rms_db - (-20.0)) < 3.0  # at the corpus level, the clip aside
        x, _ = sf.read(tmp_path / c["source"], dtype="float32")
        assert len(y) != len(x) or not np.allclose(y, x, atol=1e-3)  # really changed

    # a second run keeps the files it finds (an interrupted run resumes)
    stamps = {e.path: Path(e.path).stat().st_mtime_ns for e in entries}
    Path(entries[0].path).unlink()
    degrade_corpus(manifest, tmp_path / "bc", 2, seed=1)
    for e in read_manifest(out):
        if e.path != entries[0].path:
            assert Path(e.path).stat().st_mtime_ns == stamps[e.path]
        assert Path(e.path).exists()
