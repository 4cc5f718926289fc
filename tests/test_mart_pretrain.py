"""MART pre-training loop, fine-tuning and evidence plumbing (csi_training.experiments.mart*) on a
tiny generated corpus: checkpoints, exact resume, skipped bad files, config refusals, the CSI
network's shapes and the documentation table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from csi_training.experiments.mart import (
    DOC_BEGIN,
    DOC_END,
    FinetuneSettings,
    finetune,
    track_features,
    write_doc_table,
)
from csi_training.experiments.mart_pretrain import (
    load_pretrain_checkpoint,
    pretrain,
    pretrain_config_from_dict,
)
from csi_training.frontends.hierarchical import HierarchyConfig
from csi_training.models.fcn import FCN7
from csi_training.models.mart import MartCQTNet

SR = 16000
TINY = {
    "sample_rate": SR,
    "levels": 3,
    "splits": 2,
    "frames": 8,
    "finest_hop": 32,
    "n_fft": 256,
    "n_mels": 16,
}


def _corpus(root: Path, rng: np.random.Generator, works: int = 4, versions: int = 2) -> Path:
    rows = ["path,work_id,version_id"]
    for w in range(works):
        f0 = 200 * 2 ** (w / 3)
        for v in range(versions):
            t = np.arange(int(SR * rng.uniform(0.3, 0.6))) / SR
            x = 0.3 * np.sin(2 * np.pi * f0 * (1 + 0.02 * v) * t) + 0.01 * rng.standard_normal(len(t))
            name = f"w{w}_v{v}.flac"
            sf.write(root / name, x.astype(np.float32), SR)
            rows.append(f"{name},work{w},v{v}")
    (root / "broken.flac").write_bytes(b"not audio at all")
    sf.write(root / "silent.flac", np.zeros(SR // 2, dtype=np.float32), SR)
    rows += ["broken.flac,bad,v0", "silent.flac,bad,v1"]
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def _config(manifest: Path, steps: int, **optim: int) -> dict:
    return {
        "seed": 3,
        "threads": 1,
        "model": {
            "hierarchy": TINY,
            "width": "tiny",
            "level_weights": [1.0, 0.5, 0.5],
            "attn_dim": 12,
            "ffn_dim": 16,
            "projection_hidden": 16,
            "projection_dim": 8,
        },
        "augment": {"noise_p": 0.5},
        "data": {"manifest": str(manifest), "val_files": 3, "max_s": 5.0},
        "optim": {"batch_size": 3, "steps": steps, "eval_every": 2, **optim},
    }


def test_pretrain_checkpoints_and_resumes_exactly(tmp_path: Path, rng: np.random.Generator) -> None:
    manifest = _corpus(tmp_path, rng)
    straight = pretrain(pretrain_config_from_dict(_config(manifest, 4)), tmp_path / "a")
    assert [r["step"] for r in straight["history"]] == [2, 4]
    assert straight["train_files"] + straight["val_files"] == 8  # the broken and the silent file skipped
    for r in straight["history"]:
        assert np.isfinite(r["train"]["loss"]) and np.isfinite(r["val"]["loss"])

    pretrain(pretrain_config_from_dict(_config(manifest, 2)), tmp_path / "b")
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(pretrain_config_from_dict(_config(manifest, 4)), tmp_path / "b")
    resumed = pretrain(pretrain_config_from_dict(_config(manifest, 4)), tmp_path / "b", resume=True)
    assert [r["step"] for r in resumed["history"]] == [2, 4]
    model_a, config_a, metrics_a = load_pretrain_checkpoint(tmp_path / "a" / "checkpoint")
    model_b, _, _ = load_pretrain_checkpoint(tmp_path / "b" / "checkpoint")
    for (name, p), (_, q) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    assert config_a.model.hierarchy == HierarchyConfig(**TINY)
    assert metrics_a["current"]["step"] == 4
    lines = (tmp_path / "a" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]


def test_config_refusals(tmp_path: Path) -> None:
    good = _config(tmp_path / "m.csv", 2)
    with pytest.raises(ValueError, match="unknown top-level"):
        pretrain_config_from_dict({**good, "optimizer": {}})
    with pytest.raises(ValueError, match=r"optim\.stepz"):
        pretrain_config_from_dict({**good, "optim": {"stepz": 3}})
    with pytest.raises(ValueError, match="batch_size"):
        pretrain_config_from_dict({**good, "optim": {"batch_size": 1}})
    with pytest.raises(ValueError, match="unknown MartConfig"):
        pretrain_config_from_dict({**good, "model": {"hierarchy": TINY, "layerz": 2}})
    with pytest.raises(ValueError, match="manifest"):
        pretrain(pretrain_config_from_dict({**good, "data": {"manifest": ""}}), tmp_path / "x")
    with pytest.raises(ValueError, match="not a MART pre-training checkpoint"):
        load_pretrain_checkpoint(tmp_path)


def test_mart_cqtnet_windows_the_track(rng: np.random.Generator) -> None:
    torch.manual_seed(int(rng.integers(2**31)))
    encoder = FCN7(16, "tiny")
    net = MartCQTNet(encoder, window_frames=8, window_hop=4, embedding_dim=16, width="small")
    frames = int(rng.integers(20, 60))
    x = torch.randn(2, 16, frames)
    seq = net.clip_vectors(x)
    assert seq.shape == (2, encoder.output_dim, 1 + (frames - 8) // 4)
    # window w is the encoder applied to frames [4w, 4w + 8)
    w = int(rng.integers(0, seq.shape[2]))
    encoder.eval()
    torch.testing.assert_close(net.clip_vectors(x)[:, :, w], encoder(x[:, :, 4 * w : 4 * w + 8]))
    out = net(torch.randn(3, 16, 5))  # shorter than a window: repeated to fill it
    assert out.shape == (3, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_finetune_runs_and_reports_csi_metrics(tmp_path: Path, rng: np.random.Generator) -> None:
    manifest = _corpus(tmp_path, rng, works=4, versions=3)
    from csi_training.data import read_manifest

    h = HierarchyConfig(**TINY)
    entries = read_manifest(manifest)
    feats = track_features(entries, h, 5.0)
    assert len(feats.features) == 12 and all(f.shape[0] == 16 for f in feats.features)
    settings = FinetuneSettings(
        clip_s=0.1,
        eval_max_s=1.0,
        works_per_batch=2,
        versions_per_work=2,
        steps=2,
        embedding_dim=16,
        cqtnet_width="small",
    )
    result = finetune(FCN7(16, "tiny"), h, feats, feats, settings)
    assert set(result["test"]) >= {"MAP", "P@10", "MR1"}
    assert 0 <= result["test"]["MAP"] <= 1 and result["test"]["MR1"] >= 1
    assert result["train_works"] == 4 and result["test_tracks"] == 12


def test_doc_table_is_replaced_between_markers(tmp_path: Path) -> None:
    doc = tmp_path / "mart.md"
    doc.write_text(f"# MART\n\nbefore\n\n{DOC_BEGIN}\nold table\n{DOC_END}\n\nafter\n")
    metrics = {"MAP": 0.5, "P@10": 0.1, "MR1": 3.0}
    ft = {
        "test": metrics,
        "seconds_per_step": 1.0,
        "train_tracks": 8,
        "train_works": 2,
        "test_tracks": 4,
        "test_works": 2,
    }
    results = {
        "scale": "smoke",
        "finetune": {"MART (pre-trained encoder)": ft, "from scratch": ft},
        "variants": {"MART": {"probe": metrics, "pretrain_val": {"accuracy": 0.25}}},
    }
    write_doc_table(doc, results, command="python -m csi_training.experiments.mart evidence")
    write_doc_table(doc, results, command="python -m csi_training.experiments.mart evidence")
    text = doc.read_text()
    assert "old table" not in text and text.count(DOC_BEGIN) == 1
    assert text.startswith("# MART\n\nbefore") and text.rstrip().endswith("after")
    assert "smoke run" in text and "| MART | 0.500 | 0.100 | 3.0 | 0.250 |" in text
    assert "chance" not in text  # results written before the chance row existed still render

    results["scale"], results["chance"] = "medium", {"MAP": 0.02, "P@10": 0.01, "MR1": 99.0}
    write_doc_table(doc, results)
    text = doc.read_text()
    assert "smoke run" not in text and "1.5 hours" in text
    assert text.count("| random unit vectors (chance, mean of 5 draws) | 0.020 | 0.010 | 99.0 | |") == 2


def test_chance_level_matches_random_rankings() -> None:
    """chance_metrics (random unit vectors through the metrics) against the exact expected AP of a
    random ranking: R relevant among N items, E[AP] = (H_N + (R - 1)(N - H_N)/(N - 1)) / N."""
    from csi_training.experiments.mart import chance_metrics

    rng = np.random.default_rng()
    for works, versions in ((60, 2), (50, 4), (30, 6)):
        ids = [f"w{w}" for w in range(works) for _ in range(versions)]
        n_items, relevant = len(ids) - 1, versions - 1
        harmonic = float(np.sum(1.0 / np.arange(1, n_items + 1)))
        expected = (harmonic + (relevant - 1) * (n_items - harmonic) / (n_items - 1)) / n_items
        got = chance_metrics(ids, dim=64, draws=160, seed=int(rng.integers(1 << 30)))
        assert abs(got["MAP"] - expected) < 0.12 * expected, (works, versions, got["MAP"], expected)
        assert got["MR1"] > n_items / (2 * relevant + 2)  # the first relevant item sits deep


def test_cli_refuses_unknown_finetune_settings(tmp_path: Path) -> None:
    from csi_training.experiments.mart import main

    with pytest.raises(SystemExit, match="unknown fine-tuning setting"):
        main(
            [
                "finetune",
                "--init",
                "none",
                "--train-manifest",
                "a.csv",
                "--test-manifest",
                "b.csv",
                "--out",
                str(tmp_path),
                "--set",
                "stepz=3",
            ]
        )


def test_csi_train_runs_a_pretraining_config(tmp_path: Path, rng: np.random.Generator) -> None:
    """`csi train --config` with `recipe: mart_pretrain` pre-trains (as the driver does, bit for bit),
    takes --out and --set, and refuses a config without out_dir or with another recipe."""
    import subprocess
    import sys

    import yaml

    manifest = _corpus(tmp_path, rng)
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump({"recipe": "mart_pretrain", **_config(manifest, 4)}))

    def csi_train(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "csi_runtime", "train", "--config", str(config), "--no-progress", *extra],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    run = csi_train("--out", str(tmp_path / "cli"), "--set", "optim.steps=2")
    assert run.returncode == 0, run.stderr
    assert "checkpoint:" in run.stdout
    direct = pretrain(pretrain_config_from_dict({**_config(manifest, 2)}), tmp_path / "direct")
    model_cli, config_cli, _ = load_pretrain_checkpoint(tmp_path / "cli" / "checkpoint")
    model_direct, _, _ = load_pretrain_checkpoint(tmp_path / "direct" / "checkpoint")
    assert config_cli.optim.steps == 2 and [r["step"] for r in direct["history"]] == [2]
    for (name, p), (_, q) in zip(
        model_cli.state_dict().items(), model_direct.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name

    no_out = csi_train()
    assert no_out.returncode != 0 and "MART pre-training needs out_dir (or --out)" in no_out.stderr
    with pytest.raises(ValueError, match="is not a pre-training recipe"):
        pretrain_config_from_dict({**_config(manifest, 2), "recipe": "move"})
