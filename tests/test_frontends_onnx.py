"""Each frontend exports to ONNX as a graph of plain ops (no STFT/DFT, no control flow) with dynamic
batch and time axes, and onnxruntime (when installed) computes what torch computes.

Exporter: torch.onnx.export(dynamo=True), fed a torch.export.ExportedProgram made with strict
dynamic dims. It is torch's default exporter since 2.9 (the TorchScript one, dynamo=False, is
deprecated and warns that it will be removed); it emits opset 18+ graphs without the Constant /
Cast / Identity clutter of the old one after its optimiser pass, and names the output length by
its formula (e.g. "((n//640)) + 1"). The frontends write every shape as an exact function of the
frame count, so torch.export proves the graph for every input length: exporting through a strict
torch.export.export (rather than letting torch.onnx fall back to a draft export) makes a shape
guard a test failure instead of a silently specialised graph. Needs onnx and onnxscript (the
exporter's dependency), onnxruntime for the numerical part.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from csi_training.frontends import CQT, Chroma, ChromaConfig, CQTConfig, LogMel, MelConfig

onnx = pytest.importorskip("onnx", reason="onnx is in the dev extra")
pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")

# Plain ONNX ops a TensorRT parser and any ONNX runtime handle; no STFT, DFT, Loop, If, Scan.
ALLOWED_OPS = {
    "Add", "AveragePool", "Cast", "Clip", "Concat", "Constant", "Conv", "Div", "Gather", "Log", "MatMul",
    "Max", "Min", "Mul", "Pad", "Pow", "ReduceMax", "ReduceSum", "Reshape", "Shape", "Slice", "Sqrt",
    "Squeeze", "Sub", "Transpose", "Unsqueeze",
}  # fmt: skip

FRONTENDS: dict[str, Any] = {
    # the default 7-octave multi-rate CQT with log1p, pooled to 12.5 fps
    "cqt_log1p_pool2": lambda: CQT(CQTConfig(pool=2)),
    # dB with a per-example floor, reflect padding
    "logmel_reflect_db_top_db": lambda: LogMel(MelConfig(pad_mode="reflect", top_db=80.0)),
    # the streaming layout (no padding) at 50 fps, 36 bins per octave folded to 12 classes, max norm
    "chroma_nocenter_max_norm": lambda: Chroma(
        ChromaConfig(cqt=CQTConfig(n_bins=252, bins_per_octave=36, log="none", center=False, hop_length=320))
    ),
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():  # type: ignore[no-untyped-def]
    """Many small ops: on a loaded 2-core machine, two OpenMP threads are far slower than one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def shortest_export_length(frontend: Any) -> int:
    """Shortest input giving 2 frames: torch.export specialises axes of size 0 or 1."""
    n = frontend.min_samples
    while frontend.frames(n) < 2:
        n += 64
    return n


_EXPORTED: dict[str, tuple[Any, Any]] = {}


def exported(name: str) -> tuple[Any, Any]:
    """(frontend, onnx.ModelProto), exported once per test session, input axes named batch and n
    (through csi_export.onnx_graphs.export_graph, the exporter of the model bundles)."""
    from csi_export.onnx_graphs import Axis, export_graph

    if name not in _EXPORTED:
        frontend = FRONTENDS[name]().eval()
        shortest = shortest_export_length(frontend)
        model = export_graph(
            frontend,
            torch.zeros(2, shortest + 16000),
            "waveform",
            "features",
            {0: Axis("batch"), 1: Axis("n", min=shortest)},
        )
        _EXPORTED[name] = (frontend, model)
    return _EXPORTED[name]


@pytest.mark.parametrize("name", list(FRONTENDS))
def test_export_is_a_valid_graph_of_plain_ops(name: str) -> None:
    _, model = exported(name)
    onnx.checker.check_model(model, full_check=True)
    op_types = {node.op_type for node in model.graph.node}
    assert op_types <= ALLOWED_OPS, f"unexpected ops: {sorted(op_types - ALLOWED_OPS)}"
    assert not op_types & {"STFT", "DFT", "Loop", "If", "Scan"}
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}  # no custom-op domains
    assert not model.functions  # everything inlined into plain nodes


@pytest.mark.parametrize("name", list(FRONTENDS))
def test_batch_and_time_axes_are_dynamic(name: str) -> None:
    frontend, model = exported(name)
    (waveform,) = model.graph.input
    (features,) = model.graph.output
    in_dims = waveform.type.tensor_type.shape.dim
    out_dims = features.type.tensor_type.shape.dim
    assert [d.dim_param for d in in_dims] == ["batch", "n"]
    assert out_dims[0].dim_param == "batch"
    assert out_dims[1].dim_value == frontend.n_features
    assert "n" in out_dims[2].dim_param  # a formula of n, e.g. "((n//640)) + 1"


@pytest.mark.parametrize("name", list(FRONTENDS))
def test_onnxruntime_computes_what_torch_computes(name: str, rng: np.random.Generator) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is optional for this check")
    frontend, model = exported(name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    shortest = shortest_export_length(frontend)
    for batch, n in [(1, shortest), (3, int(rng.integers(shortest, 5 * 16000))), (2, 20 * 16000 + 77)]:
        t = np.arange(n) / 16000
        tones = sum(rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(40, 3000) * t) for _ in range(4))
        waveform = (tones + 0.05 * rng.standard_normal((batch, n))).astype(np.float32)
        (ours,) = session.run(None, {"waveform": waveform})
        with torch.no_grad():
            expected = frontend(torch.from_numpy(waveform)).numpy()
        assert ours.shape == expected.shape == (batch, frontend.n_features, frontend.frames(n))
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * scale)
