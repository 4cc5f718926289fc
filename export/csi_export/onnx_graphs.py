"""torch modules → ONNX graphs: the frontend (waveform → features) and the encoder (features → embedding).

Exporter: ``torch.onnx.export(dynamo=True)`` on a strict ``torch.export.ExportedProgram`` with named
dynamic dims. It is torch's default and maintained exporter since 2.9 (the TorchScript exporter,
``dynamo=False``, is deprecated); exporting through a strict ``torch.export.export`` makes a shape
guard that would specialise a dynamic axis an export error instead of a silently fixed-size graph.
The opset is pinned (:data:`OPSET`) below the highest one the TensorRT ONNX parser we target accepts.

Why two graphs and not one: a stream's windows overlap (20 s windows every few seconds), so the
runtime computes frontend frames once per incoming chunk and re-uses them across windows; the encoder
graph then sees fixed-size windows, which is what a TensorRT profile is best at. A file costs one
extra session call, which is negligible next to the convolutions.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any

import onnx
import torch
from torch import nn

from csi_export.graph_passes import strip_debug_metadata

__all__ = ["EXPORTER", "OPSET", "Axis", "ExportError", "export_graph", "graph_summary"]

logger = logging.getLogger(__name__)

#: ONNX opset of every exported graph (the dynamo exporter needs ≥ 18; TensorRT 10.15 parses 9-24)
OPSET = 18
EXPORTER = "torch.onnx.export(dynamo=True)"
#: ops that must never appear: TensorRT's parser rejects STFT/DFT, and control flow defeats fixed profiles
FORBIDDEN_OPS = frozenset({"STFT", "DFT", "Loop", "If", "Scan"})


class ExportError(ValueError):
    """A model could not be exported, or the exported graph breaks the bundle's rules."""


@dataclass(frozen=True)
class Axis:
    """A dynamic axis: its name in the graph and the smallest size the model accepts on it."""

    name: str
    min: int = 1
    max: int | None = None


def _dim(axis: Axis) -> Any:
    # torch.export specialises axes it sees at size 0 or 1; a minimum of 1 is stated explicitly
    return (
        torch.export.Dim(axis.name, min=max(axis.min, 1), max=axis.max)
        if axis.max
        else torch.export.Dim(axis.name, min=max(axis.min, 1))
    )


def export_graph(
    module: nn.Module,
    example: torch.Tensor,
    input_name: str,
    output_name: str,
    axes: dict[int, Axis],
    opset: int = OPSET,
) -> onnx.ModelProto:
    """Export ``module`` (one tensor in, one out) with the given dynamic axes of its input.

    ``example`` must be larger than 1 on every dynamic axis. The graph's symbolic sizes are renamed
    to the axis names (torch calls them s0, s1, …), so ``features`` of a frontend reads
    ``[batch, 84, ((n//640)) + 1]``-style formulas.
    """
    module = module.eval()
    for index, axis in axes.items():
        if example.shape[index] < 2:
            raise ExportError(f"the example input needs size ≥ 2 on dynamic axis {axis.name!r}")
    dims = {index: _dim(axis) for index, axis in axes.items()}
    # the exporter warns once per torchvision op that torchvision is absent (we use none of them)
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    previous_level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            program = torch.export.export(module, (example,), dynamic_shapes=(dims,), strict=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter progress chatter
            onnx_program = torch.onnx.export(
                program,
                input_names=[input_name],
                output_names=[output_name],
                dynamo=True,
                opset_version=opset,
                verbose=False,
            )
    except ExportError:
        raise
    except Exception as exc:  # torch.export raises many types (guards, unsupported ops, …)
        raise ExportError(f"torch could not export {type(module).__name__}: {exc}") from exc
    finally:
        registration_log.setLevel(previous_level)
    if onnx_program is None:
        raise ExportError(f"torch.onnx.export returned no program for {type(module).__name__}")
    model = onnx_program.model_proto
    _rename_symbols(program, model, input_name, axes)
    strip_debug_metadata(model)
    model.doc_string = f"csi {type(module).__name__} exported with {EXPORTER}, torch {torch.__version__}"
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported {type(module).__name__} graph fails onnx.checker: {exc}") from exc
    forbidden = sorted({n.op_type for n in model.graph.node} & FORBIDDEN_OPS)
    if forbidden:
        raise ExportError(
            f"the exported {type(module).__name__} graph uses forbidden ops: {', '.join(forbidden)}"
        )
    return model


def _rename_symbols(program: Any, model: onnx.ModelProto, input_name: str, axes: dict[int, Axis]) -> None:
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name == input_name]
    if not placeholders:
        return
    shape = placeholders[0].meta["val"].shape
    renames = {str(shape[index]): axis.name for index, axis in axes.items()}
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = re.sub(
                    r"\bs\d+\b", lambda m: renames.get(m.group(0), m.group(0)), dim.dim_param
                )


def _shape(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def graph_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Input/output names, dtypes and shapes (symbolic sizes as names), opset, op histogram."""

    def describe(value: onnx.ValueInfoProto) -> dict[str, Any]:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        return {"name": value.name, "dtype": str(dtype), "shape": _shape(value)}

    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "inputs": [describe(v) for v in model.graph.input],
        "outputs": [describe(v) for v in model.graph.output],
        "opset": opset,
        "ops": dict(sorted(ops.items())),
    }
