"""Tests for grpo/formulas/objectives.py through losses.policy_loss: hand-computed losses and gradients of every
objective, dual-clip / delta, on-policy equalities, token selections, entropy terms, micro-batch splits."""

from __future__ import annotations

import math

import pytest
import torch

from grpo import GrpoError
from conftest import settings
from grpo.formulas.losses import policy_loss
from grpo.formulas.objectives import (OBJECTIVES, SELECTIONS, clip_cov_selection, kl_cov_selection,
                             token_covariance, top_entropy_keep)

F64 = torch.float64
LN2 = math.log(2.0)
OBJECTIVE_NAMES = ["clip", "gspo", "cispo", "sapo", "gmpo", "gpg", "kl_cov", "clip_cov"]
AGGREGATION_NAMES = ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def test_registry_holds_exactly_the_documented_objectives():
    assert set(OBJECTIVES) == set(OBJECTIVE_NAMES)


# ---------------------------------------------------------------- the shared hand case
# mask [[1,1,1],[1,1,0]] (|o| = [3, 2], 5 tokens, N = 2, T = 3), A = [+1, -2],
# ratio r = [[2, 1.1, 0.5], [0.5, 2, (8 pad)]], logp = [[-1, -2, -0.5], [-1.5, -0.5, (-3 pad)]].
# The padding ratio 8 with A < 0 would change losses and statistics if it leaked.
# Weight of token (i, t) in each aggregation: loss = sum W * l, d loss / d logp = W * dl/dlogp.
#   seq_mean_token_mean  1 / (|o_i| N): row 0 1/6, row 1 1/4
#   token_mean           1 / 5
#   seq_mean_token_sum_norm 1 / (N T) = 1/6
WEIGHTS = {"seq_mean_token_mean": [[1 / 6] * 3, [1 / 4, 1 / 4, 0]],
           "token_mean": [[1 / 5] * 3, [1 / 5, 1 / 5, 0]],
           "seq_mean_token_sum_norm": [[1 / 6] * 3, [1 / 6, 1 / 6, 0]]}


def shared_case():
    logp = t64([[-1.0, -2.0, -0.5], [-1.5, -0.5, -3.0]]).requires_grad_(True)
    old_logp = logp.detach() - t64([[2.0, 1.1, 0.5], [0.5, 2.0, 8.0]]).log()
    return logp, old_logp, t64([1.0, -2.0]), t64([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


S0 = 1.1 ** (1 / 3)            # GSPO row 0: exp((ln2 + ln1.1 + ln0.5) / 3) = 1.1^(1/3) = 1.0322801
# Per objective: (kwargs, token loss l, token gradient dl/dlogp, statistics).  Padding entries are 0.
HAND = {
    # clip, eps 0.2 (bounds 0.8, 1.2): l = -min(r A, clip(r) A); dl/dlogp = -A r unless a bound is active.
    #   row 0 (A=+1): r=2 -> -min(2, 1.2) = -1.2 (high, cut); r=1.1 -> -1.1; r=0.5 -> -min(0.5, 0.8) = -0.5
    #   row 1 (A=-2): r=0.5 -> -min(-1, -1.6) = 1.6 (low, cut); r=2 -> -min(-4, -2.4) = 4, grad 2*2 = 4
    #   seq_mean_token_mean: (-2.8/3 + 5.6/2) / 2 = 14/15
    "clip": ({}, [[-1.2, -1.1, -0.5], [1.6, 4.0, 0]], [[0, -1.1, -0.5], [0, 4.0, 0]],
             {"clip/high_frac": 1 / 5, "clip/low_frac": 1 / 5, "grad/cut_frac": 2 / 5}),
    # gspo, eps 0.02: s_0 = 1.1^(1/3) = 1.0323 > 1.02 with A > 0: the whole row is clipped, l = -1.02.
    #   s_1 = exp((ln0.5 + ln2)/2) = 1: l = -(1 * -2) = 2, grad s_1 * 2 = 2 on BOTH tokens (clip gives 0, 4).
    "gspo": ({"clip_eps_low": 0.02, "clip_eps_high": 0.02}, [[-1.02] * 3, [2.0, 2.0, 0]], [[0] * 3, [2.0, 2.0, 0]],
             {"clip/seq_frac": 1 / 2, "ratio/seq_mean": (S0 + 1) / 2, "grad/cut_frac": 3 / 5}),
    # gspo, eps 0.05: s_0 = 1.0323 inside: l = -s_0, grad -A s_0 = -1.0323 on each token of row 0.
    "gspo_wide": ({"clip_eps_low": 0.05, "clip_eps_high": 0.05}, [[-S0] * 3, [2.0, 2.0, 0]],
                  [[-S0] * 3, [2.0, 2.0, 0]], {"clip/seq_frac": 0.0, "grad/cut_frac": 0.0}),
    # cispo, eps 0.2: w = sg(clip(r, 0.8, 1.2)) = [[1.2, 1.1, 0.8], [0.8, 1.2]]; l = -w A logp, grad -w A.
    #   row 0: -1.2*(-1) = 1.2; -1.1*(-2) = 2.2; -0.8*(-0.5) = 0.4      row 1: 1.6*(-1.5) = -2.4; 2.4*(-0.5) = -1.2
    #   is_weight/clip_frac: r = 2, 0.5, 0.5, 2 are outside [0.8, 1.2] -> 4/5; no token is cut.
    "cispo": ({}, [[1.2, 2.2, 0.4], [-2.4, -1.2, 0]], [[-1.2, -1.1, -0.8], [1.6, 2.4, 0]],
              {"is_weight/clip_frac": 4 / 5, "grad/cut_frac": 0.0}),
    # sapo, tau_pos = 1, tau_neg = 2: l = -(4/tau) s A, s = sigmoid(tau (r - 1)); grad -4 s (1 - s) r A.
    #   row 0 (tau 1, A=1): x = 1, 0.1, -0.5: s = 0.7310586, 0.5249792, 0.3775407
    #     l = -2.9242343, -2.0999167, -1.5101627;  4s(1-s) = 0.7864477, 0.9975042, 0.9400148
    #     grad = -0.7864477*2, -0.9975042*1.1, -0.9400148*0.5 = -1.5728955, -1.0972546, -0.4700074
    #   row 1 (tau 2, A=-2): x = 2*(0.5-1) = -1, 2*(2-1) = 2: s = 0.2689414, 0.8807971; l = 4s = 1.0757657, 3.5231883
    #     4s(1-s) = 0.7864477, 0.4199743;  grad = 2 * that * r = 0.7864477, 1.6798974
    #   sapo/grad_weight_mean = (0.7864477 + 0.9975042 + 0.9400148 + 0.7864477 + 0.4199743) / 5 = 0.7860778
    "sapo": ({"sapo_tau_pos": 1.0, "sapo_tau_neg": 2.0},
             [[-4 * sig(1), -4 * sig(0.1), -4 * sig(-0.5)], [4 * sig(-1), 4 * sig(2), 0]],
             [[-4 * sig(1) * sig(-1) * 2, -4 * sig(0.1) * sig(-0.1) * 1.1, -4 * sig(-0.5) * sig(0.5) * 0.5],
              [8 * sig(-1) * sig(1) * 0.5, 8 * sig(2) * sig(-2) * 2, 0]],
             {"sapo/grad_weight_mean": 0.7860778, "grad/cut_frac": 0.0}),
    # gpg: l = -A logp, grad -A.
    "gpg": ({}, [[1.0, 2.0, 0.5], [-3.0, -1.0, 0]], [[-1.0] * 3, [2.0, 2.0, 0]], {"grad/cut_frac": 0.0}),
    # Cov(A, logp): A over tokens [1,1,1,-2,-2], mean -0.2 -> centred [1.2,1.2,1.2,-1.8,-1.8];
    #   logp [-1,-2,-0.5,-1.5,-0.5], mean -1.1 -> centred [0.1,-0.9,0.6,-0.4,0.6];
    #   cov = [0.12, -1.08, 0.72 | 0.72, -1.08]: the two 0.72 are (0,2) and (1,0).
    # kl_cov, ratio 0.4 -> floor(0.4 * 5) = 2 tokens: (0,2), (1,0). coef 0.5: l = -A r + 0.5 |ln r| there,
    #   grad -A r + 0.5 sign(ln r):  (0,2): -0.5 + 0.5 ln2 = -0.1534264, grad -0.5 - 0.5 = -1.0
    #                                (1,0):  1.0 + 0.5 ln2 =  1.3465736, grad  1.0 - 0.5 =  0.5
    #   the others: -A r = -2, -1.1 | 4 (no clip), grads the same.
    "kl_cov": ({"kl_cov_ratio": 0.4, "kl_cov_coef": 0.5}, [[-2.0, -1.1, -0.5 + 0.5 * LN2], [1.0 + 0.5 * LN2, 4.0, 0]],
               [[-2.0, -1.1, -1.0], [0.5, 4.0, 0]], {"cov/selected_frac": 2 / 5, "grad/cut_frac": 0.0}),
    # clip_cov, candidates with cov in (0.5, 1.0): the same two tokens; ratio 0.4 -> 2: both detached.
    #   loss value is clip's; grad is clip's with (0,2) now 0 ((1,0) was clipped already). cut: 3 of 5.
    "clip_cov": ({"clip_cov_ratio": 0.4, "clip_cov_lb": 0.5, "clip_cov_ub": 1.0},
                 [[-1.2, -1.1, -0.5], [1.6, 4.0, 0]], [[0, -1.1, 0], [0, 4.0, 0]],
                 {"cov/selected_frac": 2 / 5, "grad/cut_frac": 3 / 5, "clip/high_frac": 1 / 5}),
}


def assert_stats(stats, expected, atol=1e-7):
    for key, value in expected.items():
        torch.testing.assert_close(stats[key].double(), t64(value), rtol=0, atol=atol, msg=key)


@pytest.mark.parametrize("aggregation", AGGREGATION_NAMES)
@pytest.mark.parametrize("case", list(HAND))
def test_hand_loss_and_gradient(case, aggregation):
    kwargs, tok_loss, tok_grad, expected_stats = HAND[case]
    logp, old_logp, adv, mask = shared_case()
    loss, stats = policy_loss(logp, old_logp, None, adv, mask,
                              settings(objective=case.removesuffix("_wide"), aggregation=aggregation, **kwargs))
    loss.backward()
    weights = t64(WEIGHTS[aggregation])
    torch.testing.assert_close(loss, (weights * t64(tok_loss)).sum(), rtol=0, atol=1e-12)
    torch.testing.assert_close(logp.grad, weights * t64(tok_grad), rtol=0, atol=1e-12)
    assert_stats(stats, expected_stats)


# gmpo, eps_high = ln 1.5, eps_low = -ln 0.72: log-ratios clipped only on the side the sign of A picks.
#   row 0 (A=+1): ln2 > ln1.5 -> ln1.5 (cut); ln1.1; ln0.5 (low side free for A > 0)
#     G0 = (1.5 * 1.1 * 0.5)^(1/3) = 0.825^(1/3) = 0.9378887;  L0 = -A G0 = -0.9378887
#     dL0/dlogp = -A G0 / 3 * [0, 1, 1] = [0, -0.3126296, -0.3126296]
#   row 1 (A=-2): ln0.5 < ln0.72 -> ln0.72 (cut); ln2 (high side free for A < 0)
#     G1 = (0.72 * 2)^(1/2) = 1.2;  L1 = 2 * 1.2 = 2.4;  dL1/dlogp = 2 * 1.2 / 2 * [0, 1] = [0, 1.2]
#   Each token carries its row's L, so a row counts with the sum of its token weights R_i:
#     seq_mean_token_mean R = [1/2, 1/2]: loss (-0.9378887 + 2.4) / 2 = 0.7310556
#     token_mean R = [3/5, 2/5];  seq_mean_token_sum_norm R = [3/6, 2/6]
G0 = 0.825 ** (1 / 3)


@pytest.mark.parametrize(("aggregation", "row_weight"), [
    ("seq_mean_token_mean", [1 / 2, 1 / 2]), ("token_mean", [3 / 5, 2 / 5]), ("seq_mean_token_sum_norm", [3 / 6, 2 / 6])])
def test_gmpo_hand_loss_and_gradient(aggregation, row_weight):
    logp, old_logp, adv, mask = shared_case()
    loss, stats = policy_loss(logp, old_logp, None, adv, mask, settings(objective="gmpo", aggregation=aggregation,
                                                                        clip_eps_high=math.log(1.5),
                                                                        clip_eps_low=-math.log(0.72)))
    loss.backward()
    r0, r1 = row_weight
    torch.testing.assert_close(loss, t64(r0 * -G0 + r1 * 2.4), rtol=0, atol=1e-12)
    expected = t64([[0, -G0 / 3 * r0, -G0 / 3 * r0], [0, 1.2 * r1, 0]])
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-12)
    assert_stats(stats, {"ratio/seq_mean": (G0 + 1.2) / 2, "clip/seq_frac": 1.0, "grad/cut_frac": 2 / 5})


def test_sapo_keeps_float64_precision_of_tau():
    # One token, A = -1, r = 2, tau_neg = 1.05: l = (4 / 1.05) sigmoid(1.05) = 3.8095238 * 0.7407749 = 2.8219996.
    # A float32 tau (1.0499999523) is off by 4.5e-8 relative, far above float64 rounding.
    logp = t64([[-1.0]])
    loss, _ = policy_loss(logp, logp - LN2, None, t64([-1.0]), t64([[1.0]]),
                          settings(objective="sapo", sapo_tau_neg=1.05))
    torch.testing.assert_close(loss, t64(4 / 1.05 * sig(1.05)), rtol=1e-13, atol=0)


# ---------------------------------------------------------------- dual clip and delta
# mask [[1,1,1,1],[1,1,0,0]], A = [-1, +1], r = [[4, 2, 1.3, 0.5], [4, 1, (10 pad), (10 pad)]], token_mean (1/6).
#   plain clip: row 0 (A<0) l = max(r, clip(r)): 4, 2, 1.3, 0.8 (low cut); grad r: 4, 2, 1.3, 0
#               row 1 (A>0) l = -min(r, clip(r)): -1.2 (high cut), -1; grad 0, -1.     sum 5.9
#   dual_clip 3: cap -cA = 3: r=4 -> 3 (dual cut), the rest below 3.                   sum 4.9
#   delta 1.5: row 0 l = max(min(r, 1.5), clip(r)): 1.5, 1.5 (delta cuts), 1.3, 0.8;
#              row 1: -min(min(4, 1.5), 1.2) = -1.2 (high cut, not a delta cut).       sum 2.9
#   dual_clip 5 / delta 5: above every r: same as plain clip.
PLAIN = (5.9, [[4, 2, 1.3, 0], [0, -1, 0, 0]])


@pytest.mark.parametrize(("kwargs", "total", "grad", "stats"), [
    ({}, *PLAIN, {"grad/cut_frac": 2 / 6}),
    ({"dual_clip": 3.0}, 4.9, [[0, 2, 1.3, 0], [0, -1, 0, 0]], {"clip/dual_frac": 1 / 6, "grad/cut_frac": 3 / 6}),
    ({"dual_clip": 5.0}, *PLAIN, {"clip/dual_frac": 0.0, "grad/cut_frac": 2 / 6}),
    ({"delta": 1.5}, 2.9, [[0, 0, 1.3, 0], [0, -1, 0, 0]], {"clip/delta_frac": 2 / 6, "grad/cut_frac": 4 / 6}),
    ({"delta": 5.0}, *PLAIN, {"clip/delta_frac": 0.0, "grad/cut_frac": 2 / 6}),
], ids=["plain", "dual3", "dual5", "delta1.5", "delta5"])
def test_dual_clip_and_delta_hand_cases(kwargs, total, grad, stats):
    logp = t64([[-0.5, -1.0, -1.5, -2.0], [-0.3, -0.6, -0.9, -1.2]]).requires_grad_(True)
    old_logp = logp.detach() - t64([[4, 2, 1.3, 0.5], [4, 1, 10, 10]]).log()
    mask = t64([[1, 1, 1, 1], [1, 1, 0, 0]])
    loss, got = policy_loss(logp, old_logp, None, t64([-1.0, 1.0]), mask,
                            settings(aggregation="token_mean", **kwargs))
    loss.backward()
    torch.testing.assert_close(loss, t64(total / 6), rtol=0, atol=1e-12)
    torch.testing.assert_close(logp.grad, t64(grad) / 6, rtol=0, atol=1e-12)
    assert_stats(got, {"clip/low_frac": 1 / 6, "clip/high_frac": 1 / 6, **stats})
    assert ("clip/dual_frac" in got) == ("dual_clip" in kwargs) and ("clip/delta_frac" in got) == ("delta" in kwargs)


def test_delta_below_one_plus_eps_high_is_counted_as_cut():
    # eps 0.2, delta 1.1 (the config only asks delta > 1). A = +1, r = 1.15: capped min(1.15, 1.1) = 1.1,
    # clipped 1.15, l = -min(1.1, 1.15) = -1.1: a constant, so zero gradient and the token is cut.
    logp = t64([[-1.0]]).requires_grad_(True)
    loss, stats = policy_loss(logp, logp.detach() - math.log(1.15), None, t64([1.0]), t64([[1.0]]),
                              settings(delta=1.1))
    loss.backward()
    assert loss.item() == pytest.approx(-1.1) and logp.grad.item() == 0.0
    assert stats["grad/cut_frac"].item() == 1.0


# ---------------------------------------------------------------- default clip is the plain formula


def random_batch(seed, lengths, length, spread=0.3):
    gen = torch.Generator().manual_seed(seed)
    shape = (len(lengths), length)
    logp = -torch.rand(shape, generator=gen, dtype=F64) * 3
    old_logp = logp + spread * torch.randn(shape, generator=gen, dtype=F64)
    ref_logp = logp + 0.5 * torch.randn(shape, generator=gen, dtype=F64)
    adv = torch.randn(len(lengths), generator=gen, dtype=F64)
    mask = (torch.arange(length)[None] < torch.tensor(lengths)[:, None]).to(F64)
    return logp, old_logp, ref_logp, adv, mask


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("aggregation", AGGREGATION_NAMES)
def test_default_clip_is_bit_identical_to_the_plain_formula(aggregation, dtype):
    logp, old_logp, _, adv, mask = (x.to(dtype) for x in random_batch(1, [4, 2, 3], 4))
    logp.requires_grad_(True)
    loss, _ = policy_loss(logp, old_logp, None, adv, mask,
                          settings(clip_eps_low=0.2, clip_eps_high=0.28, aggregation=aggregation))
    (grad,) = torch.autograd.grad(loss, logp)

    ratio = torch.exp(logp - old_logp)
    tok = -torch.minimum(ratio * adv[:, None], ratio.clamp(1 - 0.2, 1 + 0.28) * adv[:, None])
    reference = {"seq_mean_token_mean": ((tok * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / 3,
                 "token_mean": (tok * mask).sum() / mask.sum(),
                 "seq_mean_token_sum_norm": (tok * mask).sum() / (3 * 4)}[aggregation]
    (reference_grad,) = torch.autograd.grad(reference, logp)
    assert torch.equal(loss, reference) and torch.equal(grad, reference_grad)


# ---------------------------------------------------------------- on-policy equalities
# At r = 1 with a sequence-constant A and seq_mean_token_mean, every objective's gradient is
# -A_i / (|o_i| N) per token: clip/clip_cov (-A r), gspo (-A s_i, s_i = 1), cispo (-sg(1) A), sapo
# (-4 * 1/4 * r A), gmpo (-A G_i / |o_i| per token, G_i = 1, row weight 1/N), gpg (-A), kl_cov (|ln r|'s
# derivative sign(0) = 0). Loss VALUES: clip, clip_cov, gspo, gmpo, kl_cov all give -A_i (|ln 1| = 0);
# cispo and gpg give -A logp (equal to each other, not to clip); sapo gives -2A/tau (clip's only when tau = 2).
VALUE_LIKE_CLIP = {"clip", "clip_cov", "gspo", "gmpo", "kl_cov"}


def test_on_policy_gradients_agree_and_which_values_agree():
    logp, _, _, adv, mask = random_batch(2, [5, 3, 1, 4], 5)
    none_selected = torch.zeros_like(mask, dtype=torch.bool)
    some_selected = mask > 0                                            # kl_cov: |ln 1| = 0 anyway
    runs = {}
    for name, changes, selected in [*((n, {}, None) for n in OBJECTIVE_NAMES), ("kl_cov_all", {}, some_selected),
                                    ("sapo_tau2", {"sapo_tau_pos": 2.0, "sapo_tau_neg": 2.0}, None)]:
        objective = name.split("_all")[0].split("_tau2")[0]
        if objective in SELECTIONS and selected is None:
            selected = none_selected
        leaf = logp.clone().requires_grad_(True)
        loss, _ = policy_loss(leaf, leaf.detach(), None, adv, mask, settings(objective=objective, **changes),
                              cov_selected=selected)
        runs[name] = (loss.detach(), torch.autograd.grad(loss, leaf)[0])
    for name, (loss, grad) in runs.items():
        torch.testing.assert_close(grad, runs["clip"][1], msg=name)
        if name in VALUE_LIKE_CLIP | {"kl_cov_all", "sapo_tau2"}:
            torch.testing.assert_close(loss, runs["clip"][0], msg=name)
    torch.testing.assert_close(runs["cispo"][0], runs["gpg"][0])
    assert not torch.allclose(runs["gpg"][0], runs["clip"][0]) and not torch.allclose(runs["sapo"][0], runs["clip"][0])


# ---------------------------------------------------------------- cut = tokens without policy gradient


@pytest.mark.parametrize(("objective", "extra"), [
    *((name, {}) for name in OBJECTIVE_NAMES), ("clip", {"dual_clip": 1.5}), ("clip", {"delta": 1.4}),
], ids=[*OBJECTIVE_NAMES, "clip-dual1.5", "clip-delta1.4"])
def test_cut_marks_exactly_the_tokens_without_policy_gradient(objective, extra):
    logp, old_logp, _, adv, mask = random_batch(3, [6, 4, 1, 5, 6, 2], 6, spread=0.5)
    logp.requires_grad_(True)
    adv = adv[:, None].expand_as(logp)
    selected = kl_cov_selection(token_covariance(adv, logp, mask), mask, settings(kl_cov_ratio=0.3))
    out = OBJECTIVES[objective](logp, old_logp, adv, mask, settings(clip_eps_low=0.1, clip_eps_high=0.1, **extra),
                                selected)
    (grad,) = torch.autograd.grad((out.loss * mask).sum(), logp)
    assert torch.equal(grad != 0, ~out.cut & (mask > 0) & (adv != 0))


# ---------------------------------------------------------------- selections


def test_token_covariance_by_hand():
    # A = [2, -1], mask [[1,1],[1,0]]: A over tokens [2, 2, -1], mean 1 -> centred [1, 1, -2].
    # logp [[-1, -4], [-1, (-9 pad)]]: mean -2 -> centred [1, -2, 1].  cov = [[1, -2], [-2, 0]].
    cov = token_covariance(t64([[2.0], [-1.0]]), t64([[-1.0, -4.0], [-1.0, -9.0]]), t64([[1, 1], [1, 0]]))
    torch.testing.assert_close(cov, t64([[1.0, -2.0], [-2.0, 0.0]]), rtol=0, atol=1e-12)


COV = t64([[0.5, -1.0, 2.0], [3.0, 0.1, 9.0]])       # 9.0 sits in padding
COV_MASK = t64([[1, 1, 1], [1, 1, 0]])               # 5 valid tokens


@pytest.mark.parametrize(("ratio", "expected"), [
    (0.4, [[0, 0, 1], [1, 0, 0]]),        # floor(0.4 * 5) = 2: 3.0 and 2.0 (never the padding's 9.0)
    (0.001, [[0, 0, 0], [1, 0, 0]]),      # floor(0.005) = 0 -> at least 1: 3.0
])
def test_kl_cov_selection_takes_the_top_k(ratio, expected):
    selected = kl_cov_selection(COV, COV_MASK, settings(kl_cov_ratio=ratio))
    assert torch.equal(selected, torch.tensor(expected, dtype=torch.bool))


def test_clip_cov_selection_draws_among_candidates_only_and_is_reproducible():
    # Strictly inside (1, 5): 2.0 at (0,1), 4.9 at (0,2), 3.0 at (1,1); 1.0 and 5.0 are on the bounds,
    # 2.5 is padding. ratio 0.4 of 5 tokens -> 2 drawn of the 3 candidates; ratio 1.0 -> min(5, 3) = 3.
    cov = t64([[1.0, 2.0, 4.9], [5.0, 3.0, 2.5]])
    candidates = torch.tensor([[0, 1, 1], [0, 1, 0]], dtype=torch.bool)
    params = settings(clip_cov_ratio=0.4, clip_cov_lb=1.0, clip_cov_ub=5.0)
    draws = [clip_cov_selection(cov, COV_MASK, params, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(d.sum() == 2 and not (d & ~candidates).any() for d in draws)
    assert torch.stack(draws).any(0).equal(candidates)                      # random: every candidate drawn
    again = clip_cov_selection(cov, COV_MASK, params, torch.Generator().manual_seed(7))
    assert torch.equal(again, draws[7])
    every = clip_cov_selection(cov, COV_MASK, settings(clip_cov_ratio=1.0), torch.Generator().manual_seed(0))
    assert torch.equal(every, candidates)


ENT_MASK = t64([[1, 1, 0], [1, 1, 0]])


@pytest.mark.parametrize(("entropy", "quantile", "expected"), [
    ([[0.1, 0.5, 7.0], [0.9, 0.3, 8.0]], 0.5, [[0, 1, 0], [1, 0, 0]]),    # ceil(2): 0.9, 0.5
    ([[0.1, 0.5, 7.0], [0.5, 0.9, 8.0]], 0.5, [[0, 1, 0], [1, 1, 0]]),    # threshold 0.5 tied: both kept
    ([[0.1, 0.5, 7.0], [0.9, 0.3, 8.0]], 0.25, [[0, 0, 0], [1, 0, 0]]),   # ceil(1): 0.9 (not padding 8.0)
    ([[0.1, 0.5, 7.0], [0.9, 0.3, 8.0]], 1.0, [[1, 1, 0], [1, 1, 0]]),    # every masked token
])
def test_top_entropy_keep_by_hand(entropy, quantile, expected):
    keep = top_entropy_keep(t64(entropy), ENT_MASK, quantile)
    assert torch.equal(keep, torch.tensor(expected, dtype=torch.bool))


def test_top_entropy_in_policy_loss_keeps_policy_term_and_kl_everywhere():
    # Shared case, clip, token_mean. Sampling entropy [[0.2, 0.9, 0.1], [0.3, 0.8, (5 pad)]], rho 0.4:
    # ceil(0.4 * 5) = 2 -> keep (0,1) and (1,1), whose clip terms are -1.1 (grad -1.1) and 4 (grad 4).
    # kl_beta 0.1 with k1 = logp - ref_logp = 1 on every token, d k1 / d logp = 1.
    #   loss = (-1.1 + 4 + 0.1 * 5) / 5 = 0.68;  grad = [[0.1, -1.0, 0.1], [0.1, 4.1, 0]] / 5
    logp, old_logp, adv, mask = shared_case()
    loss, stats = policy_loss(logp, old_logp, logp.detach() - 1, adv, mask,
                              settings(aggregation="token_mean", kl_beta=0.1, kl_estimator="k1",
                                       top_entropy_quantile=0.4),
                              sampling_entropy=t64([[0.2, 0.9, 0.1], [0.3, 0.8, 5.0]]))
    loss.backward()
    torch.testing.assert_close(loss, t64(0.68), rtol=0, atol=1e-12)
    torch.testing.assert_close(logp.grad, t64([[0.02, -0.2, 0.02], [0.02, 0.82, 0]]), rtol=0, atol=1e-12)
    assert_stats(stats, {"entropy/kept_frac": 2 / 5, "grad/cut_frac": 3 / 5})


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_tokens_outside_the_entropy_selection_get_no_policy_gradient(objective):
    logp, old_logp, _, adv, mask = random_batch(4, [5, 3, 4], 5)
    logp.requires_grad_(True)
    keep = top_entropy_keep(-old_logp, mask, 0.5)
    loss, _ = policy_loss(logp, old_logp, None, adv, mask, settings(objective=objective), entropy_keep=keep,
                          cov_selected=torch.zeros_like(keep))
    (grad,) = torch.autograd.grad(loss, logp)
    assert (grad[keep] != 0).any() and torch.equal(grad[~keep], torch.zeros_like(grad[~keep]))


def test_k3_is_hand_value_and_gradient():
    # r = [2, 0.5], d = ref_logp - logp = [ln2, -ln2], A = 0 (no policy term), kl_beta 0.5, token_mean (/2).
    #   k3 = e^d - d - 1 = [1 - ln2, ln2 - 1/2];  r k3 = [2 - 2 ln2, ln2/2 - 1/4] = [0.6137056, 0.0965736]
    #   d (r k3) / d logp = r k3 + r (1 - e^d) = -r d = [-2 ln2, ln2 / 2]
    #   loss = 0.5 * 0.7102792 / 2 = 0.1775698;  grad = 0.25 * [-2 ln2, ln2 / 2] = [-0.3465736, 0.0866434]
    logp = t64([[-1.0, -2.0]]).requires_grad_(True)
    old_logp = logp.detach() - t64([[LN2, -LN2]])
    loss, stats = policy_loss(logp, old_logp, logp.detach() + t64([[LN2, -LN2]]), t64([0.0]), t64([[1, 1]]),
                              settings(kl_beta=0.5, kl_estimator="k3_is", aggregation="token_mean"))
    loss.backward()
    torch.testing.assert_close(loss, t64(0.25 * (2 - 2 * LN2 + LN2 / 2 - 0.25)), rtol=0, atol=1e-12)
    torch.testing.assert_close(logp.grad, t64([[-0.5 * LN2, 0.125 * LN2]]), rtol=0, atol=1e-12)
    assert_stats(stats, {"kl/k3_is": (2 - 2 * LN2 + LN2 / 2 - 0.25) / 2, "kl/k3": (0.5) / 2})


def test_entropy_bonus_is_minus_coef_times_mean_entropy():
    # Shared case, clip, token_mean: loss 2.8 / 5 = 0.56 without the bonus. Entropy over the 5 masked
    # tokens 0.5 + 1 + 1.5 + 2 + 0.5 = 5.5, mean 1.1; coef 0.1 -> 0.56 - 0.11 = 0.45.
    # d loss / d entropy = -0.1 / 5 = -0.02 on masked tokens, 0 on padding.
    logp, old_logp, adv, mask = shared_case()
    entropy = t64([[0.5, 1.0, 1.5], [2.0, 0.5, 9.0]]).requires_grad_(True)
    loss, _ = policy_loss(logp, old_logp, None, adv, mask, settings(aggregation="token_mean", entropy_coef=0.1),
                          entropy=entropy)
    loss.backward()
    torch.testing.assert_close(loss, t64(0.45), rtol=0, atol=1e-12)
    torch.testing.assert_close(entropy.grad, -0.02 * mask, rtol=0, atol=1e-12)
    torch.testing.assert_close(logp.grad, t64([[0, -1.1, -0.5], [0, 4.0, 0]]) / 5, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- micro-batch invariance


@pytest.mark.parametrize("aggregation", AGGREGATION_NAMES)
@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_micro_batches_add_up_to_the_full_batch(objective, aggregation):
    logp, old_logp, ref_logp, adv, mask = random_batch(0, [5, 3, 0, 1, 4, 2], 5)
    logp.requires_grad_(True)
    entropy = (torch.rand(6, 5, generator=torch.Generator().manual_seed(1), dtype=F64)).requires_grad_(True)
    kwargs = dict(objective=objective, aggregation=aggregation, clip_eps_low=0.2, clip_eps_high=0.28, kl_beta=0.05,
                  kl_estimator="k3_is", entropy_coef=0.01, kl_cov_ratio=0.2, clip_cov_ratio=0.2, clip_cov_lb=0.0)
    params = settings(kl_cov_ratio=0.2, clip_cov_ratio=0.2, clip_cov_lb=0.0)
    selected = None
    if objective in SELECTIONS:
        cov = token_covariance(adv[:, None].expand_as(logp), logp, mask)
        selected = SELECTIONS[objective](cov, mask, params, torch.Generator().manual_seed(0))
        assert selected.any()
    keep = top_entropy_keep(-old_logp, mask, 0.7)
    full, _ = policy_loss(logp, old_logp, ref_logp, adv, mask, settings(**kwargs), cov_selected=selected,
                          entropy_keep=keep, entropy=entropy)
    full_grads = torch.autograd.grad(full, (logp, entropy))

    normalisers = dict(num_seqs=6, num_tokens=float(mask.sum()), max_len=5)
    parts = []
    for rows in [slice(0, 2), slice(2, 5), slice(5, 6)]:
        part, _ = policy_loss(logp[rows], old_logp[rows], ref_logp[rows], adv[rows], mask[rows], settings(**kwargs),
                              cov_selected=None if selected is None else selected[rows], entropy_keep=keep[rows],
                              entropy=entropy[rows], **normalisers)
        parts.append(part)
    summed = torch.stack(parts).sum()
    torch.testing.assert_close(summed, full, rtol=1e-12, atol=1e-14)
    for got, want in zip(torch.autograd.grad(summed, (logp, entropy)), full_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert full_grads[0][mask > 0].abs().sum() > 0


# ---------------------------------------------------------------- bad input


def test_unknown_objective_raises_one_line_naming_it():
    logp, old_logp, _, adv, mask = random_batch(5, [3, 2], 3)
    with pytest.raises(GrpoError, match="unknown objective 'ppo2'") as info:
        policy_loss(logp, old_logp, None, adv, mask, settings(objective="ppo2"))
    assert "\n" not in str(info.value)


def test_entropy_coef_without_entropy_raises():
    logp, old_logp, _, adv, mask = random_batch(5, [3, 2], 3)
    with pytest.raises(GrpoError, match="entropy"):
        policy_loss(logp, old_logp, None, adv, mask, settings(entropy_coef=0.01))
