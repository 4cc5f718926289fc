"""recipe: discover through the shared trainer: backbone-only checkpoints that load and export like any
other, exact resume (the auxiliary networks included), and the config section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_trainer import make_corpus, tiny_config

from csi_training.checkpoint import CheckpointError, load_checkpoint
from csi_training.config import ConfigError, config_from_dict, load_config
from csi_training.trainer import train

FAST_DISCOVER = {"discover__mi_warmup_steps": 1, "discover__adv_warmup_steps": 1}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), n_works=10, n_versions=3, seed=11)


@pytest.fixture(scope="module")
def discover_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "discover"
    train(config_from_dict(tiny_config(corpus, out, recipe="discover", **FAST_DISCOVER)), progress=False)
    return out


def test_discover_trains_and_logs_its_modules(discover_run: Path) -> None:
    history = [json.loads(line) for line in (discover_run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for h in history:
        assert {"mi_f0", "mi_timbre", "q_nll", "disc_loss", "adv_loss"} <= set(h["train"])
        assert all(torch.isfinite(torch.tensor(v)) for v in h["train"].values())


def test_checkpoint_holds_the_backbone_only_and_exports(discover_run: Path, tmp_path: Path) -> None:
    weights = load_file(str(discover_run / "best" / "model.safetensors"))
    assert weights and all(k.startswith("backbone.") for k in weights)
    ckpt = load_checkpoint(discover_run / "best")
    assert ckpt.config.recipe == "discover"
    assert set(weights) == {f"backbone.{k}" for k in ckpt.encoder.backbone.state_dict()}
    state = torch.load(discover_run / "last" / "train_state.pt", weights_only=True)
    assert {"club.f0.mu.0.weight", "discriminator.net.0.weight"} <= set(state["discover"]["modules"])

    pytest.importorskip("onnx", reason="export needs onnx (the export extra)")
    pytest.importorskip("onnxruntime", reason="export needs onnxruntime")
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    from csi_export.build import export_bundle
    from csi_runtime.bundle import load_bundle

    torch.set_num_threads(1)
    # the tiny run trains on 3 s crops, shorter than the exported graph's minimum window
    bundle = export_bundle(discover_run / "best", tmp_path / "bundle", window_s=4.0).path
    loaded = load_bundle(bundle)
    assert loaded.manifest["embedding_dim"] == 32
    assert loaded.manifest["source"]["config"]["recipe"] == "discover"
    import onnxruntime as ort

    features = np.random.default_rng(0).gamma(0.5, 1.0, (2, 84, 40)).astype(np.float32)
    session = ort.InferenceSession(str(loaded.graph_path("encoder")), providers=["CPUExecutionProvider"])
    (onnx_emb,) = session.run(None, {session.get_inputs()[0].name: features})
    with torch.no_grad():
        torch_emb = ckpt.encoder.backbone(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(onnx_emb, torch_emb, rtol=1e-4, atol=1e-4)


def test_resume_is_exact_with_the_auxiliary_networks(
    corpus: Path, discover_run: Path, tmp_path: Path
) -> None:
    cfg = config_from_dict(tiny_config(corpus, tmp_path / "b", recipe="discover", **FAST_DISCOVER))
    assert train(cfg, progress=False, stop_after=2).epochs_run == 2
    assert train(cfg, resume=True, progress=False).epochs_run == 1
    for name in ("model.safetensors",):
        wa = load_file(str(discover_run / "last" / name))
        wb = load_file(str(tmp_path / "b" / "last" / name))
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)
    sa = torch.load(discover_run / "last" / "train_state.pt", weights_only=True)["discover"]["modules"]
    sb = torch.load(tmp_path / "b" / "last" / "train_state.pt", weights_only=True)["discover"]["modules"]
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)

    # a move run's last checkpoint cannot be resumed as a discover run, nor the other way round
    with pytest.raises(CheckpointError, match="recipe"):
        train(
            config_from_dict(tiny_config(corpus, tmp_path / "b", optim__epochs=4)),
            resume=True,
            progress=False,
        )


def test_discover_with_both_modules_off_is_the_move_recipe(corpus: Path, tmp_path: Path) -> None:
    move = tiny_config(corpus, tmp_path / "move", optim__epochs=1)
    off = tiny_config(
        corpus,
        tmp_path / "off",
        optim__epochs=1,
        recipe="discover",
        discover__kdm=False,
        discover__gadm=False,
    )
    train(config_from_dict(move), progress=False)
    train(config_from_dict(off), progress=False)
    wa = load_file(str(tmp_path / "move" / "last" / "model.safetensors"))
    wb = load_file(str(tmp_path / "off" / "last" / "model.safetensors"))
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_torchrun_ddp_keeps_the_auxiliary_networks_replicas(corpus: Path, tmp_path: Path) -> None:
    """recipe: discover under torchrun with 2 CPU processes (gloo): the backbone and the vCLUB and
    discriminator networks hold identical weights on both ranks after every epoch."""
    config = tmp_path / "cfg.json"
    cfg = tiny_config(corpus, tmp_path / "run", optim__epochs=2, data__works_per_batch=2, recipe="discover")
    cfg["discover"] = {"mi_warmup_steps": 1, "adv_warmup_steps": 1}
    config.write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "csi_runtime", "train", "--config", str(config), "--no-progress"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stderr.count("parameters identical on 2 ranks") == 4  # backbone + auxiliary, 2 epochs
    assert run.stdout.count("checkpoints: ") == 2  # both workers flushed before exit_worker
    header = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert header["world_size"] == 2 and header["epoch"] == 2


def test_config_section(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "recipe: discover\ndata: {manifest: m.csv}\n"
        "discover: {factors: [timbre], mask_ratio: 0.2, mask: random, transition: cosine}\n"
    )
    config = load_config(path)
    assert config.discover.factors == ("timbre",) and config.discover.mask == "random"
    with pytest.raises(ConfigError, match=r"discover\.mask_rate"):
        load_config(path, {"discover.mask_rate": 0.2})
    for key, value, message in (
        ("discover.mask_ratio", 1.0, "mask_ratio"),
        ("discover.factors", ["f0", "key"], "factors"),
        ("discover.factors", "f0", "expected a list"),
        ("discover.mi_weight", -1.0, "mi_weight"),
        ("discover.logvar_min", 5.0, "logvar_min"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(path, {key: value})
