"""csi_export.tensorrt_engine and the runtime half it re-exports (csi_runtime.tensorrt_runtime):
argument and graph checks (everywhere, before TensorRT is imported), the messages when TensorRT or
a GPU is missing, the engine-tag check before deserialisation, and, where TensorRT, cuda-python and
a GPU are present, a real build → load → run against onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is in the dev extra")
from fake_tensorrt import FakeLogger, fake_tensorrt  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from csi_export import tensorrt_engine as te  # noqa: E402
from csi_export.trt_ops import UnsupportedOpsError  # noqa: E402
from csi_runtime import tensorrt_runtime as tr  # noqa: E402
from csi_runtime.bundle import EngineMismatchError, ModelBundle  # noqa: E402

N_FEATURES = 12
DIM = 16


def _encoder_graph(rng: np.random.Generator, fp16: bool, extra_op: str | None = None) -> onnx.ModelProto:
    """features float32 [batch, 12, frames] → mean over frames → MatMul → embedding float32 [batch, 16];
    the fp16 variant casts to float16 first and back at the end (float16 inside, float32 I/O)."""
    dtype = np.float16 if fp16 else np.float32
    weight = numpy_helper.from_array(rng.standard_normal((N_FEATURES, DIM)).astype(dtype), "W")
    axes = numpy_helper.from_array(np.array([2], dtype=np.int64), "axes")
    nodes = []
    source = "features"
    if fp16:
        nodes.append(helper.make_node("Cast", ["features"], ["f16"], to=TensorProto.FLOAT16))
        source = "f16"
    nodes.append(helper.make_node("ReduceMean", [source, "axes"], ["pooled"], keepdims=0))
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["pooled"], ["odd"]))
        nodes.append(helper.make_node("MatMul", ["odd", "W"], ["proj"]))
    else:
        nodes.append(helper.make_node("MatMul", ["pooled", "W"], ["proj"]))
    nodes.append(helper.make_node("Cast", ["proj"], ["embedding"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes,
        "encoder",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", N_FEATURES, "frames"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", DIM])],
        initializer=[weight, axes],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _save(model: onnx.ModelProto, path: Path) -> str:
    onnx.save(model, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_tensorrt_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if build_engine gets as far as importing TensorRT."""

    def refuse() -> None:
        raise AssertionError("TensorRT was imported before the arguments were validated")

    monkeypatch.setattr(te, "import_tensorrt", refuse)


@pytest.fixture
def fp32_graph(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, str]:
    path = tmp_path / "encoder.onnx"
    return path, _save(_encoder_graph(rng, fp16=False), path)


def _build(onnx_path: Path, sha: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "entry_file": "engines/encoder.engine",
        "n_features": N_FEATURES,
        "frames": (8, 32, 64),
        "onnx_sha256": sha,
    }
    kwargs.update(overrides)
    return te.build_engine(onnx_path, tmp_path / "out" / "encoder.engine", **kwargs)


BAD_ARGUMENTS = [
    ({"batch": (0, 1, 2)}, r"batch must satisfy 1 <= min <= opt <= max"),
    ({"batch": (4, 2, 8)}, r"batch must satisfy .*min=4, opt=2, max=8"),
    ({"batch": (1, 8)}, r"batch must be three integers"),
    ({"batch": (1, 2.0, 4)}, r"batch must be three integers"),
    ({"batch": (True, 2, 4)}, r"batch must be three integers"),
    ({"frames": (64, 32, 128)}, r"frames must satisfy"),
    ({"frames": None}, r"frames must be three integers"),
    ({"n_features": 0}, r"n_features must be a positive integer"),
    ({"workspace_bytes": -1}, r"workspace_bytes must be a positive integer"),
    ({"precision": "int8"}, r"precision must be one of fp32, fp16"),
    ({"optimization_level": 6}, r"optimization_level must be an integer 0\.\.5"),
    ({"input_name": ""}, r"input_name must be a non-empty string"),
    ({"entry_file": "/abs/encoder.engine"}, r"entry_file must be a path inside the bundle"),
    ({"entry_file": "engines/../../x.engine"}, r"entry_file must be a path inside the bundle"),
    ({"onnx_sha256": "abc"}, r"onnx_sha256 must be 64 lowercase hex digits"),
    ({"onnx_sha256": "0" * 64}, r"has sha256 .* not the 0000000000000000"),
    ({"input_name": "waveform"}, r"must have exactly one input 'waveform' \(it has: 'features'\)"),
    ({"n_features": 13}, r"fixed n_features of 12, which the requested n_features 13 does not match"),
    ({"precision": "fp16"}, r"is an fp32 graph but precision='fp16' was asked: an fp16 engine is built"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_ARGUMENTS)
@pytest.mark.usefixtures("no_tensorrt_import")
def test_bad_arguments_are_refused_before_tensorrt_is_imported(
    fp32_graph: tuple[Path, str], tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    path, sha = fp32_graph
    with pytest.raises(ValueError, match=message):
        _build(path, sha, tmp_path, **overrides)
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("no_tensorrt_import")
def test_graph_problems_are_refused_before_tensorrt_is_imported(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    fp16_path = tmp_path / "encoder.fp16.onnx"
    sha16 = _save(_encoder_graph(rng, fp16=True), fp16_path)
    with pytest.raises(ValueError, match=r"is an fp16 graph but precision='fp32' was asked"):
        _build(fp16_path, sha16, tmp_path, precision="fp32")

    odd_path = tmp_path / "odd.onnx"
    odd_sha = _save(_encoder_graph(rng, fp16=False, extra_op="Unique"), odd_path)
    with pytest.raises(UnsupportedOpsError, match=r"odd\.onnx: .*Unique ×1 \(listed as unsupported\)"):
        _build(odd_path, odd_sha, tmp_path)

    fixed = _encoder_graph(rng, fp16=False)
    fixed.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 32  # a fixed frame count
    fixed_path = tmp_path / "fixed.onnx"
    fixed_sha = _save(fixed, fixed_path)
    with pytest.raises(ValueError, match=r"fixed frames of 32, which the requested frames \(8, 32, 64\)"):
        _build(fixed_path, fixed_sha, tmp_path)

    half_out = _encoder_graph(rng, fp16=True)
    del half_out.graph.node[-1]  # no Cast back to float32
    half_out.graph.node[-1].output[0] = "embedding"
    half_out.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    half_out_path = tmp_path / "half_out.onnx"
    half_out_sha = _save(half_out, half_out_path)
    with pytest.raises(ValueError, match=r"output 'embedding' must be float32 .* it is FLOAT16"):
        _build(half_out_path, half_out_sha, tmp_path, precision="fp16")

    missing = tmp_path / "missing.onnx"
    with pytest.raises(ValueError, match=r"missing\.onnx does not exist"):
        _build(missing, "0" * 64, tmp_path)

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(ValueError, match=r"garbage\.onnx is not a readable ONNX model"):
        _build(garbage, hashlib.sha256(garbage.read_bytes()).hexdigest(), tmp_path)


def test_graph_precision(rng: np.random.Generator) -> None:
    assert te.graph_precision(_encoder_graph(rng, fp16=False)) == "fp32"
    assert te.graph_precision(_encoder_graph(rng, fp16=True)) == "fp16"
    # float16 only inside an If branch: still an fp16 graph
    then_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["h"], value=numpy_helper.from_array(np.ones(2, np.float16), "h"))],
        "then",
        [],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT16, [2])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=then_branch)],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2])],
    )
    assert te.graph_precision(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])) == "fp16"
    # float16 only through a Cast inside a local function
    fn = helper.make_function(
        "local", "Half", ["x"], ["y"], [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16)],
        [helper.make_opsetid("", 18)],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("Half", ["x"], ["y"], domain="local")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)], functions=[fn]
    )
    assert te.graph_precision(model) == "fp16"
    bf16 = _encoder_graph(rng, fp16=False)
    bf16.graph.node.insert(0, helper.make_node("Cast", ["features"], ["b"], to=TensorProto.BFLOAT16))
    with pytest.raises(ValueError, match="bfloat16"):
        te.graph_precision(bf16)


def test_missing_tensorrt_says_how_to_install_and_that_onnx_works(
    fp32_graph: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    assert te.tensorrt_available() is False
    with pytest.raises(te.TensorRTUnavailableError) as err:
        te.import_tensorrt()
    message = str(err.value)
    assert "TensorRT is not installed" in message
    assert "pip install tensorrt-cu12" in message
    assert "docs.nvidia.com" in message
    assert "ONNX graphs run without it" in message
    assert isinstance(err.value, RuntimeError)
    # a valid request gets through every check and stops at the import
    path, sha = fp32_graph
    with pytest.raises(te.TensorRTUnavailableError):
        _build(path, sha, tmp_path)
    with pytest.raises(te.TensorRTUnavailableError):
        te.load_engine(ModelBundle(tmp_path, {}), {"file": "engines/encoder.engine"})


def test_an_old_tensorrt_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(
        te.TensorRTUnavailableError, match=r"TensorRT 8\.6\.1 is installed, csi needs TensorRT 10"
    ):
        te.import_tensorrt()


# ------------------------------------------------------------------------------------- the GPU


def _fake_cudart(count: int, current: int = 0, count_error: int = 0) -> Any:
    """cuda-python's runtime call conventions: (cudaError_t, value) tuples."""
    success = 0

    def props(device: int) -> tuple[int, Any]:
        return success, types.SimpleNamespace(major=8 + device, minor=device, name=b"NVIDIA Test GPU\0\0junk")

    return types.SimpleNamespace(
        cudaError_t=types.SimpleNamespace(cudaSuccess=success),
        cudaGetDeviceCount=lambda: (count_error, count),
        cudaGetDevice=lambda: (success, current),
        cudaGetDeviceProperties=props,
        cudaGetErrorName=lambda err: (success, b"cudaErrorNoDevice"),
    )


def test_gpu_queries_through_cuda_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tr, "_cuda_runtime", lambda: _fake_cudart(count=2, current=1))
    assert te.gpu_compute_capability(0) == (8, 0)
    assert te.gpu_compute_capability(1) == (9, 1)
    assert te.gpu_name(1) == "NVIDIA Test GPU"
    assert te._query_gpu(None) == (1, (9, 1), "NVIDIA Test GPU")  # the current device
    with pytest.raises(ValueError, match=r"CUDA device 2 does not exist \(this machine has 2\)"):
        te.gpu_compute_capability(2)
    with pytest.raises(ValueError, match="device must be a CUDA device index"):
        te.gpu_compute_capability(-1)
    monkeypatch.setattr(tr, "_cuda_runtime", lambda: _fake_cudart(count=0, count_error=100))
    with pytest.raises(te.GPUUnavailableError, match=r"cudaGetDeviceCount failed with cudaErrorNoDevice"):
        te.gpu_compute_capability()
    monkeypatch.setattr(tr, "_cuda_runtime", lambda: _fake_cudart(count=0))
    with pytest.raises(te.GPUUnavailableError, match="no CUDA GPU is visible"):
        te.gpu_name()


def test_gpu_query_without_cuda_python_or_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tr, "_cuda_runtime", lambda: None)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(te.GPUUnavailableError, match=r"install cuda-python"):
        te.gpu_compute_capability()


def test_gpu_query_on_this_machine() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        assert te.gpu_compute_capability(0) == tuple(torch.cuda.get_device_capability(0))
        assert te.gpu_name(0) == torch.cuda.get_device_name(0)
    else:
        with pytest.raises(te.GPUUnavailableError):
            te.gpu_compute_capability(0)


# ------------------------------------------------------------------------ the tags, before the bytes


def _bundle_with_engine(tmp_path: Path) -> tuple[ModelBundle, dict[str, Any]]:
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "encoder.engine").write_bytes(b"\x01" * 100)
    entry = {
        "file": "engines/encoder.engine",
        "graph": "encoder",
        "precision": "fp32",
        "tensorrt_version": "10.15.1.29",
        "compute_capability": "9.0",
        "profile": {"input": "features", "min": [1, 12, 8], "opt": [8, 12, 32], "max": [32, 12, 64]},
    }
    return ModelBundle(tmp_path, {"engines": [entry]}), entry


@pytest.mark.parametrize(
    ("version", "cc", "message"),
    [
        ("10.15.1.30", (9, 0), r"built with TensorRT 10\.15\.1\.29, this machine has TensorRT 10\.15\.1\.30"),
        ("10.15.1.29", (8, 9), r"built for compute capability 9\.0 \(sm_90\), this GPU is 8\.9 \(sm_89\)"),
    ],
)
def test_mismatched_engines_are_refused_before_deserialisation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, cc: tuple[int, int], message: str
) -> None:
    bundle, entry = _bundle_with_engine(tmp_path)
    calls: list[str] = []
    monkeypatch.setattr(tr, "import_tensorrt", lambda: fake_tensorrt(version, object(), calls))
    monkeypatch.setattr(tr, "query_gpu", lambda device: (0, cc, "NVIDIA Test GPU"))
    with pytest.raises(EngineMismatchError, match=message) as err:
        te.load_engine(bundle, entry)
    assert f"python export/build_engine.py --bundle {tmp_path} --trt --force" in str(err.value)
    assert calls == []  # TensorRT never saw the engine


def test_matching_engines_are_deserialised_and_a_refusal_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, entry = _bundle_with_engine(tmp_path)
    monkeypatch.setattr(tr, "query_gpu", lambda device: (0, (9, 0), "NVIDIA Test GPU"))
    engine: object = object()
    calls: list[str] = []
    monkeypatch.setattr(tr, "import_tensorrt", lambda: fake_tensorrt("10.15.1.29", engine, calls))
    assert te.load_engine(bundle, entry) is engine
    assert calls == ["Runtime", "deserialize 100 bytes"]
    calls.clear()
    monkeypatch.setattr(tr, "import_tensorrt", lambda: fake_tensorrt("10.15.1.29", None, calls))
    with pytest.raises(EngineMismatchError, match=r"could not deserialise engine .*encoder\.engine") as err:
        te.load_engine(bundle, entry)
    assert "magicTagRead" in str(err.value) and "--force" in str(err.value)
    (tmp_path / "engines" / "encoder.engine").unlink()
    with pytest.raises(EngineMismatchError, match=r"encoder\.engine is missing"):
        te.load_engine(bundle, entry)
    with pytest.raises(ValueError, match="inside the bundle"):
        te.load_engine(bundle, {**entry, "file": "../elsewhere.engine"})


# ------------------------------------------- build_engine's TensorRT steps, against a stand-in module


class _FakeTensorRT:
    """Stands in for the ``tensorrt`` module with the 10.x Python API names build_engine uses,
    recording what it is asked: it checks build_engine's own control flow (flags, profile, pools,
    timing cache, atomic writes, error reports) where TensorRT is absent. The real API is
    exercised by test_build_load_and_run_an_engine on a GPU machine."""

    ILogger = FakeLogger

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class DataType:
        FLOAT, HALF = "FLOAT", "HALF"

    def __init__(self, version: str, layer_dtypes: list[str], parse_errors: int = 0, build_ok: bool = True):
        self.__version__ = version
        self.calls: dict[str, Any] = {}
        fake = self

        class Error:
            def __init__(self, i: int) -> None:
                self.i = i

            def node(self) -> int:
                return self.i

            def node_operator(self) -> str:
                return "STFT"

            def node_name(self) -> str:
                return f"/stft_{self.i}"

            def code(self) -> str:
                return "UNSUPPORTED_NODE"

            def desc(self) -> str:
                return "window must be an initializer"

        class Parser:
            def __init__(self, network: Any, logger: Any) -> None:
                self.num_errors = parse_errors

            def parse_from_file(self, path: str) -> bool:
                fake.calls["parsed"] = path
                return parse_errors == 0

            def get_error(self, i: int) -> Error:
                return Error(i)

        class Cache:
            def __init__(self, blob: bytes) -> None:
                self.blob = blob

            def serialize(self) -> bytes:
                return b"cache after " + (self.blob or b"nothing")

        class Config:
            builder_optimization_level = 3

            def add_optimization_profile(self, profile: Any) -> int:
                return 0

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                fake.calls["pool"] = (pool, size)

            def create_timing_cache(self, blob: bytes) -> Cache | None:
                return None if blob == b"corrupt" else Cache(bytes(blob))

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
                fake.calls.setdefault("caches", []).append((cache.blob, ignore_mismatch))
                self.cache = cache
                return True

            def get_timing_cache(self) -> Cache:
                return self.cache

        class Profile:
            def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
                fake.calls["profile"] = (name, low, opt, high)

        def layer(dtype: str) -> Any:
            out = types.SimpleNamespace(dtype=dtype)
            return types.SimpleNamespace(num_outputs=1, get_output=lambda j: out)

        class Builder:
            def __init__(self, logger: Any) -> None:
                self.logger = logger

            def create_network(self, flags: int) -> Any:
                fake.calls["flags"] = flags
                layers = [layer(d) for d in layer_dtypes]
                return types.SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def create_builder_config(self) -> Config:
                fake.calls["config"] = config = Config()
                return config

            def build_serialized_network(self, network: Any, config: Config) -> bytes | None:
                fake.calls["level"] = config.builder_optimization_level
                if not build_ok:
                    self.logger.log(FakeLogger.Severity.ERROR, "out of workspace for tactic 7")
                    return None
                return b"ENGINE BYTES"

        self.Builder, self.OnnxParser = Builder, Parser


def test_build_steps_with_a_stand_in_tensorrt(
    fp32_graph: tuple[Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path, sha = fp32_graph
    monkeypatch.setattr(te, "_query_gpu", lambda device: (0, (9, 0), "NVIDIA H200"))
    fake = _FakeTensorRT("10.15.1.29", ["FLOAT", "FLOAT"])
    monkeypatch.setattr(te, "import_tensorrt", lambda: fake)
    cache = tmp_path / "timing.cache"
    entry = _build(path, sha, tmp_path, batch=(1, 4, 16), timing_cache_path=cache, optimization_level=4)
    assert (tmp_path / "out" / "encoder.engine").read_bytes() == b"ENGINE BYTES"
    assert cache.read_bytes() == b"cache after nothing"
    assert fake.calls["flags"] == 1 << 1  # strongly typed, 10.x
    assert fake.calls["profile"] == ("features", (1, 12, 8), (4, 12, 32), (16, 12, 64))
    assert fake.calls["pool"] == ("WORKSPACE", te.DEFAULT_WORKSPACE_BYTES)
    assert fake.calls["level"] == 4 and fake.calls["caches"] == [(b"", False)]
    assert entry == {
        "file": "engines/encoder.engine",
        "graph": "encoder",
        "precision": "fp32",
        "tensorrt_version": "10.15.1.29",
        "compute_capability": "9.0",
        "gpu_name": "NVIDIA H200",
        "profile": {"input": "features", "min": [1, 12, 8], "opt": [4, 12, 32], "max": [16, 12, 64]},
        "builder_optimization_level": 4,
        "onnx_sha256": sha,
        "built_utc": entry["built_utc"],
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["built_utc"])
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no temporaries left behind

    # the next build reads the cache; an unusable cache is replaced by an empty one, with a warning
    fake = _FakeTensorRT("11.0.0.1", ["FLOAT"])
    monkeypatch.setattr(te, "import_tensorrt", lambda: fake)
    _build(path, sha, tmp_path, timing_cache_path=cache)
    assert fake.calls["caches"] == [(b"cache after nothing", False)]
    assert fake.calls["flags"] == 0  # 11.x: always strongly typed, no flag
    cache.write_bytes(b"corrupt")
    with caplog.at_level("WARNING", logger=te.__name__):
        _build(path, sha, tmp_path, timing_cache_path=cache)
    assert "is unusable here" in caplog.text
    assert cache.read_bytes() == b"cache after nothing"


def test_build_failures_report_tensorrt_s_reasons(
    fp32_graph: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sha = fp32_graph
    monkeypatch.setattr(te, "_query_gpu", lambda device: (0, (9, 0), "NVIDIA H200"))
    monkeypatch.setattr(te, "import_tensorrt", lambda: _FakeTensorRT("10.15.1.29", ["FLOAT"], parse_errors=2))
    with pytest.raises(te.EngineBuildError, match=r"rejected .*encoder\.onnx \(2 error\(s\)\)") as err:
        _build(path, sha, tmp_path)
    assert "node 1 (STFT '/stft_1'): UNSUPPORTED_NODE: window must be an initializer" in str(err.value)
    monkeypatch.setattr(te, "import_tensorrt", lambda: _FakeTensorRT("10.15.1.29", ["FLOAT"], build_ok=False))
    with pytest.raises(te.EngineBuildError, match=r"could not build .*\n  out of workspace for tactic 7"):
        _build(path, sha, tmp_path)
    # a network whose types contradict the graph's (should not happen) is caught, not built
    monkeypatch.setattr(te, "import_tensorrt", lambda: _FakeTensorRT("10.15.1.29", ["FLOAT", "HALF"]))
    with pytest.raises(te.EngineBuildError, match="with float16 layers"):
        _build(path, sha, tmp_path)
    assert not (tmp_path / "out" / "encoder.engine").exists()


# ----------------------------------------------------------------- a real engine (TensorRT + GPU)


def _cuda_runtime_or_skip() -> Any:
    rt = tr._cuda_runtime()
    if rt is None:
        pytest.skip("cuda-python is needed to run a TensorRT engine here")
    try:
        te.gpu_compute_capability(0)
    except te.GPUUnavailableError as exc:
        pytest.skip(f"no GPU: {exc}")
    return rt


def _export_tiny_encoder(path: Path, fp16: bool) -> str:
    """A Conv2d/BatchNorm/ReLU/GeM/Linear/L2-normalise encoder through torch's dynamo exporter;
    the fp16 variant computes in float16 with float32 input and output."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(1, 8, kernel_size=3, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)
            self.p = torch.nn.Parameter(torch.tensor(3.0))
            self.fc = torch.nn.Linear(8, DIM)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if fp16:
                x = x.half()
            h = torch.relu(self.bn(self.conv(x.unsqueeze(1))))
            h = h.clamp(min=1e-3).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)
            return torch.nn.functional.normalize(self.fc(h), dim=-1).float()

    module = Tiny().eval()
    if fp16:
        module = module.half()
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("frames", min=4)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (torch.zeros(2, N_FEATURES, 20),), dynamo=True, input_names=["features"],
            output_names=["embedding"], dynamic_shapes=(dims,), verbose=False,
        )  # fmt: skip
    assert program is not None
    return _save(program.model_proto, path)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_dynamo_exports_pass_every_check_before_tensorrt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    """torch's exporter output (float16 inside and float32 I/O for fp16) is accepted by every
    check build_engine makes before it needs TensorRT, and only for its own precision."""
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sha = _export_tiny_encoder(tmp_path / "encoder.onnx", fp16=precision == "fp16")
    finally:
        torch.set_num_threads(previous)
    assert te.graph_precision(onnx.load(str(tmp_path / "encoder.onnx"))) == precision
    other = "fp16" if precision == "fp32" else "fp32"
    with pytest.raises(ValueError, match=f"is an {precision} graph but precision='{other}'"):
        _build(tmp_path / "encoder.onnx", sha, tmp_path, precision=other)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(te.TensorRTUnavailableError):
        _build(tmp_path / "encoder.onnx", sha, tmp_path, precision=precision, batch=(1, 2, 4))


def _run_engine(rt: Any, engine: Any, features: np.ndarray) -> np.ndarray:
    """One batch through the engine: cuda-python device buffers, execute_async_v3 on a stream."""
    context = engine.create_execution_context()
    assert context.set_input_shape("features", features.shape)
    out_shape = tuple(context.get_tensor_shape("embedding"))
    output = np.empty(out_shape, np.float32)
    features = np.ascontiguousarray(features, np.float32)
    h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    ok = rt.cudaError_t.cudaSuccess
    err, d_in = rt.cudaMalloc(features.nbytes)
    assert err == ok
    err, d_out = rt.cudaMalloc(output.nbytes)
    assert err == ok
    err, stream = rt.cudaStreamCreate()
    assert err == ok
    try:
        assert rt.cudaMemcpy(d_in, features, features.nbytes, h2d)[0] == ok
        assert context.set_tensor_address("features", int(d_in))
        assert context.set_tensor_address("embedding", int(d_out))
        assert context.execute_async_v3(int(stream))
        assert rt.cudaStreamSynchronize(stream)[0] == ok
        assert rt.cudaMemcpy(output, d_out, output.nbytes, d2h)[0] == ok
    finally:
        rt.cudaFree(d_in)
        rt.cudaFree(d_out)
        rt.cudaStreamDestroy(stream)
    return output


@pytest.mark.cuda
def test_build_load_and_run_an_engine(tmp_path: Path, rng: np.random.Generator) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is optional")
    ort = pytest.importorskip("onnxruntime")
    rt = _cuda_runtime_or_skip()
    cache = tmp_path / "timing.cache"
    entries = {}
    for precision in ("fp32", "fp16"):
        graph_file = "encoder.onnx" if precision == "fp32" else "encoder.fp16.onnx"
        sha = _export_tiny_encoder(tmp_path / graph_file, fp16=precision == "fp16")
        entry_file = f"engines/encoder.{precision}.engine"
        entry = te.build_engine(
            tmp_path / graph_file, tmp_path / entry_file, entry_file=entry_file, n_features=N_FEATURES,
            frames=(8, 32, 64), batch=(1, 2, 4), precision=precision, onnx_sha256=sha,
            timing_cache_path=cache, optimization_level=1, workspace_bytes=256 * 2**20,
        )  # fmt: skip
        entries[precision] = entry
        assert set(entry) == {
            "file", "graph", "precision", "tensorrt_version", "compute_capability", "gpu_name", "profile",
            "builder_optimization_level", "onnx_sha256", "built_utc",
        }  # fmt: skip
        assert entry["file"] == entry_file and entry["precision"] == precision
        assert entry["graph"] == ("encoder" if precision == "fp32" else "encoder_fp16")
        assert entry["compute_capability"] == "{}.{}".format(*te.gpu_compute_capability(0))
        assert entry["profile"] == {
            "input": "features",
            "min": [1, 12, 8],
            "opt": [2, 12, 32],
            "max": [4, 12, 64],
        }
        assert entry["onnx_sha256"] == sha and entry["builder_optimization_level"] == 1
        json.dumps(entry)  # model.json material
        assert (tmp_path / entry_file).stat().st_size > 0 and cache.stat().st_size > 0

    session = ort.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    bundle = ModelBundle(tmp_path, {"engines": list(entries.values())})
    for precision, entry in entries.items():
        engine = te.load_engine(bundle, entry)
        for shape in [(1, N_FEATURES, 8), (3, N_FEATURES, 41), (4, N_FEATURES, 64)]:
            features = rng.standard_normal(shape).astype(np.float32)
            (expected,) = session.run(None, {"features": features})
            ours = _run_engine(rt, engine, features)
            assert ours.shape == expected.shape == (shape[0], DIM)
            cosine = (
                np.sum(ours * expected, axis=1)
                / np.linalg.norm(ours, axis=1)
                / np.linalg.norm(expected, axis=1)
            )
            assert cosine.min() > (0.9999 if precision == "fp32" else 0.995), (precision, shape, cosine)
            if precision == "fp32":  # TF32 convolutions: close, not bit-equal
                np.testing.assert_allclose(ours, expected, atol=3e-3)
