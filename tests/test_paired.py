"""bench/paired.py: both sides of a step start from the same state, the run follows A, B runs under the switch."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path

import pytest

import grpo.trainer
from conftest import MIXED
from grpo import GrpoError
from grpo.trainer import build_trainer, grpo_step

spec = importlib.util.spec_from_file_location("paired", Path(__file__).resolve().parents[1] / "bench" / "paired.py")
paired = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired)


def without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def test_both_sides_of_a_null_pair_compute_the_same_step_and_the_run_follows_a(make_cfg, tmp_path):
    # MIXED: groups with right and wrong completions, so a step moves the policy and later steps depend on it.
    cfg = make_cfg(tmp_path, **MIXED, steps=3)
    plain = build_trainer(cfg, log=lambda *_: None)
    expected = [without_time(grpo_step(plain, step)[0]) for step in (1, 2, 3)]
    after, records = paired.paired_steps(build_trainer(cfg, log=lambda *_: None), 3, contextlib.nullcontext)
    assert [r["first"] for r in records] == ["a", "b", "a"]
    for record, metrics in zip(records, expected):
        assert without_time(record["a_metrics"]) == without_time(record["b_metrics"]) == metrics
    # The paired run's policy is where a plain run of 3 steps leaves it.
    for p, q in zip(after.policy.parameters(), plain.policy.parameters()):
        assert p.equal(q)


def test_b_runs_under_the_switch_and_a_without_it(make_cfg, tmp_path, monkeypatch):
    calls, active = [], []
    step_fn = grpo.trainer.grpo_step
    monkeypatch.setattr(grpo.trainer, "grpo_step", lambda t, step: (calls.append((step, bool(active))), step_fn(t, step))[1])

    @contextlib.contextmanager
    def switch():
        active.append(True)
        try:
            yield
        finally:
            active.pop()

    paired.paired_steps(build_trainer(make_cfg(tmp_path, steps=2), log=lambda *_: None), 2, switch)
    assert calls == [(1, False), (1, True), (2, True), (2, False)]     # A first, then B first


def test_settings_hold_inside_the_block_only():
    import grpo.fast_sampler as fast_sampler

    before = fast_sampler.COMPACT_AT
    settings = [paired.parse_setting("grpo.fast_sampler.COMPACT_AT=2")]
    with pytest.raises(RuntimeError):
        with paired.applied(settings):
            assert fast_sampler.COMPACT_AT == 2
            raise RuntimeError("a step failed")
    assert fast_sampler.COMPACT_AT == before


@pytest.mark.parametrize("text, message", [
    ("COMPACT_AT", "expected MODULE.NAME=VALUE"),
    ("grpo.no_such_module.X=1", "no module 'grpo.no_such_module'"),
    ("grpo.fast_sampler.NOT_THERE=1", "has no 'NOT_THERE'"),
    ("grpo.fast_sampler.COMPACT_AT=two", "'two' is not a Python literal"),
])
def test_a_bad_setting_is_named(text, message):
    with pytest.raises(GrpoError, match=message):
        paired.parse_setting(text)


def test_main_prints_the_ratio_of_its_own_steps(tmp_path, capsys):
    out = tmp_path / "paired.json"
    flags = ["--warmstart-steps", "2", "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "8",
             "--threads", "1"]
    assert paired.main(["--set", "grpo.fast_sampler.COMPACT_AT=2", "--steps", "2", "--json-out", str(out), "--", *flags]) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    ratios = [s["b_s"] / s["a_s"] for s in result["per_step"]]
    assert result["ratio_b_over_a"]["median"] == pytest.approx(sorted(ratios)[0] / 2 + sorted(ratios)[1] / 2)
    assert result["steps"] == 2 and result["set"] == ["grpo.fast_sampler.COMPACT_AT=2"]


def test_nothing_to_compare_is_an_error():
    with pytest.raises(GrpoError, match="nothing to compare"):
        paired.main(["--steps", "2"])
