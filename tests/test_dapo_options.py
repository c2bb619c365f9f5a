"""DAPO's rollout-side pieces and the KL/entropy options in a real step: dynamic sampling, overlong
filtering and shaping, KL in the reward, the entropy bonus; and their bad inputs at the CLI."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import MIXED, cli_args
from grpo.algorithm.collect import collect_batch, total_reward
from grpo.algorithm.step import build_run, grpo_step
from grpo.commands.cli import main
from grpo.setup.rewards import REWARDS, overlong_penalty
from test_trainer import QUIET, recorded_prompts, warm_cache


def constant_groups(batch) -> int:
    rewards = total_reward(batch.parts, {"correct": 1.0, "format": 0.1})
    return int((rewards.amax(-1) == rewards.amin(-1)).sum())


# ---------------------------------------------------------------- dynamic sampling

def test_dynamic_sampling_returns_only_groups_with_signal(make_cfg, tmp_path):
    # seed 3: its first round holds constant groups to drop (under the inverse-CDF sampler seeds 0-2 draw none)
    cfg = make_cfg(tmp_path, **MIXED, prompts_per_step=6, dynamic_sampling=True, max_resample_rounds=20, seed=3)
    warm_cache(cfg)
    c, s = build_run(cfg, **QUIET)
    batch = collect_batch(c, s, cfg.prompts_per_step, step=1)
    assert len(batch.examples) == 6 and batch.rollout.completion_ids.shape[0] == 6 * cfg.group_size
    assert constant_groups(batch) == 0
    assert batch.dynamic["dynamic/filled_groups"].item() == 0
    dropped = int(batch.dynamic["dynamic/dropped_groups"].item())
    assert dropped > 0, "precondition: the warm start leaves some groups all right or all wrong"
    # every completion generated counts, the dropped groups' included
    assert batch.generated == (6 + dropped) * cfg.group_size
    assert batch.dynamic["dynamic/rounds"].item() >= 2


def test_dynamic_sampling_at_the_round_limit_fills_with_zero_variance_groups_and_says_so(make_cfg, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setitem(REWARDS, "correct", lambda response, example: 1.0)    # every group constant
    monkeypatch.setitem(REWARDS, "format", lambda response, example: 0.0)
    cfg = make_cfg(tmp_path, **MIXED, dynamic_sampling=True, max_resample_rounds=3)
    warm_cache(cfg)
    c, s = build_run(cfg, **QUIET)
    metrics = grpo_step(c, s, 1).metrics
    assert metrics["dynamic/rounds"] == 3
    assert metrics["dynamic/filled_groups"] == cfg.prompts_per_step
    # rounds 1-3 drew 4 + 4 + 4 prompts; 4 were used, 8 dropped
    assert metrics["dynamic/dropped_groups"] == 8
    assert s.samples == 12 * cfg.group_size


def test_dynamic_sampling_keeps_the_first_round_prompts_of_a_plain_run(make_cfg, tmp_path):
    """The extra rounds draw from their own generator, so arms with and without dynamic sampling
    still share each step's first-round prompts (the pairing the report relies on)."""

    def first_rounds(cfg, steps: int) -> list[list[str]]:
        c, s = build_run(cfg, **QUIET)
        drawn, sample = [], c.task.sample

        def recording(generator, n):
            examples = sample(generator, n)
            if generator is s.rng.prompt:
                drawn.append([e.prompt for e in examples])
            return examples

        c.task.sample = recording
        for step in range(1, steps + 1):
            grpo_step(c, s, step)
        return drawn

    plain = make_cfg(tmp_path, **MIXED)
    warm_cache(plain)
    dynamic = make_cfg(tmp_path, **MIXED, dynamic_sampling=True, max_resample_rounds=5)
    assert first_rounds(dynamic, 3) == first_rounds(plain, 3) == recorded_prompts(build_run(plain, **QUIET), 3)


# ---------------------------------------------------------------- overlong filtering and shaping

def test_overlong_penalty_by_hand():
    # max 10, buffer 4: free up to 6 tokens, then -penalty * (len - 6) / 4, -2 at 10 tokens
    lengths = torch.tensor([5.0, 6.0, 7.0, 8.0, 10.0])
    expected = torch.tensor([0.0, 0.0, -0.5, -1.0, -2.0])
    torch.testing.assert_close(overlong_penalty(lengths, 10, 4, 2.0), expected)


def test_truncated_completions_carry_no_gradient_when_masked(make_cfg, tmp_path):
    """max-new-tokens 2 truncates every seed-toy completion: masked, nothing trains; unmasked, it does."""
    masked = make_cfg(tmp_path, **MIXED, max_new_tokens=2, mask_truncated=True, kl_beta=0.04)
    warm_cache(masked)
    c, s = build_run(masked, **QUIET)
    before = [p.detach().clone() for p in s.policy.parameters()]
    metrics = grpo_step(c, s, 1).metrics
    assert metrics["len/truncated_frac"] == 1.0 and metrics["grad_tokens/truncated_frac"] == 1.0
    assert metrics["grad_tokens/active_frac"] == 0.0 and metrics["loss"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, s.policy.parameters()))

    import dataclasses
    unmasked = build_run(dataclasses.replace(masked, mask_truncated=False), **QUIET)
    metrics = grpo_step(*unmasked, 1).metrics
    assert "grad_tokens/truncated_frac" not in metrics


def test_masked_truncated_share_is_the_truncated_completions_tokens(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, **MIXED, max_new_tokens=8, mask_truncated=True)
    warm_cache(cfg)
    m = grpo_step(*build_run(cfg, **QUIET), 1).metrics
    assert 0 < m["len/truncated_frac"] < 1, "precondition: some completions end, some are cut"
    # truncated completions have exactly max_new_tokens = 8 tokens
    assert m["grad_tokens/truncated_frac"] == pytest.approx(m["len/truncated_frac"] * 8 / m["len/mean"], rel=1e-5)
    shares = [m[k] for k in m if k.startswith("grad_tokens/")]
    assert len(shares) == 4 and sum(shares) == pytest.approx(1.0, abs=1e-5)


def test_overlong_shaping_is_a_logged_reward(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, **MIXED, max_new_tokens=8, overlong_buffer=4, overlong_penalty=1.0)
    warm_cache(cfg)
    m = grpo_step(*build_run(cfg, **QUIET), 1).metrics
    assert -1.0 <= m["reward/overlong/mean"] < 0.0
    # the total reward is the weighted task rewards plus the (unweighted) shaping
    assert m["reward/mean"] == pytest.approx(m["reward/correct/mean"] + 0.1 * m["reward/format/mean"]
                                             + m["reward/overlong/mean"], abs=1e-6)


# ---------------------------------------------------------------- KL in the reward, entropy bonus

def test_kl_in_the_reward_is_beta_times_the_summed_k1(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, **MIXED, kl_beta=0.5, kl_placement="reward", lr=1e-2)
    warm_cache(cfg)
    c, s = build_run(cfg, **QUIET)
    first = grpo_step(c, s, 1).metrics
    assert abs(first["reward/kl_penalty/mean"]) < 1e-4        # policy = reference, up to float noise
    second = grpo_step(c, s, 2).metrics
    # mean over completions of beta * sum_t k1 = beta * (token mean of k1) * (mean length)
    assert second["reward/kl_penalty/mean"] == pytest.approx(0.5 * second["kl/k1"] * second["len/mean"], rel=1e-3)
    assert second["reward/kl_penalty/mean"] > 1e-4


def test_entropy_bonus_trains_and_its_sign_raises_entropy_gradient(make_cfg, tmp_path):
    """A large bonus with zero advantages (every group constant) moves the weights only through the
    entropy term, and the sampling entropy of the next step goes up."""
    cfg = make_cfg(tmp_path, **MIXED, entropy_coef=1.0, kl_beta=0.0, lr=1e-2,
                   reward_weights={"correct": 0.0, "format": 0.0})
    warm_cache(cfg)
    c, s = build_run(cfg, **QUIET)
    first = grpo_step(c, s, 1).metrics
    second = grpo_step(c, s, 2).metrics
    assert first["adv/abs_mean"] == 0.0 and math.isfinite(first["loss"]) and first["loss"] < 0
    assert second["entropy"] > first["entropy"]


# ---------------------------------------------------------------- bad input at the CLI

@pytest.mark.parametrize(("flags", "needle"), [
    (["--objective", "nope"], "--objective"),
    (["--dual-clip", "1"], "--dual-clip"),
    (["--top-entropy-quantile", "0"], "--top-entropy-quantile"),
    (["--top-entropy-quantile", "1.5"], "--top-entropy-quantile"),
    (["--delta", "1.1"], "--delta"),
    (["--kl-estimator", "k5"], "--kl-estimator"),
    (["--max-resample-rounds", "0"], "--max-resample-rounds"),
])
def test_bad_objective_flags_are_one_line(make_cfg, tmp_path, capsys, flags, needle):
    code = main(["train", *cli_args(make_cfg(tmp_path)), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("grpo: error: ") and needle in err[0]
    assert not (tmp_path / "run").exists()


def test_gspo_with_ppo_scale_eps_is_warned(make_cfg, tmp_path, capsys):
    code = main(["train", *cli_args(make_cfg(tmp_path, steps=1)), "--objective", "gspo"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("grpo: warning:")]
    assert code == 0 and len(warnings) == 1 and "gspo" in warnings[0] and "3e-4" in warnings[0]
