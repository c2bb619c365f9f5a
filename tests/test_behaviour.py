"""bench/behaviour.py: the line-by-line comparison of two runs' records, and its one-line errors (no training here)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.setup.config import TrainConfig
from grpo.setup.flags import parse_flags

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "behaviour.py"
spec = importlib.util.spec_from_file_location("behaviour", SCRIPT)
behaviour = importlib.util.module_from_spec(spec)
spec.loader.exec_module(behaviour)


def lines(*rewards, times=None):
    """metrics.jsonl-like records, step 0, 1, ..., with a time/step that differs between calls when `times` does."""
    times = times or [0.5] * len(rewards)
    return [{"step": step, "samples": 8 * step, "reward/mean": reward, "time/step": t, "time/elapsed": 3.0 * t}
            for step, (reward, t) in enumerate(zip(rewards, times))]


def test_lines_that_differ_only_in_time_keys_are_identical():
    old = lines(0.25, 0.5, 0.75, times=[1.0, 2.0, 3.0])
    new = lines(0.25, 0.5, 0.75, times=[1.5, 2.5, 0.1])
    new[1] = dict(reversed(new[1].items()))        # key order is not behaviour
    assert behaviour.compare_lines(old, new) == {"identical": True, "lines": {"old": 3, "new": 3}}


def test_a_changed_value_is_reported_with_its_step_and_both_values():
    old, new = lines(0.25, 0.5, 0.75, 1.0), lines(0.25, 0.5, 0.75, 1.0)
    new[2]["reward/mean"] = 0.7500001               # a float-rounding change is a change
    new[3]["reward/mean"] = 2.0                     # a later difference: not the first one
    result = behaviour.compare_lines(old, new)
    assert result == {"identical": False, "lines": {"old": 4, "new": 4},
                      "first_difference": {"line": 3, "step": 2,
                                           "keys": {"reward/mean": {"old": 0.75, "new": 0.7500001}}}}


def test_a_key_that_one_side_lacks_is_a_difference_unless_it_is_a_time_key():
    old, new = lines(0.25, 0.5), lines(0.25, 0.5)
    del new[1]["time/step"]
    new[1]["kl/k3"] = 0.0
    result = behaviour.compare_lines(old, new)
    assert result["first_difference"] == {"line": 2, "step": 1,
                                          "keys": {"kl/k3": {"old": behaviour.ABSENT, "new": 0.0}}}


def test_a_missing_line_is_reported_with_the_side_that_lacks_it():
    old, new = lines(0.25, 0.5, 0.75), lines(0.25, 0.5)
    assert behaviour.compare_lines(old, new) == {
        "identical": False, "lines": {"old": 3, "new": 2},
        "first_difference": {"line": 3, "step": 2, "missing_in": "new"}}
    assert behaviour.compare_lines(new, old)["first_difference"] == {"line": 3, "step": 2, "missing_in": "old"}


def test_nan_equals_nan_but_not_a_number_and_an_int_is_not_its_float():
    assert behaviour.compare_lines(lines(math.nan), lines(math.nan))["identical"]
    assert not behaviour.compare_lines(lines(math.nan), lines(0.0))["identical"]
    # JSON keeps 1 and 1.0 apart: a count logged as a float now is a change in what the log says.
    assert behaviour.compare_lines([{"step": 1, "n": 1}], [{"step": 1, "n": 1.0}])["first_difference"]["keys"] == {
        "n": {"old": 1, "new": 1.0}}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_compare_runs_reads_the_run_files_and_flags_a_file_only_one_side_wrote(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    for run in (old, new):
        write_jsonl(run / "metrics.jsonl", lines(0.25, 0.5))
        write_jsonl(run / "samples.jsonl", [{"step": 1, "completion": "12</answer>", "reward": 1.0}])
    write_jsonl(new / "prompts.jsonl", [{"step": 1, "index": 3}])
    files = behaviour.compare_runs(old, new)
    assert files["metrics.jsonl"]["identical"] and files["samples.jsonl"]["identical"]
    assert files["prompts.jsonl"] == {"identical": False, "only_in": "new"}
    (new / "prompts.jsonl").unlink()
    write_jsonl(new / "samples.jsonl", [{"step": 1, "completion": "13</answer>", "reward": 1.0}])
    files = behaviour.compare_runs(old, new)
    assert set(files) == {"metrics.jsonl", "samples.jsonl"}          # neither side wrote prompts.jsonl
    assert files["samples.jsonl"]["first_difference"]["keys"] == {
        "completion": {"old": "12</answer>", "new": "13</answer>"}}


def test_each_side_runs_its_own_code_with_its_own_cache_and_the_same_threads(tmp_path):
    env = {side: behaviour.side_env(tmp_path / side, tmp_path / side / "cache", 3) for side in ("old", "new")}
    assert env["old"]["PYTHONPATH"] == str(tmp_path / "old") and env["new"]["PYTHONPATH"] == str(tmp_path / "new")
    assert env["old"]["GRPO_CACHE"] != env["new"]["GRPO_CACHE"]
    assert env["old"]["OMP_NUM_THREADS"] == env["new"]["OMP_NUM_THREADS"] == "3"
    command = behaviour.train_command(behaviour.REPO, ["--dynamic-sampling"], tmp_path / "run", 7, 3)
    assert command[:4] == [sys.executable, "-m", "grpo.commands.cli", "train"]
    # A tree from before the layer packages runs its own grpo.cli.
    (tmp_path / "flat" / "grpo").mkdir(parents=True)
    assert behaviour.train_command(tmp_path / "flat", [], tmp_path / "run", 7, 3)[2] == "grpo.cli"


@pytest.mark.parametrize("name", list(behaviour.CONFIGS))
def test_every_fixed_config_passes_the_config_checks(name, tmp_path):
    flags = behaviour.train_command(behaviour.REPO, behaviour.CONFIGS[name], tmp_path / "run", 16, 1)[4:]
    cfg = parse_flags(TrainConfig, flags, "grpo train", default=TrainConfig.flag_defaults(flags))
    assert (cfg.steps, cfg.threads, cfg.wandb_mode) == (16, 1, "disabled")


@pytest.mark.parametrize("args, message", [
    (["--ref", "HEAD", "--only", "default,no_such_config"], "--only: unknown config 'no_such_config'"),
    (["--ref", "no-such-ref-7f3a"], "--ref 'no-such-ref-7f3a': git cannot resolve it"),
    (["--ref", "HEAD", "--steps", "0"], "--steps must be >= 1"),
    ([], "the following arguments are required: --ref"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("bench/behaviour.py: error: ")
    assert message in out.stderr
