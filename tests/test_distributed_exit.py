"""``exit_worker``: a torchrun worker leaves without interpreter teardown, yet loses none of its output."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from csi_training.distributed import is_torchrun_worker

ROOT = Path(__file__).resolve().parents[1]


def test_exit_worker_flushes_streams_and_logs_and_keeps_the_code(tmp_path: Path) -> None:
    log_file = tmp_path / "worker.log"
    script = textwrap.dedent(
        f"""
        import atexit, logging, logging.handlers, sys
        from csi_training.distributed import exit_worker
        # holds records until it is flushed or closed
        handler = logging.handlers.MemoryHandler(100, target=logging.FileHandler({str(log_file)!r}))
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        logging.info("saved the checkpoint")
        atexit.register(lambda: print("teardown ran"))
        sys.stdout.write("result line\\n")  # a pipe: block-buffered until flushed
        sys.stderr.write("last words\\n")
        exit_worker(3)
        print("never reached")
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("training", "runtime"))}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 3
    assert run.stdout == "result line\n"  # flushed; neither atexit nor the code after it ran
    assert "last words" in run.stderr
    assert log_file.read_text() == "saved the checkpoint\n"  # the buffering handler was flushed


@pytest.mark.parametrize(("world", "expected"), [(None, False), ("1", False), ("2", True)])
def test_is_torchrun_worker(monkeypatch: pytest.MonkeyPatch, world: str | None, expected: bool) -> None:
    if world is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world)
    assert is_torchrun_worker() is expected
