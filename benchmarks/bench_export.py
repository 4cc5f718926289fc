"""Inference of the exported graphs on CPU: onnxruntime against torch eager on the same model.

The packaged default model (small CQTNet, 256-d; its training checkpoint is data/checkpoints/default):
the encoder on CQT features of rendered music ([B, 84, 100] = one 20 s window at 5 frames/s) and
the CQT frontend (20 s of 16 kHz audio per item), batch 1 and 16, both with 2 intra-op threads. Peers in
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
    torch_best = min((t for name, t in times.items() if name.startswith("torch")), default=None)
    if torch_best is not None:
        for name, t in times.items():
            if not name.startswith("torch"):
                values[f"best torch / {name}"] = f"{torch_best / t:.2f}x"
    record("export", key, values)


#: the training checkpoint of the packaged default model (its bundle is csi_runtime/models/default)
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "data" / "checkpoints" / "default"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The packaged default model: its bundle (onnxruntime) and its training checkpoint (torch), and
    features of real audio (a rendered version of a random melody) — trained weights and real inputs,
    since activations (and so denormal arithmetic) differ from a random network on random input."""
    from csi_export.parity import rendered_audio
    from csi_runtime.embedder import default_bundle_path

    root = tmp_path_factory.mktemp("bench-export")
    path = export_bundle(DEFAULT_CHECKPOINT, root / "bundle", ort_optimize=True, window_s=WINDOW_S).path
    b = load_bundle(path)
    packaged = load_bundle(default_bundle_path()).manifest["source"]["weights_sha256"]
    assert b.manifest["source"]["weights_sha256"] == packaged  # the same weights as the package's model
    clips, _ = rendered_audio(b.sample_rate)
    features = [
        ort.InferenceSession(str(b.graph_path("frontend"))).run(None, {"waveform": b.pad_for_file(c[None])})[
            0
        ]
        for c in clips[:16]
    ]
    return {"bundle": b, "encoder": load_checkpoint(DEFAULT_CHECKPOINT).encoder.eval(), "features": features}


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
@pytest.mark.parametrize(
    "engine", ["torch eager", "torch eager, flush denormals", "onnxruntime", "onnxruntime, offline-optimised"]
)
def test_encoder(
    benchmark: Any, machine: dict[str, Any], bundle: dict[str, Any], batch: int, engine: str
) -> None:
    b = bundle["bundle"]
    frames = b.manifest["encoder"]["window_frames"]
    x = np.concatenate([f[..., :frames] for f in bundle["features"][:batch]])
    if engine.startswith("torch eager"):
        torch.set_num_threads(THREADS)
        backbone, xt = bundle["encoder"].backbone, torch.from_numpy(x)
        flush = engine.endswith("flush denormals")

        def run() -> None:
            # subnormal activations of trained networks on real input cost x86 cores dearly;
            # torch computes them unless told to flush them to zero (onnxruntime's MLAS kernels
            # are not slowed down by them)
            torch.set_flush_denormal(flush)
            try:
                with torch.inference_mode():
                    backbone(xt)
            finally:
                torch.set_flush_denormal(False)
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
