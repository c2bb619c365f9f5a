"""Each registry's names are its dict's keys: the config's Literal (tyro's choices) and the field's --help text
list exactly those names, so adding or removing a variant cannot leave a stale choice or help line behind.
Tasks register themselves (grpo/setup/tasks.py): --task's choices in --help are the registry's names."""

from __future__ import annotations

import ast
import inspect
import re
from typing import get_args

import pytest

from grpo.commands.cli import main
import grpo.engine.fast_sampler  # noqa: F401  (registers the built-in samplers)
import grpo.engine.sampler  # noqa: F401
from grpo.formulas.advantages import ADVANTAGES, AdvantageName
from grpo.formulas.kl import KL_ESTIMATORS, KLName
from grpo.formulas.losses import AGGREGATIONS, AggregationName
from grpo.formulas.objectives import OBJECTIVES, ObjectiveName
from grpo.setup import config
from grpo.setup.sampler_registry import AUTO, BUILTIN_SAMPLERS, SAMPLERS, sampler_names
from grpo.setup.tasks import TASKS

REGISTRIES = {  # config field: (its Literal, its registry)
    "advantage": (AdvantageName, ADVANTAGES),
    "kl_estimator": (KLName, KL_ESTIMATORS),
    "aggregation": (AggregationName, AGGREGATIONS),
    "objective": (ObjectiveName, OBJECTIVES),
}
# --sampler is a str checked against the sampler registry (its classes live above the config's layer):
# its names are the classes grpo's own modules register (a test's sampler is not one), and auto.
BUILTIN_SAMPLER_NAMES = {name for name, cls in SAMPLERS.items() if cls.__module__.startswith("grpo.")}
HELP_NAMES = {**{field: set(registry) for field, (_, registry) in REGISTRIES.items()},
              "sampler": {AUTO, *BUILTIN_SAMPLER_NAMES}}
ALL_NAMES = {name for names in HELP_NAMES.values() for name in names} | set(TASKS)
NOT_NAMES = {"pi_old"}   # snake_case words a help text may use that name no variant


def field_help() -> dict[str, str]:
    """TrainConfig's field docstrings (the --help texts), read from the source as tyro reads them."""
    tree = ast.parse(inspect.getsource(config.TrainConfig))
    body = tree.body[0].body
    return {stmt.target.id: nxt.value.value for stmt, nxt in zip(body, body[1:])
            if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)}


@pytest.mark.parametrize("field", sorted(REGISTRIES))
def test_the_literal_is_the_registry(field):
    literal, registry = REGISTRIES[field]
    assert sorted(get_args(literal)) == sorted(registry), field


def test_the_sampler_names_are_the_registry():
    """The built-in names the config checks --sampler against (declared below it) are the classes grpo's
    sampler modules register, and nothing else is a built-in."""
    assert BUILTIN_SAMPLER_NAMES == set(BUILTIN_SAMPLERS) and "hf" in BUILTIN_SAMPLER_NAMES
    assert sampler_names()[:3] == [AUTO, *BUILTIN_SAMPLERS]


@pytest.mark.parametrize("field", ["advantage", "kl_estimator", "aggregation", "objective", "sampler"])
def test_the_help_text_lists_every_registered_name_and_no_other(field):
    registry = HELP_NAMES[field]
    text = re.sub(r"\S+\.py", "", field_help()[field])             # a file path names no variant
    words = set(re.findall(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*", text))
    assert set(registry) <= words, f"--{field} help misses {sorted(set(registry) - words)}"
    # A snake_case word, or a name of another registry, in the help must be one of this registry's names.
    stray = {w for w in words if ("_" in w or w in ALL_NAMES) and w not in set(registry) | NOT_NAMES}
    assert not stray, f"--{field} help names {sorted(stray)}, which --{field} does not take"


def test_task_help_lists_every_registered_task_and_no_other(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    choices = re.search(r"--task \{([a-z_,]+)\}", capsys.readouterr().out).group(1).split(",")
    assert sorted(choices) == sorted(TASKS)
    assert {"arithmetic", "seed_tokens", "reasoning_gym"} <= set(TASKS)      # the built-in ones, registered on import
