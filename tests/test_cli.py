"""Tests for grpo/commands/cli.py: every bad input is one line `grpo: error: ...`, exit code 2, no traceback,
and nothing on disk is touched; `grpo train --help` lists the documented flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_args, one_error_line
from grpo.commands.cli import main


def tiny_flags(make_cfg, tmp_path, **overrides) -> list[str]:
    """Flags for a tiny run; a bad value under test is appended after them and wins."""
    return cli_args(make_cfg(tmp_path, **overrides))


def snapshot(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- bad flag values

@pytest.mark.parametrize(("flag", "value"), [
    ("--group-size", "1"),
    ("--kl-beta", "-1"),
    ("--kl-beta", "nan"),
    ("--kl-beta", "inf"),
    ("--clip-eps-low", "0"),
    ("--clip-eps-high", "-0.1"),
    ("--inner-epochs", "0"),
    ("--mini-batches", "0"),
    ("--micro-batch-size", "0"),
    ("--steps", "0"),
    ("--temperature", "0"),
    ("--max-new-tokens", "0"),
    ("--lr", "-1e-4"),
    ("--lr", "nan"),
    ("--lr", "inf"),
])
def test_bad_value_is_one_line_naming_the_flag(make_cfg, tmp_path, capsys, flag, value):
    code = main(["train", *tiny_flags(make_cfg, tmp_path), flag, value])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert flag in line
    assert not (tmp_path / "run").exists()          # rejected before anything is written


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_reward_weight_is_an_input_error(make_cfg, tmp_path, capsys, value):
    """A NaN weight makes every reward NaN: it is a bad flag value (exit 2, nothing written), not a
    training divergence discovered after the warm start (exit 1)."""
    code = main(["train", *tiny_flags(make_cfg, tmp_path), "--reward-weights", f"correct={value}"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "--reward-weights" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("value", "expected"), [
    ("correct_extracted=1,format_partial=0.2", {"correct_extracted": 1.0, "format_partial": 0.2}),
    (" correct = 1 , ", {"correct": 1.0}),
])
def test_reward_weights_name_any_registered_reward(value, expected):
    from grpo.setup.flags import parse_flags
    from grpo.setup.config import TrainConfig

    assert parse_flags(TrainConfig, ["--reward-weights", value], "grpo train").reward_weights == expected


@pytest.mark.parametrize("value", ["correct", "correct=one", "=1", "nonsense_reward=1"])
def test_a_bad_reward_weight_item_is_one_line(make_cfg, tmp_path, capsys, value):
    assert main(["train", *tiny_flags(make_cfg, tmp_path), "--reward-weights", value]) == 2
    assert "reward" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_mini_batches_beyond_the_batch_name_both_flags(make_cfg, tmp_path, capsys):
    # 4 prompts x 4 completions = 16 completions cannot be split into 17 mini-batches
    code = main(["train", *tiny_flags(make_cfg, tmp_path), "--mini-batches", "17"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "--mini-batches" in line and "16" in line


def test_unknown_task_is_a_usage_error(make_cfg, tmp_path, capsys):
    code = main(["train", *tiny_flags(make_cfg, tmp_path), "--task", "chess"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "chess" in line and "--task" in line and "arithmetic" in line
    assert not (tmp_path / "run").exists()


def test_unknown_flag_is_one_line(make_cfg, tmp_path, capsys):
    code = main(["train", *tiny_flags(make_cfg, tmp_path), "--learning-rate", "3"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "--learning-rate" in line


def test_unknown_command_and_no_command(capsys):
    assert main(["trian"]) == 2
    assert "trian" in one_error_line(capsys.readouterr().err)
    assert main([]) == 2
    assert "usage: grpo" in capsys.readouterr().out


# ---------------------------------------------------------------- bad model

def test_unknown_model_preset(make_cfg, tmp_path, capsys):
    code = main(["train", *tiny_flags(make_cfg, tmp_path), "--model", "huge_model_that_is_not_here"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "huge_model_that_is_not_here" in line and "preset" in line


def test_model_directory_without_config(make_cfg, tmp_path, capsys):
    model_dir = tmp_path / "not_a_checkpoint"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"\0" * 16)
    code = main(["train", *tiny_flags(make_cfg, tmp_path), "--model", str(model_dir)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "not_a_checkpoint" in line and "config.json" in line


def test_bad_model_does_not_claim_the_out_dir(make_cfg, tmp_path, capsys):
    """A typo in --model is an input error: the corrected command with the same --out-dir must run."""
    assert main(["train", *tiny_flags(make_cfg, tmp_path, steps=1), "--model", "tinyy"]) == 2
    one_error_line(capsys.readouterr().err)
    code = main(["train", *tiny_flags(make_cfg, tmp_path, steps=1)])
    err = capsys.readouterr().err
    assert code == 0, err


# ---------------------------------------------------------------- the run directory

def test_out_dir_of_another_config_is_refused_and_left_untouched(make_cfg, tmp_path, capsys):
    flags = tiny_flags(make_cfg, tmp_path, steps=1)
    assert main(["train", *flags]) == 0
    run_dir = tmp_path / "run"
    before = snapshot(run_dir)
    assert "metrics.jsonl" in before and "config.json" in before

    capsys.readouterr()
    code = main(["train", *flags, "--lr", "0.003", "--group-size", "2"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert str(run_dir) in line and "lr" in line and "group_size" in line
    assert snapshot(run_dir) == before


def test_resumable_fields_may_change(make_cfg, tmp_path, capsys):
    """--steps is not part of what a run computes: a finished run continues to the new total."""
    flags = tiny_flags(make_cfg, tmp_path, steps=1)
    assert main(["train", *flags]) == 0
    assert main(["train", *flags, "--steps", "2", "--no-quiet"]) == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3          # steps 0, 1, 2


def test_directory_that_is_not_a_run_is_refused(make_cfg, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    code = main(["train", *tiny_flags(make_cfg, tmp_path)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "not a grpo-lab run directory" in line
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def metric_lines(run_dir: Path) -> list[dict]:
    import json

    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("broken", ["model.safetensors", "state.pt"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(make_cfg, tmp_path, capsys, broken):
    flags = tiny_flags(make_cfg, tmp_path, steps=2, save_every=1)
    assert main(["train", *flags]) == 0
    newest = tmp_path / "run" / "checkpoints" / "step_000002"
    (newest / broken).write_bytes(b"this is not a checkpoint" * 10)
    capsys.readouterr()

    code = main(["train", *flags, "--steps", "3"])        # a longer run resumes, from step 1
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("grpo: warning:")]
    assert code == 0, captured.err
    assert len(warnings) == 1 and "step_000002" in warnings[0] and "corrupt" in warnings[0]
    assert "Traceback" not in captured.err and "from step 1" in captured.out
    # Steps 2 and 3 recomputed from the step-1 checkpoint: the same lines as an uninterrupted run.
    reference = tiny_flags(make_cfg, tmp_path, steps=3, save_every=1, out_dir=str(tmp_path / "reference"))
    assert main(["train", *reference]) == 0
    assert metric_lines(tmp_path / "run") == metric_lines(tmp_path / "reference")


def test_every_checkpoint_corrupt_is_an_error_naming_them(make_cfg, tmp_path, capsys):
    flags = tiny_flags(make_cfg, tmp_path, steps=2, save_every=1)
    assert main(["train", *flags]) == 0
    for checkpoint in (tmp_path / "run" / "checkpoints").iterdir():
        (checkpoint / "state.pt").write_bytes(b"garbage")
    capsys.readouterr()
    code = main(["train", *flags, "--steps", "3"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("grpo: error:")]
    assert code == 2 and len(errors) == 1 and "no readable checkpoint" in errors[0]
    assert "Traceback" not in err


# ---------------------------------------------------------------- as a user sees it

def test_subprocess_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "grpo.commands.cli", "train", "--group-size", "1", "--out-dir",
                             str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "grpo: error: --group-size must be >= 2 (a group of one has no baseline), got 1"]


HELP_FLAGS = ["--task", "--model", "--steps", "--prompts-per-step", "--group-size", "--max-new-tokens",
              "--temperature", "--advantage", "--aggregation", "--kl-beta", "--kl-estimator", "--clip-eps-low",
              "--clip-eps-high", "--inner-epochs", "--mini-batches", "--micro-batch-size", "--lr", "--seed",
              "--out-dir", "--save-every", "--eval-every", "--wandb-mode"]


def test_train_help_lists_the_flags(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    missing = [flag for flag in HELP_FLAGS if f"{flag} " not in text]
    assert not missing, missing
    # the choices of the registries are spelled out
    for choice in ("seq_mean_token_sum_norm", "dr_grpo", "rloo", "seed_tokens", "k3"):
        assert choice in text
