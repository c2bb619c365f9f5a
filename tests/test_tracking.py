"""wandb as a mirror: the user's WANDB_MODE wins over our default, and an absent or failing wandb
never stops a run (the local store is the source of truth)."""

from __future__ import annotations

import json
import sys

import pytest

from grpo.commands.cli import main
from grpo.run.runner import train
from grpo.run.wandb_mirror import WandbMirror


def steps_logged(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("flag, env, expected", [(None, None, "offline"), (None, "disabled", "disabled"),
                                                 ("offline", "disabled", "offline"), ("disabled", "offline", "disabled")])
def test_mode_default_is_offline_and_the_environment_wins_over_the_default(flag, env, expected, make_cfg,
                                                                          tmp_path, monkeypatch):
    seen = {}

    class FakeWandb:
        Settings = staticmethod(lambda **kw: kw)

        @staticmethod
        def init(**kwargs):
            seen.update(kwargs)
            raise RuntimeError("stop here")

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    if env is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env)
    cfg = make_cfg(tmp_path, wandb_mode=flag)
    with pytest.warns(UserWarning) if expected != "disabled" else _no_warning():
        WandbMirror(cfg, tmp_path, None)
    assert seen.get("mode") == (None if expected == "disabled" else expected)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_failing_wandb_init_warns_once_and_the_run_finishes(make_cfg, tmp_path, monkeypatch):
    import wandb

    def broken_init(**kwargs):
        raise OSError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    cfg = make_cfg(tmp_path, wandb_mode="online", steps=2)
    with pytest.warns(UserWarning, match="wandb unavailable"):
        summary = train(cfg, log=lambda *_: None)
    assert summary["status"] == "finished"
    assert steps_logged(cfg.run_dir) == [0, 1, 2]


def test_absent_wandb_does_not_stop_a_run(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)          # `import wandb` now raises ImportError
    cfg = make_cfg(tmp_path, wandb_mode="offline", steps=2)
    with pytest.warns(UserWarning, match="wandb unavailable"):
        summary = train(cfg, log=lambda *_: None)
    assert summary["status"] == "finished" and steps_logged(cfg.run_dir) == [0, 1, 2]


def test_sync_finds_the_offline_runs_of_a_run_dir(make_cfg, tmp_path, capsys):
    cfg = make_cfg(tmp_path, wandb_mode="offline", steps=1)
    train(cfg, log=lambda *_: None)
    assert main(["sync", "--dry-run", str(cfg.run_dir)]) == 0
    listed = capsys.readouterr().out.split()
    assert len(listed) == 1 and "offline-run-" in listed[0] and listed[0].startswith(str(cfg.run_dir / "wandb"))
    assert main(["sync", str(tmp_path / "nowhere")]) == 2


def test_a_config_saved_before_new_fields_still_matches():
    """A config.json from before worked_example existed, with micro_batch_size/eval_prompts/eval_samples written
    out as numbers (16/200/16, today's preset defaults when unset), resumes under today's default config."""
    from grpo.setup.config import TrainConfig, config_mismatch

    current = TrainConfig()
    old = {k: v for k, v in json.loads(json.dumps(current.to_dict())).items() if k != "worked_example"}
    old.update(micro_batch_size=16, eval_prompts=200, eval_samples=16)
    assert config_mismatch(old, current) == []
    assert config_mismatch({**old, "micro_batch_size": 64}, current) == ["micro_batch_size"]
    # a pretrained model's unset micro-batch is 4, so an old explicit 16 differs from it
    pretrained = TrainConfig(model="smollm2-135m")
    assert "micro_batch_size" in config_mismatch({**old, "model": "smollm2-135m"}, pretrained)


def test_a_config_saved_with_an_explicit_dtype_matches_what_unset_resolves_to(monkeypatch):
    """Configs written before --dtype could be unset hold "fp32": a preset's unset dtype is fp32 on any hardware
    and matches; a pretrained model's depends on the hardware, which the comparison never asks (a sweep's parent
    runs it before forking): a conflict."""
    from grpo.setup import config
    from grpo.setup.config import TrainConfig, config_mismatch

    def no_hardware_here(device):
        raise AssertionError("config_mismatch asked the hardware")

    monkeypatch.setattr(config, "bf16_is_native", no_hardware_here)
    for model, differ in (("tiny", []), ("path/to/model", ["dtype"])):
        current = TrainConfig(model=model)
        old = {**json.loads(json.dumps(current.to_dict())), "dtype": "fp32"}
        assert config_mismatch(old, current) == differ
        assert config_mismatch({**old, "dtype": None}, current) == []
