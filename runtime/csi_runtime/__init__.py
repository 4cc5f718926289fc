"""csi_runtime: the deployment side of csi (no torch).

Public API::

    from csi_runtime import topk, ReferenceIndex, build_info
    scores, idx = topk(queries, refs, k=10, metric="ip")
"""

from csi_runtime.bundle import BundleError, EngineMismatchError, ModelBundle, load_bundle
from csi_runtime.calibrate import Calibration, calibrate_threshold
from csi_runtime.detections import Detection
from csi_runtime.embedder import Embedder, Segments
from csi_runtime.errors import CudaUnavailableError, IndexFileError, IndexModelMismatchError, NonFiniteError
from csi_runtime.index import Hit, ReferenceIndex
from csi_runtime.info import __version__, build_info
from csi_runtime.monitor import Monitor, run_monitor
from csi_runtime.quantize import dequantize_int8, quantize_int8
from csi_runtime.ranking import CPU_MAX_K, cuda_max_k, topk
from csi_runtime.sink import DetectionSink
from csi_runtime.streaming import Segment, StreamingEmbedder
from csi_runtime.threads import default_threads, set_num_threads
from csi_runtime.tracker import DetectionTracker

__all__ = [
    "CPU_MAX_K",
    "BundleError",
    "Calibration",
    "CudaUnavailableError",
    "Detection",
    "DetectionSink",
    "DetectionTracker",
    "Embedder",
    "EngineMismatchError",
    "Hit",
    "IndexFileError",
    "IndexModelMismatchError",
    "ModelBundle",
    "Monitor",
    "NonFiniteError",
    "ReferenceIndex",
    "Segment",
    "Segments",
    "StreamingEmbedder",
    "__version__",
    "build_info",
    "calibrate_threshold",
    "cuda_max_k",
    "default_threads",
    "dequantize_int8",
    "load_bundle",
    "quantize_int8",
    "run_monitor",
    "set_num_threads",
    "topk",
]
