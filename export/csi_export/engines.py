"""Adding a TensorRT engine to an existing bundle: build it for this machine, record it in model.json.

An engine is specific to the TensorRT release and GPU architecture that built it, so a bundle may hold
several (one per precision × GPU × TensorRT); each entry carries those tags and the runtime picks the
one that matches (or rebuilds). The graphs are carried over unchanged; the bundle is rewritten at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from csi_export.bundle_writer import write_bundle
from csi_runtime.bundle import MANIFEST_NAME, load_bundle

__all__ = ["DEFAULT_BATCH", "add_engine", "engine_file_name"]

logger = logging.getLogger(__name__)

#: batch sizes of the optimisation profile: (min, opt, max)
DEFAULT_BATCH = (1, 8, 32)


def engine_file_name(precision: str, compute_capability: tuple[int, int], tensorrt_version: str) -> str:
    sm = f"sm{compute_capability[0]}{compute_capability[1]}"
    return f"engines/encoder.{precision}.{sm}.trt{tensorrt_version}.engine"


def add_engine(
    bundle_dir: str | os.PathLike[str],
    precision: str = "fp32",
    batch: tuple[int, int, int] = DEFAULT_BATCH,
    frames: tuple[int, int, int] | None = None,
    workspace_bytes: int = 4 << 30,
    timing_cache: str | os.PathLike[str] | None = None,
    force: bool = False,
    device: int = 0,
) -> dict[str, Any]:
    """Build a TensorRT engine of the bundle's encoder (``precision`` "fp32" uses encoder.onnx, "fp16"
    encoder.fp16.onnx) and add it to the bundle; returns its manifest entry.

    frames: (min, opt, max) encoder frames of the profile; default (min_frames, window_frames,
    max_frames) from model.json. timing_cache: default ``<bundle>/engines/timing.cache``, re-used
    by later builds on the same GPU.
    """
    from csi_export.tensorrt_engine import build_engine, gpu_compute_capability, import_tensorrt

    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
    bundle = load_bundle(bundle_dir)
    graph = "encoder" if precision == "fp32" else "encoder_fp16"
    if graph not in bundle.manifest["graphs"]:
        raise ValueError(
            f"bundle {bundle.path} has no float16 encoder graph; "
            "re-export it with --fp16 to build an fp16 engine"
        )
    encoder = bundle.manifest["encoder"]
    if frames is None:
        frames = (int(encoder["min_frames"]), int(encoder["window_frames"]), int(encoder["max_frames"]))
    if frames[0] < int(encoder["min_frames"]):
        raise ValueError(
            f"the encoder graph accepts ≥ {encoder['min_frames']} frames; "
            f"profile min {frames[0]} is too small"
        )
    trt = import_tensorrt()
    capability = gpu_compute_capability(device)
    name = engine_file_name(precision, capability, trt.__version__)
    existing = [e for e in bundle.engines() if e["file"] == name]
    if existing and not force:
        raise FileExistsError(f"bundle {bundle.path} already has {name}; pass --force to rebuild it")
    graph_file = bundle.graph_path(graph)
    with tempfile.TemporaryDirectory(prefix="csi-engine-", dir=bundle.path.parent) as tmp:
        engine_path = Path(tmp) / "encoder.engine"
        cache_path = Path(timing_cache) if timing_cache else Path(tmp) / "timing.cache"
        bundled_cache = bundle.path / "engines" / "timing.cache"
        if not timing_cache and bundled_cache.is_file():
            shutil.copyfile(bundled_cache, cache_path)  # re-use the tactics timed by earlier builds
        entry = build_engine(
            graph_file,
            engine_path,
            entry_file=name,
            graph=graph,
            input_name=bundle.manifest["graphs"][graph]["input"],
            n_features=int(bundle.manifest["frontend"]["n_features"]),
            batch=batch,
            frames=frames,
            precision=precision,
            workspace_bytes=workspace_bytes,
            timing_cache_path=cache_path,
            onnx_sha256=bundle.manifest["files"][bundle.manifest["graphs"][graph]["file"]],
        )
        manifest = dict(bundle.manifest)
        manifest["engines"] = [e for e in bundle.engines() if e["file"] != name] + [entry]
        keep = {
            rel: bundle.path / rel for rel in bundle.manifest["files"] if rel != name and rel != MANIFEST_NAME
        }
        files = {name: engine_path.read_bytes()}
        if not timing_cache and cache_path.exists():
            files["engines/timing.cache"] = cache_path.read_bytes()
            keep.pop("engines/timing.cache", None)
        write_bundle(bundle.path, files, manifest, force=True, keep=keep)
    logger.info("added %s to %s", name, bundle.path)
    return entry
