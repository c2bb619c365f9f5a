"""analysis/ keeps no dead code: every module-level constant and private function is used in analysis/."""

import ast
import re
from pathlib import Path

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
CONSTANT = re.compile(r"_?[A-Z][A-Z0-9_]*")


def defined_names(tree: ast.Module) -> list[str]:
    """Module-level UPPER_CASE assignments and private (_name) functions of one module."""
    names = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name) and CONSTANT.fullmatch(t.id)]
        elif isinstance(node, ast.FunctionDef) and node.name.startswith("_"):
            names.append(node.name)
    return names


def used_names(tree: ast.Module) -> set[str]:
    """Names read in code (`NAME`, `module.NAME`); a mention in a docstring or comment does not count."""
    return ({node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
            | {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)})


def test_every_constant_and_private_function_in_analysis_is_used():
    trees = {path.name: ast.parse(path.read_text()) for path in sorted(ANALYSIS.glob("*.py"))}
    used = set().union(*(used_names(tree) for tree in trees.values()))
    unused = [f"{module}: {name}" for module, tree in trees.items()
              for name in defined_names(tree) if name not in used]
    assert unused == []
