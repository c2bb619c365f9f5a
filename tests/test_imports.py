"""The package's imports form no circle: read every grpo module with `ast` and look for cycles.

Deferred imports inside functions count (STYLE.md: a deferred import is still an import).
`from grpo.p import X` counts as importing grpo.p.X when X is a module, else as importing grpo/p/__init__.
"""

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "grpo"


def module_names(package_dir: Path = PACKAGE_DIR) -> set[str]:
    """Dotted names of the package's modules: `grpo` for __init__.py, `grpo.p` for p/__init__.py,
    `grpo.p.x` for p/x.py."""
    names = set()
    for path in package_dir.rglob("*.py"):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def module_path(name: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """The file of a dotted module name (a package's __init__.py)."""
    path = package_dir.parent.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


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
            # `from grpo.p import x`: grpo.p.x when x is a module, else the package grpo.p itself.
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                found.add(target if target in modules else node.module)
    return found


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """Module -> the package modules it imports (self-imports dropped)."""
    modules = module_names(package_dir)
    graph = {}
    for name in sorted(modules):
        graph[name] = imported_modules(module_path(name, package_dir).read_text(), modules) - {name}
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


# STYLE.md's layers, imports downward only (a module may import its own layer or a lower one): one package
# per layer, so the folder listing shows them. A module outside these packages fails the test below.
LAYERS = {
    "base": 1,          # foundations (and grpo/__init__.py: the errors)
    "formulas": 2,      # the math
    "setup": 3,         # config, flags, tasks, rewards, tokenizer, presets
    "engine": 4,        # models, samplers, log-probs, evaluation, warm start, kernels
    "algorithm": 5,     # state, rollout collection, the step, metrics, probes
    "run": 6,           # store, wandb mirror, checkpoints, runner
    "commands": 7,      # the CLI
}


def layer_of(name: str) -> int | None:
    if name == "grpo":
        return 1
    return LAYERS.get(name.split(".")[1])


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
    unplaced = sorted(name for name in graph if layer_of(name) is None)
    assert not unplaced, f"modules outside the layer packages (move them into one of {sorted(LAYERS)}): {unplaced}"
    upward = upward_imports(graph, {name: layer_of(name) for name in graph})
    assert not upward, "imports reaching up a layer: " + "; ".join(upward)


# experiments/ reaches grpo through its configs (grpo.setup) and its commands (grpo.commands) only; the
# exact paper checks are the one exception: they check the math itself, so they call it.
EXPERIMENTS_DIR = PACKAGE_DIR.parent / "experiments"
CHECKS_THE_MATH = {"claim_checks.py"}


def reaches_past_config_and_commands(name: str) -> bool:
    return name != "grpo" and not name.startswith(("grpo.setup", "grpo.commands"))


def test_experiments_use_only_config_and_commands():
    modules = module_names()
    reached = {}
    for path in sorted(EXPERIMENTS_DIR.glob("*.py")):
        if path.name in CHECKS_THE_MATH:
            continue
        for name in sorted(imported_modules(path.read_text(), modules)):
            if reaches_past_config_and_commands(name):
                reached.setdefault(path.name, []).append(name)
    assert not reached, f"experiments reaching past grpo.setup and grpo.commands: {reached}"


def test_analysis_imports_nothing_from_grpo():
    modules = module_names()
    reached = {path.name: sorted(imported_modules(path.read_text(), modules))
               for path in sorted((PACKAGE_DIR.parent / "analysis").glob("*.py"))}
    assert not {name: found for name, found in reached.items() if found}
