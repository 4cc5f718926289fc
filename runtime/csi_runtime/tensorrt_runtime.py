"""Running a bundle's TensorRT engines: import TensorRT, ask cuda-python about the GPU, pick the
engine that fits this machine and deserialise it with its tags checked.

TensorRT and cuda-python are optional and imported only when an engine is chosen or loaded;
everything else in a bundle (the ONNX graphs) runs without them. This is the runtime half of the
TensorRT support: ``csi_export.tensorrt_engine`` builds engines on top of it.

An engine runs only under the TensorRT release that built it and on GPUs of the compute capability
it was built for, so its model.json entry records both, and :func:`select_engine` /
:func:`load_engine` compare them with the machine (:func:`csi_runtime.bundle.engine_mismatch`)
before TensorRT sees the bytes (it refuses, or crashes on, a foreign engine).

GPU facts come from cuda-python only (``cuda.bindings.runtime``, or the older ``cuda.cudart``):
the runtime never imports torch.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any, NamedTuple

from csi_runtime.bundle import EngineMismatchError, ModelBundle, engine_mismatch

__all__ = [
    "CudaError",
    "CudaPythonUnavailableError",
    "GPUInfo",
    "GPUUnavailableError",
    "TensorRTUnavailableError",
    "gpu_compute_capability",
    "gpu_name",
    "import_tensorrt",
    "load_engine",
    "make_trt_logger",
    "query_gpu",
    "select_engine",
    "tensorrt_available",
]

logger = logging.getLogger(__name__)

MIN_TENSORRT_MAJOR = 10
INSTALL_URL = "https://docs.nvidia.com/deeplearning/tensorrt/latest/installing-tensorrt/installing.html"
REBUILD_HINT = "python export/build_engine.py --bundle {bundle} --trt --force"
#: engine precisions in order of preference: fp16 is the faster one, built only where it is accurate
PRECISION_PREFERENCE = ("fp16", "fp32")


class TensorRTUnavailableError(RuntimeError):
    """TensorRT (the ``tensorrt`` Python package) is not installed or cannot be loaded."""


class GPUUnavailableError(RuntimeError):
    """No CUDA GPU is visible (or none can be queried) where one is needed."""


class CudaPythonUnavailableError(GPUUnavailableError):
    """cuda-python, through which the runtime reaches the GPU, is not installed."""


class CudaError(RuntimeError):
    """A CUDA runtime call (through cuda-python) failed."""


class GPUInfo(NamedTuple):
    """One CUDA device: its index (``device``), (major, minor) compute capability and marketing name."""

    device: int
    compute_capability: tuple[int, int]
    name: str


# --------------------------------------------------------------------------------------- TensorRT


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, imported on first use; raises :class:`TensorRTUnavailableError`."""
    try:
        trt = importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:  # OSError: the package is there but libnvinfer is not
        raise TensorRTUnavailableError(
            f"TensorRT is not installed or cannot be loaded (import tensorrt: {exc}). Install it "
            f"with `pip install tensorrt-cu12` (CUDA 12; tensorrt-cu13 for CUDA 13) or see "
            f"NVIDIA's installation guide, {INSTALL_URL}. TensorRT is optional: a model bundle's "
            "ONNX graphs run without it (onnxruntime), only TensorRT engines need it."
        ) from exc
    version = str(getattr(trt, "__version__", "0"))
    if tensorrt_major(version) < MIN_TENSORRT_MAJOR:
        raise TensorRTUnavailableError(
            f"TensorRT {version} is installed, csi needs TensorRT {MIN_TENSORRT_MAJOR} or newer "
            f"(`pip install -U tensorrt-cu12`). The bundle's ONNX graphs run without TensorRT."
        )
    return trt


def tensorrt_available() -> bool:
    """Whether TensorRT (10 or newer) can be imported here."""
    try:
        import_tensorrt()
    except TensorRTUnavailableError:
        return False
    return True


def tensorrt_major(version: str) -> int:
    """Major number of a version string ("10.15.1.29" → 10; 0 if there is none)."""
    match = re.match(r"\d+", version)
    return int(match.group()) if match else 0


def make_trt_logger(trt: Any, log: logging.Logger | None = None) -> Any:
    """A ``trt.ILogger`` that forwards TensorRT's messages to ``log`` (default: this module's
    logger) and keeps the errors (``.errors``, list of str) for the exception raised when a step
    fails."""
    target = logger if log is None else log
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.CRITICAL,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.DEBUG,  # TensorRT's INFO is a per-layer build diary
        severity.VERBOSE: logging.DEBUG,
    }

    class _LogBridge(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, sev: Any, msg: str) -> None:
            level = levels.get(sev, logging.WARNING)
            if level >= logging.ERROR:
                self.errors.append(str(msg))
            if target.isEnabledFor(level):
                target.log(level, "TensorRT: %s", msg)

    return _LogBridge()


# --------------------------------------------------------------------------------------- the GPU


def _cuda_runtime() -> Any | None:
    """cuda-python's runtime bindings, or None when cuda-python is not installed."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):  # cuda-python >= 12.6, then older
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def cuda_runtime() -> Any:
    """cuda-python's runtime bindings; raises :class:`CudaPythonUnavailableError` without them."""
    rt = _cuda_runtime()
    if rt is None:
        raise CudaPythonUnavailableError(
            "cuda-python is not installed (`pip install cuda-python`); csi reaches the GPU through it "
            "to query it and to run TensorRT engines"
        )
    return rt


def _cuda_check(
    rt: Any, result: Sequence[Any], call: str, error: type[RuntimeError] = CudaError, context: str = ""
) -> Any:
    """The value(s) of a cuda-python call returning (cudaError_t, *values): the one value, a list
    of several, or [] for none. A failure raises ``error`` naming the call and CUDA's error name,
    after ``context`` (e.g. "no usable CUDA GPU: ")."""
    err, *values = result
    if err != rt.cudaError_t.cudaSuccess:
        try:
            _, name = rt.cudaGetErrorName(err)
            text = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # the error's own description failed: the enum value will do
            text = str(err)
        raise error(f"{context}{call} failed with {text}")
    return values[0] if len(values) == 1 else values


def query_gpu(device: int | None = None) -> GPUInfo:
    """Index, compute capability and name of CUDA device ``device`` (None: the current CUDA device,
    the one TensorRT builds and runs on), through cuda-python.

    Raises :class:`CudaPythonUnavailableError` without cuda-python, :class:`GPUUnavailableError`
    when no GPU is visible, ValueError for a device index the machine does not have.
    """
    if device is not None and (not isinstance(device, int) or isinstance(device, bool) or device < 0):
        raise ValueError(f"device must be a CUDA device index >= 0, got {device!r}")
    rt = cuda_runtime()
    no_gpu = "no usable CUDA GPU: "
    count = int(_cuda_check(rt, rt.cudaGetDeviceCount(), "cudaGetDeviceCount", GPUUnavailableError, no_gpu))
    if count == 0:
        raise GPUUnavailableError("no CUDA GPU is visible (cudaGetDeviceCount is 0)")
    if device is None:
        device = int(_cuda_check(rt, rt.cudaGetDevice(), "cudaGetDevice", GPUUnavailableError, no_gpu))
    if device >= count:
        raise ValueError(f"CUDA device {device} does not exist (this machine has {count})")
    prop = _cuda_check(
        rt, rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties", GPUUnavailableError, no_gpu
    )
    raw = prop.name
    name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return GPUInfo(device, (int(prop.major), int(prop.minor)), name.strip())


def gpu_compute_capability(device: int = 0) -> tuple[int, int]:
    """(major, minor) compute capability of CUDA device ``device``, e.g. (9, 0) on an H100/H200;
    errors as :func:`query_gpu`."""
    return query_gpu(device).compute_capability


def gpu_name(device: int = 0) -> str:
    """Marketing name of CUDA device ``device`` (e.g. "NVIDIA H200"); errors as :func:`query_gpu`."""
    return query_gpu(device).name


# ------------------------------------------------------------------------------------- engines


def check_bundle_file(what: str, value: Any) -> str:
    """``value`` if it is a non-empty path inside a bundle folder (relative, POSIX, no '..'),
    else ValueError naming ``what``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty relative path, got {value!r}")
    rel = PurePosixPath(value)
    if rel.is_absolute() or ".." in rel.parts or "\\" in value:
        raise ValueError(f"{what} must be a path inside the bundle (relative, no '..'), got {value!r}")
    return value


def select_engine(
    bundle: ModelBundle, tensorrt_version: str, compute_capability: tuple[int, int] | str
) -> dict[str, Any]:
    """The entry of ``bundle.engines()`` to run under TensorRT ``tensorrt_version`` on a GPU of
    ``compute_capability`` ((major, minor) or "9.0"): the first whose tags match, fp16 engines
    before fp32 ones (then any other precision), in manifest order within a precision.

    Raises :class:`~csi_runtime.bundle.EngineMismatchError` when the bundle has no engine, or none
    fits, listing why each one does not and how to rebuild.
    """
    engines = bundle.engines()
    if not engines:
        build = REBUILD_HINT.format(bundle=bundle.path).removesuffix(" --force")
        raise EngineMismatchError(f"bundle {bundle.path} has no TensorRT engine; build one with `{build}`")

    def preference(entry: Mapping[str, Any]) -> int:
        precision = entry.get("precision")
        return PRECISION_PREFERENCE.index(precision) if precision in PRECISION_PREFERENCE else 99

    reasons = []
    for entry in sorted(engines, key=preference):
        why = engine_mismatch(entry, str(tensorrt_version), compute_capability)
        if why is None:
            return entry
        reasons.append(why)
    raise EngineMismatchError(
        f"no TensorRT engine of bundle {bundle.path} fits this machine: "
        + "; ".join(reasons)
        + f". Rebuild one here with `{REBUILD_HINT.format(bundle=bundle.path)}`"
    )


def load_engine(bundle: ModelBundle, entry: Mapping[str, Any]) -> Any:
    """Deserialise one of ``bundle``'s engines (an entry of ``bundle.engines()``) on the current
    CUDA device and return the ``tensorrt.ICudaEngine``.

    The entry's TensorRT version and compute capability are compared with this machine's first
    (:func:`~csi_runtime.bundle.engine_mismatch`): a mismatch raises
    :class:`~csi_runtime.bundle.EngineMismatchError` saying how to rebuild, without handing
    TensorRT an engine it would refuse or crash on. A missing file, or deserialisation failing
    anyway, raises the same error naming the file. Also raises :class:`TensorRTUnavailableError`,
    :class:`GPUUnavailableError` (:class:`CudaPythonUnavailableError` without cuda-python), and
    ValueError for an entry whose file is not a path inside the bundle.
    """
    hint = REBUILD_HINT.format(bundle=bundle.path)
    file = entry.get("file")
    if not isinstance(file, str):
        raise ValueError(f"engine entry has no 'file' string: {dict(entry)!r}")
    check_bundle_file("the engine entry's file", file)
    trt = import_tensorrt()
    _device, cc, name = query_gpu(None)
    problem = engine_mismatch(entry, str(trt.__version__), cc)
    if problem is not None:
        raise EngineMismatchError(f"{problem}; rebuild it here with `{hint}`")
    path = bundle.path / file
    if not path.is_file():
        raise EngineMismatchError(f"engine {path} is missing; rebuild it with `{hint}`")
    trt_logger = make_trt_logger(trt)
    runtime = trt.Runtime(trt_logger)
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        reasons = "; ".join(trt_logger.errors) or "TensorRT gave no reason"
        raise EngineMismatchError(
            f"TensorRT {trt.__version__} could not deserialise engine {path} on {name} "
            f"(sm_{cc[0]}{cc[1]}): {reasons}; rebuild it with `{hint}`"
        )
    logger.info("loaded TensorRT engine %s (%s) on %s", path, entry.get("precision"), name)
    return engine
