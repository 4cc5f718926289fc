"""The DisCover ablation command end to end on a tiny synthetic corpus: every variant trained from the
same start, a table and its JSON written, the few-shot protocol (one reference per test work)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_trainer import make_corpus, tiny_config

from csi_training.config import config_from_dict
from csi_training.experiments.discover_ablation import main
from csi_training.trainer import train


def test_ablation_writes_the_table(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    train_manifest = make_corpus(tmp_path / "train", n_works=10, n_versions=3, seed=21)
    test_manifest = make_corpus(tmp_path / "test", n_works=6, n_versions=4, seed=22)
    start = tmp_path / "start"
    train(config_from_dict(tiny_config(train_manifest, start, optim__epochs=1)), progress=False)
    config = tmp_path / "tiny.json"
    cfg = tiny_config(train_manifest, tmp_path / "unused")
    cfg["recipe"] = "discover"
    cfg["discover"] = {"mi_warmup_steps": 1, "adv_warmup_steps": 1, "club_hidden": 16, "disc_hidden": 16}
    config.write_text(json.dumps(cfg))
    out = tmp_path / "report" / "discover.md"
    argv = [
        "--out", str(out), "--train-manifest", str(train_manifest), "--test-manifest", str(test_manifest),
        "--cache-dir", str(tmp_path / "cache"), "--config", str(config), "--work-dir", str(tmp_path / "work"),
        "--init-from", str(start / "best"), "--train-works", "8", "--epochs", "1", "--steps-per-epoch", "2",
        "--variants", "backbone,both", "--few-shot", "--few-shot-variants", "gadm",
        "--mi-steps", "20", "--mi-repeats", "2", "--set", "data.val_works=2",
    ]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["train_works"] == 8 and result["test_works"] == 6 and result["test_tracks"] == 24
    assert [r["variant"] for r in result["rows"]] == ["start", "backbone", "both"]
    assert [r["variant"] for r in result["few_shot_rows"]] == ["start", "gadm"]
    for r in result["rows"]:
        assert r["queries"] == 24 and 0.0 <= r["MAP"] <= 1.0 and r["MR1"] >= 1.0
    for r in result["few_shot_rows"]:  # 6 works x 4 versions: 6 references, 18 queries
        assert r["queries"] == 18 and r["MAP"] == pytest.approx(r["MRR"])
    assert json.loads((tmp_path / "work" / "both" / "last" / "config.json").read_text())["config"][
        "recipe"
    ] == ("discover")
    few = (tmp_path / "work" / "train_fewshot.csv").read_text().splitlines()[1:]
    assert len(few) == 8 * 2  # at most 2 versions of each training work
    table = out.read_text()
    assert "+KDM +GADM (DisCover)" in table and "Few-shot split" in table
    assert f"Command: `python -m csi_training.experiments.discover_ablation --out {out}" in table

    # a second call finds every run finished and only re-evaluates
    mtime = (tmp_path / "work" / "both" / "last" / "model.safetensors").stat().st_mtime_ns
    assert main(argv) == 0
    assert (tmp_path / "work" / "both" / "last" / "model.safetensors").stat().st_mtime_ns == mtime

    # the report re-written from the JSON, with a note, leaves the command as it was run
    assert main([*argv, "--report-only", "--note", "SMOKE SCALE"]) == 0
    table = out.read_text()
    assert table.splitlines()[1] == "SMOKE SCALE" and "--report-only" not in table and "--note" not in table
    assert "+KDM +GADM (DisCover)" in table


def test_few_shot_split_alone_from_scratch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    train_manifest = make_corpus(tmp_path / "train", n_works=8, n_versions=3, seed=23)
    test_manifest = make_corpus(tmp_path / "test", n_works=5, n_versions=3, seed=24)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(train_manifest, tmp_path / "unused")))
    out = tmp_path / "fewshot.md"
    argv = [
        "--out", str(out), "--train-manifest", str(train_manifest), "--test-manifest", str(test_manifest),
        "--cache-dir", str(tmp_path / "cache"), "--config", str(config), "--work-dir", str(tmp_path / "work"),
        "--epochs", "1", "--steps-per-epoch", "2", "--mi-steps", "10", "--mi-repeats", "1",
        "--set", "data.val_works=2", "--set", "data.versions_per_work=2",
    ]  # fmt: skip
    with pytest.raises(SystemExit):  # an empty --variants with nothing else to run is refused
        main([*argv, "--variants", ""])
    assert "nothing to run" in capsys.readouterr().err

    few_only = [
        *argv,
        "--variants",
        "",
        "--few-shot",
        "--few-shot-from-scratch",
        "--few-shot-variants",
        "backbone",
    ]
    assert main([*few_only, "--whiten"]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["rows"] == [] and [r["variant"] for r in result["few_shot_rows"]] == ["backbone"] * 2
    plain, whitened = result["few_shot_rows"]
    assert plain["queries"] == whitened["queries"] == 5 * 2  # one reference per test work
    assert "whitened" not in plain and whitened["whitened"] and whitened["regularization"] > 0
    run = tmp_path / "work" / "fewshot_backbone"
    assert json.loads((run / "last" / "config.json").read_text())["config"]["init_from"] in (None, "")
    fitted = json.loads((run / "whitened" / "config.json").read_text())["whitening"]
    assert fitted["source"] == str(run / "last") and fitted["manifest"].endswith("train_fewshot.csv")
    assert fitted["regularization"] == whitened["regularization"]
    table = out.read_text()
    assert "The variants train from scratch." in table
    assert table.count("| variant | queries |") == 1  # no empty main table
    assert f"backbone alone (recipe move), whitened (ε {whitened['regularization']:g})" in table

    # a second call re-uses the trained run and its whitening
    mtime = (run / "whitened" / "model.safetensors").stat().st_mtime_ns
    assert main([*few_only, "--whiten"]) == 0
    assert (run / "whitened" / "model.safetensors").stat().st_mtime_ns == mtime
