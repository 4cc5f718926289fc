"""A ``mart`` checkpoint (log-mel frontend, MartCQTNet) through csi_export.build.export_bundle: graphs
that TensorRT's parser takes, parity with torch, and the two export-friendly rewrites it needed
(MartCQTNet's index-grid windows, LogMel's ``context``) checked against their plain definitions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="export needs onnx (the export extra)")
ort = pytest.importorskip("onnxruntime", reason="export needs onnxruntime (the export extra)")
pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")

from csi_export.build import ExportError, export_bundle  # noqa: E402
from csi_export.parity import check_parity  # noqa: E402
from csi_export.trt_ops import check_tensorrt_ops  # noqa: E402
from csi_runtime.bundle import load_bundle  # noqa: E402
from csi_training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from csi_training.config import config_from_dict  # noqa: E402
from csi_training.frontends import LogMel, MelConfig  # noqa: E402
from csi_training.models.encoder import build_encoder  # noqa: E402
from csi_training.models.fcn import FCN7  # noqa: E402
from csi_training.models.mart import MartCQTNet  # noqa: E402

SR = 16000
FRONTEND = {"kind": "logmel", "sample_rate": SR, "n_fft": 512, "hop_length": 128, "n_mels": 16}
EMBEDDING_DIM = 32


def _checkpoint(directory: Path, seed: int, frontend: dict[str, Any] | None = None) -> Path:
    """A random mart checkpoint (tiny FCN-7, 8-frame windows every 8: cheap), batch norms randomised."""
    torch.manual_seed(seed)
    config = config_from_dict(
        {
            "frontend": frontend or FRONTEND,
            "model": {
                "name": "mart",
                "encoder_width": "tiny",
                "window_frames": 8,
                "window_hop": 8,
                "embedding_dim": EMBEDDING_DIM,
            },
            "data": {"manifest": "unused.csv", "clip_s": 2.0, "eval_max_s": 8.0},
        }
    )
    encoder = build_encoder(config.frontend, config.model)
    with torch.no_grad():
        for module in encoder.backbone.modules():
            # He initialisation: torch's default conv init shrinks the input-dependent part of the
            # activations ~3x per layer, so 17 random layers would map every input alike
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
        # the input norm as a trained one would be on these test signals' log-mel (dB, mean about
        # -20, sd about 5), so that the graph sees the value ranges of a trained network
        norm = encoder.backbone.encoder.input_norm
        norm.running_mean.fill_(-20.0 + float(torch.randn(())) * 2)
        norm.running_var.fill_(25.0)
    return save_checkpoint(directory, encoder.eval(), config, {"epoch": 1, "step": 1}, {})


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Many small ops: one thread is faster on a loaded machine than two competing ones."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mart_export")
    checkpoint = _checkpoint(root / "ckpt", int(np.random.SeedSequence().entropy % 2**31))
    bundle = export_bundle(checkpoint, root / "bundle", fp16=True, ort_optimize=True).path
    return checkpoint, bundle


def _session(path: Path) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("window_frames", "window_hop"), [(8, 4), (8, 8), (7, 3), (5, 1)])
def test_window_grid_equals_unfold(window_frames: int, window_hop: int, rng: np.random.Generator) -> None:
    """MartCQTNet.clip_vectors (index grid) against Tensor.unfold + one FCN-7 call per window."""
    torch.manual_seed(int(rng.integers(2**31)))
    net = MartCQTNet(FCN7(16, "tiny"), window_frames, window_hop, embedding_dim=EMBEDDING_DIM).eval()
    for t in sorted({window_frames, window_frames + 1, int(rng.integers(window_frames, 90)), 97}):
        x = torch.from_numpy(rng.standard_normal((2, 16, t)).astype(np.float32))
        windows = x.unfold(2, window_frames, window_hop)  # [B, F, W, frames]
        with torch.no_grad():
            expected = torch.stack([net.encoder(windows[:, :, w]) for w in range(windows.shape[2])], dim=2)
            got = net.clip_vectors(x)
        assert got.shape == (2, net.encoder.output_dim, 1 + (t - window_frames) // window_hop)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # a track shorter than one window is repeated to fill it
    short = torch.from_numpy(rng.standard_normal((1, 16, 3)).astype(np.float32))
    with torch.no_grad():
        filled = short.repeat(1, 1, -(-window_frames // 3))[:, :, :window_frames]
        torch.testing.assert_close(net.clip_vectors(short), net.encoder(filled)[:, :, None], rtol=0, atol=0)


@pytest.mark.parametrize(("n_fft", "hop"), [(512, 64), (400, 160), (2048, 128)])
def test_logmel_context_gives_centred_frames(n_fft: int, hop: int, rng: np.random.Generator) -> None:
    """Valid framing of a file padded by ``context`` zeros = the centred frames of training."""
    centred = LogMel(MelConfig(n_fft=n_fft, hop_length=hop, n_mels=16))
    valid = LogMel(MelConfig(n_fft=n_fft, hop_length=hop, n_mels=16, center=False))
    assert valid.context == n_fft // 2
    for n in (n_fft, 3 * n_fft + int(rng.integers(0, hop)), SR + 1):
        x = torch.from_numpy(rng.standard_normal((1, n)).astype(np.float32))
        padded = torch.nn.functional.pad(x, (valid.context, valid.context))
        torch.testing.assert_close(valid(padded), centred(x), rtol=0, atol=1e-4)
        assert valid(padded).shape[-1] == centred.frames(n)


def test_mart_graphs_take_only_tensorrt_ops(exported: tuple[Path, Path]) -> None:
    bundle = load_bundle(exported[1])
    assert bundle.manifest["encoder"]["backbone"]["name"] == "mart"
    assert bundle.manifest["frontend"]["kind"] == "logmel"
    assert bundle.context_samples == FRONTEND["n_fft"] // 2
    for graph in ("frontend", "encoder", "encoder_fp16"):  # (encoder_ort: onnxruntime's own fused ops)
        model = onnx.load(str(bundle.graph_path(graph)))
        onnx.checker.check_model(model, full_check=True)
        check_tensorrt_ops(model, graph)
    (inp,) = onnx.load(str(bundle.graph_path("encoder"))).graph.input
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 16, "frames"]


def test_mart_encoder_graph_matches_torch(exported: tuple[Path, Path], rng: np.random.Generator) -> None:
    checkpoint, bundle_dir = exported
    bundle = load_bundle(bundle_dir)
    backbone = load_checkpoint(checkpoint).encoder.backbone.eval()
    min_frames = bundle.manifest["encoder"]["min_frames"]
    assert min_frames == backbone.min_frames == 8 + (backbone.cqtnet.min_frames - 1) * 8
    encoder, fp16, opt = (_session(bundle.graph_path(g)) for g in ("encoder", "encoder_fp16", "encoder_ort"))
    for batch, frames in [
        (1, min_frames),
        (3, min_frames + 1),
        (2, min_frames + 3),
        (4, int(rng.integers(80, 600))),
    ]:
        x = (rng.standard_normal((batch, 16, frames)) * 20 - 40).astype(np.float32)  # dB-like
        with torch.inference_mode():
            ref = backbone(torch.from_numpy(x)).numpy()
        got = encoder.run(None, {"features": x})[0]
        assert got.shape == (batch, EMBEDDING_DIM)
        np.testing.assert_allclose(got, ref, atol=1e-5)
        np.testing.assert_allclose(opt.run(None, {"features": x})[0], ref, atol=1e-5)
        half = fp16.run(None, {"features": x})[0]
        assert ((half * ref).sum(1) / np.linalg.norm(half, axis=1)).min() > 0.999


def test_mart_parity_report_passes_and_can_fail(
    exported: tuple[Path, Path], rng: np.random.Generator
) -> None:
    checkpoint, bundle_dir = exported
    bundle = load_bundle(bundle_dir)
    encoder = load_checkpoint(checkpoint).encoder.eval()
    t = np.arange(3 * SR) / SR
    clips = [
        (0.3 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
        for f in (220, 330, 440, 550)
    ]
    mini = (clips, ["a", "a", "b", "b"])
    report = check_parity(bundle, encoder, rng=rng, mini_set=mini)
    # the top-10 overlap bound is for trained models (see test_export_bundle); every other bound holds
    assert all(r["passed"] for r in report.rows if r["measure"] != "top-10 overlap"), report.rows
    frontend_rows = [r for r in report.rows if r["check"].startswith("frontend")]
    assert [r["measure"] for r in frontend_rows] == ["max |ΔP|/frame peak"]  # dB compared as power
    with torch.no_grad():  # a small change of the FCN-7 (the pre-trained part) must be caught
        last_norm = encoder.backbone.encoder.blocks[-3]
        assert isinstance(last_norm, torch.nn.BatchNorm2d)
        last_norm.bias.add_(torch.randn_like(last_norm.bias) * 0.05)
    broken = check_parity(bundle, encoder, rng=rng, fp16=False, mini_set=mini)
    assert any(r["measure"] == "max |Δ|" and not r["passed"] for r in broken.rows)


@pytest.mark.parametrize(
    ("change", "message"), [({"pad_mode": "reflect"}, "pad_mode"), ({"top_db": 80.0}, "top_db")]
)
def test_unstreamable_logmel_is_refused(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    checkpoint = _checkpoint(tmp_path / "ckpt", 0, {**FRONTEND, **change})
    with pytest.raises(ExportError, match=message):
        export_bundle(checkpoint, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
