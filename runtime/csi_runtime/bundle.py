"""The model bundle: the folder a deployment loads (ONNX graphs, optional TensorRT engines, model.json).

Layout (written by ``csi_export``; read here without torch)::

    bundle/
      model.json            manifest: format, schema version, audio/frontend/encoder contract,
                            graphs, engines, provenance, parity report, sha256 of every file
      frontend.onnx         waveform [B, n_samples] float32 → features [B, n_features, T] ("valid"
                            framing: frame t is centred on sample context + t * hop; see below)
      encoder.onnx          features [B, n_features, T] float32 → unit-norm embedding [B, D] float32
      encoder.fp16.onnx     optional: the same encoder computing in float16 (float32 inputs/outputs)
      encoder.ort.onnx      optional: encoder.onnx after onnxruntime's offline graph optimisation
      engines/*.engine      optional: serialized TensorRT engines, one entry each in model.json

One frontend graph serves files and streams: it computes frames with no padding ("valid"), so a
stream computes each chunk's frames once from the chunk plus ``frontend.context_samples`` of left
context, and a whole file is framed exactly as in training (centred frames) by padding
``context_samples`` zeros on both sides first (:meth:`ModelBundle.pad_for_file`).

Validation on load: the format tag, a schema version this code understands, the required keys, and
the sha256 of every listed file (a truncated copy or a hand-edited graph is refused by name).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BUNDLE_FORMAT",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "BundleError",
    "EngineMismatchError",
    "ModelBundle",
    "engine_mismatch",
    "load_bundle",
    "sha256_file",
]

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "csi-model-bundle"
#: bumped when a reader of the previous version would misread a bundle; readers refuse newer ones
#: (2: encoder.track_window_frames / track_hop_frames, multi-scale track vectors; 1 lacks them)
SCHEMA_VERSION = 2
MANIFEST_NAME = "model.json"
#: model.json is small; anything much larger is not one of ours
MAX_MANIFEST_BYTES = 16 * 2**20

#: keys every model.json has, with the keys each of their sections must have
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "format": (),
    "schema_version": (),
    "model_id": (),
    "sample_rate": (),
    "embedding_dim": (),
    "frontend": (
        "kind",
        "params",
        "n_features",
        "frame_rate_hz",
        "hop_samples",
        "context_samples",
        "min_samples",
        "min_samples_file",
    ),
    "encoder": ("window_s", "hop_s", "window_frames", "min_frames", "max_frames", "metric"),
    "graphs": ("frontend", "encoder"),
    "files": (),
}
GRAPH_KEYS = ("file", "input", "output", "precision")
ENGINE_KEYS = ("file", "graph", "precision", "tensorrt_version", "compute_capability", "profile")


class BundleError(ValueError):
    """A model bundle is missing, incomplete, corrupt, of another format or of a newer schema."""


class EngineMismatchError(BundleError):
    """A TensorRT engine was built for another TensorRT version or GPU than the one present."""


def sha256_file(path: str | os.PathLike[str], block_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's contents, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


def engine_mismatch(
    entry: Mapping[str, Any], tensorrt_version: str, compute_capability: tuple[int, int] | str
) -> str | None:
    """Why a serialized engine cannot run here, or None if its tags match.

    TensorRT refuses (or worse, crashes on) an engine built by any other TensorRT release, down to
    the build number, or for another GPU architecture; this check runs on the manifest entry
    before the engine is deserialised. ``compute_capability``: (major, minor) or "9.0".
    """
    if isinstance(compute_capability, tuple):
        here_cc = f"{compute_capability[0]}.{compute_capability[1]}"
    else:
        here_cc = str(compute_capability)
    built_trt, built_cc = str(entry.get("tensorrt_version")), str(entry.get("compute_capability"))
    problems = []
    if built_trt != str(tensorrt_version):
        problems.append(f"built with TensorRT {built_trt}, this machine has TensorRT {tensorrt_version}")
    if built_cc != here_cc:
        problems.append(
            f"built for compute capability {built_cc} (sm_{built_cc.replace('.', '')}), "
            f"this GPU is {here_cc} (sm_{here_cc.replace('.', '')})"
        )
    if not problems:
        return None
    return f"engine {entry.get('file')}: " + "; ".join(problems)


@dataclass(frozen=True)
class ModelBundle:
    """A validated bundle: its folder and its parsed model.json (``manifest``)."""

    path: Path
    manifest: dict[str, Any]

    @property
    def model_id(self) -> str:
        return str(self.manifest["model_id"])

    @property
    def sample_rate(self) -> int:
        """Audio rate the frontend expects, Hz."""
        return int(self.manifest["sample_rate"])

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return int(self.manifest["embedding_dim"])

    @property
    def context_samples(self) -> int:
        """Samples of audio each side of a frame centre that the frame depends on."""
        return int(self.manifest["frontend"]["context_samples"])

    @property
    def hop_samples(self) -> int:
        """Samples between consecutive frontend output frames (hop length × pooling)."""
        return int(self.manifest["frontend"]["hop_samples"])

    @property
    def min_samples_file(self) -> int:
        """Shortest whole file (before :meth:`pad_for_file`) the graphs accept, samples: the encoder
        needs ``encoder.min_frames`` frames."""
        return int(self.manifest["frontend"]["min_samples_file"])

    def graph_path(self, name: str) -> Path:
        """Path of a graph listed under ``graphs`` (``frontend``, ``encoder``, ``encoder_fp16``, …)."""
        graphs = self.manifest["graphs"]
        if name not in graphs:
            raise BundleError(
                f"bundle {self.path} has no {name!r} graph (it has: {', '.join(sorted(graphs))})"
            )
        return self.path / graphs[name]["file"]

    def engines(self) -> list[dict[str, Any]]:
        """TensorRT engine entries (may be empty)."""
        return list(self.manifest.get("engines", []))

    def pad_for_file(self, waveform: np.ndarray) -> np.ndarray:
        """[..., n] → [..., n + 2 * context]: zero padding that makes the valid-framing frontend
        produce the centred frames training used (frame t centred on sample t * hop of the input)."""
        pad = [(0, 0)] * (waveform.ndim - 1) + [(self.context_samples, self.context_samples)]
        return np.pad(waveform, pad)

    def frames_for(self, n_samples: int) -> int:
        """Encoder frames a file of n_samples yields after :meth:`pad_for_file` (centred framing)."""
        f = self.manifest["frontend"]
        hop_length = int(f["params"].get("hop_length", f["hop_samples"]))
        pool = int(f["params"].get("pool", 1))
        return (n_samples // hop_length + 1) // pool


def _fail(path: Path, message: str) -> BundleError:
    return BundleError(f"model bundle {path}: {message}")


def _check_schema(path: Path, manifest: Any) -> None:
    if not isinstance(manifest, dict):
        raise _fail(path, f"{MANIFEST_NAME} must hold a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise _fail(
            path,
            f"{MANIFEST_NAME} is not a csi model bundle (format {manifest.get('format')!r}, "
            f"expected {BUNDLE_FORMAT!r})",
        )
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _fail(path, f"schema_version must be an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise _fail(
            path,
            f"schema version {version} is newer than this csi understands ({SCHEMA_VERSION}); "
            "upgrade csi or re-export the model with this version",
        )
    if version < 1:
        raise _fail(path, f"schema version {version} is not valid")
    for key, subkeys in REQUIRED_KEYS.items():
        if key not in manifest:
            raise _fail(path, f"{MANIFEST_NAME} lacks the required key {key!r}")
        if subkeys:
            section = manifest[key]
            if not isinstance(section, dict):
                raise _fail(path, f"{key!r} must be an object, got {type(section).__name__}")
            missing = [k for k in subkeys if k not in section]
            if missing:
                raise _fail(path, f"{key!r} lacks {', '.join(repr(k) for k in missing)}")
    for key in ("sample_rate", "embedding_dim"):
        value = manifest[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise _fail(path, f"{key} must be a positive integer, got {value!r}")
    for name, graph in manifest["graphs"].items():
        if not isinstance(graph, dict) or any(k not in graph for k in GRAPH_KEYS):
            raise _fail(path, f"graph {name!r} must be an object with {', '.join(GRAPH_KEYS)}")
    engines = manifest.get("engines", [])
    if not isinstance(engines, list):
        raise _fail(path, "'engines' must be a list")
    for i, engine in enumerate(engines):
        if not isinstance(engine, dict) or any(k not in engine for k in ENGINE_KEYS):
            raise _fail(path, f"engine entry {i} must be an object with {', '.join(ENGINE_KEYS)}")
    encoder = manifest["encoder"]
    for key in ("window_s", "hop_s"):
        value = encoder[key]
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise _fail(path, f"encoder.{key} must be a positive number of seconds, got {value!r}")
    window, hop = encoder.get("track_window_frames", 0), encoder.get("track_hop_frames", 0)
    for key, value in (("track_window_frames", window), ("track_hop_frames", hop)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _fail(path, f"encoder.{key} must be a non-negative integer, got {value!r}")
    if window and not 1 <= hop <= window:
        raise _fail(path, f"encoder.track_hop_frames must be in [1, track_window_frames={window}], got {hop}")


def _check_files(path: Path, manifest: dict[str, Any], verify_hashes: bool) -> None:
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise _fail(path, "'files' must map each file of the bundle to its sha256")
    listed = [g["file"] for g in manifest["graphs"].values()] + [
        e["file"] for e in manifest.get("engines", [])
    ]
    for name in listed:
        if name not in files:
            raise _fail(path, f"{name} is used by the bundle but has no sha256 under 'files'")
    for name in files:
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise _fail(path, f"file entry {name!r} points outside the bundle")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise _fail(path, f"{name} is missing (listed in {MANIFEST_NAME})")
        if verify_hashes:
            actual = sha256_file(file)
            if actual != expected:
                raise _fail(
                    path,
                    f"{name} is corrupt or was modified: sha256 {actual[:16]}… "
                    f"≠ {str(expected)[:16]}… recorded in {MANIFEST_NAME}",
                )


def load_bundle(path: str | os.PathLike[str], verify_hashes: bool = True) -> ModelBundle:
    """Read and validate a bundle folder; raises :class:`BundleError` naming what is wrong."""
    folder = Path(path)
    if not folder.exists():
        raise BundleError(f"model bundle {folder} does not exist")
    if not folder.is_dir():
        raise BundleError(
            f"model bundle {folder} is not a folder (a bundle is a folder with {MANIFEST_NAME})"
        )
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise _fail(
            folder,
            f"no {MANIFEST_NAME} (is this a model bundle? export one with "
            "python export/build_engine.py --checkpoint CKPT --out DIR)",
        )
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise _fail(
            folder, f"{MANIFEST_NAME} is {manifest_path.stat().st_size} bytes, too large to be a manifest"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(folder, f"{MANIFEST_NAME} is not valid JSON ({exc})") from None
    _check_schema(folder, manifest)
    _check_files(folder, manifest, verify_hashes)
    logger.debug("loaded model bundle %s (model %s)", folder, manifest["model_id"])
    return ModelBundle(folder, manifest)
