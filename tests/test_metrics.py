"""Tests for grpo/algorithm/metrics.py and grpo/engine/evaluation.py: hand-built tensors with hand-computed values, and
the catalogue of keys a real (tiny) run writes to metrics.jsonl."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from grpo.algorithm.metrics import (TokenWeightedMean, advantage_metrics, entropy_metric, gradient_token_metrics,
                          length_metrics, reward_metrics, to_floats, zero_variance_metrics)
from grpo.engine.evaluation import pass_at_k
from grpo.run.runner import train

# ---------------------------------------------------------------- zero-variance groups

# Four groups of G = 4: all correct, all wrong, one of four right (p = 1/4), two of four (p = 1/2).
CORRECT = torch.tensor([[1.0, 1.0, 1.0, 1.0],
                        [0.0, 0.0, 0.0, 0.0],
                        [1.0, 0.0, 0.0, 0.0],
                        [1.0, 1.0, 0.0, 0.0]])


def test_zero_variance_metrics_by_hand():
    out = zero_variance_metrics(CORRECT.clone(), CORRECT)
    # constant groups: rows 0 and 1 -> 2/4; row 0 all correct, row 1 all wrong
    assert out["zero_var/frac"].item() == 0.5
    assert out["zero_var/all_correct_frac"].item() == 0.25
    assert out["zero_var/all_wrong_frac"].item() == 0.25
    assert out["accuracy/constant_group_frac"].item() == 0.5
    # equal-difficulty theory from the step's accuracy pbar = 7/16:
    #   (7/16)^4 + (9/16)^4 = (2401 + 6561) / 65536 = 8962 / 65536
    assert out["zero_var/expected_frac"].item() == pytest.approx(8962 / 65536, abs=1e-7)


def test_expected_frac_can_fall_below_the_measured_share():
    """The old definition (mean over prompts of p^G + (1-p)^G with p from the same G samples) was 1 for
    every constant group and so never below the measured share. Two prompts, one always solved and one
    never: measured constant share 1, equal-difficulty theory at pbar = 1/2 gives 2 * (1/2)^4 = 1/8."""
    correct = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    out = zero_variance_metrics(correct, correct)
    assert out["accuracy/constant_group_frac"].item() == 1.0
    assert out["zero_var/expected_frac"].item() == 0.125


def test_zero_variance_split_is_a_split_of_zero_var_frac():
    # All-correct group 0 whose format reward differs: the total is not constant, so the group still
    # carries signal and is not a zero-variance group of any kind; its correctness is constant, though.
    total = CORRECT + 0.1 * torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0] * 4, [1.0] * 4, [1.0] * 4])
    out = zero_variance_metrics(total, CORRECT)
    assert out["zero_var/frac"].item() == 0.25                      # only row 1
    assert out["zero_var/all_correct_frac"].item() == 0.0
    assert out["zero_var/all_wrong_frac"].item() == 0.25
    assert out["accuracy/constant_group_frac"].item() == 0.5        # rows 0 and 1


def test_all_wrong_groups_with_varying_format_are_not_zero_variance():
    """The reviewed case: every completion wrong, format rewards differ -> signal, not a zero-variance group."""
    correct = torch.zeros(4, 4)
    total = 0.1 * torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0] * 4, [1.0] * 4])
    out = zero_variance_metrics(total, correct)
    assert out["zero_var/frac"].item() == 0.5
    assert out["zero_var/all_wrong_frac"].item() == 0.5
    assert out["zero_var/all_correct_frac"] + out["zero_var/all_wrong_frac"] <= out["zero_var/frac"]
    assert out["accuracy/constant_group_frac"].item() == 1.0


def test_without_a_correct_reward_the_correctness_keys_are_absent():
    total = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert set(zero_variance_metrics(total, None)) == {"zero_var/frac"}
    out = reward_metrics(total, {"format": total}, None)
    assert "accuracy" not in out and out["reward/mean"].item() == 0.75
    lengths = length_metrics(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 1.0]), None)
    assert set(lengths) == {"len/mean", "len/max", "len/truncated_frac"}


def test_reward_metrics_by_hand():
    total = CORRECT + 0.1
    parts = {"correct": CORRECT, "format": torch.ones(4, 4)}
    out = reward_metrics(total, parts, CORRECT)
    # 7 of 16 correct: accuracy 7/16 = 0.4375; total mean 0.4375 + 0.1 = 0.5375
    assert out["accuracy"].item() == 0.4375
    assert out["reward/mean"].item() == pytest.approx(0.5375, abs=1e-6)
    assert out["reward/correct/mean"].item() == 0.4375
    assert out["reward/format/mean"].item() == 1.0
    # unbiased std of 7 ones and 9 zeros: sqrt(16/15 * 7/16 * 9/16) = sqrt(63/240)
    assert out["reward/std"].item() == pytest.approx(math.sqrt(63 / 240), abs=1e-6)


# ---------------------------------------------------------------- advantages, lengths, entropy

def test_advantage_metrics_by_hand():
    out = advantage_metrics(torch.tensor([1.0, -1.0, 0.0, 0.0, 2.0, -2.0]))
    # mean 0; squares 1+1+0+0+4+4 = 10, unbiased variance 10/5 = 2; |A| mean 6/6 = 1; 2 of 6 zero
    assert out["adv/mean"].item() == 0.0
    assert out["adv/std"].item() == pytest.approx(math.sqrt(2.0), abs=1e-6)
    assert out["adv/abs_mean"].item() == 1.0
    assert out["adv/zero_frac"].item() == pytest.approx(1 / 3, abs=1e-7)


def test_length_metrics_by_hand():
    lengths = torch.tensor([3.0, 1.0, 4.0, 2.0])       # correct, wrong, correct (truncated), wrong
    out = length_metrics(lengths, torch.tensor([0.0, 0.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert out["len/mean"].item() == 2.5              # (3 + 1 + 4 + 2) / 4
    assert out["len/max"].item() == 4.0
    assert out["len/truncated_frac"].item() == 0.25
    assert out["len/correct_mean"].item() == 3.5      # (3 + 4) / 2
    assert out["len/wrong_mean"].item() == 1.5        # (1 + 2) / 2


def test_length_metrics_leave_out_an_empty_class():
    lengths = torch.tensor([3.0, 3.0])
    out = length_metrics(lengths, torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]))
    assert "len/wrong_mean" not in out and out["len/correct_mean"].item() == 3.0
    out = length_metrics(lengths, torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]))
    assert "len/correct_mean" not in out and out["len/wrong_mean"].item() == 3.0


def test_entropy_metric_is_a_mean_over_completion_tokens():
    # row 0: tokens with entropy 1 and 2; row 1: one token with entropy 4 -> (1 + 2 + 4) / 3 tokens
    assert entropy_metric(torch.tensor([3.0, 4.0]), torch.tensor([2.0, 1.0]))["entropy"].item() == \
        pytest.approx(7 / 3, abs=1e-6)
    assert entropy_metric(torch.zeros(2), torch.zeros(2))["entropy"].item() == 0.0   # no tokens: 0, not NaN


def test_gradient_token_metrics_by_hand_and_add_to_one():
    advantages = torch.tensor([0.0, 1.0, -1.0])
    lengths = torch.tensor([2.0, 3.0, 5.0])
    out = gradient_token_metrics(advantages, lengths, lengths, torch.tensor(0.3), masked_truncated=False)
    # 10 tokens, all in the loss: zero-advantage share 2/10; clipped 0.3 given; active 1 - 0.2 - 0.3 = 0.5
    assert out["grad_tokens/zero_adv_frac"].item() == pytest.approx(0.2, abs=1e-7)
    assert out["grad_tokens/clipped_frac"].item() == pytest.approx(0.3, abs=1e-7)
    assert out["grad_tokens/active_frac"].item() == pytest.approx(0.5, abs=1e-7)
    assert "grad_tokens/truncated_frac" not in out      # never a placeholder without truncation masking
    assert sum(v.item() for v in out.values()) == pytest.approx(1.0, abs=1e-6)


def test_gradient_token_metrics_with_masked_truncated_completions():
    # 14 tokens; the 4-token completion was truncated and masked out of the loss (loss length 0).
    # cut_frac 0.25 is a share of the 10 loss tokens -> 2.5 tokens = 2.5/14 of all.
    # zero_adv 2/14, truncated 4/14, active (14 - 2 - 2.5 - 4)/14 = 5.5/14.
    advantages = torch.tensor([0.0, 1.0, -1.0, 1.0])
    lengths, loss_lengths = torch.tensor([2.0, 3.0, 5.0, 4.0]), torch.tensor([2.0, 3.0, 5.0, 0.0])
    out = gradient_token_metrics(advantages, lengths, loss_lengths, torch.tensor(0.25), masked_truncated=True)
    assert out["grad_tokens/zero_adv_frac"].item() == pytest.approx(2 / 14, abs=1e-7)
    assert out["grad_tokens/clipped_frac"].item() == pytest.approx(2.5 / 14, abs=1e-7)
    assert out["grad_tokens/truncated_frac"].item() == pytest.approx(4 / 14, abs=1e-7)
    assert out["grad_tokens/active_frac"].item() == pytest.approx(5.5 / 14, abs=1e-7)


# ---------------------------------------------------------------- accumulation and the logging boundary

def test_token_weighted_mean_weights_by_tokens_and_keeps_maxima():
    acc = TokenWeightedMean()
    acc.add({"ratio/mean": torch.tensor(1.0), "ratio/max": torch.tensor(2.0), "tokens": torch.tensor(1.0)},
            torch.tensor(1.0))
    acc.add({"ratio/mean": torch.tensor(4.0), "ratio/max": torch.tensor(1.5), "tokens": torch.tensor(3.0)},
            torch.tensor(3.0))
    out = acc.result()
    assert out["ratio/mean"].item() == 3.25            # (1 * 1 + 4 * 3) / (1 + 3) = 13 / 4
    assert out["ratio/max"].item() == 2.0              # a maximum, not a mean
    assert "tokens" not in out


def test_token_weighted_mean_combines_sums_across_processes():
    """What data parallelism does: another rank's sums are added before dividing, maxima are maxed.
    This rank: ratio 1 over 1 token; the other rank (simulated): ratio 5 over 3 tokens, max 9."""
    acc = TokenWeightedMean()
    acc.add({"ratio/mean": torch.tensor(1.0), "ratio/max": torch.tensor(2.0)}, torch.tensor(1.0))
    other_rank = {"sums": torch.tensor([15.0]), "weights": torch.tensor([3.0]), "max": torch.tensor([9.0])}
    calls = []

    def sum_fn(values):
        calls.append(values.clone())
        return values + (other_rank["sums"] if len(calls) == 1 else other_rank["weights"])

    out = acc.result(sum_fn, lambda peaks: torch.maximum(peaks, other_rank["max"]))
    assert out["ratio/mean"].item() == 4.0             # (1 + 15) / (1 + 3), not the mean of 1 and 5
    assert out["ratio/max"].item() == 9.0


def test_to_floats_refuses_non_finite_values():
    from grpo import TrainingDiverged

    assert to_floats({"a": torch.tensor(1.5), "d": 3}) == {"a": 1.5, "d": 3}
    with pytest.raises(TrainingDiverged, match="b, c, e"):
        to_floats({"a": torch.tensor(1.5), "b": torch.tensor(float("nan")), "c": float("inf"),
                   "d": 3, "e": torch.tensor(float("-inf"))})


# ---------------------------------------------------------------- pass@k

@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (4, 1, 2, 0.5),        # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (4, 0, 2, 0.0),        # no correct sample: 1 - C(4,2)/C(4,2)
    (4, 3, 2, 1.0),        # n - c = 1 < k: every k-subset holds a correct one
    (4, 4, 1, 1.0),
    (4, 1, 1, 0.25),       # pass@1 = c / n
    (16, 4, 4, 1 - 495 / 1820),   # 1 - C(12,4)/C(16,4)
    (4, 1, 4, 1.0),        # n - c = 3 < 4
])
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- a real run's catalogue

# Every key the grpo/algorithm/metrics.py docstring lists for a training step (G = 4, mu = 1, kl_beta > 0);
# len/correct_mean and len/wrong_mean may be absent.
STEP_KEYS = {
    "step", "samples", "tokens", "time/elapsed",
    "reward/mean", "reward/std", "reward/correct/mean", "reward/format/mean", "accuracy",
    "adv/mean", "adv/std", "adv/abs_mean", "adv/zero_frac",
    "zero_var/frac", "zero_var/all_correct_frac", "zero_var/all_wrong_frac", "zero_var/expected_frac",
    "accuracy/constant_group_frac",
    "kl/k1", "kl/k2", "kl/k3", "kl/k3_is", "kl/k1_token_std", "kl/k3_token_std",
    "clip/low_frac", "clip/high_frac", "ratio/mean", "ratio/max", "entropy", "entropy/cov_logp_adv", "loss", "grad_norm",
    "inner/1/clip_frac", "inner/1/ratio_mean", "inner/1/kl_old", "inner/1/loss",
    "grad_tokens/active_frac", "grad_tokens/zero_adv_frac", "grad_tokens/clipped_frac",
    "len/mean", "len/max", "len/truncated_frac",
    "time/rollout", "time/reward", "time/train", "time/optimizer", "time/metrics", "time/step",
}
OPTIONAL_KEYS = {"len/correct_mean", "len/wrong_mean", "bias/len_corr_pos", "bias/len_corr_neg",
                 "bias/len_spread_within"}
EVAL_KEYS = {"eval/accuracy", "eval/pass@1", "eval/pass@4", "time/eval"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """3 steps, G = 4, one inner epoch and mini-batch, eval at 0, 2 and 3, wandb offline; mixed groups."""
    from conftest import MIXED, SMALL_CONFIG
    from grpo.setup.config import TrainConfig

    run_dir = tmp_path_factory.mktemp("metrics_run") / "run"
    cfg = TrainConfig(**{**SMALL_CONFIG, **MIXED, "steps": 3, "eval_every": 2, "inner_epochs": 1, "mini_batches": 1,
                         "kl_beta": 0.04, "wandb_mode": "offline", "out_dir": str(run_dir)})
    summary = train(cfg, log=lambda *_: None)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, summary, records


def test_run_logs_one_record_per_step(tiny_run):
    _, summary, records = tiny_run
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert summary["status"] == "finished" and summary["steps_done"] == 3
    # 4 prompts x 4 completions = 16 per step
    assert [r["samples"] for r in records] == [0, 16, 32, 48]
    tokens = [r["tokens"] for r in records]
    assert tokens[0] == 0 and all(b > a for a, b in zip(tokens, tokens[1:]))


def test_run_logs_every_catalogue_key_and_only_finite_values(tiny_run):
    _, _, records = tiny_run
    for record in records[1:]:
        missing = STEP_KEYS - set(record)
        assert not missing, f"step {record['step']} lacks {sorted(missing)}"
        for key, value in record.items():
            assert isinstance(value, (int, float)) and math.isfinite(value), (key, value)


def test_run_logs_no_key_outside_the_catalogue(tiny_run):
    """metrics.py: 'Keys are a contract' -- a logged key the catalogue does not define is undocumented."""
    _, _, records = tiny_run
    for record in records:
        extra = set(record) - STEP_KEYS - OPTIONAL_KEYS - EVAL_KEYS
        assert not extra, f"step {record['step']} logs keys the metrics.py catalogue does not list: {sorted(extra)}"


# The off-policy keys (grpo/algorithm/metrics.py's "off-policy" block): logged only when the sampler differs from
# the learner or a correction is on (ratio_rollout/* with them), offpolicy/* with --off-policy-mask, staleness/*
# with --staleness > 0; the default run above logs none of them (test_run_logs_no_key_outside_the_catalogue).
OFFPOLICY_KEYS = {
    "mismatch/k1", "mismatch/k3", "mismatch/chi2_token", "mismatch/chi2_seq", "mismatch/ppl_ratio", "mismatch/ess",
    "mismatch/weight_mean", "mismatch/weight_max", "mismatch/masked_token_frac", "mismatch/masked_seq_frac",
    "mismatch/truncated_token_frac", "ratio_rollout/mean", "ratio_rollout/max", "offpolicy/masked_token_frac",
    "staleness/policy_lag",
}


def test_offpolicy_run_logs_every_offpolicy_catalogue_key(tmp_path):
    """bf16 rollouts one step stale, token_truncate IS and DeepSeek's mask: every step logs every off-policy key
    (finite), and nothing outside the catalogue; each key is listed in the catalogue at column 2."""
    from conftest import MIXED, SMALL_CONFIG
    from grpo.setup.config import TrainConfig
    import grpo.algorithm.metrics

    listed = {key for line in grpo.algorithm.metrics.__doc__.splitlines() if line.startswith("  ") and line[2] != " "
              for key in re.match(r"  ([^\s,]+(?:, [^\s,]+)*)", line).group(1).split(", ")}
    assert OFFPOLICY_KEYS <= listed, OFFPOLICY_KEYS - listed
    cfg = TrainConfig(**{**SMALL_CONFIG, **MIXED, "steps": 2, "rollout_dtype": "bf16", "staleness": 1,
                         "rollout_is": "token_truncate", "off_policy_mask": 0.0, "out_dir": str(tmp_path / "run")})
    train(cfg, log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    for record in records[1:]:
        missing = (STEP_KEYS | OFFPOLICY_KEYS) - {"kl/k1", "kl/k2", "kl/k3", "kl/k3_is"} - set(record)
        assert not missing, f"step {record['step']} lacks {sorted(missing)}"
        extra = set(record) - STEP_KEYS - OPTIONAL_KEYS - EVAL_KEYS - OFFPOLICY_KEYS
        assert not extra, f"step {record['step']} logs keys the metrics.py catalogue does not list: {sorted(extra)}"
        assert all(math.isfinite(v) for v in record.values())
    assert [r["staleness/policy_lag"] for r in records[1:]] == [0.0, 1.0]


def test_on_policy_step_clips_nothing(tiny_run):
    _, _, records = tiny_run
    for record in records[1:]:
        # mu = 1 with one mini-batch: pi_old is pi_theta, the ratio is exactly 1
        assert record["inner/1/clip_frac"] == 0.0
        assert record["clip/low_frac"] == 0.0 and record["clip/high_frac"] == 0.0
        assert record["ratio/mean"] == 1.0 and record["ratio/max"] == 1.0
        assert record["inner/1/kl_old"] == 0.0
        assert record["grad_tokens/clipped_frac"] == 0.0
        assert record["loss"] == pytest.approx(record["inner/1/loss"], abs=1e-7)


def test_run_fractions_are_consistent(tiny_run):
    _, _, records = tiny_run
    for r in records[1:]:
        shares = [r[f"grad_tokens/{k}"] for k in ("active_frac", "zero_adv_frac", "clipped_frac")]
        assert sum(shares) == pytest.approx(1.0, abs=1e-5)
        assert r["zero_var/all_correct_frac"] + r["zero_var/all_wrong_frac"] <= r["zero_var/frac"] + 1e-7
        assert 0.0 <= r["accuracy/constant_group_frac"] <= 1.0
        assert 0.0 <= r["zero_var/frac"] <= 1.0
        assert 0.0 <= r["accuracy"] <= 1.0 and 1.0 <= r["len/mean"] <= r["len/max"] <= 12
        assert r["kl/k3"] >= 0.0 and r["kl/k2"] >= 0.0
    # the warm start leaves accuracy partial: some step has a learning signal
    assert any(r["adv/abs_mean"] > 0 for r in records[1:])


def test_eval_keys_at_step_zero_every_eval_and_the_last_step(tiny_run):
    _, _, records = tiny_run
    with_eval = [r["step"] for r in records if EVAL_KEYS <= set(r)]
    without_eval = [r["step"] for r in records if not set(r) & EVAL_KEYS]
    assert with_eval == [0, 2, 3] and without_eval == [1]
    assert set(records[0]) == {"step", "samples", "tokens", "time/elapsed"} | EVAL_KEYS
    for r in records:
        if r["step"] in with_eval:
            assert all(0.0 <= r[k] <= 1.0 for k in EVAL_KEYS - {"time/eval"}) and r["time/eval"] > 0
            assert r["eval/pass@1"] <= r["eval/pass@4"]


def test_offline_wandb_writes_inside_the_run_dir(tiny_run):
    run_dir, summary, _ = tiny_run
    assert (run_dir / "wandb").is_dir()
    assert any(p.name.startswith("offline-run-") for p in (run_dir / "wandb").iterdir())
    assert summary["wandb_id"]


def test_run_dir_layout(tiny_run):
    run_dir, summary, records = tiny_run
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["steps"] == 3 and saved["group_size"] == 4 and saved["out_dir"] == str(run_dir)
    assert (run_dir / "checkpoints" / "step_000003" / "model.safetensors").is_file()
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    # step 1 is always logged: SAMPLE_ROWS = 2 prompts x G = 4 completions
    assert len(samples) == 8 and {s["step"] for s in samples} == {1}
    assert summary["final"]["step"] == 3 and "time/step" not in summary["final"]
