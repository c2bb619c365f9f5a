"""bench/paired.py: both sides of a step start from the same state, the run follows A, B runs under the switch."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path

import pytest

import grpo.algorithm.step
from conftest import MIXED
from grpo import GrpoError
from grpo.algorithm.step import build_run, grpo_step

spec = importlib.util.spec_from_file_location("paired", Path(__file__).resolve().parents[1] / "bench" / "paired.py")
paired = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired)


def without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def test_both_sides_of_a_null_pair_compute_the_same_step_and_the_run_follows_a(make_cfg, tmp_path):
    # MIXED: groups with right and wrong completions, so a step moves the policy and later steps depend on it.
    cfg = make_cfg(tmp_path, **MIXED, steps=3)
    plain = build_run(cfg, log=lambda *_: None)
    expected = [without_time(grpo_step(*plain, step).metrics) for step in (1, 2, 3)]
    after, records = paired.paired_steps(*build_run(cfg, log=lambda *_: None), 3, contextlib.nullcontext)
    assert [r["first"] for r in records] == ["a", "b", "a"]
    for record, metrics in zip(records, expected):
        assert without_time(record["a_metrics"]) == without_time(record["b_metrics"]) == metrics
    # The paired run's policy is where a plain run of 3 steps leaves it.
    for p, q in zip(after.policy.parameters(), plain[1].policy.parameters()):
        assert p.equal(q)


def test_b_runs_under_the_switch_and_a_without_it(make_cfg, tmp_path, monkeypatch):
    calls, active = [], []
    step_fn = grpo.algorithm.step.grpo_step

    def recorded(c, s, step):
        calls.append((step, bool(active)))
        return step_fn(c, s, step)

    monkeypatch.setattr(grpo.algorithm.step, "grpo_step", recorded)

    @contextlib.contextmanager
    def switch():
        active.append(True)
        try:
            yield
        finally:
            active.pop()

    paired.paired_steps(*build_run(make_cfg(tmp_path, steps=2), log=lambda *_: None), 2, switch)
    assert calls == [(1, False), (1, True), (2, True), (2, False)]     # A first, then B first


def test_settings_hold_inside_the_block_only():
    import grpo.engine.fast_sampler as fast_sampler

    before = fast_sampler.COMPACT_AT
    settings = [paired.parse_setting("grpo.engine.fast_sampler.COMPACT_AT=2")]
    with pytest.raises(RuntimeError):
        with paired.applied(settings):
            assert fast_sampler.COMPACT_AT == 2
            raise RuntimeError("a step failed")
    assert fast_sampler.COMPACT_AT == before


@pytest.mark.parametrize("text, message", [
    ("COMPACT_AT", "expected MODULE.NAME=VALUE"),
    ("grpo.no_such_module.X=1", "no module 'grpo.no_such_module'"),
    ("grpo.engine.fast_sampler.NOT_THERE=1", "has no 'NOT_THERE'"),
    ("grpo.engine.fast_sampler.COMPACT_AT=two", "'two' is not a Python literal"),
])
def test_a_bad_setting_is_named(text, message):
    with pytest.raises(GrpoError, match=message):
        paired.parse_setting(text)


def test_summary_by_hand():
    # Ratios B/A: 3/2 = 1.5, 2/4 = 0.5, 4/4 = 1.0 -> median 1.0; "probe" ran on step 2 only (0 elsewhere).
    records = [
        {"step": 1, "first": "a", "a_s": 2.0, "b_s": 3.0, "a_phases": {"rollout": 1.0}, "b_phases": {"rollout": 2.0}},
        {"step": 2, "first": "b", "a_s": 4.0, "b_s": 2.0, "a_phases": {"rollout": 3.0, "probe": 0.9},
         "b_phases": {"rollout": 1.0}},
        {"step": 3, "first": "a", "a_s": 4.0, "b_s": 4.0, "a_phases": {"rollout": 2.0}, "b_phases": {"rollout": 3.0}},
    ]
    result = paired.summary(records)
    assert result["ratio_b_over_a"] == {"median": 1.0, "min": 0.5, "max": 1.5}
    assert result["median_a_s"] == 4.0 and result["median_b_s"] == 3.0
    assert result["phases_s"] == {"a": {"rollout": 2.0, "probe": 0.0}, "b": {"rollout": 2.0}}


def test_main_writes_its_json_and_puts_the_setting_back(tmp_path, capsys):
    import grpo.engine.fast_sampler as fast_sampler

    before, out = fast_sampler.COMPACT_AT, tmp_path / "paired.json"
    flags = ["--warmstart-steps", "2", "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "8",
             "--threads", "1"]
    args = ["--set", "grpo.engine.fast_sampler.COMPACT_AT=2", "--steps", "2", "--json-out", str(out), "--", *flags]
    assert paired.main(args) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["steps"] == 2 and [s["first"] for s in result["per_step"]] == ["a", "b"]
    assert result["set"] == ["grpo.engine.fast_sampler.COMPACT_AT=2"] and fast_sampler.COMPACT_AT == before


@pytest.mark.parametrize("args, message", [
    (["--steps", "2"], "nothing to compare"),
    (["--null", "--set", "grpo.engine.fast_sampler.COMPACT_AT=2"], "--null runs A twice"),
    (["--set", ".gemm.X=1"], "no module '.gemm'"),
    (["--null", "--json-out", "/no/such/folder/x.json"], "no folder /no/such/folder"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(Path(paired.__file__)), *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
