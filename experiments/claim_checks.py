"""The exact (E) checks of experiments.paper_checks: each published identity measured on grpo-lab's own functions.

Every check enumerates what it needs (all binary groups of small G, a categorical over a few tokens, a
tabular policy) in float64, calls the harness (grpo/formulas/*, grpo/setup/rewards.py, the probes) and
returns a Result: the verdict, what was measured, the largest float error and the tolerance it was held to.
No check trains a model; together they run in about a second. The derivations are in
/work/shared/paper-claims.md's wording, re-derived in the docstrings here.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from grpo.algorithm.metrics import zero_variance_metrics
from grpo.algorithm.step_probes import unbiased_power
from grpo.algorithm.update import loss_settings
from grpo.formulas.advantages import compute_advantages, normalize_then_sum, rloo_advantages
from grpo.formulas.kl import kl_per_token
from grpo.formulas.losses import LossSettings, policy_loss
from grpo.setup.config import TrainConfig
from grpo.setup.rewards import overlong_penalty

HELD, CONTRADICTED, NOT_APPLICABLE = "held", "contradicted", "not applicable"
TOL = 1e-9          # float64 identities; float32 ones (overlong_penalty) state their own
DTYPE = torch.float64


@dataclass(frozen=True)
class Result:
    verdict: str                      # held | contradicted | not applicable | not detected at this budget
    measured: str                     # what was measured, in one line
    error: float | None = None        # an exact check's largest |measured - expected|
    tolerance: float | None = None    # the float tolerance the identity is held to
    note: str = ""                    # why it is contradicted or not applicable; what the reading is
    seeds: int | None = None          # S: the seeds the interval is over
    steps: int | None = None          # S: the steps of the runs it read


def identity(errors: dict[str, float], tol: float = TOL, note: str = "", extra: str = "") -> Result:
    """held when every named part's error is <= tol, else contradicted naming the worst part."""
    worst = max(errors, key=errors.get)
    error = float(errors[worst])
    parts = "; ".join(f"{name} {value:.1e}" for name, value in errors.items())
    verdict = HELD if error <= tol else CONTRADICTED
    why = note if verdict == HELD else f"{worst} is off by {error:.3g} (> {tol:g}). {note}".strip()
    return Result(verdict, f"max |error| {error:.1e} ({parts}){extra}", error, tol, why)


def _err(a: Tensor, b: Tensor | float) -> float:
    return float((a - b).abs().max())


def binary_groups(group_size: int) -> Tensor:
    """Every 0/1 reward vector of a group of G [2^G, G], float64."""
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=group_size)), dtype=DTYPE)


def settings(**changes) -> LossSettings:
    """The default config's loss settings with `changes` (kl_beta, aggregation, objective, ...)."""
    return replace(loss_settings(TrainConfig()), **changes)


# ---------------------------------------------------------------- GRPO core


def check_d1() -> Result:
    """Group advantages sum to 0; at ratio 1 and beta 0 the loss is 0 (1/|o| aggregation) and its gradient is
    REINFORCE with the group-mean baseline: -(1/N) sum_i (r_i - mean_g r) / (std_g + eps) * grad mean_t logp_it."""
    gen = torch.Generator().manual_seed(0)
    rewards = torch.cat([binary_groups(4), torch.rand(16, 4, generator=gen, dtype=DTYPE) * 3])    # [32, 4]
    adv = compute_advantages(rewards, "grpo", eps=1e-4)
    # A tabular policy: one softmax over 5 tokens per prompt; completions of 1..6 tokens.
    prompts, group, vocab, width = rewards.shape[0], rewards.shape[1], 5, 6
    logits = torch.randn(prompts, vocab, generator=gen, dtype=DTYPE, requires_grad=True)
    tokens = torch.randint(vocab, (prompts, group, width), generator=gen)
    lengths = torch.randint(1, width + 1, (prompts, group), generator=gen)
    mask = (torch.arange(width) < lengths[..., None]).to(DTYPE).view(-1, width)                 # [N, T]
    logp = torch.log_softmax(logits, -1)[torch.arange(prompts)[:, None, None], tokens].view(-1, width)
    loss, _ = policy_loss(logp, logp.detach(), None, adv.view(-1), mask,
                          settings(kl_beta=0.0, aggregation="seq_mean_token_mean", objective="clip"))
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    baseline = rewards.mean(-1, keepdim=True)
    scale = rewards.std(-1, keepdim=True) + 1e-4
    scale = torch.where(rewards.std(-1, keepdim=True) == 0, torch.ones_like(scale), scale)   # constant: 0 anyway
    seq_logp = (logp * mask).sum(-1) / mask.sum(-1)
    reinforce = -(((rewards - baseline) / scale).view(-1) * seq_logp).sum() / (prompts * group)
    (expected,) = torch.autograd.grad(reinforce, logits)
    return identity({"sum of A per group": _err(adv.sum(-1), 0.0), "loss at ratio 1": abs(float(loss.detach())),
                     "gradient vs REINFORCE": _err(grad, expected)},
                    note="The loss is 0 under seq_mean_token_mean (and seq_mean_token_sum_norm with equal "
                         "lengths); token_mean weighs A by length, so its loss at ratio 1 is not 0.")


def check_d2() -> Result:
    """d loss / d logp_t = -(A + beta (pi_ref / pi - 1)) per token with the k3 penalty at ratio 1 (GRPO eq. 20-21)."""
    gen = torch.Generator().manual_seed(1)
    rows, width, beta = 6, 5, 0.04
    logp = (torch.rand(rows, width, generator=gen, dtype=DTYPE) * -3).requires_grad_(True)
    ref_logp = torch.rand(rows, width, generator=gen, dtype=DTYPE) * -3
    adv = torch.randn(rows, generator=gen, dtype=DTYPE)
    mask = (torch.arange(width) < torch.randint(1, width + 1, (rows, 1), generator=gen)).to(DTYPE)
    # Sum over tokens (normaliser 1 * 1): the gradient per token is the coefficient itself.
    loss, _ = policy_loss(logp, logp.detach(), ref_logp, adv, mask,
                          settings(kl_beta=beta, kl_estimator="k3", aggregation="seq_mean_token_sum_norm"),
                          num_seqs=1, max_len=1)
    (grad,) = torch.autograd.grad(loss, logp)
    coefficient = adv[:, None] + beta * (torch.exp(ref_logp - logp.detach()) - 1)
    return identity({"gradient coefficient": _err(grad, -coefficient * mask)})


# ---------------------------------------------------------------- Dr. GRPO


def check_r1() -> Result:
    """rloo's G/(G-1) (r_i - mean) equals r_i - mean of the other G-1 rewards: every binary group, random ones."""
    gen = torch.Generator().manual_seed(2)
    errors = 0.0
    for group_size in range(2, 9):
        rewards = torch.cat([binary_groups(group_size), torch.randn(64, group_size, generator=gen, dtype=DTYPE)])
        others = (rewards.sum(-1, keepdim=True) - rewards) / (group_size - 1)
        errors = max(errors, _err(rloo_advantages(rewards, eps=0.0, lengths=None), rewards - others))
    return identity({"rloo vs leave-one-out": errors}, extra=", G = 2..8")


def std_multiplier(group_size: int, correct: int) -> float:
    """grpo's advantage over dr_grpo's for k of G correct (eps = 0): 1 / the sample std of the group's rewards."""
    rewards = torch.tensor([[1.0] * correct + [0.0] * (group_size - correct)], dtype=DTYPE)
    ratio = compute_advantages(rewards, "grpo", eps=0.0) / compute_advantages(rewards, "dr_grpo")
    return float(ratio[0, 0])


def check_r2() -> Result:
    """std normalisation multiplies the centred advantage by 1 / (sigma_k sqrt(G/(G-1))), sigma_k = sqrt(k(G-k))/G
    the population std (grpo-lab divides by the sample std, as DeepSeekMath and TRL); largest at k = 1 and G-1."""
    rel, monotone = 0.0, True
    for group_size in (2, 4, 8, 16):
        multipliers = []
        for k in range(1, group_size):
            sigma = math.sqrt(k * (group_size - k)) / group_size
            expected = 1.0 / (sigma * math.sqrt(group_size / (group_size - 1)))
            multipliers.append(std_multiplier(group_size, k))
            rel = max(rel, abs(multipliers[-1] / expected - 1))
        half = multipliers[: group_size // 2]            # k = 1 .. G/2
        symmetric = all(abs(x - y) <= 1e-12 * x for x, y in zip(multipliers, multipliers[::-1]))
        monotone &= symmetric and all(x > y for x, y in zip(half, half[1:]))
    result = identity({"relative error of 1/sigma": rel}, extra=f"; G=16: x{std_multiplier(16, 1):.2f} at k=1, "
                      f"x{std_multiplier(16, 8):.2f} at k=8")
    if not monotone:
        return replace(result, verdict=CONTRADICTED, note="the multiplier is not largest at the extremes")
    return replace(result, note="With the sample std the multiplier is 1/(sigma_k sqrt(G/(G-1))), as the claim's "
                                "parenthesis says.")


# The tabular length model of R3: token 0 is the answer (right with prob sigmoid(a)); then each position
# continues (prob sigmoid(b)) or stops; a completion that never stops is truncated at MAX_LEN tokens.
MAX_LEN = 5


def length_outcomes(max_len: int = MAX_LEN) -> list[tuple[list[str], bool]]:
    """Every (length tokens after the answer, truncated) outcome: j continues then a stop, j < max_len - 1, or
    max_len - 1 continues (truncated)."""
    stops = [(["cont"] * j + ["stop"], False) for j in range(max_len - 1)]
    return stops + [(["cont"] * (max_len - 1), True)]


def _completion_logp(a: Tensor, b: Tensor, correct: bool, tokens: list[str], width: int) -> Tensor:
    """Per-token log-probs [width] of one completion, 0 after its end."""
    values = [torch.nn.functional.logsigmoid(a if correct else -a)]
    values += [torch.nn.functional.logsigmoid(b if t == "cont" else -b) for t in tokens]
    return torch.cat([torch.stack(values), a.new_zeros(width - len(values))])


def length_gradient(adv: float, aggregation: str, a: float = 0.3, b: float = 0.4, max_len: int = MAX_LEN) -> float:
    """E[d objective / d b] over the length outcomes of one completion whose answer has advantage `adv`
    (the objective is -loss; probabilities detached: the policy-gradient surrogate's expectation)."""
    a_t, b_t = torch.tensor(a, dtype=DTYPE), torch.tensor(b, dtype=DTYPE, requires_grad=True)
    total = torch.zeros((), dtype=DTYPE)
    for tokens, _ in length_outcomes(max_len):
        logp = _completion_logp(a_t, b_t, adv > 0, tokens, max_len)[None]
        mask = (torch.arange(max_len) < len(tokens) + 1).to(DTYPE)[None]
        loss, _ = policy_loss(logp, logp.detach(), None, torch.tensor([adv], dtype=DTYPE), mask,
                              settings(kl_beta=0.0, aggregation=aggregation), num_seqs=1, max_len=max_len)
        total = total + float(torch.exp(logp.detach()[0, 1:].sum())) * loss       # P(length outcome) * loss
    (grad,) = torch.autograd.grad(-total, b_t)
    return float(grad)


def group_length_gradient(aggregation: str, group_size: int = 3, a: float = 0.3, b: float = 0.4,
                          max_len: int = 4) -> float:
    """E[d objective / d b] over every group of G (answers and lengths drawn independently), grpo advantages."""
    a_t, b_t = torch.tensor(a, dtype=DTYPE), torch.tensor(b, dtype=DTYPE, requires_grad=True)
    singles = [(correct, tokens) for correct in (True, False) for tokens, _ in length_outcomes(max_len)]
    total = torch.zeros((), dtype=DTYPE)
    for group in itertools.product(singles, repeat=group_size):
        logp = torch.stack([_completion_logp(a_t, b_t, c, t, max_len) for c, t in group])           # [G, T]
        mask = (torch.arange(max_len)[None] < torch.tensor([[len(t) + 1] for _, t in group])).to(DTYPE)
        adv = compute_advantages(torch.tensor([[float(c) for c, _ in group]], dtype=DTYPE), "grpo")[0]
        loss, _ = policy_loss(logp, logp.detach(), None, adv, mask, settings(kl_beta=0.0, aggregation=aggregation),
                              max_len=max_len)
        total = total + float(torch.exp((logp.detach() * mask).sum())) * loss
    (grad,) = torch.autograd.grad(-total, b_t)
    return float(grad)


def check_r3() -> Result:
    """Tabular model, length independent of the answer: under 1/|o| the expected gradient on the length logit has
    sign -sign(A); under a constant normaliser it is 0; over groups (E[A] = 0) every aggregation gives 0."""
    per_token = {adv: length_gradient(adv, "seq_mean_token_mean") for adv in (1.0, -1.0)}
    constant = max(abs(length_gradient(adv, "seq_mean_token_sum_norm")) for adv in (1.0, -1.0))
    over_groups = {agg: abs(group_length_gradient(agg))
                   for agg in ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")}
    measured = (f"1/|o|: d/db = {per_token[1.0]:+.4f} at A=+1, {per_token[-1.0]:+.4f} at A=-1; "
                f"constant normaliser: max |d/db| {constant:.1e}; over groups of 3: max |d/db| "
                f"{max(over_groups.values()):.1e}")
    signs_hold = per_token[1.0] < -TOL and per_token[-1.0] > TOL
    error = max(constant, *over_groups.values())
    verdict = HELD if signs_hold and error <= TOL else CONTRADICTED
    note = "" if verdict == HELD else "wrong sign under 1/|o|, or a nonzero gradient where 0 is claimed"
    return Result(verdict, measured, error, TOL, note or "The corollary holds for token_mean too: A is independent "
                  "of the lengths and E[A] = 0, so no aggregation moves the expected length (R4 needs correlation).")


# ---------------------------------------------------------------- zero-variance groups


def constant_probability(rate: float, group_size: int) -> float:
    """P(a group of G is constant) at solve rate q, enumerated over every binary group with the harness's
    zero_var/frac (the share of constant groups) weighted by each group's probability."""
    groups = binary_groups(group_size)
    weights = torch.tensor([rate ** int(k) * (1 - rate) ** (group_size - int(k)) for k in groups.sum(-1)],
                           dtype=DTYPE)
    constant = torch.stack([zero_variance_metrics(g[None], g[None])["zero_var/frac"] for g in groups])
    return float((weights * constant.to(DTYPE)).sum())


def check_g1() -> Result:
    """P(constant) = q^G + (1-q)^G; its mean over q ~ U(0,1) is 2/(G+1); C(k,G)/C(n,G) is unbiased for q^G."""
    closed, uniform, unbiased = 0.0, 0.0, 0.0
    for group_size in (2, 4, 8):
        for rate in (0.1, 0.5, 0.83):
            closed = max(closed, abs(constant_probability(rate, group_size) - rate ** group_size
                                     - (1 - rate) ** group_size))
        # Gauss-Legendre with G+1 nodes integrates a polynomial of degree G exactly.
        nodes, node_weights = np.polynomial.legendre.leggauss(group_size + 1)
        mean = sum(w / 2 * constant_probability((x + 1) / 2, group_size) for x, w in zip(nodes, node_weights))
        uniform = max(uniform, abs(mean - 2 / (group_size + 1)))
        for trials, rate in itertools.product((group_size, group_size + 3, 16), (0.2, 0.7)):
            k = torch.arange(trials + 1, dtype=DTYPE)
            binomial = torch.tensor([math.comb(trials, int(j)) * rate ** int(j) * (1 - rate) ** (trials - int(j))
                                     for j in k], dtype=DTYPE)
            estimate = (binomial * unbiased_power(k, trials, group_size)).sum()
            unbiased = max(unbiased, abs(float(estimate) - rate ** group_size))
    return identity({"q^G + (1-q)^G": closed, "mean over U(0,1) vs 2/(G+1)": uniform,
                     "E[C(k,G)/C(n,G)] - q^G": unbiased}, extra=", G = 2, 4, 8")


# ---------------------------------------------------------------- KL estimators


def _categorical(seed: int, vocab: int = 6) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, generator=gen, dtype=DTYPE), torch.randn(vocab, generator=gen, dtype=DTYPE)


def expected_estimate(logits: Tensor, ref_logits: Tensor, estimator: str) -> Tensor:
    """E_{x ~ pi}[k(x)] with pi = softmax(logits) enumerated; pi's weights detached (the on-policy loss's
    expectation: the estimator is the loss of a sampled token, the sampling is not differentiated)."""
    logp, ref_logp = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    values = kl_per_token(logp[None], ref_logp[None], estimator, old_logp=logp.detach()[None])[0]
    return (logp.detach().exp() * values).sum()


def exact_kl(logits: Tensor, ref_logits: Tensor) -> Tensor:
    logp, ref_logp = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    return (logp.exp() * (logp - ref_logp)).sum()


def check_k2() -> Result:
    """E_pi[k1] = E_pi[k3] = KL(pi || pi_ref), E_pi[k2] != KL in general, k3 >= 0."""
    k1, k3, k2_gap = 0.0, 0.0, []
    for seed in range(5):
        logits, ref_logits = _categorical(seed)
        kl = float(exact_kl(logits, ref_logits))
        k1 = max(k1, abs(float(expected_estimate(logits, ref_logits, "k1")) - kl))
        k3 = max(k3, abs(float(expected_estimate(logits, ref_logits, "k3")) - kl))
        k2_gap.append(abs(float(expected_estimate(logits, ref_logits, "k2")) - kl))
    log_ratio = torch.linspace(-30, 30, 6001, dtype=DTYPE)
    k3_min = float(kl_per_token(torch.zeros_like(log_ratio)[None], log_ratio[None], "k3").min())
    result = identity({"E[k1] - KL": k1, "E[k3] - KL": k3, "negative k3": max(0.0, -k3_min)},
                      extra=f"; |E[k2] - KL| >= {min(k2_gap):.3f} on 5 random pairs")
    if min(k2_gap) <= 1e-6:
        return replace(result, verdict=CONTRADICTED, note="E[k2] equalled KL on a random pair")
    return result


def check_k3() -> Result:
    """Expected gradients of the estimators as losses, on-policy: k1 -> 0, k2 -> grad KL, k3 -> biased (it is
    grad KL(pi_ref || pi), the reverse KL), k3_is = (pi / pi_old) k3 -> grad KL."""
    errors, k3_bias = {"k1 -> 0": 0.0, "k2 -> grad KL": 0.0, "k3_is -> grad KL": 0.0, "k3 -> grad reverse KL": 0.0}, []

    def grad(value: Tensor, logits: Tensor) -> Tensor:
        return torch.autograd.grad(value, logits)[0]

    for seed in range(5):
        logits, ref_logits = _categorical(seed)
        logits.requires_grad_(True)
        true = grad(exact_kl(logits, ref_logits), logits)
        reverse = grad(exact_kl(ref_logits, logits), logits)
        errors["k1 -> 0"] = max(errors["k1 -> 0"], _err(grad(expected_estimate(logits, ref_logits, "k1"), logits), 0))
        errors["k2 -> grad KL"] = max(errors["k2 -> grad KL"],
                                      _err(grad(expected_estimate(logits, ref_logits, "k2"), logits), true))
        errors["k3_is -> grad KL"] = max(errors["k3_is -> grad KL"],
                                         _err(grad(expected_estimate(logits, ref_logits, "k3_is"), logits), true))
        k3 = grad(expected_estimate(logits, ref_logits, "k3"), logits)
        errors["k3 -> grad reverse KL"] = max(errors["k3 -> grad reverse KL"], _err(k3, reverse))
        k3_bias.append(_err(k3, true))
    result = identity(errors, extra=f"; k3's gradient differs from grad KL by >= {min(k3_bias):.3f}")
    if min(k3_bias) <= 1e-6:
        return replace(result, verdict=CONTRADICTED, note="k3's expected gradient equalled grad KL")
    return replace(result, note="grpo-lab's default --kl-estimator k3 in the loss therefore pulls toward "
                                "KL(pi_ref || pi); k3_is is the unbiased choice.")


# ---------------------------------------------------------------- DAPO, inner epochs, GDPO


def dapo_eq13(length: float, max_len: int, cache: int) -> float:
    """DAPO eq. 13 as printed: 0, then (L_max - L_cache - |y|) / L_cache, then -1 beyond L_max."""
    if length <= max_len - cache:
        return 0.0
    return (max_len - cache - length) / cache if length <= max_len else -1.0


def check_p3() -> Result:
    """Soft overlong punishment: 0 up to L_max - L_cache, -0.5 at the buffer's midpoint, -1 at L_max, continuous."""
    max_len, cache, tol = 64, 16, 1e-6        # overlong_penalty computes in float32
    lengths = torch.arange(0, max_len + 9, dtype=DTYPE)
    values = overlong_penalty(lengths, max_len, cache, 1.0)
    eq13 = torch.tensor([dapo_eq13(float(x), max_len, cache) for x in lengths], dtype=DTYPE)
    start, mid = max_len - cache, max_len - cache / 2
    near = torch.tensor([start - 1e-3, start + 1e-3, max_len - 1e-3, max_len + 1e-3], dtype=DTYPE)
    jumps = overlong_penalty(near, max_len, cache, 1.0)
    return identity({"vs eq. 13": _err(values, eq13),
                     "midpoint + 0.5": abs(float(overlong_penalty(torch.tensor([mid]), max_len, cache, 1.0)) + 0.5),
                     "-1 at L_max": abs(float(values[max_len]) + 1.0),
                     # Across +-1e-3 of an end a continuous ramp moves 1e-3 / L_cache (one side is flat).
                     "jump at the ends": max(abs(abs(float(jumps[1] - jumps[0])) - 1e-3 / cache),
                                             abs(abs(float(jumps[3] - jumps[2])) - 1e-3 / cache))},
                    tol=tol, extra=f", L_max {max_len}, L_cache {cache}")


def check_m1() -> Result:
    """At mu = 1 with one mini-batch (logp = old_logp): ratio 1, no clipping, and token-level (clip) and
    sequence-level (gspo) importance sampling give the same loss and gradient."""
    gen = torch.Generator().manual_seed(3)
    rows, width = 8, 6
    logp = (torch.rand(rows, width, generator=gen, dtype=DTYPE) * -4).requires_grad_(True)
    adv = torch.randn(rows, generator=gen, dtype=DTYPE) * 3
    mask = (torch.arange(width) < torch.randint(1, width + 1, (rows, 1), generator=gen)).to(DTYPE)
    common = dict(kl_beta=0.0, aggregation="seq_mean_token_mean", clip_eps_low=0.2, clip_eps_high=0.28)
    token_loss, stats = policy_loss(logp, logp.detach(), None, adv, mask, settings(objective="clip", **common))
    seq_loss, _ = policy_loss(logp, logp.detach(), None, adv, mask,
                              settings(objective="gspo", **{**common, "clip_eps_low": 3e-4, "clip_eps_high": 4e-4}))
    (token_grad,) = torch.autograd.grad(token_loss, logp)
    (seq_grad,) = torch.autograd.grad(seq_loss, logp)
    return identity({"ratio - 1": max(abs(float(stats["ratio/mean"]) - 1), abs(float(stats["ratio/max"]) - 1)),
                     "clip fraction": float(stats["clip/low_frac"] + stats["clip/high_frac"] + stats["grad/cut_frac"]),
                     "token vs sequence loss": abs(float((token_loss - seq_loss).detach())),
                     "token vs sequence gradient": _err(token_grad, seq_grad)})


def gdpo_tie_gap(group: Tensor, eps: float = 1e-4) -> tuple[float, float, float]:
    """For one group of two binary rewards [G, 2] holding both (1, 0) and (0, 1): |A(1,0) - A(0,1)| under
    sum-then-normalise (grpo of r1 + r2), under normalise-then-sum (GDPO, one-group batch), and GDPO's
    predicted gap before the batch step, 1/(s1 + eps) - 1/(s2 + eps) (s = each reward's sample std)."""
    first, second = group[:, 0][None], group[:, 1][None]
    i = int(((group[:, 0] == 1) & (group[:, 1] == 0)).nonzero()[0])
    j = int(((group[:, 0] == 0) & (group[:, 1] == 1)).nonzero()[0])
    summed = compute_advantages(first + second, "grpo", eps)[0]
    gdpo = normalize_then_sum({"r1": first, "r2": second}, eps=eps)[0]
    per_reward = (compute_advantages(first, "grpo", eps) + compute_advantages(second, "grpo", eps))[0]
    predicted = 1 / (float(first.std()) + eps) - 1 / (float(second.std()) + eps)
    # GDPO's batch whitening is a positive affine map: it scales the gap by 1 / (std(S) + eps).
    whitened = predicted / (float(per_reward.std()) + eps)
    return abs(float(summed[i] - summed[j])), abs(float(gdpo[i] - gdpo[j])), abs(whitened)


def check_q2() -> Result:
    """GDPO, two binary rewards. Sum-then-normalise gives (1,0) and (0,1) of one group the same advantage,
    always. Normalise-then-sum separates them by (1/s1 - 1/s2) (times the batch scale): they still tie when the
    rewards' success counts k1, k2 in the group have equal std (k1 = k2 or k1 + k2 = G). The paper's gain is
    across groups: with G = 2, totals (0,1) and (0,2) both get (-1/sqrt 2, 1/sqrt 2) under sum-then-normalise,
    and GDPO gives (0,2) twice (0,1)'s advantage before the batch step."""
    sum_gap, gap_error, ties, groups = 0.0, 0.0, 0, 0
    for group_size in (2, 3, 4, 5):
        for pairs in itertools.product(((0, 0), (0, 1), (1, 0), (1, 1)), repeat=group_size):
            if (1, 0) not in pairs or (0, 1) not in pairs:
                continue
            group = torch.tensor(pairs, dtype=DTYPE)
            summed, gdpo, predicted = gdpo_tie_gap(group)
            k1, k2 = int(group[:, 0].sum()), int(group[:, 1].sum())
            equal_std = k1 * (group_size - k1) == k2 * (group_size - k2)
            groups, ties = groups + 1, ties + equal_std
            sum_gap = max(sum_gap, summed)
            gap_error = max(gap_error, abs(gdpo - (0.0 if equal_std else predicted)))
    example = torch.tensor([[0.0, 1.0], [0.0, 2.0], [1.0, 2.0]], dtype=DTYPE)      # group totals, G = 2
    summed = compute_advantages(example, "grpo", eps=0.0)
    first = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0]], dtype=DTYPE)         # r1 of each completion
    gdpo = normalize_then_sum({"r1": first, "r2": example - first}, eps=0.0)
    half = torch.tensor([-1.0, 1.0], dtype=DTYPE) / math.sqrt(2)
    return identity({"sum-then-normalise gap": sum_gap, "GDPO gap vs 1/s1 - 1/s2": gap_error,
                     "example, sum: all (-1,1)/sqrt 2": _err(summed, half),
                     "example, GDPO: (0,2) = 2 x (0,1)": _err(gdpo[1], 2 * gdpo[0])},
                    extra=f"; {ties} of {groups} groups (G = 2..5) holding (1,0) and (0,1) tie under GDPO",
                    note="Our list's wording ('distinct under normalise-then-sum') was our misreading: within a "
                         "group GDPO separates (1,0) from (0,1) only when the two rewards' success counts have "
                         "unequal std; the paper's collapse is of distinct group total patterns, e.g. (0,1) vs (0,2).")
