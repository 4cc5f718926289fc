"""Rewrites of exported graphs that torch.export cannot express directly.

``ceil_max_pool``: CQTNet's time pooling is written in torch as "repeat the last step, then floor
max pooling" (``TimeMaxPool2``) because torch.export cannot prove the output size of a ceil-mode
pooling for every length. In the graph that becomes Slice → Concat → MaxPool, which copies every
activation map once more; ONNX's MaxPool has ``ceil_mode`` and computes the same values directly
(tested equal; 10-20% faster on onnxruntime CPU at batch 16). TensorRT's parser supports
``ceil_mode`` too.

``strip_debug_metadata``: the exporter annotates every node and value with debugging metadata
(Python stack traces with absolute source paths and line numbers, FX node reprs). The bundle's
model id is a hash of the graph bytes, so with them the same checkpoint exported from another
checkout, or after an unrelated edit that moved a line, got another id, and indexes built with it
were refused. Without them the bytes depend on the computation and its names only.
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper

__all__ = ["ceil_max_pool", "drop_unused_initializers", "strip_debug_metadata"]


def strip_debug_metadata(model: onnx.ModelProto) -> int:
    """In place: remove the metadata of every node and value of the main graph (the model's own
    metadata stays). Returns the number of entries removed."""
    graph = model.graph
    removed = 0
    for item in [*graph.node, *graph.value_info, *graph.input, *graph.output, *graph.initializer]:
        removed += len(item.metadata_props)
        del item.metadata_props[:]
    return removed


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def ceil_max_pool(model: onnx.ModelProto) -> int:
    """In place: MaxPool(Concat([x, Slice(x)])) with a (1, 2) kernel and stride → MaxPool(x, ceil_mode=1).

    Only the exact pattern is rewritten: the Slice takes the last step of x along the pooled (last)
    axis and the Concat appends it on that axis. Returns the number of rewrites.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    initial = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    dead: set[int] = set()
    rewrites = 0
    for index, node in enumerate(graph.node):
        if node.op_type != "MaxPool" or len(node.input) != 1:
            continue
        attrs = _attrs(node)
        if attrs.get("kernel_shape") != [1, 2] or attrs.get("strides") != [1, 2] or attrs.get("ceil_mode", 0):
            continue
        concat = producer.get(node.input[0])
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
            continue
        x, last = concat.input
        slice_ = producer.get(last)
        if slice_ is None or slice_.op_type != "Slice" or slice_.input[0] != x:
            continue
        if _attrs(concat).get("axis") not in (-1, 3) or not _is_last_step(slice_, initial):
            continue
        if consumers.get(concat.output[0], 0) != 1 or consumers.get(slice_.output[0], 0) != 1:
            continue
        attrs["ceil_mode"] = 1
        graph.node[index].CopyFrom(
            helper.make_node("MaxPool", [x], list(node.output), name=node.name, **attrs)
        )
        dead |= {id(concat), id(slice_)}
        rewrites += 1
    kept = [n for n in graph.node if id(n) not in dead]
    del graph.node[:]
    graph.node.extend(kept)
    drop_unused_initializers(model)
    return rewrites


def _is_last_step(slice_: onnx.NodeProto, initial: dict[str, onnx.TensorProto]) -> bool:
    """Slice(x, starts=[-1], ends=[big], axes=[-1 or 3]) with constant inputs."""
    from onnx import numpy_helper

    if len(slice_.input) < 4 or any(name not in initial for name in slice_.input[1:4]):
        return False
    starts, ends, axes = (numpy_helper.to_array(initial[n]).tolist() for n in slice_.input[1:4])
    steps = numpy_helper.to_array(initial[slice_.input[4]]).tolist() if len(slice_.input) > 4 else [1]
    return starts == [-1] and len(ends) == 1 and ends[0] >= 2**31 - 1 and axes in ([-1], [3]) and steps == [1]


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
