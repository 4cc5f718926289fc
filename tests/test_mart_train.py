"""MART in ``csi train``: ``model.name: mart`` builds MartCQTNet on a log-mel frontend, trains and
checkpoints like any backbone, and ``init_from`` takes a MART pre-training checkpoint's FCN-7.

References: the reloaded encoder against a naive forward (a Python loop over the log-mel windows, one
FCN-7 call each, built from the checkpoint file's tensors by key); loaded encoder weights against the
pre-training checkpoint's tensors, bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_trainer import make_corpus, tiny_config

from csi_training.checkpoint import CheckpointError, init_backbone, load_checkpoint, save_checkpoint
from csi_training.config import ConfigError, TrainConfig, config_from_dict, load_config
from csi_training.experiments.mart import finetune_mel_config
from csi_training.experiments.mart_pretrain import pretrain, pretrain_config_from_dict
from csi_training.frontends.hierarchical import HierarchyConfig
from csi_training.models.cqtnet import CQTNet
from csi_training.models.encoder import build_encoder
from csi_training.models.fcn import FCN7
from csi_training.models.mart import MartCQTNet
from csi_training.trainer import train

SR = 16000
ROOT = Path(__file__).resolve().parents[1]
# pre-training hierarchy small enough for CPU tests: whole clip 8 frames x 256 = 0.128 s
HIERARCHY = {
    "sample_rate": SR,
    "levels": 3,
    "splits": 2,
    "frames": 8,
    "finest_hop": 64,
    "n_fft": 512,
    "n_mels": 16,
}
WINDOW_FRAMES, WINDOW_HOP = 8, 4


def _frontend() -> dict[str, Any]:
    return finetune_mel_config(HierarchyConfig(**HIERARCHY)).to_dict()  # type: ignore[arg-type]


def _mart_config(manifest: Path, out: Path, **over: object) -> dict[str, Any]:
    cfg = tiny_config(manifest, out, **over)
    cfg["frontend"] = _frontend()
    cfg["model"] = {
        "name": "mart",
        "encoder_width": "tiny",
        "window_frames": WINDOW_FRAMES,
        "window_hop": WINDOW_HOP,
        "width": "small",
        "embedding_dim": 32,
    }
    cfg["data"]["clip_s"] = 1.0
    cfg["augment"] = {"pitch_roll_p": 0.0}
    return cfg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), n_works=8, n_versions=3, seed=11)


@pytest.fixture(scope="module")
def pretrained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MART pre-training checkpoint (2 steps, tiny FCN-7) written by experiments.mart_pretrain."""
    config = pretrain_config_from_dict(
        {
            "seed": 4,
            "threads": 1,
            "model": {
                "hierarchy": HIERARCHY,
                "width": "tiny",
                "level_weights": [1.0, 1.0, 1.0],
                "attn_dim": 12,
                "ffn_dim": 16,
                "projection_hidden": 16,
                "projection_dim": 8,
            },
            "data": {"manifest": str(corpus), "val_files": 3, "max_s": 3.0},
            "optim": {"batch_size": 3, "steps": 2, "eval_every": 2},
        }
    )
    out = tmp_path_factory.mktemp("pretrain")
    pretrain(config, out)
    return out / "checkpoint"


def _naive_forward(weights: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    """MartCQTNet.forward from a checkpoint's tensors: each window through its own FCN-7 call."""
    encoder = FCN7(features.shape[1], "tiny")
    encoder.load_state_dict(
        {k.removeprefix("backbone.encoder."): v for k, v in weights.items() if ".encoder." in k}
    )
    cqtnet = CQTNet(encoder.output_dim, embedding_dim=32, width="small")
    cqtnet.load_state_dict(
        {k.removeprefix("backbone.cqtnet."): v for k, v in weights.items() if ".cqtnet." in k}
    )
    encoder.eval(), cqtnet.eval()
    t = features.shape[2]
    starts = range(0, t - WINDOW_FRAMES + 1, WINDOW_HOP)
    vectors = torch.stack([encoder(features[:, :, s : s + WINDOW_FRAMES]) for s in starts], dim=2)
    return cqtnet(vectors)


def test_mart_trains_and_its_checkpoint_reloads_with_identical_outputs(
    corpus: Path, tmp_path: Path, seed: int
) -> None:
    result = train(config_from_dict(_mart_config(corpus, tmp_path / "run", optim__epochs=1)), progress=False)
    assert result.epochs_run == 1
    ckpt = load_checkpoint(tmp_path / "run" / "last")
    assert isinstance(ckpt.encoder.backbone, MartCQTNet)
    assert ckpt.info["frontend"] == _frontend()
    weights = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    assert any(k.startswith("backbone.encoder.") for k in weights)
    gen = torch.Generator().manual_seed(seed)
    for n_samples in (SR // 2, SR + 77, 2 * SR):
        waveform = 0.1 * torch.randn(2, n_samples, generator=gen)
        with torch.no_grad():
            features = ckpt.encoder.frontend(waveform)
            emb = ckpt.encoder(waveform)
            reference = _naive_forward(weights, features)
        assert emb.shape == (2, 32)
        torch.testing.assert_close(emb, reference, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_save_and_load_round_trip_is_exact(tmp_path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    config = TrainConfig(
        frontend=_frontend(),
        model=config_from_dict(
            {"model": {"name": "mart", "encoder_width": "tiny", "window_frames": 8, "window_hop": 4}}
        ).model,
    )
    encoder = build_encoder(config.frontend, config.model)
    with torch.no_grad():
        for module in encoder.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    encoder.eval()
    save_checkpoint(tmp_path / "ckpt", encoder, config, {"epoch": 0, "step": 0}, {})
    loaded = load_checkpoint(tmp_path / "ckpt").encoder
    waveform = 0.1 * torch.randn(3, SR + int(np.random.default_rng(seed).integers(0, SR)))
    with torch.no_grad():
        torch.testing.assert_close(loaded(waveform), encoder(waveform), rtol=0, atol=0)


def test_init_from_loads_the_pretrained_encoder(corpus: Path, pretrained: Path, tmp_path: Path) -> None:
    encoder_weights = {
        k.removeprefix("encoder."): v
        for k, v in load_file(str(pretrained / "model.safetensors")).items()
        if k.startswith("encoder.")
    }
    assert encoder_weights
    config = config_from_dict(_mart_config(corpus, tmp_path / "x"))
    backbone = build_encoder(config.frontend, config.model).backbone
    assert isinstance(backbone, MartCQTNet)
    cqtnet_before = {k: v.clone() for k, v in backbone.cqtnet.state_dict().items()}
    init_backbone(pretrained, backbone, config)
    loaded = backbone.encoder.state_dict()
    assert loaded.keys() == encoder_weights.keys()
    for key, value in encoder_weights.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    for key, value in backbone.cqtnet.state_dict().items():  # the CQTNet part is left as it was
        torch.testing.assert_close(value, cqtnet_before[key], rtol=0, atol=0, msg=key)

    # through csi train: with no step taken (lr ~ 0) the run's encoder is the pre-trained one
    cfg = _mart_config(corpus, tmp_path / "ft", optim__epochs=1, optim__lr=1e-12)
    cfg["init_from"] = str(pretrained)
    train(config_from_dict(cfg), progress=False)
    tuned = load_file(str(tmp_path / "ft" / "last" / "model.safetensors"))
    for key, value in encoder_weights.items():
        if value.is_floating_point() and "running" not in key:
            torch.testing.assert_close(tuned[f"backbone.encoder.{key}"], value, rtol=0, atol=1e-6, msg=key)


def test_init_from_a_pretrain_checkpoint_names_what_differs(
    corpus: Path, pretrained: Path, tmp_path: Path
) -> None:
    def refused(cfg: dict[str, Any], pattern: str) -> None:
        config = config_from_dict(cfg)
        backbone = build_encoder(config.frontend, config.model).backbone
        with pytest.raises(CheckpointError, match=pattern):
            init_backbone(pretrained, backbone, config)

    base = _mart_config(corpus, tmp_path / "x")
    refused(
        {**base, "frontend": {**base["frontend"], "hop_length": 32}},
        r"frontend\.hop_length \(pre-training 64",
    )
    refused({**base, "frontend": {**base["frontend"], "n_mels": 20}}, r"frontend\.n_mels")
    refused({**base, "model": {**base["model"], "encoder_width": "small"}}, r"model\.encoder_width")
    refused({**base, "model": {**base["model"], "window_frames": 16}}, r"model\.window_frames")
    cqt = tiny_config(corpus, tmp_path / "y")
    refused(cqt, r"only model\.name 'mart'")

    # weights that do not fit the config are named
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text((pretrained / "config.json").read_text())
    weights = load_file(str(pretrained / "model.safetensors"))
    dropped = sorted(k for k in weights if k.startswith("encoder."))[0]
    del weights[dropped]
    from safetensors.torch import save_file

    save_file(weights, str(damaged / "model.safetensors"))
    config = config_from_dict(base)
    backbone = build_encoder(config.frontend, config.model).backbone
    with pytest.raises(CheckpointError, match=f"missing {dropped}"):
        init_backbone(damaged, backbone, config)
    (damaged / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        init_backbone(damaged, backbone, config)


def test_mart_needs_a_logmel_frontend_and_valid_windows(corpus: Path, tmp_path: Path) -> None:
    cfg = tiny_config(corpus, tmp_path / "x")
    cfg["model"] = {"name": "mart", "encoder_width": "tiny"}
    config = config_from_dict(cfg)  # a CQT frontend is valid config, but not for this backbone
    with pytest.raises(ValueError, match="needs a logmel frontend"):
        build_encoder(config.frontend, config.model)
    with pytest.raises(ConfigError, match="window_hop"):
        config_from_dict({"model": {"name": "mart", "window_frames": 8, "window_hop": 9}})
    with pytest.raises(ConfigError, match=r"model\.name"):
        config_from_dict({"model": {"name": "martian"}})


def test_mart_finetune_config_matches_mart_pretrain(tmp_path: Path) -> None:
    """configs/mart_finetune.yaml's log-mel and windows are what configs/mart_pretrain.yaml pre-trains."""
    import yaml

    finetune = load_config(ROOT / "configs" / "mart_finetune.yaml")
    pretrain_cfg = pretrain_config_from_dict(
        yaml.safe_load((ROOT / "configs" / "mart_pretrain.yaml").read_text())
    )
    hierarchy = pretrain_cfg.model.hierarchy
    assert finetune.model.name == "mart"
    from csi_training.frontends import frontend_config_from_dict

    assert frontend_config_from_dict(finetune.frontend).to_dict() == finetune_mel_config(hierarchy).to_dict()
    assert finetune.model.encoder_width == pretrain_cfg.model.width
    assert finetune.model.window_frames == hierarchy.frames
    assert finetune.model.window_hop == hierarchy.frames // 2
