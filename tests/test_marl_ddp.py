"""``recipe: marl`` through the ``csi train`` command line under torchrun (2 CPU processes, gloo): the
backbone, the expert heads and the decoder stay replicas, with the optional triplet term switched on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_marl_recipe import marl_config
from test_trainer import make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("marl_ddp_corpus"), n_works=12, n_versions=3, seed=13)


def test_torchrun_ddp_keeps_the_whole_vae_replicas(corpus: Path, tmp_path: Path) -> None:
    cfg = marl_config(corpus, tmp_path / "run", optim__epochs=2, data__works_per_batch=2)
    cfg["marl"] = {**cfg["marl"], "triplet_weight": 0.5}
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "csi_runtime", "train", "--config", str(config), "--no-progress"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    # one checksum over backbone, heads and decoder (one module) per epoch
    assert run.stderr.count("parameters identical on 2 ranks") == 2
    assert run.stdout.count("checkpoints: ") == 2  # both workers flushed before exit_worker
    header = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert header["world_size"] == 2 and header["epoch"] == 2 and header["config"]["recipe"] == "marl"
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert all(h["train"]["triplet"] >= 0 and h["train"]["recon"] > 0 for h in history)
