"""A save killed at any moment (kill -9) leaves the previous index file intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from csi_runtime import ReferenceIndex

SAVER = textwrap.dedent(
    """
    import sys, numpy as np
    from csi_runtime import ReferenceIndex
    rng = np.random.default_rng(1)
    index = ReferenceIndex(256, dtype="float32")
    vectors = rng.standard_normal((150_000, 256)).astype(np.float32)
    index.add(vectors, [f"new{i // 3}" for i in range(150_000)])
    print("saving", flush=True)
    for _ in range(100):
        index.save(sys.argv[1])
    """
)


@pytest.mark.slow
def test_kill_during_save_keeps_the_old_file(rng: np.random.Generator, tmp_path: Path) -> None:
    path = tmp_path / "catalog.csi"
    old = ReferenceIndex(256, dtype="float32")
    old_vectors = rng.standard_normal((50, 256)).astype(np.float32)
    old.add(old_vectors, [f"old{i}" for i in range(50)])
    old.save(path)
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    outcomes = {"old": 0, "new": 0, "killed_mid_write": 0}
    for trial in range(6):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "saving"
        time.sleep(float(rng.uniform(0.0, 0.6)) if trial else 0.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        loaded = ReferenceIndex.load(path, verify=True)  # intact: one of the two versions, fully
        if len(loaded) == 50:
            outcomes["old"] += 1
            assert loaded.search(old_vectors[3], 1)[0][0].work_id == "old3"
        else:
            outcomes["new"] += 1
            assert len(loaded) == 150_000 and loaded.num_works == 50_000
        for leftover in tmp_path.glob(".catalog.csi.tmp-*"):
            outcomes["killed_mid_write"] += 1
            leftover.unlink()  # what a killed writer leaves behind: never the target itself
    assert outcomes["old"] >= 1 and outcomes["killed_mid_write"] >= 1, outcomes
