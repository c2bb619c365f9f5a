"""The metric catalogue: pure functions of tensors the trainer already holds -> dict[str, Tensor].

Keys are a contract (analysis/ and outside checks read them); `.item()` happens once, in
`to_floats`, at the logging boundary. A key that cannot be computed in a step is left out, never NaN.

axes
  step                        GRPO step (0 = the evaluation before training)
  samples                     completions generated so far
  tokens                      completion tokens generated so far (EOS included, padding not)
  time/elapsed                seconds of training so far (continues across resumes)
reward
  reward/mean, reward/std     total (weighted) reward over the step's completions
  reward/<fn>/mean            mean of each reward function, unweighted
  accuracy                    share of completions the `correct` reward calls right
advantage
  adv/mean, adv/std           over completions
  adv/abs_mean                mean |A|: the scale of the policy gradient
  adv/zero_frac               share of completions with A = 0 exactly
zero-variance groups
  zero_var/frac               share of groups whose total reward is constant (no signal)
  zero_var/all_correct_frac   share of groups where every completion is correct
  zero_var/all_wrong_frac     share of groups where every completion is wrong
  zero_var/expected_frac      mean over prompts of p^G + (1-p)^G, p = the prompt's observed solve rate
KL to the reference (only when a reference exists, kl_beta > 0), over completion tokens, inner epoch 1
  kl/k1, kl/k2, kl/k3         Schulman's three estimators of KL(pi_theta || pi_ref)
policy (means over all inner epochs and micro-batches, token-weighted)
  clip/low_frac               share of tokens with A < 0 and ratio < 1 - clip_eps_low (no gradient)
  clip/high_frac              share of tokens with A > 0 and ratio > 1 + clip_eps_high (no gradient)
  ratio/mean, ratio/max       importance ratio pi_theta / pi_old
  entropy                     entropy of the sampling distribution (at the temperature), per completion token
  loss                        policy loss, mean over optimizer steps
  grad_norm                   gradient norm before clipping, mean over optimizer steps
per inner epoch k = 1..mu
  inner/<k>/clip_frac         clip/low_frac + clip/high_frac in epoch k (0 at k = 1 with one mini-batch)
  inner/<k>/ratio_mean        mean ratio in epoch k
  inner/<k>/kl_old            k3 estimate of KL(pi_old || pi_theta) in epoch k (tokens sampled from pi_old)
  inner/<k>/loss              loss in epoch k (sum over its mini-batches / number of mini-batches)
effective gradient (shares of completion tokens, over all inner epochs; they add up to 1)
  grad_tokens/active_frac     tokens whose policy-gradient term is non-zero
  grad_tokens/zero_adv_frac   tokens of completions with A = 0
  grad_tokens/clipped_frac    tokens with A != 0 whose clip bound is active
  grad_tokens/truncated_frac  tokens of truncated completions (always 0 here: they are trained on)
length
  len/mean, len/max           completion length in tokens (EOS included)
  len/correct_mean            mean length of correct completions (absent if none)
  len/wrong_mean              mean length of wrong completions (absent if none)
  len/truncated_frac          share of completions that hit max_new_tokens without EOS
timing (seconds)
  time/rollout                sampling the completions
  time/reward                 decoding, rewards, advantages, reference (and pi_old) log-probs
  time/train                  policy forward and backward passes
  time/optimizer              gradient clipping and AdamW steps
  time/metrics                computing this catalogue for the step
  time/step                   the whole step
eval (on evaluation steps: 0, every eval_every, the last)
  eval/accuracy               greedy accuracy on held-out prompts
  eval/pass@1, eval/pass@<G>  unbiased pass@k from n sampled completions per prompt
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def reward_metrics(total: Tensor, parts: dict[str, Tensor], correct: Tensor) -> dict[str, Tensor]:
    """total, parts[*], correct: [P, G] (correct as float 0/1)."""
    out = {"reward/mean": total.mean(), "reward/std": total.std() if total.numel() > 1 else total.new_zeros(()),
           "accuracy": correct.mean()}
    for name, values in parts.items():
        out[f"reward/{name}/mean"] = values.mean()
    return out


def advantage_metrics(advantages: Tensor) -> dict[str, Tensor]:
    flat = advantages.flatten()
    return {"adv/mean": flat.mean(), "adv/std": flat.std() if flat.numel() > 1 else flat.new_zeros(()),
            "adv/abs_mean": flat.abs().mean(), "adv/zero_frac": (flat == 0).float().mean()}


def zero_variance_metrics(total: Tensor, correct: Tensor) -> dict[str, Tensor]:
    """Groups without signal, split by cause, beside the i.i.d. expectation p^G + (1-p)^G."""
    group_size = total.shape[-1]
    constant = (total.amax(-1) == total.amin(-1)).float()
    solve_rate = correct.mean(-1)
    return {
        "zero_var/frac": constant.mean(),
        "zero_var/all_correct_frac": (correct.amin(-1) == 1).float().mean(),
        "zero_var/all_wrong_frac": (correct.amax(-1) == 0).float().mean(),
        "zero_var/expected_frac": (solve_rate ** group_size + (1 - solve_rate) ** group_size).mean(),
    }


def length_metrics(completion_mask: Tensor, truncated: Tensor, correct: Tensor) -> dict[str, Tensor]:
    """completion_mask [N, T]; truncated, correct [N]."""
    lengths = completion_mask.sum(-1)
    out = {"len/mean": lengths.mean(), "len/max": lengths.max(), "len/truncated_frac": truncated.float().mean()}
    is_correct = correct.bool()
    if is_correct.any():
        out["len/correct_mean"] = lengths[is_correct].mean()
    if (~is_correct).any():
        out["len/wrong_mean"] = lengths[~is_correct].mean()
    return out


def entropy_metric(entropy: Tensor, completion_mask: Tensor) -> dict[str, Tensor]:
    return {"entropy": (entropy * completion_mask).sum() / completion_mask.sum().clamp(min=1)}


def gradient_token_metrics(advantages: Tensor, completion_mask: Tensor, clipped_frac: Tensor) -> dict[str, Tensor]:
    """advantages [N], completion_mask [N, T]; clipped_frac = token share clipped (A != 0 by definition)."""
    num_tokens = completion_mask.sum().clamp(min=1)
    zero_adv = (completion_mask * (advantages == 0).float().unsqueeze(-1)).sum() / num_tokens
    truncated = zero_adv.new_zeros(())
    return {"grad_tokens/zero_adv_frac": zero_adv, "grad_tokens/clipped_frac": clipped_frac,
            "grad_tokens/truncated_frac": truncated,
            "grad_tokens/active_frac": (1 - zero_adv - clipped_frac - truncated).clamp(min=0)}


class TokenWeightedMean:
    """Accumulates 0-dim statistics weighted by token counts (micro-batches differ in size)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.weight: dict[str, Tensor] = {}
        self.maxima: dict[str, Tensor] = {}

    def add(self, stats: dict[str, Tensor], weight: Tensor, prefix: str = "") -> None:
        for key, value in stats.items():
            if key == "tokens":
                continue
            key = prefix + key
            if key.endswith("/max"):
                self.maxima[key] = torch.maximum(self.maxima[key], value) if key in self.maxima else value
                continue
            self.sums[key] = self.sums.get(key, 0) + value * weight
            self.weight[key] = self.weight.get(key, 0) + weight

    def result(self) -> dict[str, Tensor]:
        out = {k: self.sums[k] / self.weight[k].clamp(min=1) for k in self.sums}
        out.update(self.maxima)
        return out


def to_floats(metrics: dict[str, Tensor | float | int]) -> dict[str, float]:
    """The logging boundary: one `.item()` per value; non-finite values are dropped, never logged."""
    out = {}
    for key, value in metrics.items():
        number = value.item() if isinstance(value, Tensor) else value
        if isinstance(number, float) and not math.isfinite(number):
            continue
        out[key] = number
    return out
