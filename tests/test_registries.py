"""Each registry's names are its dict's keys: the config's Literal (tyro's choices) and the field's --help text
list exactly those names, so adding or removing a variant cannot leave a stale choice or help line behind.
Tasks register themselves (grpo/tasks.py): --task's choices in --help are the registry's names."""

from __future__ import annotations

import ast
import inspect
import re
from typing import get_args

import pytest

from grpo import config
from grpo.advantages import ADVANTAGES, AdvantageName
from grpo.kl import KL_ESTIMATORS, KLName
from grpo.losses import AGGREGATIONS, AggregationName
from grpo.objectives import OBJECTIVES, ObjectiveName
from grpo.cli import main
from grpo.tasks import TASKS

REGISTRIES = {  # config field: (its Literal, its registry)
    "advantage": (AdvantageName, ADVANTAGES),
    "kl_estimator": (KLName, KL_ESTIMATORS),
    "aggregation": (AggregationName, AGGREGATIONS),
    "objective": (ObjectiveName, OBJECTIVES),
}
ALL_NAMES = {name for _, registry in REGISTRIES.values() for name in registry} | set(TASKS)
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


@pytest.mark.parametrize("field", ["advantage", "kl_estimator", "aggregation", "objective"])
def test_the_help_text_lists_every_registered_name_and_no_other(field):
    _, registry = REGISTRIES[field]
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
