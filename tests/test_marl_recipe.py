"""``recipe: marl``: the config section and its checks, the convolutional multi-view VAE around the
CQTNet trunk, and a tiny end-to-end ``csi train`` run (checkpoints, exact resume, reload); the export
of such a checkpoint is in test_marl_export.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_trainer import SR, make_corpus, tiny_config

from csi_training.checkpoint import load_backbone_weights, load_checkpoint
from csi_training.config import ConfigError, MARLConfig, config_from_dict, load_config
from csi_training.models.cqtnet import CQTNet
from csi_training.models.marl import MARLWeights, marl_loss
from csi_training.models.marl_conv import ConvMultiViewVAE, SpectrogramDecoder, peak_normalise
from csi_training.trainer import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def marl_config(manifest: Path, out: Path, **over: object) -> dict:
    base = {
        "recipe": "marl",
        "data__versions_per_work": 2,
        "data__clip_s": 4.0,  # 20 frames: above the exported encoder's shortest input (17)
        "loss__ce_weight": 0.0,
        "model__dropout": 0.0,
        "marl": {"private_dim": 8, "decoder_channels": 8, "gamma": 1.0},
    }
    return tiny_config(manifest, out, **{**base, **over})


# -- config ------------------------------------------------------------------------------------


def test_config_section_parses_and_bad_combinations_are_refused(tmp_path: Path) -> None:
    cfg = config_from_dict(marl_config(tmp_path / "m.csv", tmp_path / "out"))
    assert cfg.recipe == "marl" and cfg.marl == MARLConfig(private_dim=8, decoder_channels=8)
    shipped = load_config(CONFIGS / "marl_small.yaml")
    assert shipped.recipe == "marl" and shipped.data.versions_per_work == 2
    for over, message in (
        ({"data__versions_per_work": 3}, "versions_per_work must be 2"),
        ({"loss__ce_weight": 1.0}, "ce_weight must be 0"),
        ({"marl": {"private_dim": 0}}, "marl.private_dim"),
        ({"marl": {"beta": -1.0}}, "marl.beta"),
        ({"marl": {"combine": "sum"}}, "marl.combine"),
        ({"marl": {"shared_dim": 8}}, "unknown key.*marl.shared_dim"),
    ):
        with pytest.raises(ConfigError, match=message):
            config_from_dict(marl_config(tmp_path / "m.csv", tmp_path / "out", **over))
    online = marl_config(tmp_path / "m.csv", tmp_path / "out")
    online["data"] = {**online["data"], "source": "online", "notes": "notes.npz"}
    with pytest.raises(ConfigError, match=r"needs data\.source 'manifest'"):
        config_from_dict(online)


# -- model ---------------------------------------------------------------------------------------


def small_model(n_frames: int, shared: int = 16, private: int = 6, combine: str = "poe") -> ConvMultiViewVAE:
    backbone = CQTNet(n_bins=84, embedding_dim=shared, width="small", pooling="gem", dropout=0.0)
    return ConvMultiViewVAE(backbone, n_frames, private_dim=private, decoder_channels=8, combine=combine)  # type: ignore[arg-type]


def test_shared_mean_is_the_backbones_embedding_at_any_length(rng: np.random.Generator) -> None:
    torch.manual_seed(int(rng.integers(2**31)))
    model = small_model(n_frames=20).eval()
    for frames in (17, 20, 53):
        views = torch.from_numpy(rng.gamma(2.0, 0.5, size=(3, 2, 84, frames)).astype(np.float32))
        with torch.no_grad():
            mu_s, logvar_s, mu_p, logvar_p, target = model.encode(views)
            reference = model.backbone.forward_unnormalized(views.flatten(0, 1)).view(3, 2, -1)
        torch.testing.assert_close(mu_s, reference, rtol=1e-5, atol=1e-5)
        assert mu_s.shape == logvar_s.shape == (3, 2, 16) and mu_p.shape == logvar_p.shape == (3, 2, 6)
        peak = views.double().amax(dim=(2, 3), keepdim=True)
        torch.testing.assert_close(target.double(), views.double() / peak, rtol=1e-6, atol=1e-7)
        assert float(logvar_s.min()) >= -12.0 and float(logvar_p.max()) <= 8.0


@pytest.mark.parametrize("shape", [(84, 20), (84, 15), (13, 7), (1, 1), (96, 101)])
def test_decoder_gives_the_crop_size(shape: tuple[int, int], rng: np.random.Generator) -> None:
    decoder = SpectrogramDecoder(latent_dim=5, n_features=shape[0], n_frames=shape[1], channels=8)
    z = torch.from_numpy(rng.standard_normal((4, 5)).astype(np.float32))
    assert decoder(z).shape == (4, *shape)


@pytest.mark.parametrize("combine", ["poe", "mean"])
def test_loss_trains_every_part_and_bad_inputs_are_named(combine: str, rng: np.random.Generator) -> None:
    torch.manual_seed(int(rng.integers(2**31)))
    model = small_model(n_frames=20, combine=combine)
    views = torch.from_numpy(rng.gamma(2.0, 0.5, size=(4, 2, 84, 20)).astype(np.float32))
    out, target = ConvMultiViewVAE.output(model(views))
    assert out.logits.shape == (4, 2, 84, 20) and out.z_shared.shape == (4, 16)
    loss, stats = marl_loss(out, target, MARLWeights(1.0, 1.0, 1.0), private_items=100, shared_items=200)
    assert torch.isfinite(loss) and stats["recon"] > 0
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not no_grad
    with pytest.raises(ValueError, match="20-frame crops"):
        model(views[..., :19])
    with pytest.raises(ValueError, match="V >= 2"):
        model.encode(views[:, :1])


def test_auxiliary_state_round_trips_and_is_checked(rng: np.random.Generator) -> None:
    torch.manual_seed(int(rng.integers(2**31)))
    a, b = small_model(20), small_model(20)
    state = a.auxiliary_state()
    assert state and not any(k.startswith("backbone.") for k in state)
    assert {k.split(".")[0] for k in state} == {"shared_logvar", "private", "decoder"}
    b.load_auxiliary_state(state)
    for key, value in b.auxiliary_state().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"missing.*decoder\.out\.bias"):
        b.load_auxiliary_state({k: v for k, v in state.items() if k != "decoder.out.bias"})


# -- csi train -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("marl_corpus"), n_works=12, n_versions=3, seed=11)


@pytest.fixture(scope="module")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run folder of an uninterrupted 3-epoch MARL run."""
    out = tmp_path_factory.mktemp("marl_runs") / "straight"
    result = train(config_from_dict(marl_config(corpus, out)), progress=False)
    assert result.epochs_run == 3
    return out


def test_training_writes_checkpoints_and_resumes_exactly(corpus: Path, trained: Path, tmp_path: Path) -> None:
    header = json.loads((trained / "last" / "config.json").read_text())
    assert header["config"]["recipe"] == "marl" and header["embedding_dim"] == 32 and header["epoch"] == 3
    history = [json.loads(line) for line in (trained / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for h in history:
        assert 0.0 <= h["val"]["MAP"] <= 1.0
        assert {"recon", "shared_kl", "private1_kl", "private2_tc"} <= set(h["train"])
        assert np.isfinite(h["train"]["loss"]) and h["train"]["recon"] > 0
    state = torch.load(trained / "last" / "train_state.pt", weights_only=True)
    assert state["marl"] and not any(k.startswith("backbone.") for k in state["marl"])

    cfg = config_from_dict(marl_config(corpus, tmp_path / "b"))
    assert train(cfg, progress=False, stop_after=2).epochs_run == 2
    assert train(cfg, resume=True, progress=False).epochs_run == 1
    wa = load_file(str(trained / "last" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "last" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)
    aux_b = torch.load(tmp_path / "b" / "last" / "train_state.pt", weights_only=True)["marl"]
    assert aux_b.keys() == state["marl"].keys()
    for key in aux_b:
        torch.testing.assert_close(aux_b[key], state["marl"][key], rtol=0, atol=0, msg=key)

    # a train state without the MARL parts cannot resume a MARL run
    del state["marl"]
    torch.save(state, tmp_path / "b" / "last" / "train_state.pt")
    longer = config_from_dict(marl_config(corpus, tmp_path / "b", optim__epochs=4))
    with pytest.raises(ValueError, match="lacks the MARL"):
        train(longer, resume=True, progress=False)


def test_checkpoint_embeds_with_the_shared_expert_mean(trained: Path, rng: np.random.Generator) -> None:
    ckpt = load_checkpoint(trained / "last")
    cfg = ckpt.config
    # the MARL model as trained: a fresh backbone and heads, weights from the checkpoint folder
    model = ConvMultiViewVAE(
        CQTNet(84, cfg.model.embedding_dim, cfg.model.width, cfg.model.pooling, cfg.model.dropout),
        n_frames=20,
        private_dim=cfg.marl.private_dim,
        decoder_channels=cfg.marl.decoder_channels,
    )
    load_backbone_weights(trained / "last", model.backbone)
    model.load_auxiliary_state(torch.load(trained / "last" / "train_state.pt", weights_only=True)["marl"])
    model.eval()
    waveform = torch.from_numpy((0.1 * rng.standard_normal((2, SR * 5))).astype(np.float32))
    with torch.no_grad():
        embedding = ckpt.encoder(waveform)
        features = ckpt.encoder.frontend(waveform)
        expert_mu = model.encode(torch.stack([features, features], dim=1))[0][:, 0]
    torch.testing.assert_close(embedding, torch.nn.functional.normalize(expert_mu, dim=-1))
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))
    assert torch.equal(peak_normalise(features).amax(dim=(1, 2)) > 0, torch.ones(2, dtype=torch.bool))
