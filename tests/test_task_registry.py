"""The task registry: a task in a file of its own (tests/throwaway_task.py) is trained on with its own option
set by --task-option, bad names and values are one-line errors, and the configs that existed before the
registry keep their task identity (the warm-start cache key)."""

from __future__ import annotations

import importlib
import json
import re
import sys

import pytest

from conftest import cli_args, one_error_line
from grpo import GrpoError
from grpo.commands.cli import main
from grpo.engine.warmstart import warmstart_key
from grpo.run.runner import train
from grpo.setup.config import TrainConfig
from grpo.setup.flags import parse_flags
from grpo.setup.tasks import TASKS, TaskOption, make_task, register_task, task_identity


@pytest.fixture
def echo():
    """tests/throwaway_task.py imported (which registers `echo`), and unregistered afterwards, so that no
    other test sees a task that is not built in."""
    sys.modules.pop("throwaway_task", None)
    module = importlib.import_module("throwaway_task")
    yield module
    TASKS.pop("echo", None)
    sys.modules.pop("throwaway_task", None)


# ---------------------------------------------------------------- the configs that existed keep their keys

def test_task_identity_of_the_configs_before_the_registry_is_unchanged():
    # Written by hand from the old TASK_OPTIONS: arithmetic gave {"digits", "operands"}, reasoning_gym
    # {"dataset": rg_dataset}, seed_tokens nothing; the identity was {"task": name, **those}.
    assert task_identity(TrainConfig()) == {"task": "arithmetic", "digits": "1-3", "operands": "2"}
    assert task_identity(TrainConfig.for_model("some/dir")) == {"task": "arithmetic", "digits": "1-2", "operands": "2"}
    assert task_identity(TrainConfig(task="arithmetic", digits="2", operands="2-3")) == {
        "task": "arithmetic", "digits": "2", "operands": "2-3"}
    assert task_identity(TrainConfig(task="reasoning_gym", model="some/dir", rg_dataset="chain_sum")) == {
        "task": "reasoning_gym", "dataset": "chain_sum"}
    assert task_identity(TrainConfig(task="seed_tokens", model="seed", digits="2")) == {"task": "seed_tokens"}
    # The whole key, as the code before the registry (0e45b9a) computed it for these configs.
    assert warmstart_key(TrainConfig(), 45) == "feee0d85fb397e8c"
    assert warmstart_key(TrainConfig(task="seed_tokens", model="seed", digits="2"), 32) == "c3d31589e69a0dee"


def test_a_config_json_without_task_option_loads(tmp_path):
    """An old run dir's config.json has no task_option key: it loads as {} (no option set)."""
    saved = json.loads(json.dumps(TrainConfig(digits="2").to_dict()))
    del saved["task_option"]
    assert TrainConfig.from_dict(saved) == TrainConfig(digits="2")


# ---------------------------------------------------------------- a task in one file

def test_a_task_registered_in_its_own_file_trains_with_its_option(echo, make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, task="echo", task_option={"width": "4"}, steps=2, warmstart_steps=0,
                   log_samples_every=1, max_new_tokens=8)
    assert isinstance(make_task(cfg), echo.Echo)
    train(cfg, log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {1, 2} <= {r["step"] for r in records} and max(r["step"] for r in records) == 2
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    # width 4 reached the task: every prompt is a 4-digit number (the default, 2, gives 2 digits)
    assert prompts and all(re.fullmatch(r"<bos>[1-9]\d{3}=", p) for p in prompts), prompts
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["task_option"] == {"width": "4"} and TrainConfig.from_dict(saved) == cfg


def test_an_option_not_given_takes_its_declared_default_and_is_in_the_identity(echo):
    cfg = TrainConfig(task="echo")
    assert make_task(cfg).low == 10                          # width 2: numbers 10..99
    # a task declaring --task-option options keeps them under their own key, parsed (4, not "4")
    assert task_identity(cfg) == {"task": "echo", "task_option": {"width": 2}}
    assert task_identity(TrainConfig(task="echo", task_option={"width": "4"})) == {"task": "echo", "task_option": {"width": 4}}
    # the default given explicitly is the same task, so the same warm start
    assert warmstart_key(cfg, 21) == warmstart_key(TrainConfig(task="echo", task_option={"width": "2"}), 21)
    assert warmstart_key(cfg, 21) != warmstart_key(TrainConfig(task="echo", task_option={"width": "3"}), 21)


def test_task_option_is_a_repeatable_flag_that_round_trips(echo):
    cfg = TrainConfig(task="echo", task_option={"width": "5"})
    assert cli_args(cfg) == ["--task", "echo", "--task-option", "width=5"]
    assert parse_flags(TrainConfig, cli_args(cfg), "grpo train") == cfg
    # Repeated, each flag adds its item (a later flag replacing the earlier would leave only width=3, which passes)
    with pytest.raises(GrpoError, match="--task-option bogus"):
        parse_flags(TrainConfig, ["--task", "echo", "--task-option", "bogus=1", "--task-option", "width=3"], "grpo train")


def test_registering_a_taken_name_is_refused(echo):
    with pytest.raises(ValueError, match="already registered"):
        register_task("echo")(type("Other", (), {"options": ()}))
    with pytest.raises(ValueError, match="twice"):
        register_task("twice")(type("Twice", (), {"options": (TaskOption("a"), TaskOption("a"))}))
    assert "twice" not in TASKS


# ---------------------------------------------------------------- one-line errors

@pytest.mark.parametrize(("flags", "named"), [
    (["--task", "chess"], ["--task", "'chess'", "arithmetic, arithmetic_rambling, echo, reasoning_gym, seed_tokens"]),
    (["--task", "echo", "--task-option", "colour=red"], ["--task-option colour", "width (digits per number, default 2)"]),
    (["--task", "arithmetic", "--task-option", "width=3"], ["--task-option width", "task arithmetic", "option of task echo"]),
    (["--task", "arithmetic", "--task-option", "digits=3"], ["--task-option digits", "--digits"]),
    (["--task", "echo", "--task-option", "width=9"], ["--task-option width=9", "width must be 1-6, got 9"]),
    (["--task", "echo", "--task-option", "width=two"], ["--task-option width=two"]),
    (["--task", "echo", "--task-option", "width"], ["--task-option", "'width' is not NAME=VALUE"]),
])
def test_a_bad_task_or_task_option_is_one_line_naming_it(echo, make_cfg, tmp_path, capsys, flags, named):
    code = main(["train", *cli_args(make_cfg(tmp_path)), *flags])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    for text in named:
        assert text in line, (text, line)
    assert not (tmp_path / "run").exists()          # rejected before anything is written


def test_the_config_checks_the_task_when_built_outside_the_cli(echo):
    with pytest.raises(GrpoError, match="not a registered task"):
        TrainConfig(task="chess")
    with pytest.raises(GrpoError, match="--task-option width=0"):
        TrainConfig(task="echo", task_option={"width": "0"})
