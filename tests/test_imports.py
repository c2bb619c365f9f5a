"""The package's imports form no circle: read every grpo module with `ast` and look for cycles.

Deferred imports inside functions count (STYLE.md: a deferred import is still an import).
`from grpo import X` counts as importing grpo.X when X is a module, else as importing grpo/__init__.
"""

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "grpo"


def module_names(package_dir: Path = PACKAGE_DIR) -> set[str]:
    """Dotted names of the package's modules: `grpo` for __init__.py, `grpo.x` for x.py."""
    names = {"grpo"}
    for path in package_dir.glob("*.py"):
        if path.stem != "__init__":
            names.add(f"grpo.{path.stem}")
    return names


def imported_modules(source: str, modules: set[str]) -> set[str]:
    """The package modules one file imports, at module level or inside any function or class."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                # `import grpo.x.y` imports grpo.x; take the longest prefix that is a module.
                parts = alias.name.split(".")
                for k in range(len(parts), 0, -1):
                    if ".".join(parts[:k]) in modules:
                        found.add(".".join(parts[:k]))
                        break
        elif isinstance(node, ast.ImportFrom):
            if node.level:      # relative imports: the package uses none; refuse to guess
                raise AssertionError(f"relative import found: from {'.' * node.level}{node.module or ''}")
            if node.module is None or node.module.split(".")[0] != "grpo":
                continue
            if node.module in modules and node.module != "grpo":
                found.add(node.module)
                continue
            if node.module == "grpo":
                for alias in node.names:
                    target = f"grpo.{alias.name}"
                    found.add(target if target in modules else "grpo")
    return found


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """Module -> the package modules it imports (self-imports dropped)."""
    modules = module_names(package_dir)
    graph = {}
    for name in sorted(modules):
        path = package_dir / ("__init__.py" if name == "grpo" else f"{name.split('.', 1)[1]}.py")
        graph[name] = imported_modules(path.read_text(), modules) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_reader_sees_deferred_and_package_imports():
    modules = {"grpo", "grpo.a", "grpo.b", "grpo.c", "grpo.d"}
    source = (
        "import torch\n"
        "from grpo import GrpoError\n"         # a name in __init__ -> grpo
        "from grpo import b\n"                 # a module -> grpo.b
        "def f():\n"
        "    from grpo.c import thing\n"       # deferred, still an import
        "    import grpo.d\n"
    )
    assert imported_modules(source, modules) == {"grpo", "grpo.b", "grpo.c", "grpo.d"}


def test_cycle_finder_finds_a_planted_circle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_package_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles among grpo modules: " + "; ".join(" <-> ".join(c) for c in found)


# STYLE.md's layers, imports downward only (a module may import its own layer or a lower one).
# A new module must be placed here: the test fails on a module it does not know.
LAYERS = {
    1: "grpo distributed timing paths device progress memory",                 # foundations
    2: "advantages kl objectives losses offpolicy",                            # the math
    3: "config flags alternatives presets sampler_registry tasks rewards tokenizer",  # config, tasks, rewards
    4: "models pretrained sampler fast_sampler policy lean_layers gemm evaluation warmstart",  # engine parts
    5: "state batch metrics probes update calibration counterfactual trainer", # the algorithm
    6: "tracking wandb_mirror checkpoint rollout_files runner",                # the run
    7: "cli bench sync rescore",                                               # commands
}
LAYER_OF = {("grpo" if m == "grpo" else f"grpo.{m}"): layer for layer, names in LAYERS.items() for m in names.split()}


def upward_imports(graph: dict[str, set[str]], layer_of: dict[str, int]) -> list[str]:
    """'a (L) -> b (M)' for every import of a module from a higher layer M > L."""
    return [f"{m} ({layer_of[m]}) -> {d} ({layer_of[d]})"
            for m in sorted(graph) for d in sorted(graph[m]) if layer_of[d] > layer_of[m]]


def test_upward_finder_flags_only_upward_edges():
    graph = {"a": {"b"}, "b": {"c"}, "c": set()}
    assert upward_imports(graph, {"a": 1, "b": 1, "c": 2}) == ["b (1) -> c (2)"]
    assert upward_imports(graph, {"a": 3, "b": 2, "c": 2}) == []


def test_every_module_has_a_layer_and_imports_only_downward():
    graph = import_graph()
    unplaced = sorted(set(graph) - set(LAYER_OF))
    assert not unplaced, f"modules without a layer (add them to LAYERS): {unplaced}"
    upward = upward_imports(graph, LAYER_OF)
    assert not upward, "imports reaching up a layer: " + "; ".join(upward)
