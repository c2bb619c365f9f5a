"""Probes: pure functions of tensors the trainer already holds -> dict[str, Tensor], measuring the
mechanisms the ablations are about rather than their outcome.

Liu et al. 2025 ("Understanding R1-Zero-like Training: A Critical Perspective", Dr. GRPO) name two
biases of GRPO's objective:
- Length bias. seq_mean_token_mean divides completion i's token losses by |o_i|, so each token of a
  long completion moves the policy less than a token of a short one: short correct answers are
  rewarded more per token, and long wrong answers penalised less per token. `length_bias_metrics`
  correlates the per-token gradient weight with the length within each group, separately for A > 0
  and A < 0, and logs how much lengths spread within groups. Within: pooled over groups, |A| and
  length both move with the prompt's difficulty and the correlation reads the difficulty mixture,
  not the aggregation. The per-token weights are read off `grpo.formulas.losses.AGGREGATIONS` by autograd
  (`aggregation_token_weights`), so the probe always measures the loss the run optimises.
- Difficulty bias. Dividing the group-centred reward by the group's std gives a binary-reward group
  with solve rate q a mean |A| of 2 sqrt(q (1-q)) (population std) instead of 2 q (1-q) without it:
  relative to centring alone it upweights prompts that are nearly always or nearly never solved by
  1 / sqrt(q (1-q)). `difficulty_metrics` shows where the step's gradient went, per difficulty level
  of the task: each level's share of the gradient weight |A| x per-token weight x tokens, which is
  comparable across aggregations (zero-variance groups, which get no gradient, are counted in).
A third probe follows prompts that recur (training from a fixed pool): the per-prompt ledger records
how a prompt's group moves between all wrong, mixed and all correct from one visit to the next, and
compares the share of groups without signal now with an unbiased prediction from the previous visit.

Each probe is calibrated on simulated steps with a known answer (grpo/algorithm/known_answers.py,
tests/test_calibration_probes.py): it reads null on a null case and finds a planted effect.

The keys they log, with what each measures, are in the metric catalogue (grpo/algorithm/metrics.py, copied to
docs/metrics.md): by_difficulty/*, bias/len_corr_*, bias/len_spread_within, ledger/*.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grpo import GrpoError
from grpo.formulas.losses import AGGREGATIONS

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


def difficulty_metrics(total: Tensor, correct: Tensor | None, advantages: Tensor, labels: list[str],
                       lengths: Tensor, aggregation: str, num_seqs: float, num_tokens: float,
                       max_len: float) -> dict[str, Tensor]:
    """Accuracy, zero-variance share, share of the gradient weight and share of groups per difficulty level.

    total, correct (float 0/1, or None without a correctness reward), advantages, lengths (tokens the
    loss covers): [P, G]; labels: P strings, labels[p] the level of prompt p; the normalisers as passed
    to the loss. A prompt labelled "" (the task has no levels) belongs to no level but still counts in
    the denominators of `groups` and `weight`, so the levels' values sum to the share of labelled
    prompts (to 1 when every prompt has a level). Only levels present in the step get keys; no labels
    at all gives {}. `weight` is level d's part of the step's gradient weight sum_i |A_i| w_i |o_i|
    (`gradient_weights`), i.e. of the sum over the loss's tokens of |d loss / d logp| on-policy; it is
    absent when that sum is 0 (every group constant: no gradient to share).
    """
    if len(labels) != total.shape[0]:
        raise GrpoError(f"difficulty_metrics: {len(labels)} labels for {total.shape[0]} prompts")
    constant = total.amax(-1) == total.amin(-1)                          # [P]
    per_prompt = (gradient_weights(advantages, lengths, aggregation, num_seqs, num_tokens, max_len)
                  * lengths.double()).sum(-1)                            # [P]: |A| w |o| summed over the group
    step_weight = per_prompt.sum()
    has_weight = bool(step_weight > 0)                                   # False also for NaN (num_tokens 0)
    out = {}
    for level in sorted(set(labels) - {""}):
        at_level = torch.tensor([label == level for label in labels], device=total.device)   # [P]
        prefix = f"by_difficulty/{level}"
        if correct is not None:
            out[f"{prefix}/accuracy"] = correct[at_level].float().mean()
        out[f"{prefix}/zero_var_frac"] = constant[at_level].float().mean()
        if has_weight:
            out[f"{prefix}/weight"] = (per_prompt[at_level].sum() / step_weight).float()
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


def gradient_weights(advantages: Tensor, lengths: Tensor, aggregation: str, num_seqs: float, num_tokens: float,
                     max_len: float) -> Tensor:
    """Per-token gradient weight of each completion, |A_i| times the aggregation's weight per token: float64,
    the shape of advantages (any; lengths the same shape, tokens the loss covers).

    On-policy (ratio 1) this is |d loss / d logp| for every token of completion i; a completion with no
    token in the loss gets 0. float64: the deviations of nearly equal weights lose digits in float32.
    """
    token_weights = aggregation_token_weights(lengths.flatten(), aggregation, num_seqs, num_tokens, max_len)
    return advantages.double().abs() * token_weights.double().view(lengths.shape)


# Relative spread below which a group's values count as equal: float32 keeps 24 bits (6e-8 relative per
# rounding); a few roundings in the advantage and the aggregation's weight stay well below 1e-6.
ROUNDING = 1e-6


def relative_to_group(values: Tensor, chosen: Tensor) -> Tensor:
    """(v - m_p) / m_p for the chosen entries, m_p the mean of row p's chosen values; 0 elsewhere.

    values (>= 0), chosen (bool): [P, G], a row is a group; float64 out. A row whose chosen values are
    equal to float32 rounding (largest - smallest <= ROUNDING x their mean) gets exactly 0: advantages
    are float32, so values equal in exact arithmetic can differ in their last bits, and those bits would
    otherwise make a correlation out of nothing (a population's batched forward, whose log-probs round
    differently, moved bias/len_corr_pos from -0.76 to -0.99 through a KL-in-reward penalty's last bits).
    So does a row with none chosen or with mean 0.
    """
    values, weight = values.double(), chosen.double()
    mean = (values * weight).sum(-1, keepdim=True) / weight.sum(-1, keepdim=True).clamp(min=1)   # none chosen: 0
    largest = torch.where(chosen, values, -torch.inf).amax(-1, keepdim=True)
    smallest = torch.where(chosen, values, torch.inf).amin(-1, keepdim=True)
    # values >= 0, so a mean of 0 means all chosen values are 0: the clamp only avoids 0 / 0.
    relative = (values - mean) * weight / mean.clamp(min=torch.finfo(torch.float64).tiny)
    return torch.where(largest - smallest <= ROUNDING * mean, 0.0, relative)


def within_group_correlation(x: Tensor, y: Tensor, chosen: Tensor) -> Tensor | None:
    """Pooled within-group correlation of x and y (both >= 0) over the chosen entries: [P, G], rows are groups.

    Each value becomes its relative deviation from the mean of its group's chosen values
    (`relative_to_group`), and the deviations of all groups are correlated together (about 0, not
    about their mean: each group's deviations already sum to 0). Relative, so that groups whose
    scales differ (|A| and length both depend on the prompt's difficulty) count alike. None when the
    within-group degrees of freedom, sum_p (n_p - 1) over rows with n_p > 0 chosen, are below 2 (a
    single pair always gives +-1), or when y never varies within a group; 0 when x never varies
    within a group (no dependence at all).
    """
    dof = (chosen.sum(-1) - 1).clamp(min=0).sum()
    if int(dof) < 2:
        return None
    dx, dy = relative_to_group(x, chosen), relative_to_group(y, chosen)
    sxx, syy, sxy = (dx * dx).sum(), (dy * dy).sum(), (dx * dy).sum()
    if not bool(syy > 0):
        return None
    if not bool(sxx > 0):
        return torch.zeros((), dtype=torch.float64, device=x.device)
    return (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0)                  # rounding can step past +-1


def length_spread_within(lengths: Tensor) -> Tensor | None:
    """Pooled within-group coefficient of variation of completion lengths over the completions with
    tokens in the loss: sqrt(sum_p sum_i ((|o_pi| - m_p) / m_p)^2 / sum_p (n_p - 1)).

    lengths: [P, G]; m_p, n_p: the mean length and the count of group p's completions with tokens. A
    group with one such completion adds nothing; None when no group has two. 0 when every group's
    completions have equal lengths.
    """
    has_tokens = lengths > 0
    dof = (has_tokens.sum(-1) - 1).clamp(min=0).sum()
    if int(dof) < 1:
        return None
    relative = relative_to_group(lengths, has_tokens)
    return ((relative * relative).sum() / dof).sqrt()


def length_bias_metrics(advantages: Tensor, lengths: Tensor, aggregation: str, num_seqs: float,
                        num_tokens: float, max_len: float) -> dict[str, Tensor]:
    """Within-group correlation between a completion's per-token gradient weight and its length, per
    sign of A, and the within-group length spread.

    advantages, lengths (tokens the loss covers): [P, G]; the normalisers as passed to the loss. The
    per-token weight w_i = |A_i| * aggregation_token_weights(...)_i (`gradient_weights`). Weight and
    length are taken relative to their group's mean over the completions of the same sign before they
    are correlated (`within_group_correlation`), so the probe compares completions of one prompt only:
    across groups |A| and length both move with the prompt's difficulty (for binary rewards |A| is
    1-q or q times the group's scale), which a correlation pooled over groups reads as a length bias.
    Under seq_mean_token_mean w_i = |A_i| / (num_seqs |o_i|) and |A| is equal within a group and sign
    for binary rewards, so the correlation is near -1 whenever lengths differ within groups (Dr.
    GRPO's length bias), for both signs. Under token_mean and seq_mean_token_sum_norm the aggregation
    weight is the same for every token, so only a length-dependent |A| (a length penalty, a format
    reward that goes with length) makes it non-zero; with binary rewards it is 0. A correlation says
    how consistently the weight falls with length, not by how much: bias/len_spread_within
    (`length_spread_within`) says how much lengths vary within groups, and under seq_mean_token_mean a
    group's per-token weights vary relatively by about as much. Completions with no tokens in the loss
    are left out. A correlation key is absent when the completions of that sign have fewer than 2
    within-group degrees of freedom or their lengths never differ within a group; it is 0 when their
    weights never differ within a group.
    """
    if advantages.dim() != 2 or lengths.shape != advantages.shape:
        raise GrpoError(f"length_bias_metrics: advantages and lengths must both be [P, G], got "
                        f"{tuple(advantages.shape)} and {tuple(lengths.shape)}")
    weights = gradient_weights(advantages, lengths, aggregation, num_seqs, num_tokens, max_len)   # [P, G]
    has_tokens = lengths > 0
    out = {}
    # A completion's sign counts where |A| exceeds the step's rounding: a group of equal rewards whose A is
    # only a KL-in-reward penalty's last bits (at step 1 the policy is the reference: k1 is rounding, ~1e-8)
    # would otherwise sort its completions into signs by noise.
    tiny = ROUNDING * float(advantages.abs().max()) if advantages.numel() else 0.0
    for key, sign in (("bias/len_corr_pos", advantages > tiny), ("bias/len_corr_neg", advantages < -tiny)):
        r = within_group_correlation(weights, lengths, sign & has_tokens)
        if r is not None:
            out[key] = r
    spread = length_spread_within(lengths)
    if spread is not None:
        out["bias/len_spread_within"] = spread
    return out


def solve_state(rate: Tensor) -> Tensor:
    """A group's solve rate -> ALL_WRONG (0, rate == 0), MIXED (1) or ALL_CORRECT (2, rate == 1); long.

    rate: any shape, values in [0, 1] (the share of the group's completions judged correct). A NaN
    rate maps to 0; mask it out first.
    """
    return (rate > 0).long() + (rate >= 1).long()


def unbiased_power(successes: Tensor, trials: int, power: int) -> Tensor:
    """Unbiased estimate of q^power from `successes` ~ Binomial(trials, q): C(k, power) / C(trials, power).

    It is the chance that `power` of the trials drawn without replacement were all successes, i.e.
    prod_j (k - j) / (trials - j) over j < power; with power == trials it is the indicator k == trials.
    successes: any shape, integer-valued (float or long); float64 out. Needs power <= trials: from
    Binomial(trials, q) only polynomials of degree <= trials in q have an unbiased estimate.
    """
    if not 0 <= power <= trials:
        raise GrpoError(f"no unbiased estimate of q^{power} from {trials} trials (needs {power} <= {trials})")
    j = torch.arange(power, dtype=torch.float64, device=successes.device)
    # k < power: the factor j = k is exactly 0, so the product is 0 (the later negative factors do not matter).
    return ((successes.double().unsqueeze(-1) - j) / (trials - j)).prod(-1)


def unbiased_zero_var_frac(successes: Tensor, trials: int, group_size: int) -> Tensor:
    """Unbiased estimate of the mean over prompts of q^G + (1-q)^G, the chance a group of G is all correct
    or all wrong, from k = successes [P] correct of `trials` independent samples per prompt (trials >= G):
    mean_p C(k_p, G)/C(n, G) + C(n - k_p, G)/C(n, G). Float64, 0-dim."""
    return (unbiased_power(successes, trials, group_size) + unbiased_power(trials - successes, trials, group_size)).mean()


def ledger_metrics(previous_rates: Tensor, current_rates: Tensor, group_size: int,
                   previous_group_size: int | None = None) -> dict[str, Tensor]:
    """How the step's recurring prompts moved since their previous visit.

    previous_rates: [P] solve rate of each prompt's group at its previous visit, NaN where the prompt
    had none; current_rates: [P] this step's solve rates (groups of group_size). The trainer keeps the
    previous rates (one per prompt index); this function only sees tensors. With no revisited prompt
    only ledger/revisit_frac is a key.

    zero_var_predicted is an unbiased estimate of the share of revisited groups that would be constant
    now if each prompt's solve rate q had not moved, E[q^G + (1-q)^G]. Plugging the previous visit's
    rate into q^G + (1-q)^G is biased upward (the function is convex, and a constant previous group
    predicts 1). Instead q^G and (1-q)^G are estimated by `unbiased_power` from the previous visit's
    k = rate * G' correct of G' = previous_group_size (default group_size). With G' = G that is the
    previous visit's own indicator of a constant group, so predicted - measured compares the same
    indicator at two visits: under a frozen policy its expectation is 0. That stays true under dynamic
    sampling, where both visits passed the same filter (a visit counts only when its group entered
    the batch), but there both keys count only such groups (mixed, plus the filled ones), not the
    pool's zero-variance share. With G' < G no unbiased estimate exists; the key is then absent.
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
    # Persistence (GRESO): with ledger/zero_var_measured these give P(constant now | constant before) and
    # P(constant now | mixed before) once summed over steps.
    out["ledger/zero_var_before"] = (state_before != MIXED).float().mean()
    out["ledger/zero_var_kept"] = ((state_before != MIXED) & (state_now != MIXED)).float().mean()
    trials = group_size if previous_group_size is None else previous_group_size
    if group_size <= trials:
        solved = (before.double() * trials).round()                      # the rate is k / G' exactly
        predicted = unbiased_power(solved, trials, group_size) + unbiased_power(trials - solved, trials, group_size)
        out["ledger/zero_var_predicted"] = predicted.mean().to(current_rates.dtype)
    return out


def step_probe_metrics(rewards: Tensor, correct: Tensor | None, advantages: Tensor, labels: list[str],
                       loss_lengths: Tensor, aggregation: str, max_len: float) -> dict[str, Tensor]:
    """The difficulty and length-bias probes of one whole step, with the loss's normalisers for the step
    taken as one mini-batch (all its completions and loss tokens). The trainer and `grpo rescore` both
    call this, so a rescored step is probed exactly as a trained one.

    rewards, correct (or None), advantages, loss_lengths (tokens the loss covers): [P, G]; labels: P levels.
    """
    norms = dict(aggregation=aggregation, num_seqs=float(loss_lengths.numel()),
                 num_tokens=float(loss_lengths.sum()), max_len=max_len)
    return {**difficulty_metrics(rewards, correct, advantages, labels, loss_lengths, **norms),
            **length_bias_metrics(advantages, loss_lengths, **norms)}
