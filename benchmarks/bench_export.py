"""Inference of the exported graphs on CPU: onnxruntime against torch eager on the same model.

The encoder (small CQTNet, 256-d; features [B, 84, 100] = one 20 s window at 5 frames/s) and the
CQT frontend (20 s of 16 kHz audio per item), batch 1 and 16, both with 2 intra-op threads. Peers in
the same run: torch eager (``inference_mode``) on the checkpoint's modules, and onnxruntime on the
bundle's graphs as the runtime loads them (``encoder.onnx``, session-time optimisation; and
``encoder.ort.onnx``, optimised offline). The ratio is torch time / onnxruntime time (target of
issue #4: ≥ 1.5× for the encoder at batch 1 and 16). Results: benchmarks/results/export.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from csi_export.build import export_bundle  # noqa: E402
from csi_runtime.bundle import load_bundle  # noqa: E402
from csi_training.checkpoint import load_checkpoint  # noqa: E402

from conftest import SMOKE, record  # noqa: E402

THREADS = 2
WINDOW_S = 20.0
BATCHES = [1] if SMOKE else [1, 16]
ROUNDS = 2 if SMOKE else 15
_medians: dict[tuple[str, ...], dict[str, float]] = {}


def _record(graph: str, shape: str, engine: str, median: float) -> None:
    """Adds this engine's time to the row, and torch/onnxruntime ratios once both are measured."""
    key = {"graph": graph, "input": shape, "threads": THREADS}
    times = _medians.setdefault(tuple(map(str, key.values())), {})
    times[engine] = median
    values: dict[str, Any] = {f"{engine} (ms)": round(median * 1e3, 3)}
    if "torch eager" in times:
        for name, t in times.items():
            if name != "torch eager":
                values[f"torch / {name}"] = f"{times['torch eager'] / t:.2f}x"
    record("export", key, values)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from export_fixtures import make_checkpoint

    root = tmp_path_factory.mktemp("bench-export")
    checkpoint = make_checkpoint(root / "ckpt", seed=0, embedding_dim=256)
    path = export_bundle(checkpoint, root / "bundle", ort_optimize=True).path
    return {"bundle": load_bundle(path), "encoder": load_checkpoint(checkpoint).encoder.eval()}


def _session(path: Path) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _timed(benchmark: Any, fn: Any) -> float | None:
    fn()  # warm-up: oneDNN / onnxruntime kernel selection
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    return None if benchmark.stats is None else float(benchmark.stats.stats.median)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("engine", ["torch eager", "onnxruntime", "onnxruntime, offline-optimised"])
def test_encoder(
    benchmark: Any, machine: dict[str, Any], bundle: dict[str, Any], batch: int, engine: str
) -> None:
    b = bundle["bundle"]
    frames = b.manifest["encoder"]["window_frames"]
    x = np.random.default_rng(batch).random((batch, 84, frames), dtype=np.float32) * 4
    if engine == "torch eager":
        torch.set_num_threads(THREADS)
        backbone, xt = bundle["encoder"].backbone, torch.from_numpy(x)

        def run() -> None:
            with torch.inference_mode():
                backbone(xt)
    else:
        session = _session(b.graph_path("encoder" if engine == "onnxruntime" else "encoder_ort"))

        def run() -> None:
            session.run(None, {"features": x})

    median = _timed(benchmark, run)
    if median is not None:
        _record("encoder", f"{batch}×84×{frames}", engine, median)
        benchmark.extra_info.update(windows_per_s=batch / median)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("engine", ["torch eager", "onnxruntime"])
def test_frontend(
    benchmark: Any, machine: dict[str, Any], bundle: dict[str, Any], batch: int, engine: str
) -> None:
    b = bundle["bundle"]
    audio = (
        np.random.default_rng(batch).standard_normal((batch, int(WINDOW_S * b.sample_rate))) * 0.1
    ).astype(np.float32)
    if engine == "torch eager":
        torch.set_num_threads(THREADS)
        frontend, xt = bundle["encoder"].frontend, torch.from_numpy(audio)

        def run() -> None:
            with torch.inference_mode():
                frontend(xt)
    else:
        session, padded = _session(b.graph_path("frontend")), b.pad_for_file(audio)

        def run() -> None:
            session.run(None, {"waveform": padded})

    median = _timed(benchmark, run)
    if median is not None:
        _record("frontend", f"{batch}×{int(WINDOW_S)} s audio", engine, median)
