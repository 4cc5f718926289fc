"""The CUDA module as built: importable without a GPU, the right machine code inside, static cudart.

These run on any machine where ``csi_runtime._cuda`` was built (nvcc at install time); the
GPU-less checks are skipped when a GPU is present, and vice versa.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import csi_runtime
from csi_runtime import CudaUnavailableError, _native

cuda = _native.cuda
pytestmark = pytest.mark.skipif(cuda is None, reason="csi_runtime._cuda is not built (no nvcc at install)")
no_gpu = pytest.mark.skipif(_native.cuda_available(), reason="a CUDA device is present")


def module_path() -> Path:
    assert cuda is not None
    return Path(cuda.__file__)


def find_cuobjdump() -> str | None:
    """cuobjdump from PATH, the toolkit, or the nvidia-cuda-cuobjdump wheel."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "cuobjdump").exists():
            return str(Path(home) / "bin" / "cuobjdump")
    try:
        import nvidia  # type: ignore[import-not-found]
    except ImportError:
        return None
    for base in nvidia.__path__:
        for candidate in Path(base).glob("cu*/bin/cuobjdump"):
            return str(candidate)
    return None


def test_build_info() -> None:
    info = cuda.build_info()
    assert {"80", "90"} <= set(info["archs"])
    assert info["ptx"] == info["archs"][-1]
    assert info["cudart"] == "static"
    assert info["max_k"] == cuda.MAX_K >= 4096
    assert info["runtime_version"] >= 12000
    assert isinstance(info["nvcc"], str)
    assert isinstance(info["compiler"], str)
    assert issubclass(cuda.NonFiniteError, ValueError)
    full = csi_runtime.build_info()["cuda"]
    assert full["built"] is True
    assert full["max_k"] == cuda.MAX_K


@no_gpu
def test_no_gpu_means_zero_devices_and_clear_errors() -> None:
    assert cuda.device_count() == 0  # never raises
    assert cuda.last_error()  # the reason is kept
    assert _native.cuda_available() is False
    assert cuda.build_info()["driver_version"] >= 0
    info = csi_runtime.build_info()["cuda"]
    assert info["available"] is False
    assert info["devices"] == []

    rng = np.random.default_rng(0)
    q = rng.standard_normal((40, 16)).astype(np.float32)
    r = rng.standard_normal((500, 16)).astype(np.float16)
    with pytest.raises(CudaUnavailableError, match="no usable CUDA device"):
        csi_runtime.topk(q, r, 5, device="cuda")
    with pytest.raises(CudaUnavailableError):
        csi_runtime.topk(q, r, 5, device="cuda:1")
    # auto silently uses the CPU (Q >= 32 would pick the GPU if there were one).
    s, i = csi_runtime.topk(q, r, 5, device="auto")
    cs, ci = csi_runtime.topk(q, r, 5, device="cpu")
    np.testing.assert_array_equal(i, ci)
    np.testing.assert_array_equal(s, cs)
    # Direct module calls fail cleanly too.
    with pytest.raises(ValueError, match="CUDA device"):
        cuda.topk(q, r, None, 5, "ip", 0)
    with pytest.raises(ValueError, match="CUDA device"):
        cuda.DeviceArray.from_host(r)
    with pytest.raises(ValueError, match="CUDA device"):
        cuda.copy_bandwidth(1 << 20, 1, 0)
    with pytest.raises(ValueError, match="no CUDA device 0"):
        cuda.device_info(0)


def test_argument_validation_before_any_cuda_work() -> None:
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 8)).astype(np.float32)
    r = rng.standard_normal((50, 8)).astype(np.float16)
    with pytest.raises(TypeError, match="queries must be float32"):
        cuda.topk(q.astype(np.float64), r, None, 3, "ip", 0)
    with pytest.raises(TypeError, match="refs must be float32, float16 or int8"):
        cuda.topk(q, r.astype(np.float64), None, 3, "ip", 0)
    with pytest.raises(ValueError, match="dimension mismatch"):
        cuda.topk(q, np.ascontiguousarray(r[:, :4]), None, 3, "ip", 0)
    with pytest.raises(ValueError, match="metric"):
        cuda.topk(q, r, None, 3, "cos", 0)
    with pytest.raises(ValueError, match="exceeds the number of references"):
        cuda.topk(q, r, None, 51, "ip", 0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        cuda.topk(q, r, None, 0, "ip", 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        cuda.topk(q, np.asfortranarray(r), None, 3, "ip", 0)
    with pytest.raises(ValueError, match="scales"):
        cuda.topk(q, r, np.ones(50, np.float32), 3, "ip", 0)
    r8 = rng.integers(-127, 128, size=(50, 8), dtype=np.int8)
    with pytest.raises(ValueError, match="scales"):
        cuda.topk(q, r8, None, 3, "ip", 0)
    with pytest.raises(ValueError, match="scales"):
        cuda.topk(q, r8, np.ones(49, np.float32), 3, "ip", 0)
    with pytest.raises(TypeError):
        cuda.topk(q, [[1.0] * 8], None, 1, "ip", 0)
    big = np.zeros((cuda.MAX_K + 1, 8), np.float16)
    with pytest.raises(ValueError, match="CUDA limit"):
        cuda.topk(q, big, None, cuda.MAX_K + 1, "ip", 0)


def test_cuda_array_interface_parsing_rejects_bad_layouts() -> None:
    class Fake:
        def __init__(self, **iface):
            self.__cuda_array_interface__ = {
                "shape": (4, 8),
                "typestr": "<f4",
                "data": (0, False),
                "version": 3,
                "strides": None,
                **iface,
            }

    r = np.zeros((10, 8), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        cuda.topk(Fake(strides=(4, 16)), r, None, 1, "ip", 0)
    with pytest.raises(ValueError, match="masked"):
        cuda.topk(Fake(mask=1), r, None, 1, "ip", 0)
    with pytest.raises(ValueError, match="stream 0"):
        cuda.topk(Fake(stream=0), r, None, 1, "ip", 0)
    with pytest.raises(TypeError, match="float32"):
        cuda.topk(Fake(typestr="<f2"), r, None, 1, "ip", 0)


def test_fatbinary_has_sass_for_every_arch_and_ptx() -> None:
    tool = find_cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (install the toolkit's or `pip install nvidia-cuda-cuobjdump`)")
    so = str(module_path())
    elf = subprocess.run([tool, "--list-elf", so], capture_output=True, text=True, check=True).stdout
    ptx = subprocess.run([tool, "--list-ptx", so], capture_output=True, text=True, check=True).stdout
    archs = cuda.build_info()["archs"]
    for arch in archs:
        assert f".sm_{arch}." in elf, f"no SASS for sm_{arch}:\n{elf}"
    assert f".sm_{archs[-1]}.ptx" in ptx, f"no PTX for compute_{archs[-1]}:\n{ptx}"
    # The score kernels use the tensor cores and no local memory on Hopper.
    sass = subprocess.run(
        [tool, "-sass", "-arch", "sm_90", so], capture_output=True, text=True, check=True
    ).stdout
    functions = sass.split("Function : ")[1:]
    mma = [f for f in functions if "score_mma_kernel" in f.splitlines()[0]]
    assert len(mma) == 12
    for body in mma:
        assert "HMMA" in body
        assert "LDL" not in body
        assert "STL" not in body


def test_links_cudart_statically() -> None:
    assert shutil.which("ldd"), "ldd (glibc) is needed to inspect the module's dynamic dependencies"
    out = subprocess.run(["ldd", str(module_path())], capture_output=True, text=True, check=True).stdout
    assert "libcudart" not in out, out
    assert "libcuda.so" not in out, out  # the driver is loaded at run time by cudart_static
