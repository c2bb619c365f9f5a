"""The metric catalogue: pure functions of tensors the trainer already holds -> dict[str, Tensor].

Keys are a contract (analysis/ and outside checks read them); `.item()` happens once, in
`to_floats`, at the logging boundary. A key that cannot be computed in a step is left out, never NaN.
"Correct" is the run's correctness reward: `correct` when --reward-weights names it, else
`correct_extracted` when it names that (TrainConfig.correctness_reward); evaluation uses the same.

axes
  step                        GRPO step (0 = the evaluation before training)
  samples                     completions generated so far
  tokens                      completion tokens generated so far (EOS included, padding not)
  time/elapsed                seconds of training so far (continues across resumes)
reward
  reward/mean, reward/std     total (weighted) reward over the step's completions
  reward/<fn>/mean            mean of each reward function, unweighted (overlong: DAPO's soft overlong
                              punishment, only with --overlong-buffer)
  reward/kl_penalty/mean      kl_beta * sum_t k1 taken from each completion's reward before the
                              advantage (only with --kl-placement reward)
  accuracy                    share of completions the correctness reward calls right (absent without one)
advantage
  adv/mean, adv/std           over completions
  adv/abs_mean                mean |A|: the scale of the policy gradient
  adv/zero_frac               share of completions with A = 0 exactly
zero-variance groups (the correctness keys only when the run has a correctness reward)
  zero_var/frac               share of groups whose total reward is constant (no signal)
  zero_var/all_correct_frac   share of groups that are zero-variance and all correct
  zero_var/all_wrong_frac     share of groups that are zero-variance and all wrong
                              (the two sum to at most zero_var/frac)
  accuracy/constant_group_frac share of groups whose completions are all correct or all wrong, whatever
                              their other rewards do (no correctness signal)
  zero_var/expected_frac      pbar^G + (1-pbar)^G, pbar = the step's accuracy: the share of groups with
                              constant correctness if every prompt had the same solve rate. By Jensen the
                              measured accuracy/constant_group_frac exceeds it (in expectation) exactly
                              when prompts differ in difficulty
  zero_var/unbiased_frac      step 1 only, with --zero-var-extra-samples n: unbiased estimate of the mean
                              over the step's prompts of q^G + (1-q)^G from k of n extra completions per
                              prompt (their own random stream): C(k,G)/C(n,G) + C(n-k,G)/C(n,G). What
                              accuracy/constant_group_frac measures in expectation; >= the pooled
                              zero_var/expected_frac in expectation (Jensen)
KL to the reference (only when a reference exists: kl_beta > 0, or --kl-reference), over completion tokens,
inner epoch 1
  kl/k1, kl/k2, kl/k3         Schulman's three estimators of KL(pi_theta || pi_ref)
  kl/k3_is                    k3 times the ratio pi_theta / pi_old (equals k3 when on-policy)
  kl/k1_token_std, kl/k3_token_std  sample std of the per-token k1 and k3 over the step's loss tokens, at
                              the rollout policy (pi_old); near the reference k1's is far larger
policy (means over all inner epochs and micro-batches, token-weighted; over the tokens the loss covers)
  clip/low_frac               clip, clip_cov: share of tokens with A < 0 and ratio < 1 - clip_eps_low
  clip/high_frac              clip, clip_cov: share of tokens with A > 0 and ratio > 1 + clip_eps_high
  clip/dual_frac              clip with --dual-clip: share of tokens whose loss the cap -c*A replaces
  clip/delta_frac             clip with --delta: share of tokens (A < 0) the delta cap freezes
  ratio/seq_mean              gspo, gmpo: mean over completions of the sequence ratio (gspo: exp of the
                              mean log-ratio; gmpo: the clipped geometric mean)
  clip/seq_frac               gspo, gmpo: share of completions with a clipped ratio (gspo: the sequence
                              ratio; gmpo: at least one token)
  is_weight/clip_frac         cispo: share of tokens whose importance weight is clipped (they keep a gradient)
  sapo/grad_weight_mean       sapo: mean gradient weight 4 s (1 - s) of the soft gate s (1 on-policy)
  cov/selected_frac           kl_cov, clip_cov: share of tokens selected by Cov(A, logp)
  entropy/kept_frac           share of tokens the top-entropy selection keeps (--top-entropy-quantile < 1)
  ratio/mean, ratio/max       importance ratio pi_theta / pi_old
  entropy                     entropy of the sampling distribution (at the temperature), per completion token
  entropy/cov_logp_adv        Cov(log pi, A) over the step's loss tokens: the mean of (logp_t - mean logp)
                              (A_t - mean A), logp_t the sampler's log-prob of the token drawn, A_t its
                              completion's advantage (Cui et al. 2025: a policy-gradient step changes the
                              entropy by about -lr times it; > 0 when likely tokens get positive advantage)
  loss                        policy loss, mean over optimizer steps
  grad_norm                   gradient norm before clipping, mean over optimizer steps
per inner epoch k = 1..mu
  inner/<k>/clip_frac         share of tokens with A != 0 whose policy gradient the objective cuts in
                              epoch k (clip bounds, detached or unselected tokens); for clip it is
                              clip/low_frac + clip/high_frac (0 at k = 1 with one mini-batch)
  inner/<k>/ratio_mean        mean ratio in epoch k
  inner/<k>/kl_old            k3 estimate of KL(pi_old || pi_theta) in epoch k (tokens sampled from pi_old)
  inner/<k>/loss              loss in epoch k (sum over its mini-batches / number of mini-batches)
effective gradient (shares of completion tokens, over all inner epochs; they add up to 1)
  grad_tokens/active_frac     tokens whose policy-gradient term is non-zero
  grad_tokens/zero_adv_frac   tokens of completions with A = 0
  grad_tokens/clipped_frac    tokens with A != 0 whose policy gradient the objective cuts
  grad_tokens/truncated_frac  tokens of truncated completions, out of the loss (only with --mask-truncated)
length
  len/mean, len/max           completion length in tokens (EOS included)
  len/correct_mean            mean length of correct completions (absent if none)
  len/wrong_mean              mean length of wrong completions (absent if none)
  len/truncated_frac          share of completions that hit max_new_tokens without EOS
by difficulty level d (the task's label of the prompt, e.g. "d2"; only levels drawn in the step;
prompts without a label count in the denominators of groups and weight only)
  by_difficulty/<d>/accuracy  share of level-d completions the correctness reward calls right (absent
                              without it)
  by_difficulty/<d>/zero_var_frac share of level-d groups whose total reward is constant (no signal)
  by_difficulty/<d>/weight    level d's share of the step's gradient weight sum_i |A_i| w_i |o_i|
                              (w_i: the aggregation's weight per token of completion i, |o_i| its tokens
                              in the loss), comparable across aggregations; the levels sum to 1 when
                              every prompt has a level; absent when the sum is 0 (no gradient)
  by_difficulty/<d>/groups    share of the step's groups at level d
length bias (within groups: over completions with tokens in the loss, each value taken relative to the
mean of its group's completions of the same sign, then correlated over all groups; absent with fewer
than 2 within-group degrees of freedom or lengths that never differ within a group)
  bias/len_corr_pos           corr(w_i, |o_i|) within groups over completions with A_i > 0, w_i = |A_i|
                              times the aggregation's weight per token of completion i: < 0 when longer
                              correct completions of a prompt get less gradient per token; 0 when w
                              never differs within a group (Dr. GRPO's aggregation, binary rewards)
  bias/len_corr_neg           the same over A_i < 0: < 0 when longer wrong completions are penalised
                              less per token (Dr. GRPO's length bias)
  bias/len_spread_within      pooled within-group coefficient of variation of the lengths |o_i| > 0:
                              sqrt(sum_p sum_i ((|o_i| - m_p) / m_p)^2 / sum_p (n_p - 1)), m_p and n_p
                              the mean and count of group p; under seq_mean_token_mean a group's
                              per-token weights differ relatively by about as much
prompt ledger (fixed prompt pool; a prompt's state: all wrong, mixed or all correct; the moves and
zero_var keys are over the step's prompts seen before, absent when there are none)
  ledger/revisit_frac         share of the step's prompts with an earlier visit
  ledger/wrong_to_mixed       share of revisited prompts all wrong at the previous visit, mixed now
  ledger/mixed_to_correct     ... mixed then, all correct now
  ledger/wrong_to_correct     ... all wrong then, all correct now
  ledger/correct_to_mixed     ... all correct then, mixed now
  ledger/mixed_to_wrong       ... mixed then, all wrong now
  ledger/correct_to_wrong     ... all correct then, all wrong now (the rest stayed in their state)
  ledger/zero_var_measured    share of revisited prompts whose group is all correct or all wrong now
  ledger/zero_var_before      share of revisited prompts whose group was all correct or all wrong at the
                              previous visit
  ledger/zero_var_kept        share of revisited prompts all correct or all wrong at both visits
  ledger/zero_var_predicted   unbiased estimate of the share expected if no prompt's solve rate q had
                              moved, E[q^G + (1-q)^G]: with G samples at the previous visit, the share
                              of revisited prompts whose group was constant then (under a frozen policy
                              predicted - measured averages 0; with dynamic sampling both count only
                              the groups that entered a batch)
counterfactual gradients (every --counterfactual-every steps; <a> names an alternative of --counterfactuals)
  cf/<a>/cos                  cosine between the alternative's full-batch gradient on this step's
                              rollouts and the run's own, both at the weights the step's last update
                              starts from, ratio against pi_old (so at ratio 1 with one update a step)
  cf/<a>/norm_ratio           the alternative's gradient norm / the run's
dynamic sampling (only with --dynamic-sampling; summed over ranks, rounds: the most any rank needed)
  dynamic/rounds              generation rounds this step needed
  dynamic/dropped_groups      zero-variance groups generated and dropped (their completions count in
                              samples and tokens)
  dynamic/filled_groups       zero-variance groups kept because the round limit was hit
off-policy: the sampler's log-probs pi_rollout against pi_old's, the learner's at the start of the step
(grpo/formulas/offpolicy.py); r = pi_old / pi_rollout per token, R = its product over a completion. The
mismatch/* and ratio_rollout/* keys are logged when the sampler differs from the learner (--rollout-dtype
other than the compute dtype, --staleness > 0) or --rollout-is / --rollout-rs is on, never with
--old-logp sampler (pi_old is then pi_rollout); mismatch/* are over the step's loss tokens before rejection.
When the sampler is the learner at its precision (a correction on, nothing differing), pi_rollout is pi_old
by construction: the keys read exactly 0 and 1 (the decode loop's log-probs differ from the forward's by rounding)
  mismatch/k1                 token mean of log(pi_rollout / pi_old): k1 estimate of KL(pi_rollout || pi_old)
  mismatch/k3                 token mean of r - 1 - log r: k3 estimate of the same KL (>= 0)
  mismatch/chi2_token         token mean of r^2, minus 1: chi^2(pi_old || pi_rollout) per token (a sample
                              estimate: it can be < 0)
  mismatch/chi2_seq           mean over completions of R^2, minus 1 (log R clamped to +-20; it too can be
                              < 0)
  mismatch/ppl_ratio          mean over completions of PPL_old / PPL_rollout = exp(-mean_t log r)
  mismatch/ess                effective sample size of the weights w, (sum w)^2 / (n sum w^2) over the n
                              loss tokens: 1 when all are equal, 1/n when one token carries all
  mismatch/weight_mean        token mean of the --rollout-is weights applied (with none: the raw r, its log
                              clamped to +-20)
  mismatch/weight_max         the largest of those weights
  mismatch/masked_token_frac  share of loss tokens zeroed by a --rollout-is mask mode (token_mask,
                              sequence_mask, icepop) or rejected by --rollout-rs
  mismatch/masked_seq_frac    share of non-empty completions with at least one such token
  mismatch/truncated_token_frac share of loss tokens whose weight a --rollout-is truncate mode clamped
  ratio_rollout/mean, ratio_rollout/max  ratio pi_theta / pi_rollout over the tokens in the loss (means over
                              inner epochs and micro-batches, as ratio/*, which is against pi_old)
  offpolicy/masked_token_frac with --off-policy-mask: share of loss tokens DeepSeek-V3.2's sequence mask
                              drops, decided at every update from the learner's current log-probs
  staleness/policy_lag        with --staleness k > 0: GRPO steps the rollouts' weights lag the
                              learner's at the step's start, min(k, step - 1)
timing (seconds)
  time/rollout                sampling the completions
  time/reward                 decoding, rewards, advantages, reference (and pi_old) log-probs
  time/train                  policy forward and backward passes
  time/optimizer              gradient clipping and AdamW steps
  time/counterfactual         the counterfactual gradients (on the steps that compute them)
  time/metrics                computing this catalogue for the step
  time/step                   the whole step
  time/eval                   the held-out evaluation (on evaluation steps; not part of time/step)
eval (on evaluation steps: 0, every eval_every, the last)
  eval/accuracy               greedy accuracy (correctness reward) on held-out prompts
  eval/pass@1, eval/pass@<G>  unbiased pass@k from n sampled completions per prompt
  eval/pass@16                the same at k = 16, when n >= 16 (--eval-samples; DeepSeekMath's
                              sharpening: pass@1 rises more than pass@16)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from grpo import TrainingDiverged
from grpo.algorithm.step_probes import step_probe_metrics
from grpo.formulas.kl import kl_k1, kl_k3
from grpo.formulas.objectives import SEQUENCE_STATS


def reward_metrics(total: Tensor, parts: dict[str, Tensor], correct: Tensor | None) -> dict[str, Tensor]:
    """total, parts[*], correct: [P, G] (correct as float 0/1, None without a correctness reward)."""
    out = {"reward/mean": total.mean(), "reward/std": total.std() if total.numel() > 1 else total.new_zeros(())}
    if correct is not None:
        out["accuracy"] = correct.mean()
    for name, values in parts.items():
        out[f"reward/{name}/mean"] = values.mean()
    return out


def advantage_metrics(advantages: Tensor) -> dict[str, Tensor]:
    flat = advantages.flatten()
    return {"adv/mean": flat.mean(), "adv/std": flat.std() if flat.numel() > 1 else flat.new_zeros(()),
            "adv/abs_mean": flat.abs().mean(), "adv/zero_frac": (flat == 0).float().mean()}


def zero_variance_metrics(total: Tensor, correct: Tensor | None) -> dict[str, Tensor]:
    """Groups without signal, split by correctness, beside the i.i.d.-difficulty theory.

    total, correct: [P, G]. A zero-variance group counts as all-correct or all-wrong only when its
    correctness is constant too, so the split never exceeds zero_var/frac.
    """
    group_size = total.shape[-1]
    constant = total.amax(-1) == total.amin(-1)
    out = {"zero_var/frac": constant.float().mean()}
    if correct is None:
        return out
    all_correct, all_wrong = correct.amin(-1) == 1, correct.amax(-1) == 0
    accuracy = correct.mean()
    out.update({
        "zero_var/all_correct_frac": (constant & all_correct).float().mean(),
        "zero_var/all_wrong_frac": (constant & all_wrong).float().mean(),
        "accuracy/constant_group_frac": (all_correct | all_wrong).float().mean(),
        "zero_var/expected_frac": accuracy ** group_size + (1 - accuracy) ** group_size,
    })
    return out


def kl_token_std_metrics(logp: Tensor, ref_logp: Tensor, mask: Tensor,
                         sum_fn: Callable[[Tensor], Tensor] = lambda x: x) -> dict[str, Tensor]:
    """kl/k1_token_std, kl/k3_token_std: the sample std (n - 1) of the per-token k1 and k3 over the tokens
    of `mask` (1 = a loss token), from the rollout policy's log-probs `logp` and the reference's [N, T].

    sum_fn combines the per-rank sums (data parallel), so the std is over every rank's tokens. Computed in
    float64 from sums of x and x^2: k3 is O(d^2) near the reference, and its square then is O(d^4).
    Fewer than 2 tokens: no keys.
    """
    weights = mask.double()
    out = {}
    for name, estimator in (("k1", kl_k1), ("k3", kl_k3)):
        # Positions outside the mask may hold anything (even -inf): zero them before the estimator.
        values = torch.where(mask > 0, estimator(logp.double(), ref_logp.double()), 0.0)
        n, total, squares = sum_fn(torch.stack([weights.sum(), (values * weights).sum(), (values ** 2 * weights).sum()]))
        if float(n) < 2:
            return {}
        # max(0, ...): the two sums may cancel to a hair below 0 when every value is equal.
        out[f"kl/{name}_token_std"] = ((squares - total ** 2 / n).clamp(min=0) / (n - 1)).sqrt()
    return out


def length_metrics(lengths: Tensor, truncated: Tensor, correct: Tensor | None) -> dict[str, Tensor]:
    """lengths (completion tokens, EOS included), truncated (0/1), correct (0/1 or None): [N]."""
    lengths = lengths.float()
    out = {"len/mean": lengths.mean(), "len/max": lengths.max(), "len/truncated_frac": truncated.float().mean()}
    if correct is None:
        return out
    is_correct = correct.bool()
    if is_correct.any():
        out["len/correct_mean"] = lengths[is_correct].mean()
    if (~is_correct).any():
        out["len/wrong_mean"] = lengths[~is_correct].mean()
    return out


def entropy_metric(entropy_sums: Tensor, lengths: Tensor) -> dict[str, Tensor]:
    """entropy_sums: per completion, the sampling entropy summed over its tokens; lengths: its tokens [N]."""
    return {"entropy": entropy_sums.sum() / lengths.sum().clamp(min=1)}


def covariance_metric(advantages: Tensor, logp_sums: Tensor, loss_lengths: Tensor) -> dict[str, Tensor]:
    """Cov(log pi, A) over the step's loss tokens, the quantity whose sign Cui et al. 2025 ("The Entropy
    Mechanism of RL for Reasoning LMs") give the entropy change: mean_t (logp_t - mean logp)(A_t - mean A).

    advantages [N] (every token of completion i has A_i), logp_sums [N] (the sampled tokens' log-probs summed
    over i's loss tokens), loss_lengths [N] (i's loss tokens). No loss token at all: 0 (divides by 1).
    """
    lengths = loss_lengths.float()
    tokens = lengths.sum().clamp(min=1)
    mean_logp = logp_sums.sum() / tokens
    mean_adv = (advantages * lengths).sum() / tokens
    # sum_t (A_t - mean A)(logp_t - mean logp) = sum_i (A_i - mean A)(sum_{t in i} logp_t - |o_i| mean logp)
    return {"entropy/cov_logp_adv": ((advantages - mean_adv) * (logp_sums - lengths * mean_logp)).sum() / tokens}


def gradient_token_metrics(advantages: Tensor, lengths: Tensor, loss_lengths: Tensor, cut_frac: Tensor,
                           masked_truncated: bool) -> dict[str, Tensor]:
    """Where the completion tokens' policy gradient goes, as shares of all completion tokens.

    advantages, lengths (tokens), loss_lengths (tokens the loss covers: 0 for a completion that
    --mask-truncated drops): [N]. cut_frac: the share of loss tokens with A != 0 whose policy term the
    objective gives no gradient. truncated_frac is only a key when truncated completions were masked.
    """
    lengths, loss_lengths = lengths.float(), loss_lengths.float()
    total, in_loss = lengths.sum().clamp(min=1), loss_lengths.sum()
    zero_adv = (loss_lengths * (advantages == 0).float()).sum() / total
    clipped = cut_frac * in_loss / total
    out = {"grad_tokens/zero_adv_frac": zero_adv, "grad_tokens/clipped_frac": clipped}
    truncated = (lengths.sum() - in_loss) / total
    if masked_truncated:
        out["grad_tokens/truncated_frac"] = truncated
    out["grad_tokens/active_frac"] = (1 - zero_adv - clipped - truncated).clamp(min=0)
    return out


class TokenWeightedMean:
    """Accumulates 0-dim statistics weighted by token counts (micro-batches differ in size).

    `result` takes the reductions that combine the sums of several processes (data parallel), so
    the means are over every rank's tokens; `*/max` keys take the maximum.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.weight: dict[str, Tensor] = {}
        self.maxima: dict[str, Tensor] = {}

    def add(self, stats: dict[str, Tensor], weight: Tensor, seq_weight: Tensor | None = None) -> None:
        """weight: tokens behind the means; seq_weight: sequences behind the keys in SEQUENCE_STATS."""
        for key, value in stats.items():
            if key in ("tokens", "seqs"):
                continue
            if key.endswith("/max"):
                self.maxima[key] = torch.maximum(self.maxima[key], value) if key in self.maxima else value
                continue
            w = seq_weight if key in SEQUENCE_STATS else weight
            self.sums[key] = self.sums.get(key, 0) + value * w
            self.weight[key] = self.weight.get(key, 0) + w

    def result(self, sum_fn: Callable[[Tensor], Tensor] = lambda x: x,
               max_fn: Callable[[Tensor], Tensor] = lambda x: x) -> dict[str, Tensor]:
        keys, peaks = sorted(self.sums), sorted(self.maxima)
        out = {}
        if keys:
            sums = sum_fn(torch.stack([torch.as_tensor(self.sums[k]).float() for k in keys]))
            weights = sum_fn(torch.stack([torch.as_tensor(self.weight[k]).float() for k in keys]))
            out = dict(zip(keys, sums / weights.clamp(min=1)))
        if peaks:
            out.update(zip(peaks, max_fn(torch.stack([self.maxima[k].float() for k in peaks]))))
        return out


def to_floats(metrics: dict[str, Tensor | float | int]) -> dict[str, float]:
    """The logging boundary: one `.item()` per value. Every key must be finite: a NaN or inf means
    the step went wrong, so it stops the run (TrainingDiverged) instead of being dropped."""
    out = {key: value.item() if isinstance(value, Tensor) else value for key, value in metrics.items()}
    bad = sorted(key for key, number in out.items() if isinstance(number, float) and not math.isfinite(number))
    if bad:
        raise TrainingDiverged(f"non-finite metric(s) {', '.join(bad)}")
    return out


@dataclass
class ScoredStep:
    """A step's scored rollouts over all ranks, as much of it as the metrics that need no model read.
    P prompts, G completions each, N = P * G rows (rows p*G .. p*G+G-1 belong to prompt p). The trainer
    builds one from its batch and `grpo rescore` from the stored rollout files; `scored_metrics` reads it."""
    parts: dict[str, Tensor]     # each reward function's values [P, G] (overlong shaping included)
    rewards: Tensor              # [P, G] the total reward (weighted parts), before any KL shaping
    advantages: Tensor           # [P, G] the advantages the update used
    lengths: Tensor              # [N] completion tokens, EOS included (float)
    truncated: Tensor            # [N] 1 = hit max_new_tokens without EOS (float)
    entropy_sums: Tensor         # [N] the sampler's entropy summed over each completion's tokens
    loss_lengths: Tensor         # [N] tokens in the loss (0 for truncated ones under --mask-truncated)
    difficulty: list[str]        # [P] the task's level label of each prompt ("" = none)
    correct: Tensor | None       # [P, G] the correctness reward's values (None without one)
    logp_sums: Tensor | None = None  # [N] the sampler's log-probs summed over each completion's loss tokens
                                     # (None: not stored; entropy/cov_logp_adv is then left out)


def scored_metrics(scored: ScoredStep, *, cut_frac: Tensor, mask_truncated: bool, aggregation: str,
                   max_len: float) -> dict[str, Tensor]:
    """The step's metrics that need no model: reward/*, accuracy, adv/*, zero_var/*, len/*, entropy,
    grad_tokens/* (given the share of active tokens the objective cut), by_difficulty/*, bias/* and (given the
    log-probs) entropy/cov_logp_adv."""
    s, correct = scored, scored.correct
    covariance = {} if s.logp_sums is None else covariance_metric(s.advantages.flatten(), s.logp_sums, s.loss_lengths)
    return {
        **covariance,
        **reward_metrics(s.rewards, s.parts, correct),
        **advantage_metrics(s.advantages),
        **zero_variance_metrics(s.rewards, correct),
        **length_metrics(s.lengths, s.truncated, None if correct is None else correct.flatten()),
        **entropy_metric(s.entropy_sums, s.lengths),
        **gradient_token_metrics(s.advantages.flatten(), s.lengths, s.loss_lengths, cut_frac, mask_truncated),
        **step_probe_metrics(s.rewards, correct, s.advantages, s.difficulty, s.loss_lengths.view(s.advantages.shape),
                             aggregation, max_len),
    }
