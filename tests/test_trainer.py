"""Tests for grpo/algorithm/step.py: micro-batch invariance, determinism, kill-and-resume, divergence, the reference.

All runs are tiny (4 prompts x 4 completions, a few steps). Most use the seed toy with a short warm
start (conftest.MIXED), whose groups come out mixed, so advantages and gradients are not all zero.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import MIXED, cli_args
from grpo.algorithm.step import TrainingDiverged, build_run, evaluate_policy, grpo_step, sample_rows
from grpo.algorithm.update import micro_batches, model_logp
from grpo.commands import cli
from grpo.engine.logprobs import completion_logp
from grpo.engine.sampler import Rollout
from grpo.engine.warmstart import warm_started_model
from grpo.formulas.objectives import OBJECTIVES
from grpo.run.checkpoint import checkpoint_dirs, load_checkpoint
import grpo.run.runner as runner_module
from grpo.run.runner import train
from grpo.setup.alternatives import alternative_configs
from grpo.setup.config import TrainConfig
from grpo.setup.rewards import REWARDS
from grpo.setup.tasks import TASKS

AGGREGATIONS = ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]
QUIET = dict(log=lambda *_: None)


def warm_cache(cfg) -> None:
    """Compute (or find) the cached warm start for cfg, so that every run under test loads it."""
    task = TASKS[cfg.task]()
    warm_started_model(cfg, task, task.tokenizer, torch.device("cpu"), log=lambda *_: None)


def clone_run(run, cfg):
    """An independent copy of a run's (components, state), reading cfg, stepping with SGD.

    SGD instead of the trainer's AdamW: a parameter's change is then -lr * (clipped) gradient, so
    comparing parameters compares gradients. AdamW's first step is about lr * sign(gradient), which
    turns float noise in a gradient entry that is nearly 0 into a full +-lr difference. The sampler is copied
    with the policy, so the copy's draws from the copied policy (the sampler holds the weights it draws from).
    """
    c, s = run
    state = s.copy()
    state.optimizer = torch.optim.SGD(state.policy.parameters(), lr=cfg.lr)
    components = dataclasses.replace(c, cfg=cfg, reference=copy.deepcopy(c.reference), timer=None,
                                     alternatives=tuple(alternative_configs(cfg)))
    return components, state


def without_time(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("time/")}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- micro-batch invariance

# (objective, extra settings) cases for the micro-batch test: every objective off-policy (mu = 2, two
# mini-batches), and the token selections and KL/entropy options that act across a batch.
OBJECTIVE_CASES = [(name, {}) for name in OBJECTIVES] + [
    ("clip", {"top_entropy_quantile": 0.5}), ("clip", {"entropy_coef": 0.05}), ("clip", {"mask_truncated": True}),
    ("clip", {"kl_estimator": "k3_is"}), ("clip", {"kl_placement": "reward"}),
    ("kl_cov", {"kl_cov_ratio": 0.1}), ("clip_cov", {"clip_cov_ratio": 0.1, "clip_cov_lb": -5.0}),
]


@pytest.mark.parametrize(("objective", "extra", "inner_epochs", "mini_batches"),
                         [("clip", {}, 1, 1)] + [(o, e, 2, 2) for o, e in OBJECTIVE_CASES],
                         ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items())
                         if isinstance(v, dict) else str(v))
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_micro_batch_split_changes_nothing(make_cfg, tmp_path, aggregation, objective, extra, inner_epochs,
                                           mini_batches):
    """One step with the whole batch in one micro-batch == the same step in micro-batches of 3.

    N = 4 x 4 = 16 completions: mini-batches of 16 (or 8) split 3+3+3+3+3+1 (or 3+3+2), so the
    micro-batches are uneven and the normalisers (and the token selections) must be the
    mini-batch's, not the micro-batch's.
    """
    whole_cfg = make_cfg(tmp_path, **MIXED, aggregation=aggregation, inner_epochs=inner_epochs,
                         mini_batches=mini_batches, micro_batch_size=16, lr=0.05, objective=objective, **extra)
    split_cfg = dataclasses.replace(whole_cfg, micro_batch_size=3)
    warm_cache(whole_cfg)
    base = build_run(whole_cfg, **QUIET)
    base[1].policy.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in base[1].policy.parameters()]

    (whole_c, whole), (split_c, split) = clone_run(base, whole_cfg), clone_run(base, split_cfg)
    whole_result, split_result = grpo_step(whole_c, whole, 1), grpo_step(split_c, split, 1)
    whole_metrics, whole_rows = whole_result.metrics, sample_rows(whole_result, whole_cfg.group_size)
    split_metrics, split_rows = split_result.metrics, sample_rows(split_result, split_cfg.group_size)

    assert whole_metrics["adv/abs_mean"] > 0, "precondition: the step has a learning signal"
    assert whole_rows == split_rows                     # same rollouts, rewards and advantages
    assert set(without_time(whole_metrics)) == set(without_time(split_metrics))
    for key, value in without_time(whole_metrics).items():
        assert split_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    for p0, pw, ps in zip(before, whole.policy.parameters(), split.policy.parameters()):
        # atol: one float32 ulp of a parameter near 1 (the norm weights) is 1.2e-7
        torch.testing.assert_close(ps - p0, pw - p0, atol=1e-6, rtol=1e-4)
    assert max((pw - p0).abs().max() for p0, pw in zip(before, whole.policy.parameters())) > 1e-3


def fake_rollout(lengths: list[int], prompt_width: int, width: int) -> Rollout:
    """A rollout whose row i has a completion of lengths[i] tokens (ids 1..), padded to `width`."""
    n = len(lengths)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).float()
    ids = (torch.arange(width)[None].expand(n, width) % 5 + 1) * mask.long()
    zeros = torch.zeros(n, width)
    return Rollout(prompt_ids=torch.ones(n, prompt_width, dtype=torch.long),
                   prompt_mask=torch.ones(n, prompt_width, dtype=torch.long), completion_ids=ids,
                   completion_mask=mask, truncated=torch.zeros(n, dtype=torch.bool), entropy=zeros, logp=zeros)


def test_micro_batches_put_completions_of_like_length_together():
    """Rows with completions of 5, 1, 4, 2, 3, 1 tokens in micro-batches of 4: shortest first (ties in row
    order) when prompts are not shared; row order when a group's prompt runs once (a 3-token prompt before
    completions of 2 tokens, G = 2: (1/2) x 3/5 = 0.3 of the positions saved, above SHARE_MIN_SAVING)."""
    c = SimpleNamespace(cfg=SimpleNamespace(group_size=2, micro_batch=4))
    rows = torch.tensor([5, 0, 3, 2, 1, 4])                 # any order in: a shuffled mini-batch
    unshared = fake_rollout([5, 1, 4, 2, 3, 1], prompt_width=1, width=5)
    assert [m.tolist() for m in micro_batches(c, unshared, rows)] == [[1, 5, 3, 4], [2, 0]]
    shared = fake_rollout([2, 1, 2, 2, 1, 1], prompt_width=3, width=2)
    assert [m.tolist() for m in micro_batches(c, shared, rows)] == [[0, 1, 2, 3], [4, 5]]


def test_rollout_logp_runs_only_to_the_longest_completion(make_cfg, tmp_path):
    """The short rows' log-probs equal those of a forward over the full width (a causal model: later
    positions change nothing before them), and read 0 past their longest completion."""
    cfg = make_cfg(tmp_path, max_new_tokens=8)
    warm_cache(cfg)
    c, s = build_run(cfg, **QUIET)
    rollout = fake_rollout([3, 8, 2, 3], prompt_width=4, width=8)
    rollout.completion_ids[rollout.completion_mask == 0] = c.tokenizer.pad_token_id
    full = completion_logp(s.policy, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                           cfg.temperature, eos_token_id=c.tokenizer.eos_token_id, share_prompts=False)
    short = torch.tensor([0, 2, 3])
    trimmed = model_logp(c, s.policy, rollout, short)
    assert trimmed.shape == (3, 8)
    torch.testing.assert_close(trimmed[:, :3], full[short, :3], atol=1e-5, rtol=1e-5)
    assert trimmed[:, 3:].eq(0).all()
    torch.testing.assert_close(model_logp(c, s.policy, rollout, torch.tensor([1])), full[[1]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mini_batches", [2, 3, 5, 7])
def test_mini_batches_is_the_number_of_optimizer_steps(make_cfg, tmp_path, mini_batches):
    """--mini-batches: 'Optimizer steps per inner epoch; the rollouts are split into this many'.

    N = 16 rollouts in 2, 3, 5 or 7 mini-batches, with inner_epochs = 2: 4, 6, 10 or 14 optimizer
    steps. (torch.chunk(16 rows, 5) returns only 4 chunks of 4; torch.chunk(16 rows, 7) 6 chunks.)
    """
    cfg = make_cfg(tmp_path, **MIXED, mini_batches=mini_batches, inner_epochs=2)
    warm_cache(cfg)
    c, s = build_run(cfg, **QUIET)
    s.policy.zero_grad(set_to_none=True)
    grpo_step(c, s, 1)
    steps = {int(state["step"]) for state in s.optimizer.state.values()}
    assert steps == {2 * mini_batches}          # inner_epochs x mini_batches optimizer steps


# ---------------------------------------------------------------- arms are paired by seed

def recorded_prompts(run, steps: int) -> list[list[str]]:
    """The prompts a run (components, state) draws in its first `steps` steps."""
    c, s = run
    drawn, sample = [], c.task.sample

    def recording(generator, n):
        examples = sample(generator, n)
        drawn.append([e.prompt for e in examples])
        return examples

    c.task.sample = recording
    for step in range(1, steps + 1):
        grpo_step(c, s, step)
    return drawn


def test_arms_differing_in_inner_epochs_draw_the_same_prompts(make_cfg, tmp_path):
    """Paired differences assume the same prompts per seed in every arm. mu = 2 with 2 mini-batches
    shuffles four times a step where mu = 1 shuffles once; the prompt stream must not notice."""
    one = make_cfg(tmp_path, **MIXED)
    two = dataclasses.replace(one, inner_epochs=2, mini_batches=2)
    warm_cache(one)
    assert recorded_prompts(build_run(one, **QUIET), 3) == recorded_prompts(build_run(two, **QUIET), 3)
    other_seed = dataclasses.replace(one, seed=1)
    assert recorded_prompts(build_run(other_seed, **QUIET), 1) != recorded_prompts(build_run(one, **QUIET), 1)


# ---------------------------------------------------------------- guards

def test_non_finite_gradient_stops_before_the_optimizer_step(make_cfg, tmp_path):
    """The loss is finite but one gradient is NaN: the step raises before AdamW touches the weights."""
    cfg = make_cfg(tmp_path, **MIXED)
    warm_cache(cfg)
    c, s = build_run(cfg, **QUIET)
    before = [p.detach().clone() for p in s.policy.parameters()]
    s.policy.lm_head.weight.register_hook(lambda grad: grad * float("nan"))
    with pytest.raises(TrainingDiverged, match="non-finite gradient norm at step 1"):
        grpo_step(c, s, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, s.policy.parameters()))
    assert not s.optimizer.state                      # AdamW never stepped


def test_without_a_correct_reward_accuracy_is_absent(make_cfg, tmp_path):
    """The catalogue: a key that cannot be computed is absent (it used to be logged as 0)."""
    cfg = make_cfg(tmp_path, **MIXED, reward_weights={"format": 1.0})
    warm_cache(cfg)
    metrics = grpo_step(*build_run(cfg, **QUIET), 1).metrics
    assert "accuracy" not in metrics and "reward/format/mean" in metrics
    assert not [k for k in metrics if k.startswith(("zero_var/all_", "accuracy/", "len/correct", "len/wrong"))]
    assert "zero_var/frac" in metrics


# ---------------------------------------------------------------- the warm start hands over a clean model

def test_build_run_leaves_no_gradient_behind(make_cfg, tmp_path, monkeypatch):
    """With a cold warm-start cache the freshly fine-tuned policy must carry no SFT gradient into RL."""
    monkeypatch.setenv("GRPO_CACHE", str(tmp_path / "cold_cache"))
    c, s = build_run(make_cfg(tmp_path), **QUIET)
    stale = [name for name, p in s.policy.named_parameters() if p.grad is not None]
    assert not stale, f"{len(stale)} parameters keep the warm start's last gradient, e.g. {stale[:2]}"


def test_cold_and_warm_cache_runs_agree(make_cfg, tmp_path, monkeypatch):
    """The first run of a config (which trains the warm start) equals every later one (which loads it)."""
    monkeypatch.setenv("GRPO_CACHE", str(tmp_path / "cold_cache"))
    cold = train(make_cfg(tmp_path, **MIXED, steps=2, out_dir=str(tmp_path / "cold")), **QUIET)
    warm = train(make_cfg(tmp_path, **MIXED, steps=2, out_dir=str(tmp_path / "warm")), **QUIET)
    assert cold["status"] == warm["status"] == "finished"
    cold_lines = [without_time(r) for r in read_metrics(tmp_path / "cold")]
    warm_lines = [without_time(r) for r in read_metrics(tmp_path / "warm")]
    assert cold_lines == warm_lines


# ---------------------------------------------------------------- determinism

def test_same_config_gives_identical_metrics(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, **MIXED, steps=4, eval_every=2, inner_epochs=2, mini_batches=2, save_every=2)
    warm_cache(cfg)
    train(dataclasses.replace(cfg, out_dir=str(tmp_path / "a")), **QUIET)
    train(dataclasses.replace(cfg, out_dir=str(tmp_path / "b")), **QUIET)
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["step"] for r in a] == [0, 1, 2, 3, 4]
    assert [without_time(r) for r in a] == [without_time(r) for r in b]
    assert (tmp_path / "a" / "samples.jsonl").read_text() == (tmp_path / "b" / "samples.jsonl").read_text()


def test_different_seed_gives_different_rollouts(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, **MIXED, steps=1)
    warm_cache(cfg)
    train(dataclasses.replace(cfg, out_dir=str(tmp_path / "s0")), **QUIET)
    train(dataclasses.replace(cfg, seed=1, out_dir=str(tmp_path / "s1")), **QUIET)
    assert (tmp_path / "s0" / "samples.jsonl").read_text() != (tmp_path / "s1" / "samples.jsonl").read_text()


def test_lr_zero_leaves_the_weights_unchanged(make_cfg, tmp_path):
    """--lr 0 is a frozen policy (a probe's null run): two steps with gradients, two epochs of two
    mini-batches each and weight decay move no weight at all (AdamW scales both by lr)."""
    cfg = make_cfg(tmp_path, **MIXED, steps=2, lr=0.0, weight_decay=0.1, inner_epochs=2, mini_batches=2)
    c, s = build_run(cfg, **QUIET)
    before = {name: p.detach().clone() for name, p in s.policy.named_parameters()}
    norms = [grpo_step(c, s, step).metrics["grad_norm"] for step in (1, 2)]
    assert max(norms) > 0          # there was a gradient to follow: lr 1e-4 would have moved the weights
    for name, p in s.policy.named_parameters():
        assert torch.equal(p.detach(), before[name]), name


# ---------------------------------------------------------------- kill and resume

# Runs `grpo train` but blocks forever right after the metrics line of step BLOCK_AT is written:
# the test then SIGKILLs it at a known point (between checkpoints, with a line past the last one).
BLOCKING_TRAIN = """
import sys, time
import grpo.run.store as tracking
append = tracking.RunStore.append
def blocking_append(self, path, record):
    append(self, path, record)
    if path == self.metrics_path and record.get("step") == int(sys.argv[1]):
        while True:
            time.sleep(0.05)
tracking.RunStore.append = blocking_append
from grpo.commands.cli import main
sys.exit(main(sys.argv[2:]))
"""
DEADLINE_S = 300      # only reached when something is broken; the poll normally ends in seconds


def grpo_command(cfg) -> list[str]:
    return [sys.executable, "-m", "grpo.commands.cli", "train", *cli_args(cfg)]


def wait_for_lines(proc: subprocess.Popen, path: Path, lines: int) -> None:
    start = time.monotonic()
    while True:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"grpo exited early with {proc.returncode}:\n{out}\n{err}")
        if time.monotonic() - start > DEADLINE_S:
            proc.kill()
            pytest.fail(f"{path} never reached {lines} lines")
        time.sleep(0.02)


def run_grpo(cfg, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(grpo_command(cfg), cwd=cwd, capture_output=True, text=True, timeout=DEADLINE_S)


@pytest.fixture
def resume_cfg(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, **MIXED, steps=8, save_every=2, eval_every=3, log_samples_every=1,
                   inner_epochs=2, mini_batches=2, out_dir=str(tmp_path / "killed"))
    warm_cache(cfg)
    reference = dataclasses.replace(cfg, out_dir=str(tmp_path / "reference"))
    assert train(reference, **QUIET)["status"] == "finished"
    return cfg, reference


def test_kill_between_checkpoints_and_resume(resume_cfg, tmp_path):
    cfg, reference = resume_cfg
    run_dir = Path(cfg.out_dir)
    proc = subprocess.Popen([sys.executable, "-c", BLOCKING_TRAIN, "5", "train", *cli_args(cfg)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_lines(proc, run_dir / "metrics.jsonl", 6)      # steps 0..5
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    # killed after step 5 was logged, with the newest checkpoint at step 4 (save_every = 2)
    assert [r["step"] for r in read_metrics(run_dir)] == [0, 1, 2, 3, 4, 5]
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_000002", "step_000004"]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"

    resumed = run_grpo(cfg, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "from step 4" in resumed.stdout
    got, expected = read_metrics(run_dir), read_metrics(Path(reference.out_dir))
    assert [r["step"] for r in got] == list(range(9))          # no step twice, none missing
    assert [without_time(r) for r in got] == [without_time(r) for r in expected]
    assert (run_dir / "samples.jsonl").read_text() == (Path(reference.out_dir) / "samples.jsonl").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps_done"] == 8
    # time/elapsed continues across the restart instead of starting over
    assert got[-1]["time/elapsed"] >= got[4]["time/elapsed"]

    again = run_grpo(cfg, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stdout
    assert read_metrics(run_dir) == got


def test_kill_at_an_arbitrary_moment_and_resume(resume_cfg, tmp_path):
    """The plain command, SIGKILLed once metrics.jsonl has 4 lines, wherever it is then."""
    cfg, reference = resume_cfg
    cfg = dataclasses.replace(cfg, save_every=1)
    run_dir = Path(cfg.out_dir)
    proc = subprocess.Popen(grpo_command(cfg), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_lines(proc, run_dir / "metrics.jsonl", 4)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    resumed = run_grpo(cfg, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    # usually "resuming ... from step 2 or 3"; a kill that lands after the last step finds it finished
    assert "resuming" in resumed.stdout or "already finished" in resumed.stdout
    got = read_metrics(run_dir)
    assert [r["step"] for r in got] == list(range(9))
    assert [without_time(r) for r in got] == [without_time(r) for r in read_metrics(Path(reference.out_dir))]


def test_interrupt_right_after_the_final_checkpoint_then_rerun(make_cfg, tmp_path, monkeypatch):
    """Ctrl-C (or a kill) after the last checkpoint is written but before the run is marked finished:
    the same command again must finish the run (nothing is left to train), not crash."""
    cfg = make_cfg(tmp_path, steps=2, save_every=1)
    save_checkpoint = runner_module.save_checkpoint

    def save_then_interrupt(run_dir, step, *args, **kwargs):
        path = save_checkpoint(run_dir, step, *args, **kwargs)
        if step == cfg.steps:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(runner_module, "save_checkpoint", save_then_interrupt)
    try:
        train(cfg, **QUIET)
        pytest.fail("the patched save_checkpoint should have interrupted the run")
    except KeyboardInterrupt:
        pass
    run_dir = Path(cfg.out_dir)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert checkpoint_dirs(run_dir)[-1].name == "step_000002"

    monkeypatch.setattr(runner_module, "save_checkpoint", save_checkpoint)
    summary = train(cfg, **QUIET)
    assert summary["status"] == "finished" and summary["steps_done"] == 2
    assert [r["step"] for r in read_metrics(run_dir)] == [0, 1, 2]


# ---------------------------------------------------------------- divergence

def test_nan_reward_stops_the_run_and_keeps_the_last_good_checkpoint(make_cfg, tmp_path, monkeypatch, capsys):
    cfg = make_cfg(tmp_path, steps=5, save_every=1)
    warm_cache(cfg)
    calls = {"n": 0}
    correct = REWARDS["correct"]

    def nan_from_step_3(response, example):
        calls["n"] += 1             # 16 completions a step: calls 33.. belong to step 3
        return float("nan") if calls["n"] > 2 * cfg.num_completions else correct(response, example)

    monkeypatch.setitem(REWARDS, "correct", nan_from_step_3)
    code = cli.main(["train", *cli_args(cfg)])
    err = capsys.readouterr().err
    assert code == 1                # divergence, not an input error (2)
    assert err.strip().splitlines() == ["grpo: error: non-finite reward at step 3"]

    run_dir = Path(cfg.out_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "step 3" in summary["error"] and summary["steps_done"] == 2
    assert [r["step"] for r in read_metrics(run_dir)] == [0, 1, 2]
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_000001", "step_000002"]
    c, s = build_run(cfg, **QUIET)
    assert load_checkpoint(checkpoint_dirs(run_dir)[-1], s.policy, s.optimizer, c.device)["step"] == 2

    # With the reward fixed, the same command resumes from step 2 and finishes.
    monkeypatch.setitem(REWARDS, "correct", correct)
    assert cli.main(["train", *cli_args(cfg)]) == 0
    assert [r["step"] for r in read_metrics(run_dir)] == [0, 1, 2, 3, 4, 5]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_nan_reward_raises_training_diverged(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, steps=2)
    monkeypatch.setitem(REWARDS, "correct", lambda response, example: float("nan"))
    with pytest.raises(TrainingDiverged, match="step 1"):
        train(cfg, **QUIET)


# ---------------------------------------------------------------- the reference model

def test_kl_beta_zero_builds_no_reference_and_logs_no_kl(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, **MIXED, kl_beta=0.0)
    warm_cache(cfg)
    c, s = build_run(cfg, **QUIET)
    assert c.reference is None
    metrics = grpo_step(c, s, 1).metrics
    assert not [k for k in metrics if k.startswith("kl/")]
    assert "loss" in metrics and math.isfinite(metrics["loss"])


def test_kl_beta_positive_builds_a_frozen_reference_and_logs_kl(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, **MIXED, kl_beta=0.1, lr=1e-2)
    warm_cache(cfg)
    c, s = build_run(cfg, **QUIET)
    assert c.reference is not None and c.reference is not s.policy
    assert all(not p.requires_grad for p in c.reference.parameters())
    reference_before = [p.clone() for p in c.reference.parameters()]
    first = grpo_step(c, s, 1).metrics
    second = grpo_step(c, s, 2).metrics
    for metrics in (first, second):
        assert {"kl/k1", "kl/k2", "kl/k3"} <= set(metrics)
    # step 1 samples from the warm start itself: KL to the reference is 0, to float rounding (the reference
    # runs the rows in order, the learner in shuffled micro-batches, and a matmul's last bit can depend on
    # how many distinct prompts share its batch).
    for key in ("kl/k1", "kl/k2", "kl/k3"):
        assert abs(first[key]) < 1e-7, key
    assert second["kl/k3"] > 0.0
    assert all(torch.equal(a, b) for a, b in zip(reference_before, c.reference.parameters()))


# ---------------------------------------------------------------- end to end (slow: make test-slow)

def reward_curve(run_dir: Path) -> list[float]:
    return [r["reward/mean"] for r in read_metrics(run_dir) if r["step"] > 0]


@pytest.mark.slow
def test_seed_tokens_reward_rises(tmp_path):
    """The seed toy from a barely warm model: 60 steps raise the mean reward (about 0.4 -> 0.7)."""
    run_dir = tmp_path / "seed_run"
    result = subprocess.run(
        [sys.executable, "-m", "grpo.commands.cli", "train", "--task", "seed_tokens", "--model", "seed",
         "--warmstart-steps", "10", "--steps", "60", "--prompts-per-step", "8", "--group-size", "8",
         "--max-new-tokens", "12", "--eval-every", "1000", "--eval-prompts", "64", "--quiet",
         "--out-dir", str(run_dir)],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr
    rewards = reward_curve(run_dir)
    assert len(rewards) == 60
    assert sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10


@pytest.mark.slow
def test_arithmetic_defaults_raise_eval_accuracy(tmp_path):
    """`grpo train` with every default (tiny model, 250 steps): held-out greedy accuracy gains >= 0.15."""
    run_dir = tmp_path / "arithmetic_run"
    result = subprocess.run([sys.executable, "-m", "grpo.commands.cli", "train", "--quiet", "--out-dir", str(run_dir)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr
    records = read_metrics(run_dir)
    first, last = records[0], records[-1]
    assert first["step"] == 0 and last["step"] == TrainConfig().steps
    assert last["eval/accuracy"] - first["eval/accuracy"] >= 0.15, (first["eval/accuracy"], last["eval/accuracy"])


def test_resume_with_fewer_steps_than_the_checkpoint_is_refused(make_cfg, tmp_path):
    import dataclasses

    from grpo import GrpoError
    from grpo.run.runner import train

    cfg = make_cfg(tmp_path, steps=3, save_every=1)
    train(cfg, log=lambda *_: None)
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    (cfg.run_dir / "summary.json").write_text(json.dumps({**summary, "status": "running"}))   # as if killed
    with pytest.raises(GrpoError, match="past --steps 2"):
        train(dataclasses.replace(cfg, steps=2), log=lambda *_: None)


def test_a_run_resumes_only_in_the_dtype_it_ran_in(make_cfg, tmp_path):
    """summary.json records the dtype the forwards ran in; a resume where an unset --dtype resolves to another
    (a pretrained model moved to other hardware; simulated by editing the record) is refused, nothing lost."""
    from grpo import GrpoError
    from grpo.run.runner import train

    cfg = make_cfg(tmp_path, steps=2, save_every=1)
    train(cfg, log=lambda *_: None)
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    assert summary["compute_dtype"] == "fp32"
    (cfg.run_dir / "summary.json").write_text(json.dumps({**summary, "status": "running", "compute_dtype": "bf16"}))
    metrics = (cfg.run_dir / "metrics.jsonl").read_text()
    with pytest.raises(GrpoError, match="ran its forwards in bf16, but an unset --dtype resolves to fp32"):
        train(cfg, log=lambda *_: None)
    assert (cfg.run_dir / "metrics.jsonl").read_text() == metrics


@pytest.mark.parametrize("switch", ["1", "0"])
def test_summary_says_whether_linears_ran_through_onednn(make_cfg, tmp_path, monkeypatch, switch):
    """onednn_linears follows GRPO_ONEDNN: true with the switch on (this build has the op), false with it off."""
    from grpo.engine import gemm
    from grpo.run.runner import train

    monkeypatch.setenv("GRPO_ONEDNN", switch)
    gemm.available.cache_clear()
    try:
        cfg = make_cfg(tmp_path, steps=1)
        train(cfg, log=lambda *_: None)
    finally:
        gemm.available.cache_clear()
    assert json.loads((cfg.run_dir / "summary.json").read_text())["onednn_linears"] is (switch == "1")


def test_step_zero_evaluation_is_computed_once_per_warm_start_and_seed(make_cfg, tmp_path, monkeypatch):
    """Step 0 scores the shared warm start: a second arm of the same seed reads both kinds of flags from
    the store, another seed only the greedy ones; every stored value is what a run without the store
    computes, and a damaged file is computed again."""
    monkeypatch.setenv("GRPO_CACHE", str(tmp_path / "cache"))      # a store no other test has written
    cfg = make_cfg(tmp_path, eval_prompts=12, eval_samples=4, max_new_tokens=8)
    warm_cache(cfg)
    first = build_run(cfg, **QUIET)
    store = first[0].eval_store
    assert store is not None and store.parent.parent.name == "warmstart" and not store.exists()
    fresh = evaluate_policy(*first, 0)
    files = sorted(store.glob("*.json"))
    assert len(files) == 2                                          # greedy flags, seed 0's sampled flags
    other_arm = build_run(dataclasses.replace(cfg, kl_beta=0.0, lr=1e-3), **QUIET)
    assert evaluate_policy(*other_arm, 0) == fresh
    assert sorted(store.glob("*.json")) == files                    # read, nothing new
    other_seed = dataclasses.replace(cfg, seed=1)
    c, s = build_run(other_seed, **QUIET)
    unstored = evaluate_policy(dataclasses.replace(c, eval_store=None), s, 0)
    assert evaluate_policy(*build_run(other_seed, **QUIET), 0) == unstored
    assert len(list(store.glob("*.json"))) == 3                     # seed 1's sampled flags added
    for path in store.glob("*.json"):
        path.write_text("{not json")
    assert evaluate_policy(*first, 0) == fresh                      # damaged: computed again, same values
    written = {path: path.stat().st_mtime_ns for path in store.glob("*.json")}
    evaluate_policy(*first, 5)
    assert {path: path.stat().st_mtime_ns for path in store.glob("*.json")} == written   # later steps: not kept
