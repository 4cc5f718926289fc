"""A float16 variant of an encoder graph, for TensorRT (strongly typed) and GPU execution providers.

onnxconverter-common's converter turns float32 tensors and initializers into float16 and keeps the
graph's inputs and outputs float32 (``keep_io_types``), so callers feed the same features. Numerically
fragile ops stay float32 behind Cast nodes (:data:`FP32_OPS`): the per-clip peak normalisation
(ReduceMax, Div), GeM pooling (Clip, Pow, ReduceMean: x^p of an activation of 40 is 64000, at the edge
of float16's range of 65504) and the final L2 normalisation (ReduceL2, Div, Clip, Expand), whose
epsilon (1e-12) float16 cannot represent. Convolutions, ReLU, pooling and the projection run in float16.

A strongly typed TensorRT network takes these types as given, which is how TensorRT 10/11 builds
an fp16 engine now that the FP16 builder flag is deprecated (removed in 11).
"""

from __future__ import annotations

import warnings

import onnx

__all__ = ["FP32_OPS", "count_float16_tensors", "to_float16"]

FP32_OPS = (
    "ReduceMax",
    "Div",
    "Clip",
    "Pow",
    "ReduceMean",
    "ReduceL2",
    "Expand",
    "Sqrt",
    "ReduceSum",
    "Log",
    "Exp",
    "Softmax",
    "LayerNormalization",
    "ReduceSumSquare",
)


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float32 graph → float16 graph with float32 inputs/outputs and FP32_OPS kept in float32."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        # "the float32 number 1e-12 will be truncated to 1e-07": constants of the ops kept in float32
        # stay float32; the others are weights below float16's resolution, rounded as intended
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP32_OPS))
    _float32_outputs(converted)
    onnx.checker.check_model(converted, full_check=True)
    return converted


def _float32_outputs(model: onnx.ModelProto) -> None:
    """Make every float16 graph output float32 again, in place.

    onnxconverter-common 1.14-1.16 ends a graph whose last node is in the block list with a Cast to
    float16 even with keep_io_types; the Cast is dropped (the value it converts is float32 already)
    or, for a genuine float16 value, replaced by a Cast to float32.
    """
    graph = model.graph
    for output in graph.output:
        tensor_type = output.type.tensor_type
        if tensor_type.elem_type != onnx.TensorProto.FLOAT16:
            continue
        producer = next(n for n in graph.node if output.name in n.output)
        cast_to_half = producer.op_type == "Cast" and any(
            a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in producer.attribute
        )
        if cast_to_half:
            source = producer.input[0]
            graph.node.remove(producer)
            for node in graph.node:
                node.output[:] = [output.name if o == source else o for o in node.output]
                node.input[:] = [output.name if i == source else i for i in node.input]
        else:
            half_name = f"{output.name}_float16"
            producer.output[:] = [half_name if o == output.name else o for o in producer.output]
            graph.node.append(
                onnx.helper.make_node("Cast", [half_name], [output.name], to=onnx.TensorProto.FLOAT)
            )
        tensor_type.elem_type = onnx.TensorProto.FLOAT


def count_float16_tensors(model: onnx.ModelProto) -> int:
    """Initializers and typed values of element type float16 (0 for a pure float32 graph)."""
    fp16 = onnx.TensorProto.FLOAT16
    count = sum(1 for t in model.graph.initializer if t.data_type == fp16)
    values = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    count += sum(1 for v in values if v.type.tensor_type.elem_type == fp16)
    count += sum(
        1
        for n in model.graph.node
        for a in n.attribute
        if a.name == "to" and a.i == fp16 and n.op_type == "Cast"
    )
    return count
