"""What the install produced: modules, kernel variants, and the no-torch rule of the runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import csi_runtime
from csi_runtime import _native, build_info

ROOT = Path(__file__).resolve().parents[1]


def test_build_info_describes_the_cpu_module() -> None:
    info = build_info()
    json.dumps(info)  # JSON-able
    cpu = info["cpu"]
    assert cpu["kernels_compiled"] == ["avx512", "avx2", "generic"]
    assert set(cpu["kernels_supported"]) <= set(cpu["kernels_compiled"])
    assert cpu["kernels_supported"][-1] == "generic"
    assert cpu["kernels_selected"] == cpu["kernels_supported"][0]
    assert cpu["compiler"]
    assert info["version"] == csi_runtime.__version__
    cuda = info["cuda"]
    assert cuda["built"] == (_native.cuda is not None)
    if cuda["built"]:
        assert {"80", "90"} <= set(cuda["archs"])
        assert cuda["cudart"] == "static"
    assert cuda["available"] == bool(cuda["devices"])


def test_runtime_never_imports_torch() -> None:
    code = (
        "import sys, numpy as np, csi_runtime, csi_runtime.cli\n"
        "csi_runtime.topk(np.ones((2, 8), np.float32), np.ones((5, 8), np.float32), 2)\n"
        "idx = csi_runtime.ReferenceIndex(8); idx.add(np.ones((1, 8)), 'w'); idx.search(np.ones(8))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'scipy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_runtime_dependencies_stay_small() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = [d.split(">")[0].split("=")[0] for d in meta["project"]["dependencies"]]
    # numpy + the model bundle (onnxruntime) + audio (soundfile, soxr) + the monitor's plots
    assert names == ["numpy", "onnxruntime", "soundfile", "soxr", "matplotlib"]


def test_source_tree_has_no_torch_imports_in_the_runtime() -> None:
    """torch (and csi_training) appear only inside the torch backend, imported when it is chosen."""
    for path in (ROOT / "runtime").rglob("*.py"):
        in_torch_backend = False
        for line in path.read_text().splitlines():
            if line.startswith("class "):
                in_torch_backend = path.name == "backends.py" and line.startswith("class TorchBackend")
            stripped = line.strip()
            heavy = ("import torch", "from torch", "from csi_training", "import csi_training")
            if stripped.startswith(heavy):
                assert in_torch_backend and line.startswith("    "), f"{path}: {line}"
