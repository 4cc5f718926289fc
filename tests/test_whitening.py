"""Learned whitening: the fit against a float64 pair-by-pair reference, what it buys on constructed
data, its errors, and ``csi whiten`` end to end (checkpoint → whitened checkpoint → ONNX bundle)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from csi_training.checkpoint import load_checkpoint
from csi_training.config import ConfigError, ModelConfig, TrainConfig
from csi_training.evaluation import embed_manifest
from csi_training.metrics import evaluate
from csi_training.models.whitening import Whitening, fit_learned_whitening, intra_work_scatter
from csi_training.trainer import train
from csi_training.whiten import (
    DEFAULT_REGULARIZATIONS,
    WhitenError,
    select_regularization,
    whiten_checkpoint,
)


def naive_scatter(x: np.ndarray, works: list[str]) -> tuple[np.ndarray, int]:
    """Σ over unordered same-work pairs of (x_i − x_j)(x_i − x_j)ᵀ / n_pairs, pair by pair."""
    total, n = np.zeros((x.shape[1], x.shape[1])), 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            if works[i] == works[j]:
                d = x[i] - x[j]
                total += np.outer(d, d)
                n += 1
    return total / n, n


def labelled(
    rng: np.random.Generator, n_works: int, dim: int, nuisance: float
) -> tuple[np.ndarray, list[str]]:
    """Unit vectors: a random centre per work plus version noise that is large (``nuisance``) along
    four shared directions and small elsewhere: cosine ranking suffers, a whitening can undo it."""
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    sizes = rng.integers(1, 6, n_works)
    centres = rng.standard_normal((n_works, dim))
    rows, works = [], []
    for w, k in enumerate(sizes):
        for _ in range(k):
            noise = 0.15 * rng.standard_normal(dim)
            noise[:4] *= nuisance / 0.15
            rows.append(centres[w] + basis @ noise)
            works.append(f"w{w}")
    x = np.array(rows)
    return x / np.linalg.norm(x, axis=1, keepdims=True), works


@pytest.mark.parametrize(("n_works", "dim"), [(3, 4), (20, 8), (60, 32), (200, 16)])
def test_scatter_matches_pairwise_reference(rng: np.random.Generator, n_works: int, dim: int) -> None:
    x, works = labelled(rng, n_works, dim, nuisance=1.0)
    if len(set(works)) == len(works):  # every work a singleton: add a pair
        x, works = np.vstack([x, x[:1] + 0.01]), [*works, works[0]]
    scatter, n_pairs, _ = intra_work_scatter(x, works)
    ref, n_ref = naive_scatter(x, works)
    assert n_pairs == n_ref
    np.testing.assert_allclose(scatter, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dim", [4, 16, 48])
def test_fit_whitens_intra_work_scatter_and_orders_axes(rng: np.random.Generator, dim: int) -> None:
    x, works = labelled(rng, 30 * dim, dim, nuisance=2.0)
    scatter, _, _ = intra_work_scatter(x, works)
    fit = fit_learned_whitening(x, works, regularization=0.0)
    # intra-work scatter becomes the identity; the whitened data's covariance is diagonal, descending
    np.testing.assert_allclose(fit.projection.T @ scatter @ fit.projection, np.eye(dim), atol=1e-8)
    cov = np.cov(((x - fit.mean) @ fit.projection).T)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-8)
    assert np.all(np.diff(np.diag(cov)) <= 1e-10)
    np.testing.assert_allclose(fit.mean, x.mean(axis=0), atol=1e-12)
    # with ε > 0: the regularised scatter is whitened instead
    eps = 1e-2
    fit = fit_learned_whitening(x, works, regularization=eps)
    reg = scatter + eps * np.linalg.eigvalsh(scatter)[-1] * np.eye(dim)
    np.testing.assert_allclose(fit.projection.T @ reg @ fit.projection, np.eye(dim), atol=1e-8)
    assert (fit.n_embeddings, fit.n_works, fit.regularization) == (len(x), len(set(works)), eps)


def test_module_matches_float64_fit(rng: np.random.Generator) -> None:
    x, works = labelled(rng, 80, 24, nuisance=1.5)
    fit = fit_learned_whitening(x, works, regularization=1e-3)
    layer = Whitening(24)
    identity = layer(torch.from_numpy(x.astype(np.float32))).numpy()
    np.testing.assert_allclose(identity, x, atol=1e-6)  # identity until fitted
    layer.set(fit.mean, fit.projection)
    got = layer(torch.from_numpy(x.astype(np.float32))).double().numpy()
    np.testing.assert_allclose(got, fit.apply(x), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_whitening_undoes_a_shared_nuisance_on_unseen_works(rng: np.random.Generator) -> None:
    x, works = labelled(rng, 400, 16, nuisance=1.2)
    test = np.array([int(w[1:]) >= 300 for w in works])
    fit_works = [w for w, t in zip(works, test) if not t]
    test_works = [w for w, t in zip(works, test) if t]
    fit = fit_learned_whitening(x[~test], fit_works, regularization=1e-4)
    before = evaluate(x[test].astype(np.float32), test_works)["MAP"]
    after = evaluate(fit.apply(x[test]).astype(np.float32), test_works)["MAP"]
    # over 150 seeds: before 0.70-0.87, after >= 0.996, at least 98% of the gap to 1 closed
    assert before < 0.95 and after > 0.98 and after - before > 0.9 * (1.0 - before), (before, after)


def test_select_regularization_scores_on_held_out_works(rng: np.random.Generator) -> None:
    x, works = labelled(rng, 300, 12, nuisance=1.2)
    validation = {f"w{i}" for i in range(40)}
    best, rows = select_regularization(x, works, validation, candidates=(1e-5, 1e-1, 10.0))
    assert [r["regularization"] for r in rows] == [None, 1e-5, 1e-1, 10.0]
    val = np.isin(works, list(validation))
    val_works = [w for w, v in zip(works, val) if v]
    assert rows[0]["MAP"] == pytest.approx(evaluate(x[val].astype(np.float32), val_works)["MAP"])
    for row in rows[1:]:  # each candidate fitted on the other works only
        fit = fit_learned_whitening(x[~val], [w for w, v in zip(works, val) if not v], row["regularization"])
        assert row["MAP"] == pytest.approx(evaluate(fit.apply(x[val]).astype(np.float32), val_works)["MAP"])
    assert best == max(rows[1:], key=lambda r: (r["MAP"], r["regularization"]))["regularization"]
    assert select_regularization(x, works, {"w0"}) == (None, [])  # one validation work: no MAP


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, w: (np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), w), "NaN"),
        (lambda x, w: (x, ["only"] * len(w)), "two works"),
        (lambda x, w: (x[:3], ["a", "b", "c"]), "two or more"),
        (lambda x, w: (x[:, 0], w), r"\[N, D\]"),
        (lambda x, w: (np.vstack([x[:2], x[:2]]), ["a", "a", "b", "b"]), "singular"),
    ],
)
def test_fit_refuses_bad_input(rng: np.random.Generator, change, message: str) -> None:  # type: ignore[no-untyped-def]
    x, works = labelled(rng, 20, 8, nuisance=1.0)
    bad_x, bad_w = change(x, works)
    with pytest.raises(ValueError, match=message):
        fit_learned_whitening(bad_x, bad_w, regularization=0.0)


def test_fit_and_layer_refuse_bad_parameters(rng: np.random.Generator) -> None:
    x, works = labelled(rng, 20, 8, nuisance=1.0)
    for eps in (-1e-3, float("nan")):
        with pytest.raises(ValueError, match="regularization"):
            fit_learned_whitening(x, works, regularization=eps)
    layer = Whitening(8)
    with pytest.raises(ValueError, match=r"projection \[8, 8\]"):
        layer.set(np.zeros(8), np.eye(7))
    with pytest.raises(ValueError, match="NaN"):
        layer.set(np.full(8, np.nan), np.eye(8))


# -- csi whiten end to end --------------------------------------------------------------------------

SR = 16000


def write_versions(root: Path, rng: np.random.Generator, n_works: int, versions: int) -> Path:
    """A manifest of short real audio files: each work a random melody, each version transposed,
    re-timed and with its own noise."""
    lines = ["path,work_id,version_id"]
    for w in range(n_works):
        notes = rng.integers(0, 24, 12)
        for v in range(versions):
            shift, tempo = int(rng.integers(-3, 4)), float(rng.uniform(0.85, 1.15))
            n = int(0.25 * tempo * SR)
            t = np.arange(n) / SR
            audio = np.concatenate([np.sin(2 * np.pi * 220 * 2 ** ((k + shift) / 12) * t) for k in notes])
            audio = 0.3 * audio + 0.02 * rng.standard_normal(audio.size)
            path = root / f"w{w}_v{v}.wav"
            sf.write(path, audio.astype(np.float32), SR)
            lines.append(f"{path.name},w{w},v{v}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def spread_embeddings(checkpoint: Path, manifest: Path, rng: np.random.Generator) -> None:
    """Refit the last linear layer of a random checkpoint so that its embeddings of ``manifest``
    spread over every dimension. A random CQTNet maps all clips to nearly one direction (the
    spread beyond the first axis is at float32 rounding level), which would leave a whitening
    nothing but rounding noise to amplify."""
    from csi_training.checkpoint import save_checkpoint
    from csi_training.data import read_manifest
    from csi_training.datasets import embed_features, load_manifest_features

    ckpt = load_checkpoint(checkpoint)
    backbone = ckpt.encoder.backbone
    features = load_manifest_features(read_manifest(manifest), ckpt.encoder.frontend, None, 60.0).features
    pooled: list[np.ndarray] = []
    hook = backbone.pool.register_forward_hook(lambda _m, _i, out: pooled.append(out.double().numpy()))
    with torch.no_grad():
        embed_features(backbone, features, torch.device("cpu"))
    hook.remove()
    p = np.concatenate(pooled)
    centre = p.mean(axis=0)
    _, sv, vt = np.linalg.svd(p - centre, full_matrices=False)
    dim = backbone.embedding_dim
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    weight = rotation @ (vt[:dim] / sv[:dim, None])  # unit variance along each pooled principal axis
    with torch.no_grad():
        backbone.embed.weight.copy_(torch.from_numpy(weight))
        backbone.embed.bias.copy_(torch.from_numpy(-weight @ centre))
    save_checkpoint(checkpoint, ckpt.encoder, ckpt.config, {"epoch": 3, "step": 30}, ckpt.metrics)


@pytest.fixture(scope="module")
def whitened(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, dict]:
    from export_fixtures import make_checkpoint

    root = tmp_path_factory.mktemp("whiten")
    rng = np.random.default_rng(int(os.environ.get("CSI_TEST_SEED") or secrets.randbits(32)))
    manifest = write_versions(root, rng, n_works=8, versions=3)
    checkpoint = make_checkpoint(root / "ckpt", int(rng.integers(2**31)), embedding_dim=16)
    spread_embeddings(checkpoint, manifest, rng)
    report = whiten_checkpoint(checkpoint, manifest, root / "white", val_works=3, device="cpu")
    return checkpoint, root / "white", manifest, report


def test_whitened_checkpoint_embeds_what_the_fit_gives(whitened: tuple[Path, Path, Path, dict]) -> None:
    checkpoint, white, manifest, report = whitened
    raw, works, _, _ = embed_manifest(checkpoint, manifest, device="cpu")
    got, works2, _, _ = embed_manifest(white, manifest, device="cpu")
    assert works == works2 and report["embeddings"] == len(works) == 24
    ckpt = load_checkpoint(white)
    layer = ckpt.encoder.backbone.whitening
    assert layer is not None
    # the stored layer is the float64 fit (to float32 precision), and the checkpoint applies it
    fit = fit_learned_whitening(raw.astype(np.float64), works, report["regularization"])
    np.testing.assert_allclose(layer.mean.numpy(), fit.mean, rtol=1e-6, atol=1e-7)
    scale = np.abs(fit.projection).max()
    np.testing.assert_allclose(layer.projection.numpy() / scale, fit.projection / scale, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(got, layer(torch.from_numpy(raw)).numpy(), atol=1e-5)
    np.testing.assert_allclose(got, fit.apply(raw), atol=1e-4)
    assert report["chosen_on_validation"] and report["regularization"] in DEFAULT_REGULARIZATIONS
    assert [r["regularization"] for r in report["validation"]] == [None, *DEFAULT_REGULARIZATIONS]
    assert ckpt.config.model.whitening and ckpt.info["whitening"]["source"] == str(checkpoint.resolve())
    assert ckpt.info["epoch"] == 3  # the source's training position is carried
    json.dumps(ckpt.info, allow_nan=False)  # strict JSON: no NaN in the report


def test_whiten_refuses_what_it_cannot_fit(whitened: tuple[Path, Path, Path, dict], tmp_path: Path) -> None:
    checkpoint, white, manifest, _ = whitened
    with pytest.raises(FileExistsError, match="--force"):
        whiten_checkpoint(checkpoint, manifest, white, device="cpu")
    with pytest.raises(WhitenError, match="already whitened"):
        whiten_checkpoint(white, manifest, tmp_path / "again", device="cpu")
    one = tmp_path / "one.csv"
    one.write_text("path,work_id\n" + "\n".join(f"{manifest.parent / f'w0_v{v}.wav'},w0" for v in range(3)))
    with pytest.raises(WhitenError, match="at least two works"):
        whiten_checkpoint(checkpoint, one, tmp_path / "x", device="cpu")
    assert not (tmp_path / "x").exists() and not (tmp_path / "again").exists()


def test_training_refuses_a_whitened_config(tmp_path: Path) -> None:
    config = TrainConfig(model=ModelConfig(whitening=True), out_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="csi whiten"):
        train(config)


def test_whitened_checkpoint_exports_to_matching_onnx(tmp_path: Path, rng: np.random.Generator) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    import dataclasses

    import onnx
    from export_fixtures import make_checkpoint

    from csi_export.build import export_bundle
    from csi_training.checkpoint import save_checkpoint
    from csi_training.models.encoder import build_encoder

    source = load_checkpoint(make_checkpoint(tmp_path / "ckpt", int(rng.integers(2**31)), embedding_dim=16))
    model = dataclasses.replace(source.config.model, whitening=True)
    encoder = build_encoder(source.info["frontend"], model)
    encoder.backbone.load_state_dict(source.encoder.backbone.state_dict(), strict=False)
    assert encoder.backbone.whitening is not None
    projection = np.linalg.qr(rng.standard_normal((16, 16)))[0] * rng.uniform(0.5, 3.0, 16)
    encoder.backbone.whitening.set(rng.normal(0.0, 0.05, 16), projection)
    config = dataclasses.replace(source.config, model=model)
    report = {"source": str(tmp_path / "ckpt"), "regularization": 1e-4, "works": 8}
    white = save_checkpoint(
        tmp_path / "white", encoder.eval(), config, {"epoch": 3, "step": 30, "whitening": report}, {}
    )

    bundle = export_bundle(white, tmp_path / "bundle", fp16=True).path
    backbone = load_checkpoint(white).encoder.backbone.eval()
    x = (rng.random((3, 84, 120), dtype=np.float32) ** 2) * 4
    with torch.inference_mode():
        ref = backbone(torch.from_numpy(x)).double().numpy()
    for name, tol in (("encoder.onnx", 1e-5), ("encoder.fp16.onnx", 1e-2)):
        session = ort.InferenceSession(str(bundle / name), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"features": x})[0], ref, atol=tol)
    assert json.loads((bundle / "model.json").read_text())["source"]["whitening"] == report
    ops = {n.op_type for n in onnx.load(str(bundle / "encoder.onnx")).graph.node}
    assert {"Sub", "MatMul"} <= ops or "Gemm" in ops


def test_rendered_baseline_whitening_stage(whitened: tuple[Path, Path, Path, dict], tmp_path: Path) -> None:
    import argparse

    from csi_training.experiments.rendered_baseline import _describe_stage, _whiten_stage

    checkpoint, _, manifest, _ = whitened
    args = argparse.Namespace(device="cpu")
    out, stage = _whiten_stage(args, tmp_path, checkpoint, manifest, "model_w")
    assert out == tmp_path / "model_w" and load_checkpoint(out).config.model.whitening
    assert stage["model"] == "model_w" and stage["works"] == 8 and stage["whitening"] > 0
    assert f"regularization {stage['whitening']:g}" in _describe_stage(stage)
    written = (out / "model.safetensors").stat().st_mtime_ns
    again, _ = _whiten_stage(args, tmp_path, checkpoint, manifest, "model_w")  # kept, not refitted
    assert again == out and (out / "model.safetensors").stat().st_mtime_ns == written
    assert list((tmp_path / "features").rglob("*.npy"))  # features cached in the work dir
