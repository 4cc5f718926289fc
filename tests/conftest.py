"""Shared fixtures: fresh random inputs every run, with the seed reported on failure.

Set CSI_TEST_SEED to replay a failing run.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    value = int(os.environ.get("CSI_TEST_SEED") or secrets.randbits(32))
    request.node.user_properties.append(("seed", value))
    return value


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name, value in item.user_properties:
            if name == "seed":
                report.sections.append(("random seed", f"CSI_TEST_SEED={value} reproduces this run"))


@pytest.fixture(scope="session")
def exported_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint folder, model bundle folder) of a random small CQTNet (64-d), exported once per
    test session with the float16 and onnxruntime-optimised encoders. Fresh weights every session.
    Needs torch, onnx, onnxscript and onnxruntime (the export extra); skips otherwise."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    pytest.importorskip("onnxruntime")
    import torch
    from export_fixtures import make_checkpoint

    from csi_export.build import export_bundle

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # many small ops: one thread is faster on a loaded 2-core machine
    root = tmp_path_factory.mktemp("exported")
    checkpoint = make_checkpoint(root / "ckpt", int(np.random.SeedSequence().entropy % 2**31))
    (checkpoint / "eval").mkdir()  # what `csi eval` writes; the bundle's provenance carries it
    evaluation = {"manifest": "test.csv", "used": 8, "metrics": {"MAP": 0.25, "P@10": 0.1, "MR1": 3.0}}
    (checkpoint / "eval" / "test.json").write_text(json.dumps(evaluation))
    (checkpoint / "eval" / "broken.json").write_text("{not json")
    path = export_bundle(checkpoint, root / "bundle", fp16=True, ort_optimize=True).path
    torch.set_num_threads(previous)
    return checkpoint, path
