"""Checkpoint folder → model bundle folder (the ONNX side; TensorRT engines are added by tensorrt_engine).

``export_bundle`` loads the checkpoint, exports the frontend (valid framing) and encoder graphs, checks
that every op is one TensorRT's ONNX parser supports, optionally adds the float16 encoder and the
onnxruntime-optimised encoder, optionally verifies parity against torch, and writes the folder at once
(``bundle_writer``). The manifest (``model.json``) pins everything the runtime needs to feed the
graphs exactly as training did; see :mod:`csi_runtime.bundle` for the layout.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from csi_export.bundle_writer import write_bundle
from csi_export.graph_passes import ceil_max_pool
from csi_export.onnx_graphs import EXPORTER, OPSET, Axis, ExportError, export_graph, graph_summary
from csi_export.parity import ParityReport, check_parity
from csi_export.precision import to_float16
from csi_export.trt_ops import TRT_TARGET, check_tensorrt_ops
from csi_runtime.bundle import BUNDLE_FORMAT, SCHEMA_VERSION, load_bundle, sha256_file

__all__ = ["ExportResult", "ParityFailedError", "export_bundle", "shortest_input"]

logger = logging.getLogger(__name__)

#: the recommended stream hop as a fraction of the encoder window (windows overlap by half)
DEFAULT_HOP_FRACTION = 0.5


class ParityFailedError(ExportError):
    """The exported graphs do not compute what the torch model computes (``report`` says where)."""

    def __init__(self, message: str, report: ParityReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ExportResult:
    path: Path
    manifest: dict[str, Any]
    parity: ParityReport | None


def shortest_input(frames: Callable[[int], int], needed: int, start: int = 1, limit: int = 1 << 26) -> int:
    """Smallest n ≥ start with frames(n) ≥ needed (frames is non-decreasing in n)."""
    if frames(limit) < needed:
        raise ExportError(f"no input of up to {limit} samples gives {needed} frames")
    lo, hi = start, limit
    while lo < hi:
        mid = (lo + hi) // 2
        if frames(mid) >= needed:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _frontends(header: dict[str, Any]) -> tuple[Any, Any]:
    """(the frontend as trained (centred frames), the same with valid framing) from a checkpoint header."""
    from csi_training.frontends import frontend_from_dict

    config = dict(header["frontend"])
    if "center" not in config:
        raise ExportError(
            f"frontend kind {config.get('kind')!r} has no 'center' parameter: it cannot be "
            "exported with valid framing for streams"
        )
    if config.get("kind") == "logmel":
        # the runtime pads a whole file with zeros (centred frames of pad_mode "constant") and computes
        # a stream chunk by chunk, so each frame may depend on its own samples only
        if config.get("pad_mode", "constant") != "constant":
            raise ExportError(
                f"log-mel pad_mode {config['pad_mode']!r} cannot be exported: the runtime pads files with "
                "zeros (pad_mode 'constant')"
            )
        if config.get("top_db") is not None:
            raise ExportError(
                "log-mel top_db cannot be exported: it clips relative to the whole input's maximum, which "
                "a stream computed chunk by chunk does not know"
            )
    try:
        trained = frontend_from_dict(config).eval()
        valid = frontend_from_dict({**config, "center": False}).eval()
    except (TypeError, ValueError) as exc:
        raise ExportError(f"the checkpoint's frontend parameters are not valid for this csi: {exc}") from exc
    return trained, valid


def _model_bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def _check_ops(model: onnx.ModelProto, what: str) -> None:
    try:
        check_tensorrt_ops(model, what)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc


def export_bundle(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    fp16: bool = False,
    ort_optimize: bool = False,
    verify: bool = False,
    force: bool = False,
    opset: int = OPSET,
    window_s: float | None = None,
    hop_s: float | None = None,
    rng: np.random.Generator | None = None,
) -> ExportResult:
    """Export ``checkpoint`` (a training checkpoint folder) to the bundle folder ``out_dir``.

    window_s / hop_s: the encoder window and stream hop the runtime uses (default: the training crop
    length and half of it). verify: run :func:`~csi_export.parity.check_parity` on the staged bundle;
    a failed check raises ExportError and writes nothing. Never overwrites without ``force``.
    """
    from csi_training.checkpoint import load_checkpoint
    from csi_training.config import config_to_dict

    out = Path(out_dir)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    trained_frontend, valid_frontend = _frontends(ckpt.info)
    backbone = ckpt.encoder.backbone.eval()
    sr = int(trained_frontend.sample_rate)
    n_features = int(trained_frontend.n_features)
    frame_rate = float(trained_frontend.frame_rate)
    config = ckpt.config
    pool = int(ckpt.info["frontend"].get("pool", 1))
    hop_samples = int(ckpt.info["frontend"]["hop_length"]) * pool

    min_frames = int(getattr(backbone, "min_frames", 2))
    # torch.export needs ≥ 2 output frames to keep the time axis symbolic
    min_valid = shortest_input(valid_frontend.frames, 2, start=valid_frontend.min_samples)
    min_file = shortest_input(trained_frontend.frames, min_frames)
    min_file = max(min_file, min_valid - 2 * valid_frontend.context)
    window_s = float(window_s if window_s is not None else config.data.clip_s)
    hop_s = float(hop_s if hop_s is not None else window_s * DEFAULT_HOP_FRACTION)
    if not (window_s > 0 and 0 < hop_s <= window_s):
        raise ExportError(f"need window_s > 0 and 0 < hop_s ≤ window_s, got {window_s}, {hop_s}")
    window_frames = trained_frontend.frames(round(window_s * sr))
    if window_frames < min_frames:
        raise ExportError(
            f"a {window_s} s window gives {window_frames} frames; the encoder needs ≥ {min_frames}"
        )
    max_frames = max(window_frames, trained_frontend.frames(round(float(config.data.eval_max_s) * sr)))
    track = _track_pooling(config.model, frame_rate)
    if track["track_window_frames"] and track["track_window_frames"] < min_frames:
        raise ExportError(
            f"model.track_window_s={config.model.track_window_s} gives {track['track_window_frames']} "
            f"frames; the encoder needs ≥ {min_frames}"
        )

    logger.info(
        "exporting frontend (%s, valid framing) and encoder graphs, opset %d",
        ckpt.info["frontend"]["kind"],
        opset,
    )
    frontend_graph = export_graph(
        valid_frontend,
        torch.zeros(2, min_valid + 3 * sr),
        "waveform",
        "features",
        {0: Axis("batch"), 1: Axis("n", min=min_valid)},
        opset,
    )
    encoder_graph = export_graph(
        backbone,
        torch.rand(2, n_features, max(window_frames, min_frames + 1)),
        "features",
        "embedding",
        {0: Axis("batch"), 2: Axis("frames", min=min_frames)},
        opset,
    )
    if ceil_max_pool(encoder_graph):
        onnx.checker.check_model(encoder_graph, full_check=True)
    _check_ops(frontend_graph, "frontend graph")
    _check_ops(encoder_graph, "encoder graph")
    files: dict[str, bytes] = {
        "frontend.onnx": _model_bytes(frontend_graph),
        "encoder.onnx": _model_bytes(encoder_graph),
    }
    graphs: dict[str, dict[str, Any]] = {
        "frontend": {
            "file": "frontend.onnx",
            "input": "waveform",
            "output": "features",
            "precision": "fp32",
            **graph_summary(frontend_graph),
        },
        "encoder": {
            "file": "encoder.onnx",
            "input": "features",
            "output": "embedding",
            "precision": "fp32",
            **graph_summary(encoder_graph),
        },
    }
    if fp16:
        half = to_float16(encoder_graph)
        _check_ops(half, "float16 encoder graph")
        files["encoder.fp16.onnx"] = _model_bytes(half)
        graphs["encoder_fp16"] = {
            "file": "encoder.fp16.onnx",
            "input": "features",
            "output": "embedding",
            "precision": "fp16",
            "io_precision": "fp32",
            **graph_summary(half),
        }
    if ort_optimize:
        from csi_export.ort_optimize import optimize_offline

        with tempfile.TemporaryDirectory(prefix="csi-ort-") as tmp:
            staging = Path(tmp) / "encoder.onnx"
            staging.write_bytes(files["encoder.onnx"])
            optimized, ort_version = optimize_offline(staging)
        files["encoder.ort.onnx"] = optimized
        graphs["encoder_ort"] = {
            "file": "encoder.ort.onnx",
            "input": "features",
            "output": "embedding",
            "precision": "fp32",
            "onnxruntime_version": ort_version,
            "optimization_level": "extended",
            "providers": ["CPUExecutionProvider"],
        }

    identity_bytes = files["frontend.onnx"] + files["encoder.onnx"]
    if track["track_window_frames"]:  # track vectors differ from the same graphs' whole-track ones
        identity_bytes += f"track:{track['track_window_frames']}/{track['track_hop_frames']}".encode()
    identity = hashlib.sha256(identity_bytes).hexdigest()[:12]
    model_cfg = config.model
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "model_id": "-".join(
            (config.recipe, model_cfg.name, model_cfg.width, f"{model_cfg.embedding_dim}d", identity)
        ),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "sample_rate": sr,
        "embedding_dim": int(model_cfg.embedding_dim),
        "frontend": {
            "kind": ckpt.info["frontend"]["kind"],
            "params": dict(ckpt.info["frontend"]),
            "framing": "valid: frame t is centred on sample context_samples + t * hop_samples of the input; "
            "pad context_samples zeros on both sides of a whole file for the centred frames of training",
            "n_features": n_features,
            "frame_rate_hz": frame_rate,
            "hop_samples": hop_samples,
            "context_samples": int(valid_frontend.context),
            "min_samples": int(min_valid),
            "min_samples_file": int(min_file),
        },
        "encoder": {
            "window_s": window_s,
            "hop_s": hop_s,
            "window_frames": int(window_frames),
            "min_frames": min_frames,
            "max_frames": int(max_frames),
            **track,
            "metric": "ip",
            "normalized": True,
            "backbone": config_to_dict(model_cfg),
        },
        "graphs": graphs,
        "engines": [],
        "export": {
            "exporter": EXPORTER,
            "opset": opset,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "tensorrt_ops_checked_against": TRT_TARGET,
        },
        "source": _provenance(checkpoint, ckpt, config_to_dict(config)),
    }

    report = None
    if verify:
        staging_dir = out.with_name(f".{out.name}.verify-{uuid.uuid4().hex[:8]}")
        try:
            write_bundle(staging_dir, files, manifest)
            staged = load_bundle(staging_dir)
            report = check_parity(staged, ckpt.encoder, rng=rng, fp16=fp16)
        finally:
            shutil.rmtree(staging_dir, ignore_errors=True)
        manifest["verification"] = report.to_dict()
        if not report.passed:
            from csi_export.parity import format_report

            raise ParityFailedError(
                "parity check failed; no bundle written:\n" + format_report(report), report
            )
    path = write_bundle(out, files, manifest, force=force)
    logger.info("wrote model bundle %s (%s)", path, manifest["model_id"])
    return ExportResult(path=path, manifest=manifest, parity=report)


def _track_pooling(model_cfg: Any, frame_rate: float) -> dict[str, Any]:
    """model.json's multi-scale track-vector keys, in the frames evaluation used (0: whole track only)."""
    from csi_training.track_pooling import track_window_frames

    frames = track_window_frames(model_cfg.track_window_s, model_cfg.track_hop_s, frame_rate) or (0, 0)
    return {
        "track_window_s": float(model_cfg.track_window_s),
        "track_hop_s": float(model_cfg.track_hop_s),
        "track_window_frames": int(frames[0]),
        "track_hop_frames": int(frames[1]),
    }


def _provenance(checkpoint: Path, ckpt: Any, config: dict[str, Any]) -> dict[str, Any]:
    best = ckpt.metrics.get("best", {}) if isinstance(ckpt.metrics, dict) else {}
    weights = checkpoint / "model.safetensors"
    return {
        "checkpoint": str(checkpoint.resolve()),
        "weights_sha256": sha256_file(weights),
        "recipe": config.get("recipe"),
        "epoch": ckpt.info.get("epoch"),
        "step": ckpt.info.get("step"),
        "train_works": ckpt.info.get("train_works"),
        "train_files": ckpt.info.get("train_files"),
        "trained_with_torch": ckpt.info.get("torch_version"),
        "metrics": {"val": best.get("val", {}), "epoch": best.get("epoch")},
        "evaluations": _evaluations(checkpoint),
        "config": config,
        # what csi whiten fitted (source checkpoint, regularization, works, validation MAPs), if it did
        "whitening": ckpt.info.get("whitening"),
    }


def _evaluations(checkpoint: Path) -> list[dict[str, Any]]:
    """What ``csi eval`` measured on this checkpoint (``eval/*.json``): manifest, files used, metrics.
    An unreadable file is left out with a warning: provenance must not stop an export."""
    out = []
    for path in sorted((checkpoint / "eval").glob("*.json")):
        try:
            data = json.loads(path.read_text())
            out.append({"manifest": data["manifest"], "files": data["used"], "metrics": data["metrics"]})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("%s: not a csi eval result, left out of the provenance (%s)", path, exc)
    return out
