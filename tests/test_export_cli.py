"""``python export/build_engine.py`` / ``csi export`` as a user runs them (real subprocesses): export
with a parity report, refusal to overwrite, --force, re-verification, TensorRT absent, a write that
fails part-way (file-size limit) leaving nothing behind, and broken checkpoints named clearly."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="export needs onnx (the export extra)")
pytest.importorskip("onnxruntime", reason="export needs onnxruntime (the export extra)")
pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")

from export_fixtures import make_checkpoint

from csi_export import bundle_writer
from csi_runtime.bundle import load_bundle, sha256_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "export" / "build_engine.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def build_engine(*args: str | Path, limit_bytes: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:  # runs in the child: writes past limit_bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))  # type: ignore[arg-type]

    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        preexec_fn=limit if limit_bytes else None,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(
        tmp_path_factory.mktemp("cli") / "ckpt", int(np.random.SeedSequence().entropy % 2**31)
    )


def hidden_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_help_explains_the_command() -> None:
    out = build_engine("--help")
    assert out.returncode == 0
    for text in ("--checkpoint", "--out", "--fp16", "--trt", "--verify", "--force", "--batch", "model.json",
                 "examples:", "TensorRT"):  # fmt: skip
        assert text in out.stdout, text
    csi = subprocess.run(
        [sys.executable, "-m", "csi_runtime", "export", "--help"], capture_output=True, text=True
    )
    assert csi.returncode == 0 and "csi export --checkpoint" in csi.stdout


def test_export_verify_refuse_force_reverify(checkpoint: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "bundle"
    first = build_engine("--checkpoint", checkpoint, "--out", out_dir, "--verify", "--seed", "7")
    assert first.returncode == 0, first.stderr
    assert "parity: PASSED" in first.stdout and "fp32 vs torch" in first.stdout
    manifest = load_bundle(out_dir).manifest
    assert manifest["verification"]["passed"] is True
    digest = sha256_file(out_dir / "model.json")

    again = build_engine("--checkpoint", checkpoint, "--out", out_dir)
    assert again.returncode == 2 and "already exists; pass --force" in again.stderr
    assert sha256_file(out_dir / "model.json") == digest  # untouched

    forced = build_engine("--checkpoint", checkpoint, "--out", out_dir, "--force", "--ort-optimize")
    assert forced.returncode == 0, forced.stderr
    assert "encoder_ort" in load_bundle(out_dir).manifest["graphs"]
    assert hidden_leftovers(tmp_path) == []

    reverify = build_engine("--bundle", out_dir, "--verify", "--json")  # checkpoint taken from model.json
    assert reverify.returncode == 0, reverify.stderr
    assert json.loads(reverify.stdout)["passed"] is True


def test_tensorrt_absent_is_explained(checkpoint: Path, tmp_path: Path) -> None:
    try:
        import tensorrt  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here; tests/test_tensorrt_engine.py builds real engines")
    out_dir = tmp_path / "bundle"
    assert build_engine("--checkpoint", checkpoint, "--out", out_dir).returncode == 0
    digest = sha256_file(out_dir / "model.json")
    trt = build_engine("--bundle", out_dir, "--trt")
    assert trt.returncode == 2
    assert "TensorRT" in trt.stderr and "not installed" in trt.stderr and "Traceback" not in trt.stderr
    assert sha256_file(out_dir / "model.json") == digest


def test_running_out_of_space_leaves_nothing(checkpoint: Path, tmp_path: Path) -> None:
    """A file-size limit below the encoder graph's size makes the bundle write fail part-way."""
    out_dir = tmp_path / "bundle"
    failed = build_engine("--checkpoint", checkpoint, "--out", out_dir, limit_bytes=400_000)
    assert failed.returncode == 2
    assert "not enough space to write the bundle" in failed.stderr and "Traceback" not in failed.stderr
    assert not out_dir.exists()
    assert hidden_leftovers(tmp_path) == []


def test_failed_replacement_keeps_the_old_bundle(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = tmp_path / "bundle"
    bundle_writer.write_bundle(out_dir, {"encoder.onnx": b"old graph"}, {"format": "x"})
    before = sha256_file(out_dir / "model.json")
    real_write = bundle_writer._write_file
    calls = {"n": 0}

    def disk_fills_up(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(bundle_writer, "_write_file", disk_fills_up)
    with pytest.raises(bundle_writer.BundleWriteError, match="not enough space"):
        bundle_writer.write_bundle(out_dir, {"a.onnx": b"new", "b.onnx": b"new"}, {"format": "x"}, force=True)
    assert sha256_file(out_dir / "model.json") == before
    assert (out_dir / "encoder.onnx").read_bytes() == b"old graph"
    assert hidden_leftovers(tmp_path) == []


def test_broken_checkpoints_are_named(checkpoint: Path, tmp_path: Path) -> None:
    missing = build_engine("--checkpoint", tmp_path / "nope", "--out", tmp_path / "b1")
    assert missing.returncode == 2 and "does not exist" in missing.stderr

    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(checkpoint, odd)
    header = json.loads((odd / "config.json").read_text())
    header["frontend"]["bins_per_semitone"] = 3
    (odd / "config.json").write_text(json.dumps(header))
    unknown = build_engine("--checkpoint", odd, "--out", tmp_path / "b2")
    assert unknown.returncode == 2 and "bins_per_semitone" in unknown.stderr, unknown.stderr

    damaged = tmp_path / "damaged"
    shutil.copytree(checkpoint, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    bad = build_engine("--checkpoint", damaged, "--out", tmp_path / "b3")
    assert bad.returncode == 2 and "model.safetensors" in bad.stderr and "damaged" in bad.stderr

    for case in (["--out", tmp_path / "b4"], ["--bundle", tmp_path / "b4", "--batch", "8,1,32", "--trt"]):
        refused = build_engine(*case)
        assert refused.returncode == 2, case
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("b")]
    assert "Traceback" not in missing.stderr + unknown.stderr + bad.stderr


def test_export_into_a_folder_that_does_not_exist_yet(checkpoint: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "new" / "nested" / "bundle"
    done = build_engine("--checkpoint", checkpoint, "--out", out_dir, "--ort-optimize")
    assert done.returncode == 0, done.stderr
    assert "encoder_ort" in load_bundle(out_dir).manifest["graphs"]
