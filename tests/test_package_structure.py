"""The shape of the kernels package: no import cycles between its modules (a leaf module holds what several
of them need), and each fused op's weights stated once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mobilevitv2_kernels"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (at module level or inside functions)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from pkg import sub" imports pkg.sub; "from pkg import name" imports pkg itself
                submodules = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [t for t in submodules if t in modules]
                if len(targets) < len(submodules):
                    targets.append(node.module)
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [node])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_no_import_cycles_in_the_kernels_package():
    graph = import_graph()
    # the package's __init__ imports the op modules; no module may import the package back
    assert not [m for m, targets in graph.items() if "mobilevitv2_kernels" in targets and m != "mobilevitv2_kernels"]
    graph.pop("mobilevitv2_kernels")
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_each_fused_op_states_its_weights_once():
    """The schemas of the fused ops are generated from the weight tuples the modules build, and the public
    wrappers take the tuple (or, as before, its tensors one by one)."""
    import torch

    import mobilevitv2_kernels as mk
    from mobilevitv2_kernels import reference
    from mobilevitv2_kernels.weights import AttentionWeights, InvertedResidualWeights, TransformerLayerWeights

    ops = torch.ops.mobilevitv2
    for op, weights in ((ops.transformer_layer, TransformerLayerWeights), (ops.linear_self_attention, AttentionWeights),
                        (ops.inverted_residual, InvertedResidualWeights)):  # fmt: skip
        names = [argument.name for argument in op.default._schema.arguments]
        assert names[1 : 1 + len(weights._fields)] == list(weights._fields), names

    d = 4
    x = torch.randn(1, d, 4, 5)
    attention = AttentionWeights(torch.randn(1 + 2 * d, d), torch.randn(1 + 2 * d), torch.randn(d, d), torch.randn(d))
    expected = reference.linear_self_attention_forward(x, attention)
    assert torch.equal(mk.linear_self_attention(x, attention, backend="reference"), expected)
    assert torch.equal(mk.linear_self_attention(x, *attention, backend="reference"), expected)
    assert torch.equal(mk.linear_self_attention(x, *attention, "reference"), expected)  # backend positional too
    with pytest.raises(TypeError, match="AttentionWeights or its 4 tensors"):
        mk.linear_self_attention(x, *attention[:3], backend="reference")
    with pytest.raises(TypeError, match="1 positional argument"):
        mk.linear_self_attention(x, attention, "reference", "junk")
    with pytest.raises(TypeError, match="w_out must be a tensor, got None"):
        mk.linear_self_attention(x, attention._replace(w_out=None), backend="reference")
