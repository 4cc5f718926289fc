"""A ``recipe: marl`` checkpoint exports like any other: ONNX parity against torch, TensorRT's op list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_marl_recipe import marl_config
from test_trainer import make_corpus

from csi_training.config import config_from_dict
from csi_training.trainer import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = make_corpus(tmp_path_factory.mktemp("marl_export_corpus"), n_works=8, n_versions=2, seed=17)
    out = tmp_path_factory.mktemp("marl_export_run") / "run"
    config = marl_config(corpus, out, optim__epochs=1, data__val_works=2, data__works_per_batch=3)
    assert train(config_from_dict(config), progress=False).epochs_run == 1
    return out


def test_checkpoint_exports_with_parity(trained: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    import torch

    from csi_export.build import export_bundle
    from csi_export.parity import check_parity
    from csi_export.trt_ops import check_tensorrt_ops
    from csi_runtime.bundle import load_bundle
    from csi_training.checkpoint import load_checkpoint

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = export_bundle(trained / "best", tmp_path / "bundle").path
        bundle = load_bundle(path)
        # fresh random clips of 6 s (the mini-set of the parity check, smaller than export's default)
        clips = [(0.1 * rng.standard_normal(16000 * 6)).astype(np.float32) for _ in range(8)]
        encoder = load_checkpoint(trained / "best").encoder
        report = check_parity(bundle, encoder, rng, mini_set=(clips, ["x"] * 8))
    finally:
        torch.set_num_threads(previous)
    assert report.rows and report.passed, report.to_dict()
    assert bundle.manifest["embedding_dim"] == 32
    for graph in ("frontend", "encoder"):
        check_tensorrt_ops(onnx.load(str(bundle.graph_path(graph))), graph)
