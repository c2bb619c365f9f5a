"""--task reasoning_gym: reasoning-gym datasets as text tasks for a real (local) model."""

from __future__ import annotations

import json
import sys
import types

import pytest

from grpo import GrpoError
from grpo.commands.cli import main
from grpo.setup.config import TrainConfig
from grpo.setup.tasks import make_task

from test_local_model import save_text_model


def fake_reasoning_gym():
    """Stands in for the third-party package (an optional extra, not installed in CI)."""
    def create_dataset(name, size, seed):
        if name != "basic_arithmetic":
            raise ValueError(f"Dataset '{name}' not registered")
        return [{"question": f"Calculate {i} + 1.", "answer": str(i + 1), "metadata": {}} for i in range(size)]

    return types.SimpleNamespace(create_dataset=create_dataset)


def test_examples_carry_the_question_and_the_reference_answer(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", fake_reasoning_gym())
    task = make_task(TrainConfig(task="reasoning_gym", model="some/dir"))
    example = task.eval_examples()[0]
    index = int(task.eval_index[0])
    assert (example.question, example.answer) == (f"Calculate {index} + 1.", str(index + 1))
    assert set(task.train_index.tolist()).isdisjoint(task.eval_index.tolist())


def test_bad_dataset_missing_package_and_preset_model_are_one_line_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", fake_reasoning_gym())
    with pytest.raises(GrpoError, match="no dataset 'nope'"):
        make_task(TrainConfig(task="reasoning_gym", model="some/dir", rg_dataset="nope"))
    with pytest.raises(GrpoError, match="local HF model dir"):
        TrainConfig(task="reasoning_gym", model="tiny")
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(GrpoError, match="reasoning-gym"):
        make_task(TrainConfig(task="reasoning_gym", model="some/dir"))


def _train_on_local_model(tmp_path, capsys) -> list[dict]:
    save_text_model(tmp_path / "m")
    out = tmp_path / "run"
    code = main(["train", "--task", "reasoning_gym", "--model", str(tmp_path / "m"), "--out-dir", str(out),
                 "--steps", "2", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "6",
                 "--eval-prompts", "2", "--eval-samples", "2", "--wandb-mode", "disabled", "--quiet"])
    assert code == 0, capsys.readouterr().err
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_local_model_trains_on_a_reasoning_gym_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", fake_reasoning_gym())
    records = _train_on_local_model(tmp_path, capsys)
    assert [r["step"] for r in records] == [0, 1, 2]


@pytest.mark.slow
def test_the_real_package_drives_a_run(tmp_path, capsys):
    """With the reasoning-gym extra installed (make test-slow installs it)."""
    records = _train_on_local_model(tmp_path, capsys)
    assert [r["step"] for r in records] == [0, 1, 2]


def test_warm_start_cache_key_includes_the_dataset(tmp_path):
    """--rg-dataset A then B must not reuse A's warm-started weights: the key covers the task's options."""
    from grpo.engine.warmstart import warmstart_key

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    common = dict(task="reasoning_gym", model=str(tmp_path / "model"), warmstart_steps=5)
    first = warmstart_key(TrainConfig(**common, rg_dataset="basic_arithmetic"), 100)
    second = warmstart_key(TrainConfig(**common, rg_dataset="chain_sum"), 100)
    again = warmstart_key(TrainConfig(**common, rg_dataset="basic_arithmetic", seed=3), 100)   # RL seed: same key
    assert first != second and first == again
