"""`csi data notes|render|scan` as a user runs them: real subprocesses, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from csi_training.data import read_manifest


def _csi(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "csi_runtime", *args], capture_output=True, text=True, timeout=timeout
    )


def test_notes_then_render_then_scan(tmp_path: Path) -> None:
    notes = tmp_path / "notes.npz"
    run = _csi(
        "data", "notes", "--out", str(notes), "--limit", "3", "--sources", "essenFolksong/altdeu10.abc"
    )
    assert run.returncode == 0, run.stderr
    assert "3 distinct works" in run.stdout and notes.exists()

    corpus = tmp_path / "corpus"
    args = [
        "data",
        "render",
        "--notes",
        str(notes),
        "--out",
        str(corpus),
        "--versions",
        "2",
        "--max-duration-s",
        "8",
    ]
    run = _csi(*args)
    assert run.returncode == 0, run.stderr
    entries = read_manifest(corpus / "manifest.csv")
    assert len(entries) == 6 and len({e.work_id for e in entries}) == 3
    for e in entries:
        audio, sr = sf.read(e.path, dtype="float32")
        assert sr == 16000 and 0 < len(audio) <= 8 * sr + 1 and np.abs(audio).max() > 1e-3
    # rendering again resumes: nothing is redone, the manifest is unchanged
    before = (corpus / "manifest.csv").read_text()
    assert _csi(*args).returncode == 0
    assert (corpus / "manifest.csv").read_text() == before

    run = _csi("data", "scan", "--manifest", str(corpus / "manifest.csv"))
    assert run.returncode == 0, run.stdout + run.stderr
    # a damaged file is reported by scan (exit 1) with its path
    entries[0].path.write_bytes(b"fLaC" + bytes(64))
    run = _csi("data", "scan", "--manifest", str(corpus / "manifest.csv"))
    assert run.returncode == 1 and str(entries[0].path) in run.stdout


def test_render_refuses_unknown_renderer(tmp_path: Path) -> None:
    run = _csi("data", "render", "--out", str(tmp_path / "c"), "--renderer", "timidity")
    assert run.returncode == 2 and "invalid choice" in run.stderr
