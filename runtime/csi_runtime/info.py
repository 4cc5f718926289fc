"""What this installation was built with and what it can use right now."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from csi_runtime import _native

__version__ = version("csi")  # single source: pyproject.toml


def build_info() -> dict[str, Any]:
    """Describes the compiled modules.

    Returns a JSON-able dict::

        {"version": "0.1.0",
         "cpu":  {"compiler": ..., "kernels_compiled": [...], "kernels_supported": [...],
                  "kernels_selected": "avx512", "cpu_max_k": ..., "hardware_threads": ...},
         "cuda": {"built": bool, "archs": ["80", ...], "ptx": "90", "nvcc": "13.0",
                  "cudart": "static", "compiler": ..., "max_k": ..., "available": bool,
                  "devices": [{"name": ..., "compute_capability": "9.0", ...}]}}
    """
    cpu = dict(_native.cpu.build_info())
    cpu["kernels_compiled"] = list(cpu["kernels_compiled"])
    cuda: dict[str, Any] = {"built": _native.cuda is not None, "available": False, "devices": []}
    if _native.cuda is not None:
        cuda.update(dict(_native.cuda.build_info()))
        count = _native.cuda_device_count()
        cuda["available"] = count > 0
        cuda["devices"] = [dict(_native.cuda.device_info(i)) for i in range(count)]
    return {"version": __version__, "cpu": cpu, "cuda": cuda}
