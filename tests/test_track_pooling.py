"""Multi-scale track vectors: the combination against a naive float64 reference, the batched
embedding against one backbone call per crop, ``csi pooling`` (choice on validation works, refusals)
and the exported bundle's runtime track vectors against the training side's."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from csi_runtime.embedder import window_starts
from csi_training.checkpoint import init_backbone, load_checkpoint
from csi_training.config import ConfigError, ModelConfig
from csi_training.datasets import embed_features
from csi_training.evaluation import embed_manifest
from csi_training.track_pooling import (
    combine_scales,
    set_track_pooling,
    track_window_frames,
    window_crops,
)

SR = 16000
ROOT = Path(__file__).resolve().parents[1]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def naive_combine(whole: np.ndarray, windows: np.ndarray, owner: np.ndarray) -> np.ndarray:
    out = []
    for i, w in enumerate(whole.astype(np.float64)):
        mine = [unit(v) for v, o in zip(windows.astype(np.float64), owner, strict=True) if o == i]
        out.append(unit(unit(w) + unit(sum(mine))) if mine else unit(w))
    return np.array(out)


@pytest.mark.parametrize(("n_tracks", "n_windows", "dim"), [(1, 0, 4), (1, 3, 8), (7, 20, 16), (60, 300, 64)])
def test_combine_scales_matches_a_naive_reference(
    n_tracks: int, n_windows: int, dim: int, rng: np.random.Generator
) -> None:
    whole = rng.standard_normal((n_tracks, dim)).astype(np.float32) * rng.uniform(0.1, 5.0, (n_tracks, 1))
    windows = rng.standard_normal((n_windows, dim)).astype(np.float32)
    owner = np.sort(rng.integers(0, n_tracks, n_windows))
    got = combine_scales(whole, windows, owner)
    assert got.dtype == np.float32 and got.shape == (n_tracks, dim)
    np.testing.assert_allclose(got, naive_combine(whole, windows, owner), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_window_crops_follow_the_runtime_window_plan(rng: np.random.Generator) -> None:
    lengths = [5, 17, 19, 20, 21, 57, int(rng.integers(60, 400))]
    feats = [rng.random((6, n), dtype=np.float32) for n in lengths]
    crops, owner = window_crops(feats, 20, 7, 17)
    expected = [(i, s) for i, n in enumerate(lengths) for s in window_starts(n, 20, 7, 17)]
    assert owner.tolist() == [i for i, _ in expected]
    assert 0 not in owner  # 5 frames: shorter than the encoder's 17
    for crop, (i, s) in zip(crops, expected, strict=True):
        np.testing.assert_array_equal(crop, feats[i][:, s : s + 20])
    assert {crop.shape[1] for crop in crops} == {17, 19, 20}  # short tracks: one crop of all their frames
    last = [c for c, o in zip(crops, owner, strict=True) if o == len(lengths) - 1][-1]
    np.testing.assert_array_equal(last, feats[-1][:, -20:])  # the end is always covered


def test_track_window_frames() -> None:
    assert track_window_frames(0.0, 0.0, 5.0) is None
    assert track_window_frames(10.0, 5.0, 5.0) == (50, 25)
    assert track_window_frames(4.1, 2.05, 5.0) == (20, 10)


def test_model_config_refuses_bad_track_windows() -> None:
    with pytest.raises(ConfigError, match="track_window_s must be >= 0"):
        ModelConfig(track_window_s=-1.0)
    with pytest.raises(ConfigError, match=r"track_hop_s must be in \(0, track_window_s\]"):
        ModelConfig(track_window_s=4.0, track_hop_s=5.0)
    with pytest.raises(ConfigError, match=r"track_hop_s must be in \(0, track_window_s\]"):
        ModelConfig(track_window_s=4.0)
    with pytest.raises(ConfigError, match="track_window_s must be >= 0"):
        ModelConfig(track_window_s=float("nan"))
    assert ModelConfig(track_window_s=10.0, track_hop_s=5.0).track_hop_s == 5.0


# ------------------------------------------------------------------------ a small trained-like model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.random.Generator]:
    """(random small CQTNet checkpoint, manifest of 6 works × 3 versions of ~9 s real audio, rng)."""
    from export_fixtures import make_checkpoint

    root = tmp_path_factory.mktemp("pooling")
    rng = np.random.default_rng(int(os.environ.get("CSI_TEST_SEED") or secrets.randbits(32)))
    lines = ["path,work_id,version_id"]
    for w in range(6):
        notes = rng.integers(0, 24, 18)
        for v in range(3):
            shift, seconds = int(rng.integers(-3, 4)), float(rng.uniform(0.4, 0.6))
            t = np.arange(int(seconds * SR)) / SR
            audio = np.concatenate([np.sin(2 * np.pi * 220 * 2 ** ((k + shift) / 12) * t) for k in notes])
            audio = 0.3 * audio + 0.02 * rng.standard_normal(audio.size)
            sf.write(root / f"w{w}_v{v}.wav", audio.astype(np.float32), SR)
            lines.append(f"w{w}_v{v}.wav,w{w},v{v}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    checkpoint = make_checkpoint(root / "ckpt", int(rng.integers(2**31)), embedding_dim=16)
    return checkpoint, manifest, rng


def test_embed_features_multiscale_equals_one_call_per_crop(
    workspace: tuple[Path, Path, np.random.Generator], rng: np.random.Generator
) -> None:
    backbone = load_checkpoint(workspace[0]).encoder.backbone.eval()
    feats = [rng.random((84, int(n)), dtype=np.float32) * 3 for n in (17, 30, 64, rng.integers(65, 160))]
    window, hop = 24, int(rng.integers(5, 25))
    got = embed_features(backbone, feats, torch.device("cpu"), track_windows=(window, hop))

    def one(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return backbone(torch.from_numpy(np.ascontiguousarray(x[None]))).double().numpy()[0]

    expected = []
    for f in feats:
        starts = window_starts(f.shape[1], window, hop, backbone.min_frames)
        crops = [one(f[:, s : s + window]) for s in starts]
        expected.append(unit(unit(one(f)) + unit(sum(unit(c) for c in crops))))
    np.testing.assert_allclose(got, np.array(expected), atol=2e-5)
    plain = embed_features(backbone, feats, torch.device("cpu"))
    assert np.abs(plain - got).max() > 1e-3  # the second scale changes the vectors


def test_pooling_chooses_on_validation_works_and_evaluation_follows(
    workspace: tuple[Path, Path, np.random.Generator], tmp_path: Path
) -> None:
    checkpoint, manifest, _ = workspace
    report = set_track_pooling(
        checkpoint, tmp_path / "p", manifest=manifest, candidates=(0.0, 4.0, 6.0), val_works=3, device="cpu"
    )
    assert [r["window_s"] for r in report["validation"]] == [0.0, 4.0, 6.0]
    best = max(report["validation"], key=lambda r: r["MAP"])["MAP"]
    chosen = next(r for r in report["validation"] if r["window_s"] == report["window_s"])
    assert chosen["MAP"] == best and report["chosen_on_validation"]
    assert report["validation_works"] == 3

    pooled = load_checkpoint(tmp_path / "p")
    assert pooled.config.model.track_window_s == report["window_s"]
    assert pooled.info["track_pooling"] == report and pooled.info["epoch"] == 3
    source = load_checkpoint(checkpoint)
    for a, b in zip(
        source.encoder.backbone.state_dict().values(), pooled.encoder.backbone.state_dict().values()
    ):
        assert torch.equal(a, b)  # weights untouched

    fixed = set_track_pooling(checkpoint, tmp_path / "f", window_s=4.0)
    assert fixed["window_s"] == 4.0 and fixed["hop_s"] == 2.0 and not fixed["chosen_on_validation"]
    got, works, _, info = embed_manifest(tmp_path / "f", manifest, device="cpu")
    raw, _, _, _ = embed_manifest(checkpoint, manifest, device="cpu")
    whole, _, _, _ = embed_manifest(tmp_path / "f", manifest, device="cpu", multiscale=False)
    np.testing.assert_allclose(whole, raw, atol=1e-6)
    assert info["track_window_s"] == 4.0 and len(works) == 18
    assert np.abs(got - raw).max() > 1e-3
    # fine-tuning may start from a pooled checkpoint: the setting does not change what weights mean
    init_backbone(tmp_path / "f", source.encoder.backbone, source.config)


def test_pooling_refuses_what_it_cannot_do(
    workspace: tuple[Path, Path, np.random.Generator], tmp_path: Path
) -> None:
    checkpoint, manifest, _ = workspace
    set_track_pooling(checkpoint, tmp_path / "p", window_s=0.0)
    with pytest.raises(FileExistsError, match="--force"):
        set_track_pooling(checkpoint, tmp_path / "p", window_s=4.0)
    with pytest.raises(ValueError, match="needs ≥ 17"):
        set_track_pooling(checkpoint, tmp_path / "short", window_s=1.0)  # 5 frames
    with pytest.raises(ValueError, match="track_window_s must be >= 0"):
        set_track_pooling(checkpoint, tmp_path / "neg", window_s=-2.0)
    with pytest.raises(ValueError, match="give a manifest"):
        set_track_pooling(checkpoint, tmp_path / "none")
    one = tmp_path / "one.csv"
    rows = [f"{manifest.parent / f'w{w}_v{v}.wav'},w{w}" for w in range(2) for v in range(3)]
    one.write_text("path,work_id\n" + "\n".join(rows))
    with pytest.raises(ValueError, match="1 validation works"):
        set_track_pooling(checkpoint, tmp_path / "x", manifest=one, val_works=1)
    assert not any((tmp_path / n).exists() for n in ("short", "neg", "none", "x"))


def test_csi_pooling_command(workspace: tuple[Path, Path, np.random.Generator], tmp_path: Path) -> None:
    checkpoint, _, _ = workspace
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in ("runtime", "training", "export")),
    }
    run = subprocess.run(
        [sys.executable, "-m", "csi_runtime", "pooling", "--checkpoint", str(checkpoint),
         "--out", str(tmp_path / "o"), "--window-s", "4"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "windows of 4 s every 2 s" in run.stdout
    assert (
        json.loads((tmp_path / "o" / "config.json").read_text())["config"]["model"]["track_window_s"] == 4.0
    )


def test_exported_bundle_gives_the_evaluated_track_vectors(
    workspace: tuple[Path, Path, np.random.Generator], tmp_path: Path
) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from csi_export.build import export_bundle
    from csi_runtime import Embedder
    from csi_runtime.bundle import SCHEMA_VERSION

    checkpoint, manifest, _ = workspace
    set_track_pooling(checkpoint, tmp_path / "p", window_s=4.0)
    bundle = export_bundle(tmp_path / "p", tmp_path / "bundle").path
    encoder = json.loads((bundle / "model.json").read_text())["encoder"]
    assert (encoder["track_window_frames"], encoder["track_hop_frames"]) == (20, 10)
    assert json.loads((bundle / "model.json").read_text())["schema_version"] == SCHEMA_VERSION == 2

    plain = json.loads((export_bundle(checkpoint, tmp_path / "plain").path / "model.json").read_text())
    assert plain["encoder"]["track_window_frames"] == plain["encoder"]["track_hop_frames"] == 0
    # the same graphs, but other track vectors: another model id
    assert (bundle / "encoder.onnx").read_bytes() == (tmp_path / "plain" / "encoder.onnx").read_bytes()
    assert plain["model_id"] != json.loads((bundle / "model.json").read_text())["model_id"]

    expected, _, _, info = embed_manifest(tmp_path / "p", manifest, device="cpu")
    embedder = Embedder(bundle, backend="onnxruntime")
    got = np.stack([embedder.embed_file(p) for p in info["paths"]])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    waves = [sf.read(p, dtype="float32")[0] for p in info["paths"][:4]]
    np.testing.assert_allclose(embedder.embed_batch(waves, SR), got[:4], atol=1e-5)


def test_rendered_baseline_pooling_stage(
    workspace: tuple[Path, Path, np.random.Generator], tmp_path: Path
) -> None:
    import argparse

    from csi_training.experiments.rendered_baseline import _describe_stage, _pooling_stage

    checkpoint, manifest, _ = workspace
    chosen = set_track_pooling(
        checkpoint, tmp_path / "model_wp", manifest=manifest, candidates=(0.0, 4.0), val_works=3, device="cpu"
    )
    args = argparse.Namespace(device="cpu")
    out, stage = _pooling_stage(args, tmp_path, checkpoint, manifest, "model_wp")  # kept: already there
    assert out == tmp_path / "model_wp"
    assert stage == {
        "model": "model_wp",
        "window_s": chosen["window_s"],
        "validation_works": 3,
        "validation": chosen["validation"],
    }
    text = _describe_stage(stage)
    assert f"windows of {chosen['window_s']:g} s" in text and "3 validation works" in text
