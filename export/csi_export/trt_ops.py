"""Which ONNX operators TensorRT's ONNX parser imports, and a check of a graph against that list.

The lists below transcribe the operator support matrix of the ONNX-TensorRT parser as documented
for the TensorRT 10.15 GA release (2026-02-02): onnx-tensorrt ``docs/operators.md``,
https://github.com/onnx/onnx-tensorrt/blob/release/10.15-GA/docs/operators.md ("TensorRT 10.15
supports operators in the inclusive range of opset 9 to opset 24"). Rows marked ``Y`` are in
:data:`SUPPORTED_OPS`, rows marked ``N`` in :data:`UNSUPPORTED_OPS`; an operator in neither list
(e.g. an op added to ONNX after that release) is treated as unsupported. The "Restrictions" column
is kept, shortened, in :data:`OP_RESTRICTIONS`: a graph using such an op may still fail to parse,
which the parser itself reports when the engine is built.

Running this check before building an engine turns "the parser failed on node 812" into a list of
every offending op with its count, and runs without TensorRT or a GPU (e.g. at export time).
Ops outside the default ONNX domain (custom ops) are never in the list: TensorRT only imports them
through a plugin registered under that name, which csi does not ship.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Iterator

import onnx

__all__ = [
    "MAX_OPSET",
    "MIN_OPSET",
    "OPERATORS_URL",
    "OP_RESTRICTIONS",
    "SUPPORTED_OPS",
    "TRT_OPS_RELEASE",
    "TRT_TARGET",
    "UNSUPPORTED_OPS",
    "UnsupportedOpsError",
    "check_tensorrt_ops",
    "graph_ops",
    "opset_version",
    "unsupported_ops",
]

logger = logging.getLogger(__name__)

#: the TensorRT major line this module targets
TRT_TARGET = "10.x"
#: the TensorRT release whose parser support matrix is transcribed below
TRT_OPS_RELEASE = "10.15"
OPERATORS_URL = "https://github.com/onnx/onnx-tensorrt/blob/release/10.15-GA/docs/operators.md"
#: the parser's inclusive opset range (default ONNX domain)
MIN_OPSET = 9
MAX_OPSET = 24

#: default-domain ops the parser lists as supported ("Y")
SUPPORTED_OPS: frozenset[str] = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh",
    "Attention", "AveragePool", "BatchNormalization", "BlackmanWindow", "Cast", "CastLike", "Ceil",
    "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh",
    "CumSum", "DeformConv", "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu",
    "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather", "GatherElements",
    "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater",
    "GreaterOrEqual", "GridSample", "GroupNormalization", "GRU", "HammingWindow", "HannWindow",
    "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If", "ImageScaler", "InstanceNormalization",
    "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax",
    "Loop", "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean",
    "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero",
    "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear",
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range", "Reciprocal",
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence",
    "RMSNormalization", "RNN", "RoiAlign", "RotaryEmbedding", "Round", "STFT", "ScaledTanh", "Scan",
    "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin",
    "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt",
    "Squeeze", "Sub", "Sum", "Tan", "Tanh", "TensorScatter", "ThresholdedRelu", "Tile", "TopK",
    "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor"
})  # fmt: skip

#: default-domain ops the parser lists as unsupported ("N")
UNSUPPORTED_OPS: frozenset[str] = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor",
    "CenterCropPad", "Col2Im", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
    "DynamicQuantizeLinear", "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
    "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement",
    "OptionalHasElement", "QLinearConv", "QLinearMatMul", "RegexFullMatch", "SequenceAt",
    "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
    "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat", "StringNormalizer",
    "StringSplit", "TfIdfVectorizer", "Unique"
})  # fmt: skip

#: restrictions the support matrix states for supported ops (a graph may still fail on these)
OP_RESTRICTIONS: dict[str, str] = {
    "Attention": "Q, K, V and attn_mask 4-D; no past_key/past_value/nonpad_kv_seqlen inputs, no "
    "present_key/present_value/qk_matmul_output outputs, no qk_matmul_output_mode or softcap",
    "AveragePool": "2-D or 3-D pooling only; dilations empty or all ones",
    "Constant": "sparse_value, value_string and value_strings attributes unsupported",
    "CumSum": "axis must be a build-time constant",
    "DeformConv": "1-D or 2-D spatial input; begin and end pads equal on each axis",
    "DequantizeLinear": "x_zero_point must be zero",
    "Dropout": "is_training must be an initializer evaluating to False",
    "EyeLike": "input must have static dimensions",
    "GRU": "bidirectional GRUs need the same activations in both directions",
    "GridSample": "4-D input only",
    "Hardmax": "the axis dimension must be a build-time constant",
    "If": "both branches' outputs must have the same rank and different names",
    "LSTM": "bidirectional LSTMs need the same activations in both directions; input_forget=0; layout=0",
    "LayerNormalization": "only the first output Y",
    "Loop": "scan outputs cannot have a dynamic length; loop-carried shapes fixed across iterations",
    "LpPool": "dilations empty or all ones",
    "MaxPool": "2-D or 3-D pooling only; no Indices output; dilations empty or all ones",
    "OneHot": "depth must be a build-time constant",
    "QuantizeLinear": "y_zero_point must be 0",
    "RNN": "bidirectional RNNs need the same activations in both directions",
    "RandomNormal": "seed is ignored",
    "RandomNormalLike": "seed is ignored",
    "RandomUniform": "seed is ignored",
    "RandomUniformLike": "seed is ignored",
    **{
        op: "axes must be an initializer"
        for op in (
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "ReduceProd",
            "ReduceSum",
            "ReduceSumSquare",
        )
    },
    "Resize": "coordinate modes half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, asymmetric, "
    "align_corners; modes nearest, linear; aspect ratio policy stretch; no antialiasing",
    "RotaryEmbedding": "position_ids must be INT64",
    "STFT": "real-valued FP32 input; frame_step and window must be initializers",
    "ScatterND": "reduction must be none",
    "Squeeze": "axes must be resolvable to a constant",
    "TensorScatter": "past_cache and update 4-D; axis must be -2",
    "TopK": "sorted must be 1; K below 3840",
    "Unsqueeze": "axes must be resolvable to a constant",
}

_DEFAULT_DOMAINS = ("", "ai.onnx")
#: how deeply local functions may call each other before the graph is called recursive
_MAX_CALL_DEPTH = 64


class UnsupportedOpsError(ValueError):
    """A graph uses ops (or an opset) that TensorRT's ONNX parser does not import.

    ``ops`` maps each unsupported op ("Op", or "domain::Op" outside the default domain) to the
    number of nodes using it; ``opset`` is the graph's default-domain opset when it is outside the
    parser's range, else None.
    """

    def __init__(self, message: str, ops: dict[str, int], opset: int | None) -> None:
        super().__init__(message)
        self.ops = ops
        self.opset = opset


def _domain(domain: str) -> str:
    """The domain, with the default ONNX domain ("" or "ai.onnx") spelled ""."""
    return "" if domain in _DEFAULT_DOMAINS else domain


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held by a node's attributes (If branches, Loop and Scan bodies)."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


_FunctionKey = tuple[str, str, str]


def _count_nodes(
    nodes: Iterable[onnx.NodeProto],
    functions: dict[_FunctionKey, onnx.FunctionProto],
    counts: collections.Counter[tuple[str, str]],
    call_stack: tuple[_FunctionKey, ...],
) -> None:
    for node in nodes:
        key = (_domain(node.domain), node.op_type, node.overload)
        function = functions.get(key)
        if function is not None:
            if key in call_stack or len(call_stack) >= _MAX_CALL_DEPTH:
                chain = " -> ".join(f"{d}::{n}" for d, n, _ in (*call_stack, key))
                raise ValueError(f"local functions call each other recursively: {chain}")
            _count_nodes(function.node, functions, counts, (*call_stack, key))
            continue
        counts[(key[0], node.op_type)] += 1
        for graph in _subgraphs(node):
            _count_nodes(graph.node, functions, counts, call_stack)


def graph_ops(model: onnx.ModelProto) -> collections.Counter[tuple[str, str]]:
    """Count of (domain, op_type) over every node the parser would import.

    Covers the main graph, subgraphs at any depth (If branches, Loop and Scan bodies; the If, Loop
    or Scan node itself counts too) and model-local functions: a call to a local function is
    replaced by its body's ops, once per call (functions may call functions). Functions that are
    never called contribute nothing. The default domain is reported as "" whether the model spells
    it "" or "ai.onnx". Raises ValueError for local functions that call each other recursively.
    """
    functions: dict[_FunctionKey, onnx.FunctionProto] = {
        (_domain(f.domain), f.name, f.overload): f for f in model.functions
    }
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    _count_nodes(model.graph.node, functions, counts, ())
    return counts


def _op_name(domain: str, op_type: str) -> str:
    return op_type if domain == "" else f"{domain}::{op_type}"


def unsupported_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Ops the parser cannot import, with their node counts, most frequent first.

    Named "Op" in the default domain and "domain::Op" elsewhere; every op outside the default
    domain is unsupported (it would need a TensorRT plugin).
    """
    bad = {
        _op_name(domain, op_type): n
        for (domain, op_type), n in graph_ops(model).items()
        if domain != "" or op_type not in SUPPORTED_OPS
    }
    return dict(sorted(bad.items(), key=lambda item: (-item[1], item[0])))


def opset_version(model: onnx.ModelProto) -> int | None:
    """Highest default-domain opset imported by the model or any of its local functions."""
    versions = [
        entry.version
        for opsets in (model.opset_import, *(f.opset_import for f in model.functions))
        for entry in opsets
        if _domain(entry.domain) == ""
    ]
    return max(versions) if versions else None


def _why_unsupported(name: str) -> str:
    if "::" in name:
        return f"custom domain {name.split('::', 1)[0]!r}, needs a TensorRT plugin"
    if name in UNSUPPORTED_OPS:
        return "listed as unsupported"
    return "not in the parser's support list"


def check_tensorrt_ops(model: onnx.ModelProto, what: str) -> None:
    """Raise :class:`UnsupportedOpsError` if TensorRT's ONNX parser cannot import ``model``.

    The message names every unsupported op with its node count and why (listed as unsupported,
    absent from the list, or a custom domain), plus a default-domain opset outside
    [MIN_OPSET, MAX_OPSET]. ``what`` names the graph in the message (e.g. "encoder.onnx").
    Also refuses reductions and (un)squeezes whose ``axes`` input is computed at run time (the
    one restriction of the list that our graphs could break and that is checkable statically); other
    restrictions are logged at DEBUG level.
    """
    bad = unsupported_ops(model)
    opset = opset_version(model)
    problems = []
    dynamic_axes = non_constant_axes(model)
    if dynamic_axes:
        problems.append(
            "axes computed at run time (TensorRT needs them as initializers or constants): "
            + ", ".join(dynamic_axes)
        )
    if bad:
        listed = ", ".join(f"{name} ×{n} ({_why_unsupported(name)})" for name, n in bad.items())
        problems.append(f"unsupported ops: {listed}")
    opset_problem = None
    if opset is not None and not MIN_OPSET <= opset <= MAX_OPSET:
        opset_problem = opset
        problems.append(
            f"opset {opset} is outside the parser's range {MIN_OPSET}..{MAX_OPSET} "
            f"(re-export with opset_version={min(max(opset, MIN_OPSET), MAX_OPSET)})"
        )
    if problems:
        raise UnsupportedOpsError(
            f"{what}: TensorRT {TRT_OPS_RELEASE}'s ONNX parser cannot import this graph: "
            + "; ".join(problems)
            + f" (support list: {OPERATORS_URL})",
            ops=bad,
            opset=opset_problem,
        )
    restricted = sorted(
        op for (domain, op), _ in graph_ops(model).items() if domain == "" and op in OP_RESTRICTIONS
    )
    if restricted:
        logger.debug(
            "%s uses ops TensorRT supports with restrictions: %s",
            what,
            "; ".join(f"{op}: {OP_RESTRICTIONS[op]}" for op in restricted),
        )


#: ops whose second input is ``axes`` and must be a constant for TensorRT's parser (opset ≥ 13/18)
AXES_INPUT_OPS = frozenset(
    {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
     "ReduceProd", "ReduceSum", "ReduceSumSquare", "Squeeze", "Unsqueeze"}
)  # fmt: skip


def non_constant_axes(model: onnx.ModelProto) -> list[str]:
    """Nodes of the main graph whose ``axes`` input is neither an initializer nor a Constant's output,
    as "op_type (node name)"."""
    graph = model.graph
    constant = {i.name for i in graph.initializer} | {
        out for n in graph.node if n.op_type == "Constant" for out in n.output
    }
    return [
        f"{n.op_type} ({n.name or n.output[0]})"
        for n in graph.node
        if n.domain in ("", "ai.onnx") and n.op_type in AXES_INPUT_OPS and len(n.input) > 1
        and n.input[1] and n.input[1] not in constant
    ]  # fmt: skip
