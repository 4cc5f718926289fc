"""csi_runtime.tensorrt_runtime: which engine of a bundle runs here (select_engine, against a naive
reference on random manifests), the tag check before TensorRT sees an engine's bytes (load_engine,
with a stand-in ``tensorrt`` module and cuda-python), the errors the tensorrt backend turns them
into, and that none of it imports torch."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_tensorrt import fake_tensorrt

from csi_runtime import tensorrt_runtime as tr
from csi_runtime.backends import BackendUnavailableError, TensorRTBackend
from csi_runtime.bundle import EngineMismatchError, ModelBundle

VERSIONS = ("10.15.1.29", "10.15.1.30", "10.8.0.43", "11.0.0.1")
CAPABILITIES = ((8, 0), (8, 9), (9, 0), (12, 0))
PRECISIONS = ("fp16", "fp32")


def _entry(precision: str, version: str, cc: tuple[int, int], name: str | None = None) -> dict[str, Any]:
    return {
        "file": name or f"engines/encoder.{precision}.sm{cc[0]}{cc[1]}.trt{version}.engine",
        "graph": "encoder_fp16" if precision == "fp16" else "encoder",
        "precision": precision,
        "tensorrt_version": version,
        "compute_capability": f"{cc[0]}.{cc[1]}",
        "profile": {"input": "features", "min": [1, 12, 8], "opt": [8, 12, 32], "max": [32, 12, 64]},
    }


def _bundle(path: Path, engines: list[dict[str, Any]]) -> ModelBundle:
    return ModelBundle(path, {"engines": engines})


# ----------------------------------------------------------------------------------- select_engine


def _reference_choice(
    engines: list[dict[str, Any]], version: str, cc: tuple[int, int]
) -> dict[str, Any] | None:
    """Naive: the first matching fp16 entry, else the first matching fp32 one, else None."""
    here = f"{cc[0]}.{cc[1]}"
    for precision in ("fp16", "fp32"):
        for entry in engines:
            if (
                entry["precision"] == precision
                and entry["tensorrt_version"] == version
                and entry["compute_capability"] == here
            ):
                return entry
    return None


def test_select_engine_matches_a_naive_reference_on_random_manifests(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    chosen_some = refused_some = 0
    for trial in range(300):
        n = int(rng.integers(1, 7))
        engines = [
            _entry(
                PRECISIONS[rng.integers(2)],
                VERSIONS[rng.integers(len(VERSIONS))],
                CAPABILITIES[rng.integers(len(CAPABILITIES))],
                name=f"engines/e{i}.engine",
            )
            for i in range(n)
        ]
        version = VERSIONS[rng.integers(len(VERSIONS))]
        cc = CAPABILITIES[rng.integers(len(CAPABILITIES))]
        expected = _reference_choice(engines, version, cc)
        bundle = _bundle(tmp_path, engines)
        if expected is None:
            refused_some += 1
            with pytest.raises(EngineMismatchError) as err:
                tr.select_engine(bundle, version, cc)
            message = str(err.value)
            for entry in engines:  # every entry is named with its reason
                assert f"engine {entry['file']}: " in message, (trial, message)
            assert f"python export/build_engine.py --bundle {tmp_path} --trt --force" in message
        else:
            chosen_some += 1
            assert tr.select_engine(bundle, version, cc) is expected, trial
            assert tr.select_engine(bundle, version, f"{cc[0]}.{cc[1]}") is expected, trial
    assert chosen_some and refused_some  # both outcomes were exercised


def test_select_engine_prefers_fp16_in_any_manifest_order(tmp_path: Path, rng: np.random.Generator) -> None:
    here = ("10.15.1.29", (9, 0))
    engines = [
        _entry("fp32", *here),
        _entry("fp16", "10.15.1.29", (8, 9)),
        _entry("fp16", *here),
        _entry("fp32", "10.15.1.30", (9, 0)),
    ]
    for _ in range(5):
        order = [engines[i] for i in rng.permutation(len(engines))]
        assert tr.select_engine(_bundle(tmp_path, order), *here) is engines[2]
    # without the matching fp16 engine, the matching fp32 one
    assert tr.select_engine(_bundle(tmp_path, [engines[1], engines[0]]), *here) is engines[0]
    # an engine of an unknown precision is the last resort
    odd = {**_entry("fp32", *here), "precision": "int8", "file": "engines/odd.engine"}
    assert tr.select_engine(_bundle(tmp_path, [odd, engines[0]]), *here) is engines[0]
    assert tr.select_engine(_bundle(tmp_path, [odd]), *here) is odd


def test_select_engine_explains_every_refusal(tmp_path: Path) -> None:
    engines = [_entry("fp16", "10.8.0.43", (9, 0)), _entry("fp32", "10.15.1.29", (8, 0))]
    with pytest.raises(EngineMismatchError) as err:
        tr.select_engine(_bundle(tmp_path, engines), "10.15.1.29", (9, 0))
    message = str(err.value)
    assert f"no TensorRT engine of bundle {tmp_path} fits this machine" in message
    assert "built with TensorRT 10.8.0.43, this machine has TensorRT 10.15.1.29" in message
    assert "built for compute capability 8.0 (sm_80), this GPU is 9.0 (sm_90)" in message
    assert message.index("10.8.0.43") < message.index("sm_80")  # fp16 first, as tried
    assert message.endswith(f"`python export/build_engine.py --bundle {tmp_path} --trt --force`")

    with pytest.raises(EngineMismatchError, match="has no TensorRT engine") as err:
        tr.select_engine(_bundle(tmp_path, []), "10.15.1.29", (9, 0))
    assert f"`python export/build_engine.py --bundle {tmp_path} --trt`" in str(err.value)


# ------------------------------------------------------------------- stand-ins for TensorRT and CUDA


def _fake_cudart(count: int, current: int = 0, cc: tuple[int, int] = (9, 0)) -> Any:
    """cuda-python's call conventions: (cudaError_t, value) tuples; error 2 is an allocation failure."""
    names = {0: b"cudaSuccess", 2: b"cudaErrorMemoryAllocation"}
    return types.SimpleNamespace(
        cudaError_t=types.SimpleNamespace(cudaSuccess=0),
        cudaGetDeviceCount=lambda: (0, count),
        cudaGetDevice=lambda: (0, current),
        cudaGetDeviceProperties=lambda device: (
            0,
            types.SimpleNamespace(major=cc[0], minor=cc[1], name=b"NVIDIA Test GPU\0"),
        ),
        cudaGetErrorName=lambda err: (0, names[err]),
        cudaMalloc=lambda nbytes: (2, 0),
    )


def _engine_on_disk(tmp_path: Path, entry: dict[str, Any], size: int = 100) -> None:
    path = tmp_path / entry["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x01" * size)


# ------------------------------------------------------------------------------------- load_engine


@pytest.mark.parametrize(
    ("version", "cc", "message"),
    [
        ("10.15.1.30", (9, 0), r"built with TensorRT 10\.15\.1\.29, this machine has TensorRT 10\.15\.1\.30"),
        ("10.15.1.29", (12, 0), r"built for compute capability 9\.0 \(sm_90\), this GPU is 12\.0 \(sm_120\)"),
    ],
)
def test_load_engine_checks_the_tags_before_tensorrt_sees_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, cc: tuple[int, int], message: str
) -> None:
    entry = _entry("fp16", "10.15.1.29", (9, 0))
    _engine_on_disk(tmp_path, entry)
    calls: list[str] = []
    monkeypatch.setattr(tr, "import_tensorrt", lambda: fake_tensorrt(version, object(), calls))
    monkeypatch.setattr(tr, "_cuda_runtime", lambda: _fake_cudart(count=2, current=1, cc=cc))
    with pytest.raises(EngineMismatchError, match=message) as err:
        tr.load_engine(_bundle(tmp_path, [entry]), entry)
    assert f"`python export/build_engine.py --bundle {tmp_path} --trt --force`" in str(err.value)
    assert calls == []


def test_load_engine_deserialises_a_matching_engine_and_names_a_refused_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    entry = _entry("fp32", "10.15.1.29", (9, 0))
    _engine_on_disk(tmp_path, entry, size=37)
    bundle = _bundle(tmp_path, [entry])
    monkeypatch.setattr(tr, "_cuda_runtime", lambda: _fake_cudart(count=1))
    engine = object()
    calls: list[str] = []
    monkeypatch.setattr(tr, "import_tensorrt", lambda: fake_tensorrt("10.15.1.29", engine, calls))
    assert tr.load_engine(bundle, entry) is engine
    assert calls == ["Runtime", "deserialize 37 bytes"]

    monkeypatch.setattr(tr, "import_tensorrt", lambda: fake_tensorrt("10.15.1.29", None, calls))
    refused = r"could not deserialise engine .*sm90.*NVIDIA Test GPU"
    with caplog.at_level("ERROR", logger=tr.__name__), pytest.raises(EngineMismatchError, match=refused):
        tr.load_engine(bundle, entry)
    assert "magicTagRead" in caplog.text  # TensorRT's own words reach the log, too

    (tmp_path / entry["file"]).unlink()
    with pytest.raises(EngineMismatchError, match=r"\.engine is missing; rebuild it"):
        tr.load_engine(bundle, entry)
    for bad in ("../outside.engine", "/abs/encoder.engine", ""):
        with pytest.raises(ValueError, match="engine entry's file must be"):
            tr.load_engine(bundle, {**entry, "file": bad})
    with pytest.raises(ValueError, match="engine entry has no 'file' string"):
        tr.load_engine(bundle, {k: v for k, v in entry.items() if k != "file"})


def test_load_engine_without_tensorrt_or_cuda_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _entry("fp32", "10.15.1.29", (9, 0))
    _engine_on_disk(tmp_path, entry)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    assert tr.tensorrt_available() is False
    with pytest.raises(tr.TensorRTUnavailableError, match="pip install tensorrt-cu12"):
        tr.load_engine(_bundle(tmp_path, [entry]), entry)
    monkeypatch.setattr(tr, "import_tensorrt", lambda: fake_tensorrt("10.15.1.29", object(), []))
    monkeypatch.setattr(tr, "_cuda_runtime", lambda: None)
    with pytest.raises(tr.CudaPythonUnavailableError, match="pip install cuda-python") as err:
        tr.load_engine(_bundle(tmp_path, [entry]), entry)
    assert isinstance(err.value, tr.GPUUnavailableError)


def test_gpu_query_and_cuda_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = _fake_cudart(count=3, current=2, cc=(8, 9))
    monkeypatch.setattr(tr, "_cuda_runtime", lambda: rt)
    info = tr.query_gpu()
    assert info == tr.GPUInfo(2, (8, 9), "NVIDIA Test GPU") and info.device == 2
    assert tr.gpu_compute_capability(0) == (8, 9) and tr.gpu_name(1) == "NVIDIA Test GPU"
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError, match="device must be a CUDA device index"):
            tr.query_gpu(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"CUDA device 3 does not exist \(this machine has 3\)"):
        tr.query_gpu(3)
    # a failing call that is not about finding the GPU is a CudaError naming the call and the error
    with pytest.raises(tr.CudaError, match=r"^cudaMalloc failed with cudaErrorMemoryAllocation$"):
        tr._cuda_check(rt, rt.cudaMalloc(1024), "cudaMalloc")
    assert tr._cuda_check(rt, (0,), "cudaFree") == []
    assert tr._cuda_check(rt, (0, 7, 8), "two values") == [7, 8]


# --------------------------------------------------------------------------- the tensorrt backend


def test_tensorrt_backend_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _entry("fp16", "10.15.1.29", (9, 0))
    _engine_on_disk(tmp_path, entry)
    bundle = _bundle(tmp_path, [entry])
    with pytest.raises(BackendUnavailableError, match="runs on a GPU"):
        TensorRTBackend(bundle, device="cpu")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError, match=r"TensorRT is not installed.*onnxruntime backend"):
        TensorRTBackend(bundle)
    calls: list[str] = []
    monkeypatch.setattr(tr, "import_tensorrt", lambda: fake_tensorrt("10.15.1.29", object(), calls))
    monkeypatch.setattr(tr, "_cuda_runtime", lambda: None)
    with pytest.raises(BackendUnavailableError, match="needs cuda-python for device buffers"):
        TensorRTBackend(bundle)
    monkeypatch.setattr(tr, "_cuda_runtime", lambda: _fake_cudart(count=0))
    with pytest.raises(BackendUnavailableError, match=r"no CUDA GPU is visible \(cudaGetDeviceCount is 0\)"):
        TensorRTBackend(bundle)
    monkeypatch.setattr(tr, "_cuda_runtime", lambda: _fake_cudart(count=1, cc=(8, 9)))
    with pytest.raises(BackendUnavailableError, match="has no TensorRT engine"):
        TensorRTBackend(_bundle(tmp_path, []))
    with pytest.raises(EngineMismatchError, match=r"this GPU is 8\.9 \(sm_89\)"):
        TensorRTBackend(bundle)
    assert calls == []  # nothing was deserialised


def test_the_runtime_half_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from csi_runtime import tensorrt_runtime as tr\n"
        "import csi_runtime.backends\n"
        "tr._cuda_runtime = lambda: None\n"
        "try:\n"
        "    tr.query_gpu()\n"
        "except tr.CudaPythonUnavailableError:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
