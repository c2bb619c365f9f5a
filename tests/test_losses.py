"""Tests for grpo/formulas/losses.py: hand-computed losses, normaliser invariances, gradients and statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from grpo import GrpoError
from conftest import settings
from grpo.formulas.losses import AGGREGATIONS, loss_token_mask, policy_loss

AGGREGATION_NAMES = ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]
LN2 = math.log(2.0)
F64 = torch.float64


def test_registry_holds_exactly_the_documented_aggregations():
    assert set(AGGREGATIONS) == set(AGGREGATION_NAMES)


# ---------------------------------------------------------------- hand-computed losses

# Case 1: ratio = 1 (logp == old_logp), kl_beta = 0, so every token's loss is -A_i.
#   mask = [[1,1,1],[1,0,0]]  (|o_0| = 3, |o_1| = 1, 4 tokens),  A = [2, -1]
#   token losses: row 0 -> -2 each, masked sum -6;  row 1 -> +1 each, masked sum +1
#   seq_mean_token_mean     (-6/3 + 1/1) / 2  = (-2 + 1) / 2 = -0.5
#   token_mean              (-6 + 1) / 4                     = -1.25
#   seq_mean_token_sum_norm (-6 + 1) / (2 * 3)               = -0.8333333
CASE1_LOGP = [[-0.5, -1.0, -2.0], [-0.3, -7.0, -9.0]]
CASE1_MASK = [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
CASE1_ADV = [2.0, -1.0]


@pytest.mark.parametrize(("aggregation", "expected"), [
    ("seq_mean_token_mean", -0.5),
    ("token_mean", -1.25),
    ("seq_mean_token_sum_norm", -5 / 6),
])
def test_ratio_one_no_kl_loss_depends_only_on_advantages_and_lengths(aggregation, expected):
    logp = torch.tensor(CASE1_LOGP, dtype=F64)
    loss, stats = policy_loss(logp, logp.clone(), None, torch.tensor(CASE1_ADV, dtype=F64),
                              torch.tensor(CASE1_MASK, dtype=F64), settings(kl_beta=0.0, aggregation=aggregation))
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-12)
    assert stats["ratio/mean"].item() == 1.0
    assert stats["tokens"].item() == 4.0


@pytest.mark.parametrize(("aggregation", "expected"), [
    # num_seqs = 4, num_tokens = 10, max_len = 5 override this batch's B = 2, 4 tokens, T = 3:
    ("seq_mean_token_mean", -1 / 4),          # (-2 + 1) / 4
    ("token_mean", -5 / 10),                  # (-6 + 1) / 10
    ("seq_mean_token_sum_norm", -5 / 20),     # (-6 + 1) / (4 * 5)
])
def test_explicit_normalisers_are_used(aggregation, expected):
    logp = torch.tensor(CASE1_LOGP, dtype=F64)
    loss, _ = policy_loss(logp, logp.clone(), None, torch.tensor(CASE1_ADV, dtype=F64),
                          torch.tensor(CASE1_MASK, dtype=F64), settings(aggregation=aggregation), num_seqs=4,
                          num_tokens=10, max_len=5)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-12)


# Case 2: ratio != 1, kl_beta = 0.1 with k3, clip_eps_low = clip_eps_high = 0.2.
#   mask = [[1,1,0],[1,1,1]], A = [1, -2]
#   ratio  = [[1.1, 1.5, (2.0 pad)], [0.5, 1.5, 1.0]]
#   d = ref_logp - logp = [[ln2, 0, (5 pad)], [-ln2, 0, ln2]]
#   k3 = e^d - d - 1:  ln2 -> 1 - ln2 = 0.3068528;  0 -> 0;  -ln2 -> ln2 - 1/2 = 0.1931472
#   policy part -min(r A, clip(r, 0.8, 1.2) A):
#     row 0 (A=+1):  r=1.1 -> -min(1.1, 1.1)   = -1.1
#                    r=1.5 -> -min(1.5, 1.2)   = -1.2   (clipped high)
#     row 1 (A=-2):  r=0.5 -> -min(-1.0, -1.6) =  1.6   (clipped low)
#                    r=1.5 -> -min(-3.0, -2.4) =  3.0   (A<0 and r high: not clipped)
#                    r=1.0 -> -min(-2.0, -2.0) =  2.0
#   token losses with 0.1 * k3:
#     row 0: -1.1 + 0.0306853 = -1.0693147;  -1.2 + 0 = -1.2            sum -2.2693147 (2 tokens)
#     row 1:  1.6 + 0.0193147 =  1.6193147;   3.0;  2.0 + 0.0306853 = 2.0306853
#                                                                       sum  6.65      (3 tokens)
#     (row 1 KL part: 0.1 * (ln2 - 1/2 + 1 - ln2) = 0.05 exactly)
#   seq_mean_token_mean     (-2.2693147/2 + 6.65/3) / 2 = (-1.1346574 + 2.2166667) / 2 = 0.5410047
#   token_mean              (-2.2693147 + 6.65) / 5 = 4.3806853 / 5                  = 0.8761371
#   seq_mean_token_sum_norm 4.3806853 / (2 * 3)                                       = 0.7301142
#   With k1 (= -d) instead: KL sum over tokens = -ln2 + 0 + ln2 + 0 - ln2 = -ln2;
#     token_mean = (-2.3 + 6.6 - 0.1 ln2) / 5 = (4.3 - 0.0693147) / 5 = 0.8461371
#   With k2 (= d^2/2): KL sum = 3 (ln2)^2 / 2 = 0.7206795;
#     token_mean = (4.3 + 0.0720680) / 5 = 0.8744136
CASE2_MASK = [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
CASE2_ADV = [1.0, -2.0]


def _case2(requires_grad: bool = False):
    old_logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, -0.3]], dtype=F64)
    log_ratio = torch.log(torch.tensor([[1.1, 1.5, 2.0], [0.5, 1.5, 1.0]], dtype=F64))
    logp = (old_logp + log_ratio).requires_grad_(requires_grad)
    d = torch.tensor([[LN2, 0.0, 5.0], [-LN2, 0.0, LN2]], dtype=F64)
    ref_logp = logp.detach() + d
    return logp, old_logp, ref_logp, torch.tensor(CASE2_ADV, dtype=F64), torch.tensor(CASE2_MASK, dtype=F64)


@pytest.mark.parametrize(("aggregation", "expected", "rounded"), [
    ("seq_mean_token_mean", ((-2.3 + 0.1 * (1 - LN2)) / 2 + 6.65 / 3) / 2, 0.5410047),
    ("token_mean", (-2.3 + 0.1 * (1 - LN2) + 6.65) / 5, 0.8761371),
    ("seq_mean_token_sum_norm", (-2.3 + 0.1 * (1 - LN2) + 6.65) / 6, 0.7301142),
])
def test_clipped_ratio_with_k3_penalty_hand_values(aggregation, expected, rounded):
    logp, old_logp, ref_logp, adv, mask = _case2()
    loss, _ = policy_loss(logp, old_logp, ref_logp, adv, mask, settings(clip_eps_low=0.2, clip_eps_high=0.2,
                                                                        kl_beta=0.1, kl_estimator="k3",
                                                                        aggregation=aggregation))
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, torch.tensor(rounded, dtype=F64), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("kl_estimator", "expected"), [
    ("k1", (4.3 - 0.1 * LN2) / 5),
    ("k2", (4.3 + 0.1 * 1.5 * LN2 ** 2) / 5),
    ("k3", (4.3 + 0.1 * (1.5 - LN2)) / 5),
])
def test_kl_estimator_choice_enters_the_loss(kl_estimator, expected):
    logp, old_logp, ref_logp, adv, mask = _case2()
    loss, _ = policy_loss(logp, old_logp, ref_logp, adv, mask,
                          settings(kl_beta=0.1, kl_estimator=kl_estimator, aggregation="token_mean"))
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-12)


def test_case2_hand_gradient():
    # d loss / d logp_it = [policy part + 0.1 * (1 - e^d)] / (|o_i| * num_seqs), seq_mean_token_mean.
    #   policy part: -A * ratio when unclipped, 0 when the clip bound is active.
    #   row 0 (|o|=2): t0: -1.1 + 0.1 * (1 - 2) = -1.2 -> -1.2 / 4 = -0.3
    #                  t1: clipped, 0.1 * (1 - 1) = 0  -> 0
    #                  t2: padding                     -> 0
    #   row 1 (|o|=3): t0: clipped, 0.1 * (1 - 1/2) = 0.05 -> 0.05 / 6 = 0.0083333
    #                  t1: 2 * 1.5 + 0 = 3.0               -> 3.0 / 6  = 0.5
    #                  t2: 2 * 1.0 + 0.1 * (1 - 2) = 1.9   -> 1.9 / 6  = 0.3166667
    logp, old_logp, ref_logp, adv, mask = _case2(requires_grad=True)
    loss, _ = policy_loss(logp, old_logp, ref_logp, adv, mask,
                          settings(kl_beta=0.1, kl_estimator="k3", aggregation="seq_mean_token_mean"))
    loss.backward()
    expected = torch.tensor([[-0.3, 0.0, 0.0], [0.05 / 6, 0.5, 1.9 / 6]], dtype=F64)
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-12)


def test_case2_statistics():
    # Active tokens (5): ratios 1.1, 1.5 | 0.5, 1.5, 1.0.  Padding (row 0, t2) has ratio 2.0 with A > 0
    # and d = 5: it would count as a high clip, raise ratio/max to 2 and add k3 = e^5 - 6 if counted.
    #   clip/high_frac  row 0 t1 only                    -> 1/5
    #   clip/low_frac   row 1 t0 only (r=0.5 < 0.8, A<0)  -> 1/5
    #   ratio/mean      (1.1 + 1.5 + 0.5 + 1.5 + 1.0) / 5 = 5.6 / 5 = 1.12;   ratio/max 1.5
    #   kl/k1           (-ln2 + 0 + ln2 + 0 - ln2) / 5 = -ln2/5           = -0.1386294
    #   kl/k2           3 * (ln2)^2 / 2 / 5 = 0.3 (ln2)^2                 =  0.1441359
    #   kl/k3           ((1-ln2) + 0 + (ln2-1/2) + 0 + (1-ln2)) / 5 = (1.5 - ln2)/5 = 0.1613706
    #   kl_old          k3 of KL(pi_old || pi_theta) from tokens sampled from pi_old: r - 1 - ln r per token:
    #                   r=1.1: 0.1 - 0.0953102 = 0.0046898;  r=1.5: 0.5 - 0.4054651 = 0.0945349;
    #                   r=0.5: -0.5 + ln2 = 0.1931472;  r=1: 0
    #                   (0.0046898 + 0.0945349 + 0.1931472 + 0.0945349 + 0) / 5 = 0.0773814
    #   tokens          5
    logp, old_logp, ref_logp, adv, mask = _case2()
    _, stats = policy_loss(logp, old_logp, ref_logp, adv, mask, settings(kl_beta=0.1))
    kl_old = (0.1 - math.log(1.1) + 2 * (0.5 - math.log(1.5)) - 0.5 + LN2) / 5
    expected = {
        "clip/high_frac": 0.2, "clip/low_frac": 0.2, "ratio/mean": 1.12, "ratio/max": 1.5,
        "kl/k1": -LN2 / 5, "kl/k2": 0.3 * LN2 ** 2, "kl/k3": (1.5 - LN2) / 5, "kl_old": kl_old,
        "tokens": 5.0,
    }
    assert set(expected) <= set(stats)
    for key, value in expected.items():
        assert stats[key].dim() == 0, key
        torch.testing.assert_close(stats[key].double(), torch.tensor(value, dtype=F64), rtol=0, atol=1e-12,
                                   msg=key)
    torch.testing.assert_close(stats["kl_old"].double(), torch.tensor(0.0773814, dtype=F64), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- clipping


def test_clipped_tokens_get_zero_gradient_and_are_counted():
    # Asymmetric clip (DAPO): eps_low = 0.2 -> lower bound 0.8; eps_high = 0.28 -> upper bound 1.28.
    # Row 0, A = +1, ratios [1.3, 1.25, 0.5, (3.0 pad)]:
    #   1.3 > 1.28 with A > 0  -> clipped high, zero grad
    #   1.25 < 1.28            -> unclipped (would be clipped with a symmetric 0.2): grad -A r / 6 = -1.25/6
    #   0.5 with A > 0         -> min picks r A (the pessimistic side): unclipped, grad -0.5/6
    # Row 1, A = -1, ratios [0.75, 0.85, 1.5, (0.1 pad)]:
    #   0.75 < 0.8 with A < 0  -> clipped low, zero grad
    #   0.85                   -> unclipped, grad -A r / 6 = 0.85/6
    #   1.5 with A < 0         -> unclipped, grad 1.5/6
    # (divisor 6 = |o_i| * num_seqs = 3 * 2 for seq_mean_token_mean; kl_beta = 0.)
    # Padding: ratio 3.0 with A > 0 and 0.1 with A < 0 would each add a clip if counted.
    # clip/high_frac = 1/6, clip/low_frac = 1/6 over the 6 active tokens.
    ratios = torch.tensor([[1.3, 1.25, 0.5, 3.0], [0.75, 0.85, 1.5, 0.1]], dtype=F64)
    old_logp = torch.tensor([[-1.0, -2.0, -3.0, -0.5], [-0.2, -1.4, -2.2, -0.9]], dtype=F64)
    logp = (old_logp + ratios.log()).requires_grad_(True)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]], dtype=F64)
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    loss, stats = policy_loss(logp, old_logp, None, adv, mask, settings(clip_eps_low=0.2, clip_eps_high=0.28,
                                                                        kl_beta=0.0, aggregation="seq_mean_token_mean"))
    loss.backward()
    expected_grad = torch.tensor([[0.0, -1.25 / 6, -0.5 / 6, 0.0], [0.0, 0.85 / 6, 1.5 / 6, 0.0]], dtype=F64)
    torch.testing.assert_close(logp.grad, expected_grad, rtol=0, atol=1e-12)
    assert logp.grad[0, 0] == 0.0 and logp.grad[1, 0] == 0.0                 # exactly zero
    assert (logp.grad[:, 1:3] != 0).all()
    torch.testing.assert_close(stats["clip/high_frac"].double(), torch.tensor(1 / 6, dtype=F64))
    torch.testing.assert_close(stats["clip/low_frac"].double(), torch.tensor(1 / 6, dtype=F64))
    # ratio/max ignores the padding ratio 3.0.
    torch.testing.assert_close(stats["ratio/max"].double(), torch.tensor(1.5, dtype=F64))


def test_zero_advantage_tokens_are_never_counted_as_clipped():
    # A = 0: the loss is -min(0, 0) = 0 whatever the ratio, no bound is "active for the sign of A".
    # Ratios 0.5 (< 0.8) and 1.5 (> 1.2) on 2 active tokens -> both clip fractions exactly 0, loss 0.
    old_logp = torch.tensor([[-1.0, -2.0]], dtype=F64)
    logp = old_logp + torch.log(torch.tensor([[0.5, 1.5]], dtype=F64))
    loss, stats = policy_loss(logp, old_logp, None, torch.zeros(1, dtype=F64), torch.ones(1, 2, dtype=F64), settings())
    assert loss.item() == 0.0
    assert stats["clip/low_frac"].item() == 0.0
    assert stats["clip/high_frac"].item() == 0.0


# ---------------------------------------------------------------- invariances


def _random_batch(batch_size: int, length: int, seed: int, lengths: list[int], dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(batch_size, length, generator=gen, dtype=dtype) * 3
    old_logp = logp + 0.3 * torch.randn(batch_size, length, generator=gen, dtype=dtype)
    ref_logp = logp + 0.5 * torch.randn(batch_size, length, generator=gen, dtype=dtype)
    adv = torch.randn(batch_size, generator=gen, dtype=dtype)
    mask = (torch.arange(length).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).to(dtype)
    return logp, old_logp, ref_logp, adv, mask


@pytest.mark.parametrize("aggregation", AGGREGATION_NAMES)
def test_micro_batch_losses_and_gradients_add_up_to_full_batch(aggregation):
    # 6 rows of length 5, one of them empty; ratios e^{±0.3}-ish, so some tokens are clipped.
    logp, old_logp, ref_logp, adv, mask = _random_batch(6, 5, seed=0, lengths=[5, 3, 0, 1, 4, 2])
    kwargs = dict(clip_eps_low=0.2, clip_eps_high=0.28, kl_beta=0.05, kl_estimator="k3", aggregation=aggregation)
    logp = logp.requires_grad_(True)

    full_loss, _ = policy_loss(logp, old_logp, ref_logp, adv, mask, settings(**kwargs))
    (full_grad,) = torch.autograd.grad(full_loss, logp)

    normalisers = dict(num_seqs=6, num_tokens=float(mask.sum()), max_len=5)
    micro_losses = []
    for start, end in [(0, 2), (2, 3), (3, 6)]:
        part = slice(start, end)
        micro_loss, _ = policy_loss(logp[part], old_logp[part], ref_logp[part], adv[part], mask[part],
                                    settings(**kwargs), **normalisers)
        micro_losses.append(micro_loss)
    summed = torch.stack(micro_losses).sum()
    (summed_grad,) = torch.autograd.grad(summed, logp)
    torch.testing.assert_close(summed, full_loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(summed_grad, full_grad, rtol=1e-12, atol=1e-14)
    # Not vacuous: the active tokens do carry gradient.
    assert full_grad[mask > 0].abs().sum() > 0


def _padded_copy(tensors, extra_cols: int, fills):
    """Append extra_cols columns filled with `fills[k]` to the k-th [B, T] tensor."""
    out = []
    for tensor, fill in zip(tensors, fills):
        extra = fill.expand(tensor.shape[0], extra_cols) if torch.is_tensor(fill) else \
            torch.full((tensor.shape[0], extra_cols), fill, dtype=tensor.dtype)
        out.append(torch.cat([tensor, extra.to(tensor.dtype)], dim=1))
    return out


def _loss_grad_stats(logp, old_logp, ref_logp, adv, mask, *, aggregation, max_len):
    logp = logp.detach().requires_grad_(True)
    loss, stats = policy_loss(logp, old_logp, ref_logp, adv, mask,
                              settings(clip_eps_low=0.2, clip_eps_high=0.2, kl_beta=0.1, kl_estimator="k3",
                                       aggregation=aggregation), max_len=max_len)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad, stats


def _padding_case(aggregation, pad_logp, pad_old_logp, pad_ref_logp, dtype):
    """Loss/grad/stats of a [3, 4] batch and of the same batch with 3 all-padding columns appended."""
    logp, old_logp, ref_logp, adv, mask = _random_batch(3, 4, seed=5, lengths=[4, 2, 3], dtype=dtype)
    adv = torch.tensor([1.5, -0.8, -1.2], dtype=dtype)                 # both signs of A
    base = _loss_grad_stats(logp, old_logp, ref_logp, adv, mask, aggregation=aggregation, max_len=4)
    wide = _padded_copy([logp, old_logp, ref_logp, mask], 3, [pad_logp, pad_old_logp, pad_ref_logp, 0.0])
    padded = _loss_grad_stats(*wide[:3], adv, wide[3], aggregation=aggregation, max_len=4)
    return base, padded


@pytest.mark.parametrize("aggregation", AGGREGATION_NAMES)
def test_padding_columns_with_arbitrary_values_change_nothing(aggregation):
    # Padding filled with random values in [-20, 20] for logp, old_logp and ref_logp (no overflow).
    gen = torch.Generator().manual_seed(9)
    fills = [(torch.rand(1, 3, generator=gen, dtype=F64) - 0.5) * 40 for _ in range(3)]
    (loss0, grad0, stats0), (loss1, grad1, stats1) = _padding_case(aggregation, *fills, dtype=F64)
    torch.testing.assert_close(loss1, loss0, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad1[:, :4], grad0, rtol=1e-12, atol=1e-14)
    assert torch.equal(grad1[:, 4:], torch.zeros(3, 3, dtype=F64))
    for key in stats0:
        torch.testing.assert_close(stats1[key], stats0[key], rtol=1e-12, atol=1e-14, msg=key)


# Extreme but legal padding contents. "valid_logprobs" are all <= 0, as any log-softmax output is, in
# the float32 a trainer actually uses: ref_logp - logp = -5 - (-120) = 115 > 88.7, so e^115 overflows
# float32. The issue asks that padding values, "even huge", change neither loss nor gradient.
EXTREME_PADDING = {
    "huge_positive_logp": (1e4, 0.0, 0.0),           # ratio = e^10000 = inf
    "huge_negative_logp": (-1e4, 0.0, 0.0),          # k3: d = 1e4, e^d = inf
    "valid_logprobs": (-120.0, -10.0, -5.0),         # ratio e^-110 ~ 0; k3: e^115 = inf in float32
}


@pytest.mark.parametrize("fill", list(EXTREME_PADDING), ids=list(EXTREME_PADDING))
def test_padding_with_extreme_values_changes_nothing(fill):
    # Checks loss, gradient and statistics for every aggregation and reports all problems at once.
    problems = []
    for aggregation in AGGREGATION_NAMES:
        (loss0, grad0, stats0), (loss1, grad1, stats1) = _padding_case(
            aggregation, *EXTREME_PADDING[fill], dtype=torch.float32)
        if not torch.isfinite(loss1) or not torch.allclose(loss1, loss0):
            problems.append(f"{aggregation}: loss {loss0.item():.6g} -> {loss1.item()}")
        if not torch.isfinite(grad1).all() or not torch.allclose(grad1[:, :4], grad0) \
                or not torch.equal(grad1[:, 4:], torch.zeros(3, 3)):
            problems.append(f"{aggregation}: gradient in padding columns {grad1[:, 4:].tolist()}")
        for key in stats0:
            if not torch.isfinite(stats1[key]) or not torch.allclose(stats1[key], stats0[key]):
                problems.append(f"{aggregation}: stats[{key!r}] {stats0[key].item():.6g} -> {stats1[key].item()}")
    assert not problems, "padding columns leak into the result:\n" + "\n".join(problems)


@pytest.mark.parametrize("aggregation", AGGREGATION_NAMES)
def test_all_zero_mask_row_contributes_nothing(aggregation):
    # Row 1 has no completion tokens. The loss equals that of rows {0, 2} alone with the same
    # normalisers (num_seqs = 3, same token count, same max_len), and row 1's gradient is exactly 0.
    logp, old_logp, ref_logp, adv, mask = _random_batch(3, 4, seed=3, lengths=[4, 0, 2])
    loss_settings = settings(kl_beta=0.1, aggregation=aggregation)
    normalisers = dict(num_seqs=3, num_tokens=6.0, max_len=4)
    logp = logp.requires_grad_(True)
    loss, stats = policy_loss(logp, old_logp, ref_logp, adv, mask, loss_settings, **normalisers)
    loss.backward()
    keep = torch.tensor([0, 2])
    without, _ = policy_loss(logp.detach()[keep], old_logp[keep], ref_logp[keep], adv[keep], mask[keep],
                             loss_settings, **normalisers)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.detach(), without, rtol=1e-12, atol=1e-14)
    assert torch.isfinite(logp.grad).all()
    assert torch.equal(logp.grad[1], torch.zeros(4, dtype=F64))
    assert all(torch.isfinite(value) for value in stats.values())


@pytest.mark.parametrize("aggregation", AGGREGATION_NAMES)
def test_fully_masked_batch_gives_zero_loss_and_finite_everything(aggregation):
    logp, old_logp, ref_logp, adv, _ = _random_batch(2, 3, seed=4, lengths=[0, 0])
    logp = logp.requires_grad_(True)
    loss, stats = policy_loss(logp, old_logp, ref_logp, adv, torch.zeros(2, 3, dtype=F64),
                              settings(kl_beta=0.1, aggregation=aggregation))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logp.grad, torch.zeros(2, 3, dtype=F64))
    assert all(torch.isfinite(value) for value in stats.values())
    assert stats["tokens"].item() == 0.0


# ---------------------------------------------------------------- gradient identity


VOCAB = 5


class TinyPolicy(nn.Module):
    """Logits over a vocabulary of 5 at every position from the previous token id."""

    def __init__(self, seed: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 4)
        self.head = nn.Linear(4, VOCAB)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=gen))
        self.double()

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.embed(inputs))                                  # [B, T, V]
        return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("aggregation", AGGREGATION_NAMES)
def test_gradient_at_ratio_one_is_reinforce_with_group_baseline(aggregation):
    # At ratio = 1 and kl_beta = 0 every token is unclipped, so
    #   grad = -sum_i A_i * sum_t w_it * grad logp_it, with the per-token weight w_it of the aggregation:
    #   seq_mean_token_mean: 1 / (|o_i| * num_seqs)  (the REINFORCE-with-group-baseline estimator)
    #   token_mean: 1 / num_tokens;   seq_mean_token_sum_norm: 1 / (num_seqs * max_len).
    # The reference is a literal loop of per-token autograd calls.
    model = TinyPolicy(seed=0)
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, VOCAB, (3, 4), generator=gen)
    targets = torch.randint(0, VOCAB, (3, 4), generator=gen)
    lengths = [4, 2, 3]
    mask = (torch.arange(4).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).to(F64)
    adv = torch.tensor([0.7, -1.3, 0.4], dtype=F64)
    params = list(model.parameters())

    logp = model(inputs, targets)
    loss, stats = policy_loss(logp, logp.detach(), None, adv, mask, settings(kl_beta=0.0, aggregation=aggregation))
    grads = torch.autograd.grad(loss, params)
    assert stats["clip/low_frac"].item() == 0.0 and stats["clip/high_frac"].item() == 0.0

    num_seqs, num_tokens, max_len = 3, sum(lengths), 4
    reference = [torch.zeros_like(p) for p in params]
    logp = model(inputs, targets)
    for i, length in enumerate(lengths):
        for t in range(length):
            weight = {"seq_mean_token_mean": 1 / (length * num_seqs),
                      "token_mean": 1 / num_tokens,
                      "seq_mean_token_sum_norm": 1 / (num_seqs * max_len)}[aggregation]
            token_grads = torch.autograd.grad(logp[i, t], params, retain_graph=True)
            for acc, g in zip(reference, token_grads):
                acc -= adv[i] * weight * g
    for got, want in zip(grads, reference):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert any(g.abs().sum() > 0 for g in reference)


# ---------------------------------------------------------------- interface


def test_statistics_keys_with_and_without_reference():
    logp, old_logp, ref_logp, adv, mask = _random_batch(2, 3, seed=6, lengths=[3, 2])
    _, stats = policy_loss(logp, old_logp, ref_logp, adv, mask, settings(kl_beta=0.1))
    required = {"clip/low_frac", "clip/high_frac", "ratio/mean", "ratio/max", "kl_old", "tokens",
                "kl/k1", "kl/k2", "kl/k3"}
    assert required <= set(stats)
    assert all(not value.requires_grad for value in stats.values())

    loss_none, stats_none = policy_loss(logp, old_logp, None, adv, mask, settings(kl_beta=0.0))
    assert not any(key.startswith("kl/") for key in stats_none)
    assert {"clip/low_frac", "clip/high_frac", "ratio/mean"} <= set(stats_none)
    loss_ref, _ = policy_loss(logp, old_logp, ref_logp, adv, mask, settings(kl_beta=0.0))
    torch.testing.assert_close(loss_none, loss_ref, rtol=0, atol=0)


def test_stats_do_not_depend_on_kl_beta_or_aggregation():
    logp, old_logp, ref_logp, adv, mask = _random_batch(2, 3, seed=8, lengths=[3, 1])
    _, stats_a = policy_loss(logp, old_logp, ref_logp, adv, mask, settings(kl_beta=0.0, aggregation="token_mean"))
    _, stats_b = policy_loss(logp, old_logp, ref_logp, adv, mask,
                             settings(kl_beta=0.5, aggregation="seq_mean_token_sum_norm"))
    for key in stats_a:
        torch.testing.assert_close(stats_a[key], stats_b[key], rtol=0, atol=0, msg=key)


def test_kl_beta_without_reference_raises():
    logp, old_logp, _, adv, mask = _random_batch(2, 3, seed=6, lengths=[3, 2])
    with pytest.raises(GrpoError, match="ref_logp"):
        policy_loss(logp, old_logp, None, adv, mask, settings(kl_beta=0.04))


def test_unknown_aggregation_raises():
    logp, old_logp, ref_logp, adv, mask = _random_batch(2, 3, seed=6, lengths=[3, 2])
    with pytest.raises(GrpoError, match="unknown aggregation"):
        policy_loss(logp, old_logp, ref_logp, adv, mask, settings(aggregation="seq_sum"))


def test_unknown_kl_estimator_raises_when_used():
    logp, old_logp, ref_logp, adv, mask = _random_batch(2, 3, seed=6, lengths=[3, 2])
    with pytest.raises(GrpoError, match="unknown KL estimator"):
        policy_loss(logp, old_logp, ref_logp, adv, mask, settings(kl_beta=0.1, kl_estimator="k9"))


def test_bool_mask_and_float32_inputs_work():
    # Same as case 1 (token_mean = -1.25) with a bool mask and float32 tensors.
    logp = torch.tensor(CASE1_LOGP)
    loss, _ = policy_loss(logp, logp.clone(), None, torch.tensor(CASE1_ADV), torch.tensor(CASE1_MASK).bool(),
                          settings(aggregation="token_mean"))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.tensor(-1.25))


def test_loss_token_mask_zeroes_truncated_completions_only_under_overlong_filtering():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])        # row 0 ended (EOS) at 2 tokens, row 1 ran out
    truncated = torch.tensor([False, True])
    assert torch.equal(loss_token_mask(mask, truncated, mask_truncated=False), mask)
    assert torch.equal(loss_token_mask(mask, truncated, mask_truncated=True),
                       torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
