"""TensorRT engines for a model bundle: build one from an encoder graph.

TensorRT is optional and imported only when an engine is built; everything else in a bundle (the
ONNX graphs) runs without it. Written against the TensorRT 10.x Python API and kept valid on
11.x: networks are strongly typed (the NetworkDefinitionCreationFlag.STRONGLY_TYPED flag on 10.x;
always on, flag deprecated, in 11.x) and no precision builder flags are used (11.x removed
BuilderFlag.FP16/INT8), so an fp16 engine comes from the fp16 ONNX graph (float16 inside,
float32 inputs and outputs), never from a builder switch.

The runtime half (importing TensorRT, the GPU query, choosing and loading an engine with its tags
checked) lives in :mod:`csi_runtime.tensorrt_runtime`; its public names are re-exported here.
Only the GPU query differs: at build time, where torch is usually installed, it falls back to
torch.cuda when cuda-python is absent.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from csi_runtime.atomic import atomic_open
from csi_runtime.bundle import sha256_file
from csi_runtime.tensorrt_runtime import (
    CudaPythonUnavailableError,
    GPUInfo,
    GPUUnavailableError,
    TensorRTUnavailableError,
    check_bundle_file,
    import_tensorrt,
    load_engine,
    make_trt_logger,
    query_gpu,
    select_engine,
    tensorrt_available,
    tensorrt_major,
)

from .trt_ops import check_tensorrt_ops

__all__ = [
    "DEFAULT_WORKSPACE_BYTES",
    "EngineBuildError",
    "GPUUnavailableError",
    "TensorRTUnavailableError",
    "build_engine",
    "gpu_compute_capability",
    "gpu_name",
    "graph_precision",
    "import_tensorrt",
    "load_engine",
    "select_engine",
    "tensorrt_available",
]

logger = logging.getLogger(__name__)

#: the builder's scratch-memory cap (TensorRT's default is the whole GPU), bytes
DEFAULT_WORKSPACE_BYTES = 2 * 2**30
#: TensorRT's builder optimisation levels (3 is TensorRT's default)
OPTIMIZATION_LEVELS = range(0, 6)
PRECISIONS = ("fp32", "fp16")

_SHA256 = re.compile(r"[0-9a-f]{64}")


class EngineBuildError(RuntimeError):
    """TensorRT could not parse a graph or build an engine from it."""


# --------------------------------------------------------------------------------------- the GPU


def _query_gpu(device: int | None) -> GPUInfo:
    """:func:`csi_runtime.tensorrt_runtime.query_gpu` (cuda-python), or, where cuda-python is not
    installed, the same facts from torch.cuda (a build machine usually has torch)."""
    try:
        return query_gpu(device)
    except CudaPythonUnavailableError:
        pass
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        raise GPUUnavailableError(
            "cannot query the GPU: install cuda-python (`pip install cuda-python`)"
        ) from None
    if not torch.cuda.is_available():
        raise GPUUnavailableError(
            "no CUDA GPU is visible (cuda-python is not installed and torch.cuda.is_available() is False)"
        )
    count = int(torch.cuda.device_count())
    if device is None:
        device = int(torch.cuda.current_device())
    if device >= count:
        raise ValueError(f"CUDA device {device} does not exist (this machine has {count})")
    major, minor = torch.cuda.get_device_capability(device)
    return GPUInfo(device, (int(major), int(minor)), str(torch.cuda.get_device_name(device)))


def gpu_compute_capability(device: int = 0) -> tuple[int, int]:
    """(major, minor) compute capability of CUDA device ``device``, e.g. (9, 0) on an H100/H200,
    through cuda-python or else torch.cuda.

    Raises :class:`GPUUnavailableError` when no GPU is visible, ValueError for a device index the
    machine does not have.
    """
    return _query_gpu(device).compute_capability


def gpu_name(device: int = 0) -> str:
    """Marketing name of CUDA device ``device`` (e.g. "NVIDIA H200"); errors as
    :func:`gpu_compute_capability`."""
    return _query_gpu(device).name


# ------------------------------------------------------------------------------ graph precision


def graph_precision(model: Any) -> str:
    """The precision an ONNX graph computes in: "fp16" if float16 appears anywhere (tensor types,
    initializers, constants or casts, in the main graph, subgraphs or local functions), else
    "fp32". Raises ValueError for a bfloat16 graph, which neither precision describes."""
    onnx = importlib.import_module("onnx")
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # shape inference is a help here, not a requirement
        logger.debug("shape inference failed (%s); checking the declared types only", exc)
    tp = onnx.TensorProto
    found: set[int] = set()

    def visit_nodes(nodes: Any) -> None:
        for node in nodes:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    found.add(attr.t.data_type)
                elif attr.type == onnx.AttributeProto.TENSORS:
                    found.update(t.data_type for t in attr.tensors)
                elif attr.type == onnx.AttributeProto.GRAPH:
                    visit_graph(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit_graph(g)
                elif attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT:
                    found.add(attr.i)  # Cast's target, ConstantOfShape/RandomNormal's dtype

    def visit_values(values: Any) -> None:
        for value in values:
            if value.type.HasField("tensor_type"):
                found.add(value.type.tensor_type.elem_type)

    def visit_graph(graph: Any) -> None:
        found.update(t.data_type for t in graph.initializer)
        found.update(s.values.data_type for s in graph.sparse_initializer)
        visit_values([*graph.input, *graph.output, *graph.value_info])
        visit_nodes(graph.node)

    visit_graph(model.graph)
    for function in model.functions:
        visit_values(getattr(function, "value_info", []))
        visit_nodes(function.node)
    if tp.BFLOAT16 in found:
        raise ValueError("the graph computes in bfloat16; csi engines are fp32 or fp16")
    return "fp16" if tp.FLOAT16 in found else "fp32"


# --------------------------------------------------------------------------------- validation


def _check_range(name: str, value: Any) -> tuple[int, int, int]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"{name} must be three integers (min, opt, max), got {value!r}")
    low, opt, high = value
    if not 1 <= low <= opt <= high:
        raise ValueError(
            f"{name} must satisfy 1 <= min <= opt <= max, got (min={low}, opt={opt}, max={high})"
        )
    return int(low), int(opt), int(high)


def _check_positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_entry_file(entry_file: Any) -> str:
    return check_bundle_file("entry_file", entry_file)


def _check_onnx_input(
    model: Any,
    onnx_path: Path,
    input_name: str,
    n_features: int,
    batch: tuple[int, int, int],
    frames: tuple[int, int, int],
) -> None:
    """The graph has exactly one input, ``input_name``: float32 [B, n_features, T], with any static
    batch or time size matching the profile, and float32 outputs."""
    onnx = importlib.import_module("onnx")
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    names = ", ".join(repr(i.name) for i in inputs) or "none"
    if len(inputs) != 1 or inputs[0].name != input_name:
        raise ValueError(f"{onnx_path.name} must have exactly one input {input_name!r} (it has: {names})")
    tensor_type = inputs[0].type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        dtype = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        raise ValueError(f"{onnx_path.name}: input {input_name!r} must be float32, it is {dtype}")
    for output in model.graph.output:
        if output.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            dtype = onnx.TensorProto.DataType.Name(output.type.tensor_type.elem_type)
            raise ValueError(
                f"{onnx_path.name}: output {output.name!r} must be float32 (an fp16 graph keeps float32 "
                f"inputs and outputs), it is {dtype}"
            )
    dims = list(tensor_type.shape.dim)
    if len(dims) != 3:
        raise ValueError(
            f"{onnx_path.name}: input {input_name!r} must be [batch, n_features, frames], "
            f"it has rank {len(dims)}"
        )
    for axis, what, expected in (
        (0, "batch", batch),
        (1, "n_features", (n_features,) * 3),
        (2, "frames", frames),
    ):
        if dims[axis].HasField("dim_value") and any(v != dims[axis].dim_value for v in expected):
            raise ValueError(
                f"{onnx_path.name}: input {input_name!r} has a fixed {what} of {dims[axis].dim_value}, "
                f"which the requested {what} {tuple(expected) if axis != 1 else n_features} does not match"
            )


def _check_precision(model: Any, onnx_path: Path, precision: str) -> None:
    actual = graph_precision(model)
    if actual != precision:
        if precision == "fp16":
            hint = "an fp16 engine is built from the fp16 graph (encoder.fp16.onnx), not from an fp32 one"
        else:
            hint = "an fp32 engine is built from the fp32 graph (encoder.onnx)"
        raise ValueError(
            f"{onnx_path.name} is an {actual} graph but precision={precision!r} was asked: {hint}"
        )


# ------------------------------------------------------------------------------------- building


def _network_has_half(trt: Any, network: Any) -> bool:
    return any(
        network.get_layer(i).get_output(j).dtype == trt.DataType.HALF
        for i in range(network.num_layers)
        for j in range(network.get_layer(i).num_outputs)
    )


def _describe_parser_error(error: Any) -> str:
    """One parser error as text: the node (index, operator, name), the error code, the description."""
    parts = []
    node = error.node()
    if node >= 0:
        where = f"node {node}"
        operator = getattr(error, "node_operator", None)  # TensorRT >= 10.0
        name = getattr(error, "node_name", None)
        if operator is not None and name is not None:
            where += f" ({operator()} {name()!r})"
        parts.append(where)
    parts.append(f"{error.code()}: {error.desc()}")
    return ": ".join(parts)


def _parse(trt: Any, onnx_path: Path, trt_logger: Any) -> tuple[Any, Any, Any]:
    builder = trt.Builder(trt_logger)
    if tensorrt_major(str(trt.__version__)) >= 11:
        flags = 0  # strongly typed is the only mode; the flag is deprecated and ignored
    else:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    parsed = parser.parse_from_file(str(onnx_path))
    errors = [_describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
    if not parsed or errors:
        listed = "\n  ".join(errors or trt_logger.errors or ["(the parser gave no reason)"])
        raise EngineBuildError(
            f"TensorRT {trt.__version__}'s ONNX parser rejected {onnx_path} "
            f"({len(errors)} error(s)):\n  {listed}"
        )
    return builder, network, parser


def _load_timing_cache(config: Any, timing_cache_path: Path | None) -> Any:
    blob = b""
    if timing_cache_path is not None and timing_cache_path.is_file():
        blob = timing_cache_path.read_bytes()
    cache = config.create_timing_cache(blob)
    if cache is None or not config.set_timing_cache(cache, False):
        # a cache from another TensorRT release or GPU: start afresh (the old file is replaced)
        logger.warning(
            "timing cache %s is unusable here (another TensorRT release or GPU?); starting an empty one",
            timing_cache_path,
        )
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, False):
            raise EngineBuildError("TensorRT could not create an empty timing cache")
    elif blob:
        logger.info("using timing cache %s (%d bytes)", timing_cache_path, len(blob))
    return cache


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    entry_file: str,
    n_features: int,
    frames: tuple[int, int, int],
    onnx_sha256: str,
    input_name: str = "features",
    batch: tuple[int, int, int] = (1, 8, 32),
    precision: str = "fp32",
    graph: str | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    timing_cache_path: str | os.PathLike[str] | None = None,
    optimization_level: int = 3,
) -> dict[str, Any]:
    """Build a serialized TensorRT engine for an encoder graph and return its model.json entry.

    onnx_path: the encoder graph (input ``input_name`` float32 [B, n_features, T] → embedding);
        its sha256 must equal ``onnx_sha256`` (the value recorded in model.json).
    engine_path: where the engine is written (atomically); ``entry_file`` is its name relative to
        the bundle folder as model.json records it (e.g. "engines/encoder.fp16.sm90.engine").
    batch, frames: (min, opt, max) of the optimisation profile's batch size and frame count; the
        engine accepts any [b, n_features, t] with b and t inside these ranges and is tuned for opt.
    precision: "fp32" or "fp16". Must match the graph: fp16 needs the fp16 graph (float16 inside,
        float32 input), fp32 a graph without float16 tensors. The network is strongly typed, so the
        graph's types are the engine's types.
    graph: the graph's name under model.json's "graphs" (default "encoder_fp16" for fp16,
        "encoder" for fp32).
    workspace_bytes: cap on the builder's scratch GPU memory.
    timing_cache_path: a TensorRT timing cache read before building (if present and compatible)
        and rewritten after it (atomically): rebuilds of similar graphs skip kernel timing.
    optimization_level: TensorRT builder optimisation level 0..5 (higher: longer build, possibly
        faster engine).

    The engine is built on the current CUDA device. Returns the entry: file, graph, precision,
    tensorrt_version, compute_capability ("9.0"), gpu_name, profile {input, min, opt, max},
    builder_optimization_level, onnx_sha256, built_utc (ISO 8601).

    Raises ValueError for bad arguments or a graph that does not fit them (checked before
    TensorRT is imported), :class:`~csi_export.trt_ops.UnsupportedOpsError` for ops the parser
    cannot import, :class:`TensorRTUnavailableError`, :class:`GPUUnavailableError`, and
    :class:`EngineBuildError` with TensorRT's own messages when parsing or building fails.
    """
    batch = _check_range("batch", batch)
    frames = _check_range("frames", frames)
    n_features = _check_positive_int("n_features", n_features)
    workspace_bytes = _check_positive_int("workspace_bytes", workspace_bytes)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if (
        not isinstance(optimization_level, int)
        or isinstance(optimization_level, bool)
        or optimization_level not in OPTIMIZATION_LEVELS
    ):
        raise ValueError(f"optimization_level must be an integer 0..5, got {optimization_level!r}")
    if not isinstance(input_name, str) or not input_name:
        raise ValueError(f"input_name must be a non-empty string, got {input_name!r}")
    entry_file = _check_entry_file(entry_file)
    if graph is None:
        graph = "encoder_fp16" if precision == "fp16" else "encoder"
    if not isinstance(onnx_sha256, str) or not _SHA256.fullmatch(onnx_sha256):
        raise ValueError(f"onnx_sha256 must be 64 lowercase hex digits, got {onnx_sha256!r}")
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path)
    cache_path = None if timing_cache_path is None else Path(timing_cache_path)
    if not onnx_path.is_file():
        raise ValueError(f"ONNX graph {onnx_path} does not exist or is not a file")
    if engine_path.is_dir():
        raise ValueError(f"engine_path {engine_path} is a folder; give the engine file's path")
    actual_sha = sha256_file(onnx_path)
    if actual_sha != onnx_sha256:
        raise ValueError(
            f"{onnx_path} has sha256 {actual_sha[:16]}…, not the {onnx_sha256[:16]}… given "
            "(the engine would be recorded against another graph)"
        )
    onnx = importlib.import_module("onnx")
    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:
        raise ValueError(f"{onnx_path} is not a readable ONNX model ({exc})") from exc
    _check_onnx_input(model, onnx_path, input_name, n_features, batch, frames)
    _check_precision(model, onnx_path, precision)
    check_tensorrt_ops(model, onnx_path.name)
    del model

    trt = import_tensorrt()
    device, cc, name = _query_gpu(None)
    trt_logger = make_trt_logger(trt, logger)
    builder, network, _parser = _parse(trt, onnx_path, trt_logger)
    if _network_has_half(trt, network) != (precision == "fp16"):
        raise EngineBuildError(
            f"TensorRT parsed {onnx_path.name} into a network "
            f"{'with' if precision == 'fp32' else 'without'} float16 layers, which a {precision} "
            "graph should not give"
        )

    shapes = {key: (b, n_features, t) for key, b, t in zip(("min", "opt", "max"), batch, frames, strict=True)}
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
    config = builder.create_builder_config()
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(f"TensorRT refused the optimisation profile {shapes} for {input_name!r}")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.builder_optimization_level = optimization_level
    _load_timing_cache(config, cache_path)

    logger.info(
        "building a %s TensorRT %s engine for %s on GPU %d (%s, sm_%d%d): batch %s, frames %s",
        precision, trt.__version__, onnx_path.name, device, name, *cc, batch, frames,
    )  # fmt: skip
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        listed = "\n  ".join(trt_logger.errors or ["(TensorRT gave no reason; see its log)"])
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path}:\n  {listed}")
    with atomic_open(engine_path, "wb") as fh:
        fh.write(memoryview(serialized))
    logger.info("wrote %s (%d bytes)", engine_path, engine_path.stat().st_size)
    if cache_path is not None:
        with atomic_open(cache_path, "wb") as fh:
            fh.write(memoryview(config.get_timing_cache().serialize()))

    return {
        "file": entry_file,
        "graph": graph,
        "precision": precision,
        "tensorrt_version": str(trt.__version__),
        "compute_capability": f"{cc[0]}.{cc[1]}",
        "gpu_name": name,
        "profile": {"input": input_name, **{key: list(shape) for key, shape in shapes.items()}},
        "builder_optimization_level": optimization_level,
        "onnx_sha256": onnx_sha256,
        "built_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
