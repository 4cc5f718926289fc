"""csi_runtime: the deployment side of csi (no torch).

Public API::

    from csi_runtime import topk, ReferenceIndex, build_info
    scores, idx = topk(queries, refs, k=10, metric="ip")
"""

from csi_runtime.errors import CudaUnavailableError, IndexFileError, NonFiniteError
from csi_runtime.index import Hit, ReferenceIndex
from csi_runtime.info import __version__, build_info
from csi_runtime.quantize import dequantize_int8, quantize_int8
from csi_runtime.ranking import CPU_MAX_K, cuda_max_k, topk
from csi_runtime.threads import default_threads, set_num_threads

__all__ = [
    "CPU_MAX_K",
    "CudaUnavailableError",
    "Hit",
    "IndexFileError",
    "NonFiniteError",
    "ReferenceIndex",
    "__version__",
    "build_info",
    "cuda_max_k",
    "default_threads",
    "dequantize_int8",
    "quantize_int8",
    "set_num_threads",
    "topk",
]
