"""Inference backends of the Embedder: the bundle's two graphs (frontend, encoder) behind one interface.

- ``onnxruntime`` (default): CPU, or the CUDA execution provider when asked for / available. After
  creating a session we check which providers it really uses, because onnxruntime falls back to
  CPU silently when CUDA libraries are missing or mismatched.
- ``tensorrt``: the encoder as a TensorRT engine of the bundle that matches this GPU and TensorRT
  release (tags checked before deserialising), the frontend on onnxruntime. Lazy imports.
- ``torch``: the checkpoint's own modules (needs csi_training and torch; the only place torch is
  imported by csi_runtime), for parity checks and debugging.

Every backend is thread-safe: ``frontend``/``encode`` may be called from many threads at once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from csi_runtime import tensorrt_runtime
from csi_runtime.bundle import BundleError, EngineMismatchError, ModelBundle
from csi_runtime.tensorrt_runtime import _cuda_check

__all__ = ["BACKENDS", "Backend", "BackendUnavailableError", "create_backend"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
DEVICES = ("auto", "cpu", "cuda")


class BackendUnavailableError(RuntimeError):
    """The requested backend or device cannot run here (package missing, no GPU, provider fallback)."""


class Backend(Protocol):
    name: str
    device: str

    def frontend(self, waveform: np.ndarray) -> np.ndarray:
        """float32 [B, n] (valid framing, see csi_runtime.bundle) → features float32 [B, F, T]."""

    def encode(self, features: np.ndarray) -> np.ndarray:
        """features float32 [B, F, T] → unit-norm embeddings float32 [B, D]."""


def _ort_session(path: Path, device: str, threads: int | None) -> tuple[Any, str]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailableError(
            "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu for CUDA)"
        ) from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    available = ort.get_available_providers()
    want_cuda = device in ("cuda", "auto") and "CUDAExecutionProvider" in available
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]
    if device == "cuda" and not want_cuda:
        raise BackendUnavailableError(
            "device='cuda' but this onnxruntime has no CUDA execution provider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu"
        )
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise BundleError(f"onnxruntime cannot load {path}: {exc}") from exc
    active = session.get_providers()
    if want_cuda and "CUDAExecutionProvider" not in active:
        message = (
            f"onnxruntime fell back to CPU for {path.name} (CUDA libraries missing or mismatched; "
            f"active providers: {', '.join(active)})"
        )
        if device == "cuda":
            raise BackendUnavailableError(message)
        logger.warning(message)
    return session, ("cuda" if "CUDAExecutionProvider" in active else "cpu")


class OnnxRuntimeBackend:
    """Both graphs on onnxruntime. On CPU the offline-optimised encoder (encoder.ort.onnx) is used
    when the bundle has one written by this very onnxruntime version."""

    name = "onnxruntime"

    def __init__(self, bundle: ModelBundle, device: str = "auto", threads: int | None = None) -> None:
        import onnxruntime as ort

        self.frontend_session, self.device = _ort_session(bundle.graph_path("frontend"), device, threads)
        graphs = bundle.manifest["graphs"]
        encoder_graph = "encoder"
        optimised = graphs.get("encoder_ort")
        if self.device == "cpu" and optimised and optimised.get("onnxruntime_version") == ort.__version__:
            encoder_graph = "encoder_ort"
        self.encoder_session, _ = _ort_session(bundle.graph_path(encoder_graph), self.device, threads)
        self.encoder_graph = encoder_graph
        self._frontend_io = (graphs["frontend"]["input"], graphs["frontend"]["output"])
        self._encoder_io = (graphs["encoder"]["input"], graphs["encoder"]["output"])

    def frontend(self, waveform: np.ndarray) -> np.ndarray:
        return self.frontend_session.run([self._frontend_io[1]], {self._frontend_io[0]: waveform})[0]

    def encode(self, features: np.ndarray) -> np.ndarray:
        return self.encoder_session.run([self._encoder_io[1]], {self._encoder_io[0]: features})[0]


class TensorRTBackend:
    """The encoder as a TensorRT engine (device buffers through cuda-python), the frontend on
    onnxruntime (CUDA provider when present). One execution context per calling thread."""

    name = "tensorrt"

    def __init__(self, bundle: ModelBundle, device: str = "auto", threads: int | None = None) -> None:
        if device == "cpu":
            raise BackendUnavailableError(
                "the tensorrt backend runs on a GPU; use backend='onnxruntime' on CPU"
            )
        try:
            trt = tensorrt_runtime.import_tensorrt()
            self._cudart = tensorrt_runtime.cuda_runtime()
            _device, capability, _name = tensorrt_runtime.query_gpu(None)
        except tensorrt_runtime.CudaPythonUnavailableError as exc:
            raise BackendUnavailableError(
                f"the tensorrt backend needs cuda-python for device buffers: {exc}"
            ) from exc
        except (tensorrt_runtime.TensorRTUnavailableError, tensorrt_runtime.GPUUnavailableError) as exc:
            raise BackendUnavailableError(f"{exc} (the onnxruntime backend runs the same model)") from exc
        if not bundle.engines():
            raise BackendUnavailableError(
                f"bundle {bundle.path} has no TensorRT engine; build one with "
                f"python export/build_engine.py --bundle {bundle.path} --trt"
            )
        chosen = tensorrt_runtime.select_engine(bundle, str(trt.__version__), capability)
        self.engine = tensorrt_runtime.load_engine(bundle, chosen)
        self.entry = chosen
        self.device = "cuda"
        self._frontend = OnnxRuntimeBackend(bundle, device="auto", threads=threads)
        self._input = bundle.manifest["graphs"]["encoder"]["input"]
        self._output = bundle.manifest["graphs"]["encoder"]["output"]
        self._local = threading.local()

    def frontend(self, waveform: np.ndarray) -> np.ndarray:
        return self._frontend.frontend(waveform)

    def _context(self) -> Any:
        ctx = getattr(self._local, "context", None)
        if ctx is None:
            ctx = self.engine.create_execution_context()
            stream = _cuda_check(self._cudart, self._cudart.cudaStreamCreate(), "cudaStreamCreate")
            self._local.context, self._local.stream = ctx, stream
        return ctx

    def encode(self, features: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        ctx = self._context()
        stream = self._local.stream
        x = np.ascontiguousarray(features, dtype=np.float32)
        ctx.set_input_shape(self._input, tuple(x.shape))
        out_shape = tuple(ctx.get_tensor_shape(self._output))
        out = np.empty(out_shape, np.float32)
        d_in = _cuda_check(cudart, cudart.cudaMalloc(x.nbytes), "cudaMalloc")
        try:
            d_out = _cuda_check(cudart, cudart.cudaMalloc(out.nbytes), "cudaMalloc")
        except BaseException:
            cudart.cudaFree(d_in)
            raise
        try:
            h2d, d2h = (
                cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
            )
            _cuda_check(
                cudart, cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, h2d, stream), "cudaMemcpyAsync"
            )
            ctx.set_tensor_address(self._input, int(d_in))
            ctx.set_tensor_address(self._output, int(d_out))
            if not ctx.execute_async_v3(int(stream)):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            _cuda_check(
                cudart,
                cudart.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, d2h, stream),
                "cudaMemcpyAsync",
            )
            _cuda_check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        finally:
            cudart.cudaFree(d_in)
            cudart.cudaFree(d_out)
        return out


class TorchBackend:
    """The checkpoint's torch modules (the bundle's recorded source checkpoint, or a checkpoint
    folder given directly). Needs csi_training and torch."""

    name = "torch"

    def __init__(self, bundle: ModelBundle, device: str = "auto", threads: int | None = None) -> None:
        try:
            import torch

            from csi_training.checkpoint import load_checkpoint
            from csi_training.frontends import frontend_from_dict
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the torch backend needs csi[train] (torch, csi_training): {exc}"
            ) from None
        checkpoint = Path(str(bundle.manifest.get("source", {}).get("checkpoint", "")))
        if not (checkpoint / "config.json").is_file():
            raise BackendUnavailableError(
                f"the torch backend needs the bundle's source checkpoint, which is not here: {checkpoint}"
            )
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("device='cuda' but torch sees no CUDA GPU")
        if threads is not None:
            torch.set_num_threads(int(threads))
        ckpt = load_checkpoint(checkpoint)
        self._torch = torch
        self.device = device
        params = dict(bundle.manifest["frontend"]["params"])
        self._frontend = frontend_from_dict({**params, "center": False}).eval().to(device)
        self._backbone = ckpt.encoder.backbone.eval().to(device)

    def frontend(self, waveform: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            x = self._torch.from_numpy(np.ascontiguousarray(waveform)).to(self.device)
            return self._frontend(x).float().cpu().numpy()

    def encode(self, features: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            x = self._torch.from_numpy(np.ascontiguousarray(features)).to(self.device)
            return self._backbone(x).float().cpu().numpy()


def create_backend(
    bundle: ModelBundle, backend: str = "auto", device: str = "auto", threads: int | None = None
) -> Any:
    """The backend instance for ``backend``/``device``; "auto" tries TensorRT on a GPU with a matching
    engine, then onnxruntime (CUDA provider if present, else CPU)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(bundle, device, threads)
    if backend == "tensorrt":
        return TensorRTBackend(bundle, device, threads)
    if backend == "torch":
        return TorchBackend(bundle, device, threads)
    if device != "cpu" and bundle.engines():
        try:
            return TensorRTBackend(bundle, device, threads)
        except (BackendUnavailableError, EngineMismatchError) as exc:
            logger.info("TensorRT not used: %s", exc)
    return OnnxRuntimeBackend(bundle, device, threads)
