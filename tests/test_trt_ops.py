"""csi_export.trt_ops: counting a graph's ops (local functions inlined, subgraphs included) and
checking them against TensorRT's ONNX parser support list. Runs without TensorRT.

Counts are checked against hand-counted truth and, on random graphs, against onnx's own inliner
(onnx.inliner.inline_local_functions) followed by a plain walk of the inlined graph.
"""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is in the dev extra")
from onnx import TensorProto, helper, inliner  # noqa: E402

from csi_export import trt_ops  # noqa: E402
from csi_export.trt_ops import (  # noqa: E402
    MAX_OPSET,
    OP_RESTRICTIONS,
    SUPPORTED_OPS,
    UNSUPPORTED_OPS,
    UnsupportedOpsError,
    check_tensorrt_ops,
    graph_ops,
    unsupported_ops,
)

FN = "local.fn"  # domain of the test models' local functions
UNARY = ["Relu", "Neg", "Abs", "Sigmoid", "Exp", "Tanh", "Identity", "Softsign"]


def _value(name: str, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, ["n"])


def _model(
    graph: onnx.GraphProto,
    functions: list[onnx.FunctionProto] = (),  # type: ignore[assignment]
    opset: int = 18,
    extra_domains: tuple[str, ...] = ("my.ops",),
) -> onnx.ModelProto:
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(FN, 1)]
    imports += [helper.make_opsetid(d, 1) for d in extra_domains]
    return helper.make_model(graph, opset_imports=imports, functions=list(functions))


def _gem_function() -> onnx.FunctionProto:
    """GeM pooling as a local function: Constant, Clip, Pow, ReduceMean, Reciprocal, Pow."""
    nodes = [
        helper.make_node("Constant", [], ["p"], value=helper.make_tensor("pv", TensorProto.FLOAT, [], [3.0])),
        helper.make_node("Clip", ["x", "eps"], ["c"]),
        helper.make_node("Pow", ["c", "p"], ["cp"]),
        helper.make_node("ReduceMean", ["cp"], ["m"], keepdims=0),
        helper.make_node("Reciprocal", ["p"], ["inv"]),
        helper.make_node("Pow", ["m", "inv"], ["y"]),
    ]
    return helper.make_function(FN, "Gem", ["x", "eps"], ["y"], nodes, [helper.make_opsetid("", 18)])


def _outer_function() -> onnx.FunctionProto:
    """Calls Gem, then Relu: a function calling a function."""
    nodes = [
        helper.make_node("Gem", ["x", "eps"], ["g"], domain=FN),
        helper.make_node("Relu", ["g"], ["y"]),
    ]
    return helper.make_function(
        FN, "Outer", ["x", "eps"], ["y"], nodes, [helper.make_opsetid("", 18), helper.make_opsetid(FN, 1)]
    )


def _unused_function() -> onnx.FunctionProto:
    nodes = [helper.make_node("DFT", ["x"], ["y"])]
    return helper.make_function(FN, "Unused", ["x"], ["y"], nodes, [helper.make_opsetid("", 18)])


def hand_counted_model() -> tuple[onnx.ModelProto, dict[tuple[str, str], int]]:
    """A graph with a twice-called local function, a function calling it, an uncalled function, an
    If whose then-branch calls the function, and a custom-domain op; with its op counts by hand."""
    then_branch = helper.make_graph(
        [
            helper.make_node("Gem", ["r", "eps"], ["t1"], domain=FN),
            helper.make_node("Neg", ["t1"], ["t_out"]),
        ],
        "then",
        [],
        [_value("t_out")],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Abs", ["r"], ["e_out"])], "else", [], [_value("e_out")]
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Gem", ["r", "eps"], ["g1"], domain=FN),
        helper.make_node("Gem", ["r", "eps"], ["g2"], domain=FN),
        helper.make_node("Outer", ["r", "eps"], ["o"], domain=FN),
        helper.make_node("If", ["cond"], ["i"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Fancy", ["o"], ["f"], domain="my.ops"),
        helper.make_node("Sum", ["g1", "g2", "i", "f"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "main",
        [_value("x"), _value("eps"), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [_value("y")],
    )
    model = _model(graph, [_gem_function(), _outer_function(), _unused_function()])
    gem_calls = 4  # two direct, one through Outer, one in the If's then-branch
    truth = {
        ("", "Relu"): 2,  # main + Outer
        ("", "Constant"): gem_calls,
        ("", "Clip"): gem_calls,
        ("", "Pow"): 2 * gem_calls,
        ("", "ReduceMean"): gem_calls,
        ("", "Reciprocal"): gem_calls,
        ("", "If"): 1,
        ("", "Neg"): 1,
        ("", "Abs"): 1,
        ("", "Sum"): 1,
        ("my.ops", "Fancy"): 1,
    }
    return model, truth


def reference_ops(model: onnx.ModelProto) -> collections.Counter[tuple[str, str]]:
    """Independent count: onnx's inliner removes the local functions, then a plain graph walk."""
    inlined = inliner.inline_local_functions(model)
    counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            counts[("" if node.domain == "ai.onnx" else node.domain, node.op_type)] += 1
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    walk(sub)

    walk(inlined.graph)
    return counts


def test_hand_counted_graph() -> None:
    model, truth = hand_counted_model()
    onnx.checker.check_model(model)
    assert dict(graph_ops(model)) == truth
    assert dict(reference_ops(model)) == truth  # the hand count agrees with onnx's inliner
    assert ("", "DFT") not in graph_ops(model)  # only in a function nobody calls
    assert (FN, "Gem") not in graph_ops(model)  # calls are replaced by their bodies


def test_unsupported_ops_names_custom_domains_and_counts() -> None:
    model, _ = hand_counted_model()
    assert unsupported_ops(model) == {"my.ops::Fancy": 1}
    with pytest.raises(UnsupportedOpsError, match=r"my\.ops::Fancy ×1 \(custom domain 'my\.ops'") as err:
        check_tensorrt_ops(model, "encoder.onnx")
    assert err.value.ops == {"my.ops::Fancy": 1}
    assert err.value.opset is None
    assert str(err.value).startswith("encoder.onnx: ")
    assert isinstance(err.value, ValueError)


def _chain_model(ops: list[tuple[str, str]], opset: int = 18) -> onnx.ModelProto:
    """x → op → op → … → y, every op unary."""
    names = ["x"] + [f"t{i}" for i in range(len(ops))]
    nodes = [helper.make_node(op, [names[i]], [names[i + 1]], domain=d) for i, (d, op) in enumerate(ops)]
    graph = helper.make_graph(nodes, "chain", [_value("x")], [_value(names[-1])])
    return _model(graph, opset=opset, extra_domains=("my.ops", "com.microsoft"))


def test_every_unsupported_op_is_named_with_its_count() -> None:
    ops = [("", "Relu"), ("", "DFT"), ("", "DFT"), ("", "Unique"), ("", "Swish"), ("ai.onnx", "Neg")]
    ops += [("com.microsoft", "FusedGemm"), ("", "DFT")]
    model = _chain_model(ops)
    assert unsupported_ops(model) == {"DFT": 3, "Swish": 1, "Unique": 1, "com.microsoft::FusedGemm": 1}
    assert list(unsupported_ops(model)) == ["DFT", "Swish", "Unique", "com.microsoft::FusedGemm"]
    with pytest.raises(UnsupportedOpsError) as err:
        check_tensorrt_ops(model, "encoder.onnx")
    message = str(err.value)
    assert "DFT ×3 (listed as unsupported)" in message
    assert "Unique ×1 (listed as unsupported)" in message
    assert "Swish ×1 (not in the parser's support list)" in message  # newer than the list
    assert "com.microsoft::FusedGemm ×1 (custom domain 'com.microsoft'" in message
    assert "Relu" not in message and "Neg" not in message  # "ai.onnx" is the default domain


def test_unsupported_ops_inside_subgraphs_and_functions_are_found() -> None:
    body = helper.make_graph(
        [helper.make_node("DFT", ["v"], ["w"]), helper.make_node("Relu", ["w"], ["out"])],
        "body",
        [],
        [_value("out")],
    )
    fn = helper.make_function(
        FN,
        "Spectral",
        ["x"],
        ["y"],
        [helper.make_node("STFT", ["x", "step"], ["y"])],
        [helper.make_opsetid("", 18)],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["v"]),
        helper.make_node("If", ["cond"], ["i"], then_branch=body, else_branch=body),
        helper.make_node("Spectral", ["i"], ["y"], domain=FN),
    ]
    graph = helper.make_graph(
        nodes, "g", [_value("x"), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], [_value("y")]
    )
    model = _model(graph, [fn])
    assert graph_ops(model)[("", "DFT")] == 2  # once per branch
    # STFT is supported since TensorRT 10.5 (real input; frame_step and window initializers)
    assert unsupported_ops(model) == {"DFT": 2}


def test_opset_above_the_parser_range_is_refused() -> None:
    assert check_tensorrt_ops(_chain_model([("", "Relu")], opset=MAX_OPSET), "ok.onnx") is None
    with pytest.raises(UnsupportedOpsError, match=rf"opset {MAX_OPSET + 1} is outside") as err:
        check_tensorrt_ops(_chain_model([("", "Relu")], opset=MAX_OPSET + 1), "new.onnx")
    assert err.value.opset == MAX_OPSET + 1 and err.value.ops == {}
    with pytest.raises(UnsupportedOpsError, match=r"opset 8 is outside"):
        check_tensorrt_ops(_chain_model([("", "Relu")], opset=8), "old.onnx")
    # both problems in one message
    with pytest.raises(UnsupportedOpsError, match=r"DFT ×1 .*; opset 25 is outside"):
        check_tensorrt_ops(_chain_model([("", "DFT")], opset=25), "both.onnx")


def test_an_opset_imported_by_a_local_function_counts() -> None:
    fn = helper.make_function(
        FN,
        "F",
        ["x"],
        ["y"],
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_opsetid("", MAX_OPSET + 2)],
    )
    graph = helper.make_graph(
        [helper.make_node("F", ["x"], ["y"], domain=FN)], "g", [_value("x")], [_value("y")]
    )
    with pytest.raises(UnsupportedOpsError, match=rf"opset {MAX_OPSET + 2}"):
        check_tensorrt_ops(_model(graph, [fn]), "f.onnx")


def test_recursive_local_functions_are_refused() -> None:
    ping = helper.make_function(
        FN, "Ping", ["x"], ["y"], [helper.make_node("Pong", ["x"], ["y"], domain=FN)], []
    )
    pong = helper.make_function(
        FN, "Pong", ["x"], ["y"], [helper.make_node("Ping", ["x"], ["y"], domain=FN)], []
    )
    graph = helper.make_graph(
        [helper.make_node("Ping", ["x"], ["y"], domain=FN)], "g", [_value("x")], [_value("y")]
    )
    with pytest.raises(
        ValueError, match=r"recursively: local\.fn::Ping -> local\.fn::Pong -> local\.fn::Ping"
    ):
        graph_ops(_model(graph, [ping, pong]))


def _random_model(rng: np.random.Generator) -> onnx.ModelProto:
    """Random unary chains: local functions calling earlier ones, a main graph calling them, an If
    whose branches call them, and a few custom-domain ops."""
    functions: list[onnx.FunctionProto] = []

    def chain(
        prefix: str, source: str, length: int, callable_: list[str]
    ) -> tuple[list[onnx.NodeProto], str]:
        nodes, current = [], source
        for i in range(length):
            out = f"{prefix}{i}"
            roll = rng.random()
            if callable_ and roll < 0.3:
                nodes.append(helper.make_node(str(rng.choice(callable_)), [current], [out], domain=FN))
            elif roll < 0.4:
                nodes.append(helper.make_node("Fancy", [current], [out], domain="my.ops"))
            else:
                nodes.append(helper.make_node(str(rng.choice(UNARY)), [current], [out]))
            current = out
        return nodes, current

    for k in range(int(rng.integers(1, 5))):
        body, last = chain(f"f{k}_", "x", int(rng.integers(1, 6)), [f.name for f in functions])
        body.append(helper.make_node("Identity", [last], ["y"]))
        imports = [helper.make_opsetid("", 18), helper.make_opsetid(FN, 1), helper.make_opsetid("my.ops", 1)]
        functions.append(helper.make_function(FN, f"F{k}", ["x"], ["y"], body, imports))
    names = [f.name for f in functions]
    main, last = chain("m", "x", int(rng.integers(1, 8)), names)
    branches = []
    for side in ("then", "else"):
        nodes, out = chain(f"{side}_", last, int(rng.integers(1, 5)), names)
        nodes.append(helper.make_node("Identity", [out], [f"{side}_out"]))
        branches.append(helper.make_graph(nodes, side, [], [_value(f"{side}_out")]))
    main.append(helper.make_node("If", ["cond"], ["y"], then_branch=branches[0], else_branch=branches[1]))
    graph = helper.make_graph(
        main,
        "main",
        [_value("x"), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [_value("y")],
    )
    return _model(graph, functions)


def test_random_graphs_match_onnx_inliner(rng: np.random.Generator) -> None:
    for _ in range(25):
        model = _random_model(rng)
        expected = reference_ops(model)
        assert graph_ops(model) == expected
        custom = expected[("my.ops", "Fancy")]
        assert unsupported_ops(model) == ({"my.ops::Fancy": custom} if custom else {})


def test_support_list_sanity() -> None:
    common = {
        "Conv", "Relu", "MatMul", "Gemm", "BatchNormalization", "Add", "Mul", "Div", "Sub", "Pow",
        "Sqrt", "ReduceMean", "ReduceL2", "ReduceSum", "Clip", "Max", "Min", "Reshape", "Transpose",
        "Concat", "Slice", "Gather", "Unsqueeze", "Squeeze", "Cast", "Constant", "Shape", "Softmax",
        "LayerNormalization", "Expand", "Pad", "AveragePool", "MaxPool", "Sigmoid", "Tanh", "Erf", "Where",
        "If", "Loop",
    }  # fmt: skip
    assert common <= SUPPORTED_OPS
    # rows the 10.15 matrix marks "N"
    for op in ("DFT", "Unique", "SequenceAt", "MatMulInteger", "ConvInteger", "Col2Im", "MelWeightMatrix"):
        assert op in UNSUPPORTED_OPS and op not in SUPPORTED_OPS
    assert not SUPPORTED_OPS & UNSUPPORTED_OPS
    # STFT became supported in 10.5 with restrictions; the restriction is kept
    assert "STFT" in SUPPORTED_OPS and "initializer" in OP_RESTRICTIONS["STFT"]
    assert set(OP_RESTRICTIONS) <= SUPPORTED_OPS
    # every name is a real ONNX op (catches transcription typos), bar three legacy experimental ops
    legacy = {"ImageScaler", "ParametricSoftplus", "ScaledTanh"}
    assert all(onnx.defs.has(op) for op in (SUPPORTED_OPS | UNSUPPORTED_OPS) - legacy)
    assert trt_ops.TRT_TARGET == "10.x" and trt_ops.MIN_OPSET == 9 and MAX_OPSET == 24


torch = pytest.importorskip("torch")


class TinyEncoder(torch.nn.Module):
    """features [B, F, T] → Conv2d, BatchNorm, ReLU, GeM over (F, T), Linear, L2-normalise → [B, D]."""

    def __init__(self, channels: int = 8, dim: int = 16) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.bn = torch.nn.BatchNorm2d(channels)
        self.p = torch.nn.Parameter(torch.tensor(3.0))
        self.fc = torch.nn.Linear(channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x.unsqueeze(1))))
        h = h.clamp(min=1e-6).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)
        return torch.nn.functional.normalize(self.fc(h), dim=-1)


def test_a_torch_dynamo_export_passes_the_check() -> None:
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module = TinyEncoder().eval()
        dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("frames", min=4)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (torch.zeros(2, 12, 20),),
                dynamo=True,
                input_names=["features"],
                output_names=["embedding"],
                dynamic_shapes=(dims,),
                verbose=False,
            )
    finally:
        torch.set_num_threads(previous)
    assert program is not None
    model = program.model_proto
    counts = graph_ops(model)
    assert counts[("", "Conv")] == 1
    assert counts[("", "Pow")] >= 2  # GeM's two powers
    assert counts[("", "Gemm")] + counts[("", "MatMul")] == 1  # the Linear (BatchNorm folds into Conv)
    check_tensorrt_ops(model, "encoder.onnx")  # raises if anything is off the list
    assert unsupported_ops(model) == {}
    assert graph_ops(model) == reference_ops(model)


def test_axes_computed_at_run_time_are_refused() -> None:
    """TensorRT's parser needs reduction axes as constants; a graph that computes them is refused."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    const_axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("ReduceMax", ["x", "axes"], ["m"], name="fixed"),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["computed"]),
        helper.make_node("ReduceSum", ["m", "computed"], ["y"], name="computed_axes"),
    ]
    inits = [const_axes, helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
             helper.make_tensor("one", TensorProto.INT64, [1], [1])]  # fmt: skip
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 18)]
    )
    assert trt_ops.non_constant_axes(model) == ["ReduceSum (computed_axes)"]
    with pytest.raises(
        trt_ops.UnsupportedOpsError, match=r"axes computed at run time.*ReduceSum \(computed_axes\)"
    ):
        trt_ops.check_tensorrt_ops(model, "g")
