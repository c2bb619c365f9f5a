"""Probes: pure functions of tensors the trainer already holds -> dict[str, Tensor], measuring the
mechanisms the ablations are about rather than their outcome.

Liu et al. 2025 ("Understanding R1-Zero-like Training: A Critical Perspective", Dr. GRPO) name two
biases of GRPO's objective:
- Length bias. seq_mean_token_mean divides completion i's token losses by |o_i|, so each token of a
  long completion moves the policy less than a token of a short one: short correct answers are
  rewarded more per token, and long wrong answers penalised less per token. `length_bias_metrics`
  correlates the per-token gradient weight with the length, separately for A > 0 and A < 0; the
  per-token weights are read off `grpo.losses.AGGREGATIONS` by autograd
  (`aggregation_token_weights`), so the probe always measures the loss the run optimises.
- Difficulty bias. Dividing the group-centred reward by the group's std gives a binary-reward group
  with solve rate q a mean |A| of 2 sqrt(q (1-q)) (population std) instead of 2 q (1-q) without it:
  relative to centring alone it upweights prompts that are nearly always or nearly never solved by
  1 / sqrt(q (1-q)). `difficulty_metrics` shows where the step's gradient scale went, per difficulty
  level of the task (zero-variance groups, which get no gradient, are counted in).
A third probe follows prompts that recur (training from a fixed pool): the per-prompt ledger records
how a prompt's group moves between all wrong, mixed and all correct from one visit to the next, and
whether its previous solve rate predicted that its group would carry no signal now.

The keys they log, with what each measures, are in the metric catalogue (grpo/metrics.py and the
README): by_difficulty/*, bias/len_corr_*, ledger/*.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grpo import GrpoError
from grpo.losses import AGGREGATIONS

# Solve states of a prompt's group (solve_state).
ALL_WRONG, MIXED, ALL_CORRECT = 0, 1, 2
LEDGER_MOVES = {
    "ledger/wrong_to_mixed": (ALL_WRONG, MIXED),
    "ledger/mixed_to_correct": (MIXED, ALL_CORRECT),
    "ledger/wrong_to_correct": (ALL_WRONG, ALL_CORRECT),
    "ledger/correct_to_mixed": (ALL_CORRECT, MIXED),
    "ledger/mixed_to_wrong": (MIXED, ALL_WRONG),
    "ledger/correct_to_wrong": (ALL_CORRECT, ALL_WRONG),
}


def difficulty_metrics(total: Tensor, correct: Tensor | None, advantages: Tensor,
                       labels: list[str]) -> dict[str, Tensor]:
    """Accuracy, zero-variance share, gradient scale and share of groups per difficulty level.

    total, correct (float 0/1, or None without a correctness reward), advantages: [P, G]; labels: P
    strings, labels[p] the level of prompt p. A prompt labelled "" (the task has no levels) belongs to
    no level but still counts in the denominator of `groups`, so the levels' groups sum to the share of
    labelled prompts. Only levels present in the step get keys; no labels at all gives {}.
    """
    if len(labels) != total.shape[0]:
        raise GrpoError(f"difficulty_metrics: {len(labels)} labels for {total.shape[0]} prompts")
    constant = total.amax(-1) == total.amin(-1)                          # [P]
    out = {}
    for level in sorted(set(labels) - {""}):
        at_level = torch.tensor([label == level for label in labels], device=total.device)   # [P]
        prefix = f"by_difficulty/{level}"
        if correct is not None:
            out[f"{prefix}/accuracy"] = correct[at_level].float().mean()
        out[f"{prefix}/zero_var_frac"] = constant[at_level].float().mean()
        out[f"{prefix}/weight"] = advantages[at_level].abs().mean()
        out[f"{prefix}/groups"] = at_level.float().mean()
    return out


def aggregation_token_weights(lengths: Tensor, aggregation: str, num_seqs: float, num_tokens: float,
                              max_len: float) -> Tensor:
    """d(loss)/d(token loss) for a token of each completion under `aggregation`: [N] (float32).

    lengths: [N] completion tokens the loss covers. The weights are read off AGGREGATIONS[aggregation]
    by autograd, not restated, so they follow the loss wherever it goes: 1 / (num_seqs |o_i|) for
    seq_mean_token_mean, 1 / num_tokens for token_mean, 1 / (num_seqs max_len) for
    seq_mean_token_sum_norm. A zero-length row has no token and gets 0. Works under torch.no_grad().
    Pass the normalisers the loss gets (policy_loss clamps num_tokens to >= 1; 0 here gives NaN).
    """
    if aggregation not in AGGREGATIONS:
        raise GrpoError(f"unknown aggregation {aggregation!r}; choose from {sorted(AGGREGATIONS)}")
    if lengths.numel() == 0:
        return torch.zeros(0, device=lengths.device)
    # A shape needs a Python int; at least one column, so every row has a position 0 to read.
    width = max(int(lengths.max()), 1)
    positions = torch.arange(width, device=lengths.device)
    mask = (positions < lengths.unsqueeze(-1)).float()                   # [N, width]; 0 = after the end
    with torch.enable_grad():
        tok_loss = torch.zeros_like(mask, requires_grad=True)
        loss = AGGREGATIONS[aggregation](tok_loss, mask, num_seqs=num_seqs, num_tokens=num_tokens,
                                         max_len=max_len)
        (grad,) = torch.autograd.grad(loss, tok_loss)
    # Every token of a row gets the same weight; column 0 is a token of each non-empty row, and a
    # masked position (all of an empty row) gets gradient 0 through the multiplication by the mask.
    return grad[:, 0]


def _pearson(x: Tensor, y: Tensor) -> Tensor | None:
    """Pearson correlation of two [n] tensors; None when n < 3 or either is constant."""
    if x.numel() < 3 or bool(x.amax() == x.amin()) or bool(y.amax() == y.amin()):
        return None
    # float64: the deviations of nearly equal weights lose digits in float32.
    xc, yc = x.double() - x.double().mean(), y.double() - y.double().mean()
    r = (xc * yc).sum() / ((xc * xc).sum() * (yc * yc).sum()).sqrt()
    return r.clamp(-1.0, 1.0)                                            # rounding can step past +-1


def length_bias_metrics(advantages: Tensor, lengths: Tensor, aggregation: str, num_seqs: float,
                        num_tokens: float, max_len: float) -> dict[str, Tensor]:
    """Correlation between a completion's per-token gradient weight and its length, per sign of A.

    advantages, lengths (tokens the loss covers): [N]; the normalisers as passed to the loss. The
    per-token weight of completion i is w_i = |A_i| * aggregation_token_weights(...)_i. Under
    seq_mean_token_mean w_i = |A_i| / (num_seqs |o_i|): at equal |A| longer completions get less weight
    per token, a negative correlation for both signs (longer wrong answers are penalised less per
    token: Dr. GRPO's length bias). Under token_mean and seq_mean_token_sum_norm the aggregation weight
    is the same for every token, so the correlation is corr(|A_i|, |o_i|): it comes from A alone.
    Completions with no tokens in the loss have no per-token weight and are left out. A key is absent
    when fewer than 3 completions have that sign or either variable is constant among them.
    """
    weights = advantages.abs() * aggregation_token_weights(lengths, aggregation, num_seqs, num_tokens,
                                                           max_len).to(advantages.dtype)
    has_tokens = lengths > 0
    out = {}
    for key, sign in (("bias/len_corr_pos", advantages > 0), ("bias/len_corr_neg", advantages < 0)):
        chosen = sign & has_tokens
        r = _pearson(weights[chosen], lengths[chosen].float())
        if r is not None:
            out[key] = r
    return out


def solve_state(rate: Tensor) -> Tensor:
    """A group's solve rate -> ALL_WRONG (0, rate == 0), MIXED (1) or ALL_CORRECT (2, rate == 1); long.

    rate: any shape, values in [0, 1] (the share of the group's completions judged correct). A NaN
    rate maps to 0; mask it out first.
    """
    return (rate > 0).long() + (rate >= 1).long()


def ledger_metrics(previous_rates: Tensor, current_rates: Tensor, group_size: int) -> dict[str, Tensor]:
    """How the step's recurring prompts moved since their previous visit.

    previous_rates: [P] solve rate of each prompt's group at its previous visit, NaN where the prompt
    had none; current_rates: [P] this step's solve rates. The trainer keeps the previous rates (one
    per prompt index); this function only sees tensors. With no revisited prompt only
    ledger/revisit_frac is a key. zero_var_predicted takes q from the previous visit alone, so it is
    independent of this step's groups and can disagree with zero_var_measured.
    """
    # The trainer builds the previous rates on the CPU from its dict; the current ones may be on a GPU.
    previous_rates = previous_rates.to(current_rates.device, current_rates.dtype)
    revisited = ~torch.isnan(previous_rates)                             # [P]
    out = {"ledger/revisit_frac": revisited.float().mean()}
    if not bool(revisited.any()):
        return out
    before, now = previous_rates[revisited], current_rates[revisited]
    state_before, state_now = solve_state(before), solve_state(now)
    for key, (start, end) in LEDGER_MOVES.items():
        out[key] = ((state_before == start) & (state_now == end)).float().mean()
    out["ledger/zero_var_measured"] = (state_now != MIXED).float().mean()
    out["ledger/zero_var_predicted"] = (before ** group_size + (1 - before) ** group_size).mean()
    return out
