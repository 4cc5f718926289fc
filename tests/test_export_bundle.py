"""Checkpoint → bundle: the folder's contents, its graphs (checker-clean, dynamic axes, plain ops that
TensorRT's parser takes), numerical parity with the torch model, and the streaming contract of the
frontend graph (a chunk plus its context gives the frames of the whole file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="export needs onnx (the export extra)")
ort = pytest.importorskip("onnxruntime", reason="export needs onnxruntime (the export extra)")
pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
torch = pytest.importorskip("torch")


from csi_export.onnx_graphs import FORBIDDEN_OPS, OPSET  # noqa: E402
from csi_export.parity import check_parity, rendered_audio  # noqa: E402
from csi_export.precision import count_float16_tensors  # noqa: E402
from csi_export.trt_ops import check_tensorrt_ops  # noqa: E402
from csi_runtime.bundle import load_bundle, sha256_file  # noqa: E402
from csi_training.checkpoint import load_checkpoint  # noqa: E402


@pytest.fixture
def exported(exported_bundle: tuple[Path, Path]) -> tuple[Path, Path]:
    """(checkpoint, bundle with fp16 and ORT-optimised encoders): the session's exported bundle."""
    return exported_bundle


def session(path: Path) -> object:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_bundle_holds_graphs_manifest_and_hashes(exported: tuple[Path, Path]) -> None:
    checkpoint, bundle_dir = exported
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    names = {p.name for p in bundle_dir.iterdir()}
    assert names == {"model.json", "frontend.onnx", "encoder.onnx", "encoder.fp16.onnx", "encoder.ort.onnx"}
    assert set(m["files"]) == names - {"model.json"}
    for name, digest in m["files"].items():
        assert sha256_file(bundle_dir / name) == digest
    header = json.loads((checkpoint / "config.json").read_text())
    assert m["sample_rate"] == header["sample_rate"] == 16000
    assert m["embedding_dim"] == 64
    assert m["frontend"]["params"] == header["frontend"]
    assert m["frontend"]["hop_samples"] == header["frontend"]["hop_length"] * header["frontend"]["pool"]
    assert m["frontend"]["frame_rate_hz"] == pytest.approx(16000 / m["frontend"]["hop_samples"])
    assert m["encoder"]["window_s"] == header["config"]["data"]["clip_s"]
    assert m["encoder"]["hop_s"] == m["encoder"]["window_s"] / 2
    assert m["export"]["opset"] == OPSET and "dynamo=True" in m["export"]["exporter"]
    assert m["source"]["weights_sha256"] == sha256_file(checkpoint / "model.safetensors")
    assert m["source"]["metrics"]["val"]["MAP"] == 0.5
    # csi eval results travel with the model; a damaged one is left out, not fatal
    assert m["source"]["evaluations"] == [
        {"manifest": "test.csv", "files": 8, "metrics": {"MAP": 0.25, "P@10": 0.1, "MR1": 3.0}}
    ]
    assert m["source"]["config"] == header["config"]
    assert not [p for p in bundle_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.parametrize("graph", ["frontend", "encoder", "encoder_fp16", "encoder_ort"])
def test_graphs_are_clean_with_dynamic_axes(exported: tuple[Path, Path], graph: str) -> None:
    bundle = load_bundle(exported[1])
    model = onnx.load(str(bundle.graph_path(graph)))
    (inp,) = model.graph.input
    (out,) = model.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    if graph == "encoder_ort":
        return  # onnxruntime's fused ops: for onnxruntime only, checked numerically below
    onnx.checker.check_model(model, full_check=True)
    assert not {n.op_type for n in model.graph.node} & FORBIDDEN_OPS
    check_tensorrt_ops(model, graph)
    if graph == "frontend":
        assert dims == ["batch", "n"]
    else:
        assert dims == ["batch", 84, "frames"]
        assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 64]
    assert (count_float16_tensors(model) > 0) == (graph == "encoder_fp16")
    if graph != "frontend":  # time pooling is one ceil-mode MaxPool, not Slice + Concat + MaxPool
        pools = [n for n in model.graph.node if n.op_type == "MaxPool"]
        producers = {o: n.op_type for n in model.graph.node for o in n.output}
        assert len(pools) == 4 and all(producers.get(n.input[0]) != "Concat" for n in pools)
        assert all(a.i == 1 for n in pools for a in n.attribute if a.name == "ceil_mode")


def test_encoder_graphs_match_torch_at_every_batch_and_length(
    exported: tuple[Path, Path], rng: np.random.Generator
) -> None:
    checkpoint, bundle_dir = exported
    bundle = load_bundle(bundle_dir)
    backbone = load_checkpoint(checkpoint).encoder.backbone.eval()
    min_frames = bundle.manifest["encoder"]["min_frames"]
    fp32, fp16, opt = (session(bundle.graph_path(g)) for g in ("encoder", "encoder_fp16", "encoder_ort"))
    for batch, frames in [(1, min_frames), (3, min_frames + 1), (2, 100), (5, int(rng.integers(18, 700)))]:
        x = (rng.random((batch, 84, frames), dtype=np.float32) ** 2) * rng.uniform(0.1, 8)
        with torch.inference_mode():
            ref = backbone(torch.from_numpy(x)).double().numpy()
        got = fp32.run(None, {"features": x})[0]  # type: ignore[attr-defined]
        assert got.shape == (batch, 64)
        np.testing.assert_allclose(got, ref, atol=1e-5)
        np.testing.assert_allclose(opt.run(None, {"features": x})[0], ref, atol=1e-5)  # type: ignore[attr-defined]
        half = fp16.run(None, {"features": x})[0]  # type: ignore[attr-defined]
        cos = (half * ref).sum(1) / np.linalg.norm(half, axis=1)
        assert cos.min() > 0.999


def test_parity_report_passes_and_can_fail(exported: tuple[Path, Path], rng: np.random.Generator) -> None:
    checkpoint, bundle_dir = exported
    bundle = load_bundle(bundle_dir)
    encoder = load_checkpoint(checkpoint).encoder.eval()
    mini = rendered_audio(16000)
    report = check_parity(bundle, encoder, rng=rng, mini_set=mini)
    # An untrained network maps every clip to nearly the same vector, so its neighbour ranking is
    # decided by differences far below float16's resolution: the top-10 overlap bound is meaningful
    # for trained models only (0.998 for the rendered-corpus baseline, docs/export.md). Every other
    # bound holds for any weights.
    ranking = [r for r in report.rows if r["measure"] == "top-10 overlap"]
    assert len(ranking) == 1 and 0.0 <= ranking[0]["value"] <= 1.0
    assert all(r["passed"] for r in report.rows if r["measure"] != "top-10 overlap"), report.rows
    assert {r["measure"] for r in report.rows} >= {"max |Δ|", "min cosine", "top-10 overlap"}
    # a model that differs from the bundle by a small weight change must be caught
    with torch.no_grad():
        encoder.backbone.embed.weight.add_(torch.randn_like(encoder.backbone.embed.weight) * 0.05)
    broken = check_parity(bundle, encoder, rng=rng, fp16=False, mini_set=mini)
    assert not broken.passed
    assert any(r["measure"] == "max |Δ|" and not r["passed"] for r in broken.rows)


def test_frontend_graph_streams_chunk_by_chunk(exported: tuple[Path, Path], rng: np.random.Generator) -> None:
    """Frames of [a - context, b + context) of a stream equal frames a/hop … of the whole padded
    file: the runtime can compute each chunk's frames once and never recompute them."""
    bundle = load_bundle(exported[1])
    frontend = session(bundle.graph_path("frontend"))
    hop, ctx = bundle.hop_samples, bundle.context_samples
    n = 16000 * 12 + int(rng.integers(0, 16000))
    audio = rng.standard_normal(n).astype(np.float32) * 0.1
    whole = frontend.run(None, {"waveform": bundle.pad_for_file(audio[None])})[0][0]  # type: ignore[attr-defined]
    assert whole.shape[1] == bundle.frames_for(n)
    padded = bundle.pad_for_file(audio)
    start = 0
    pieces = []
    while start + 2 * hop <= whole.shape[1] * hop:
        frames = int(rng.integers(2, 40))
        stop = min(start + frames * hop, whole.shape[1] * hop)
        if stop - start < 2 * hop:
            break
        chunk = padded[start : stop + 2 * ctx]
        chunk = np.pad(chunk, (0, stop + 2 * ctx - start - len(chunk)))
        pieces.append(frontend.run(None, {"waveform": chunk[None]})[0][0])  # type: ignore[attr-defined]
        start = stop
    streamed = np.concatenate(pieces, axis=1)
    np.testing.assert_allclose(streamed, whole[:, : streamed.shape[1]], atol=1e-5)
    assert streamed.shape[1] >= whole.shape[1] - 2


def test_same_checkpoint_gives_the_same_model_id(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """The model id hashes the graph bytes; the exporter's debugging metadata (stack traces with
    absolute paths and line numbers) is stripped, so a re-export, from any checkout, keeps the id
    that indexes were built with."""
    from csi_export.build import export_bundle

    checkpoint, bundle_dir = exported
    again = export_bundle(checkpoint, tmp_path / "again").path
    first = load_bundle(bundle_dir).manifest
    assert load_bundle(again).manifest["model_id"] == first["model_id"]
    for name in ("frontend.onnx", "encoder.onnx"):
        assert (again / name).read_bytes() == (bundle_dir / name).read_bytes()
        graph = onnx.load(str(again / name)).graph
        assert not any(item.metadata_props for item in [*graph.node, *graph.value_info])
