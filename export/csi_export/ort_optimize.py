"""onnxruntime's graph optimisations applied once, offline, and saved (faster session start-up).

Level "extended" (constant folding, Conv+BatchNorm / Conv+activation fusion, …) is the highest level
whose output stays portable across machines; "all" adds layout transformations specific to the CPU it
ran on, so it is not offered. The saved graph may hold onnxruntime-only fused ops (com.microsoft
domain): it is for onnxruntime's CPU provider only (never TensorRT), and it is tagged with the
onnxruntime version that wrote it (the runtime falls back to encoder.onnx under another version).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["optimize_offline"]


def optimize_offline(source: str | os.PathLike[str], level: str = "extended") -> tuple[bytes, str]:
    """(optimised graph bytes, onnxruntime version) for the graph file ``source``."""
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }
    if level not in levels:
        raise ValueError(f"optimisation level must be one of {sorted(levels)}, got {level!r}")
    with tempfile.TemporaryDirectory(prefix="csi-ort-") as tmp:
        target = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[level]
        options.optimized_model_filepath = str(target)
        options.intra_op_num_threads = 1
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        return target.read_bytes(), ort.__version__
