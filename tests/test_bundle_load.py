"""csi_runtime.bundle: a bundle is validated on load (format, schema version, required keys, files
and their sha256), and a TensorRT engine's tags are compared with the machine before it is loaded."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from csi_runtime.bundle import (
    BUNDLE_FORMAT,
    SCHEMA_VERSION,
    BundleError,
    engine_mismatch,
    load_bundle,
    sha256_file,
)


def minimal_manifest() -> dict[str, Any]:
    return {
        "format": BUNDLE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "model_id": "test-model",
        "sample_rate": 16000,
        "embedding_dim": 8,
        "frontend": {
            "kind": "cqt",
            "params": {"hop_length": 640, "pool": 5},
            "n_features": 84,
            "frame_rate_hz": 5.0,
            "hop_samples": 3200,
            "context_samples": 5824,
            "min_samples": 17408,
            "min_samples_file": 53760,
        },
        "encoder": {
            "window_s": 20.0,
            "hop_s": 10.0,
            "window_frames": 100,
            "min_frames": 17,
            "max_frames": 600,
            "metric": "ip",
        },
        "graphs": {
            "frontend": {
                "file": "frontend.onnx",
                "input": "waveform",
                "output": "features",
                "precision": "fp32",
            },
            "encoder": {
                "file": "encoder.onnx",
                "input": "features",
                "output": "embedding",
                "precision": "fp32",
            },
        },
        "engines": [],
    }


def write(folder: Path, manifest: dict[str, Any], files: dict[str, bytes] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    files = (
        files if files is not None else {"frontend.onnx": b"frontend graph", "encoder.onnx": b"encoder graph"}
    )
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    if "files" not in manifest:
        manifest = {**manifest, "files": {name: sha256_file(folder / name) for name in files}}
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder


def test_valid_bundle_loads_with_its_contract(tmp_path: Path) -> None:
    bundle = load_bundle(write(tmp_path / "b", minimal_manifest()))
    assert (bundle.model_id, bundle.sample_rate, bundle.dim) == ("test-model", 16000, 8)
    assert bundle.graph_path("encoder") == tmp_path / "b" / "encoder.onnx"
    assert bundle.context_samples == 5824 and bundle.hop_samples == 3200
    x = np.ones((2, 1000), np.float32)
    padded = bundle.pad_for_file(x)
    assert padded.shape == (2, 1000 + 2 * 5824) and padded[:, :5824].sum() == 0 and padded[:, 5824:6824].all()
    assert bundle.frames_for(16000 * 20) == (16000 * 20 // 640 + 1) // 5
    with pytest.raises(BundleError, match="no 'encoder_fp16' graph"):
        bundle.graph_path("encoder_fp16")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.update(format="something-else"), "not a csi model bundle"),
        (lambda m: m.update(schema_version=SCHEMA_VERSION + 1), "newer than this csi understands"),
        (lambda m: m.update(schema_version="1"), "schema_version must be an integer"),
        (lambda m: m.update(schema_version=0), "schema version 0 is not valid"),
        (lambda m: m.pop("model_id"), "lacks the required key 'model_id'"),
        (lambda m: m["frontend"].pop("context_samples"), "'frontend' lacks 'context_samples'"),
        (lambda m: m["encoder"].update(window_s=float("nan")), "encoder.window_s must be a positive number"),
        (lambda m: m["encoder"].update(hop_s=-1), "encoder.hop_s must be a positive number"),
        (lambda m: m["encoder"].update(track_window_frames=-5), "track_window_frames must be a non-negative"),
        (
            lambda m: m["encoder"].update(track_window_frames=2.5),
            "track_window_frames must be a non-negative",
        ),
        (
            lambda m: m["encoder"].update(track_window_frames=50, track_hop_frames=60),
            r"track_hop_frames must be in \[1, track_window_frames=50\], got 60",
        ),
        (
            lambda m: m["encoder"].update(track_window_frames=50, track_hop_frames=0),
            r"track_hop_frames must be in \[1, track_window_frames=50\], got 0",
        ),
        (lambda m: m.update(sample_rate=0), "sample_rate must be a positive integer"),
        (lambda m: m.update(embedding_dim=True), "embedding_dim must be a positive integer"),
        (lambda m: m["graphs"]["encoder"].pop("file"), "graph 'encoder' must be an object with file"),
        (lambda m: m.update(engines={"a": 1}), "'engines' must be a list"),
        (lambda m: m.update(engines=[{"file": "x.engine"}]), "engine entry 0 must be an object"),
        (lambda m: m.update(frontend=[]), "'frontend' must be an object"),
    ],
)
def test_broken_manifest_is_named(tmp_path: Path, mutate: Any, message: str) -> None:
    manifest = minimal_manifest()
    mutate(manifest)
    folder = write(tmp_path / "b", manifest)
    with pytest.raises(BundleError, match=message):
        load_bundle(folder)


def test_files_are_checked(tmp_path: Path) -> None:
    folder = write(tmp_path / "b", minimal_manifest())
    (folder / "encoder.onnx").write_bytes(b"encoder grapH")  # one byte changed
    with pytest.raises(BundleError, match=r"encoder\.onnx is corrupt or was modified"):
        load_bundle(folder)
    assert load_bundle(folder, verify_hashes=False).dim == 8  # trusted fast path skips only the hashes
    (folder / "encoder.onnx").unlink()
    with pytest.raises(BundleError, match=r"encoder\.onnx is missing"):
        load_bundle(folder, verify_hashes=False)

    manifest = minimal_manifest()
    other = write(tmp_path / "c", manifest)
    listed = json.loads((other / "model.json").read_text())
    del listed["files"]["encoder.onnx"]
    (other / "model.json").write_text(json.dumps(listed))
    with pytest.raises(BundleError, match=r"encoder\.onnx is used by the bundle but has no sha256"):
        load_bundle(other)
    listed["files"] = {**listed["files"], "encoder.onnx": "0" * 64, "../outside": "0" * 64}
    (other / "model.json").write_text(json.dumps(listed))
    with pytest.raises(BundleError, match="points outside the bundle"):
        load_bundle(other)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="is not a folder"):
        load_bundle(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"no model\.json"):
        load_bundle(tmp_path / "empty")
    folder = write(tmp_path / "b", minimal_manifest())
    (folder / "model.json").write_bytes(b'{"format": "csi-model-bundle", "schema_')  # truncated copy
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(folder)
    (folder / "model.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(folder)
    (folder / "model.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="must hold a JSON object"):
        load_bundle(folder)


def test_engine_tags_are_compared_before_loading() -> None:
    entry = {
        "file": "engines/encoder.fp16.sm90.trt10.15.1.29.engine",
        "tensorrt_version": "10.15.1.29",
        "compute_capability": "9.0",
    }
    assert engine_mismatch(entry, "10.15.1.29", (9, 0)) is None
    assert engine_mismatch(entry, "10.15.1.29", "9.0") is None
    why = engine_mismatch(entry, "10.15.1.30", (9, 0))
    assert why is not None and "TensorRT 10.15.1.29" in why and "10.15.1.30" in why
    why = engine_mismatch(entry, "10.15.1.29", (8, 9))
    assert why is not None and "sm_90" in why and "sm_89" in why and "TensorRT" not in why
    why = engine_mismatch(entry, "11.0.0.1", (10, 0))
    assert why is not None and "TensorRT" in why and "sm_100" in why


def test_runtime_bundle_module_does_not_import_torch(tmp_path: Path) -> None:
    import subprocess

    folder = write(tmp_path / "b", minimal_manifest())
    code = (
        "import sys; from csi_runtime.bundle import load_bundle; "
        f"load_bundle({str(folder)!r}); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    shutil.rmtree(folder)
