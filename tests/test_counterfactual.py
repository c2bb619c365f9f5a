"""Tests for grpo/algorithm/counterfactual.py without a run: which alternatives ratio 1 makes identical (checked
against the loss's own gradients), the refusals when the config is built, and the probe's cosines at a
hand-set pi_old on a policy small enough to differentiate on paper."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from grpo import GrpoError
from grpo.algorithm.counterfactual import counterfactual_metrics
from grpo.algorithm.state import Components, RandomStreams, TrainState
from grpo.algorithm.update import loss_settings
from grpo.engine.sampler import Rollout
from grpo.formulas.losses import policy_loss
from grpo.setup.alternatives import alternative_configs, inert_at_ratio_one
from grpo.setup.config import TrainConfig

F64 = torch.float64


# ---------------------------------------------------------------- which alternatives ratio 1 makes identical

def loss_inputs():
    """Six completions of 5, 3, 4, 1, 5, 2 tokens with advantages of both signs, random log-probs, a
    reference apart from the policy and random sampling entropies (fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 3, 4, 1, 5, 2])
    mask = (torch.arange(5)[None, :] < lengths[:, None]).to(F64)
    logp = -(torch.rand(6, 5, generator=gen, dtype=F64) * 3 + 0.05)
    return SimpleNamespace(mask=mask, logp=logp, adv=torch.tensor([1.0, -0.5, 0.8, -1.2, 0.3, -0.9], dtype=F64),
                           ref_logp=logp + 0.3 * torch.randn(6, 5, generator=gen, dtype=F64),
                           sampling_entropy=torch.rand(6, 5, generator=gen, dtype=F64),
                           log_ratio=0.4 * torch.randn(6, 5, generator=gen, dtype=F64))


def loss_gradient(cfg: TrainConfig, x, on_policy: bool) -> torch.Tensor:
    """d policy_loss / d logp [6, 5] under cfg's loss settings, at ratio 1 (pi_old = pi_theta detached)
    or at the ratios exp(x.log_ratio)."""
    logp = x.logp.clone().requires_grad_(True)
    old_logp = logp.detach() if on_policy else logp.detach() - x.log_ratio
    loss, _ = policy_loss(logp, old_logp, x.ref_logp, x.adv, x.mask, loss_settings(cfg),
                          generator=torch.Generator().manual_seed(1), sampling_entropy=x.sampling_entropy,
                          entropy=torch.sigmoid(logp))        # any differentiable stand-in for the learner's
    return torch.autograd.grad(loss, logp)[0]


# clip_cov's candidates widened, so that it detaches 4 of the 20 tokens whatever their covariance.
WIDE_CLIP_COV = dict(clip_cov_lb=-100.0, clip_cov_ub=100.0, clip_cov_ratio=0.2)
RUNS = {"clip": {}, "gspo": {"objective": "gspo"}, "kl_cov": {"objective": "kl_cov"},
        "clip_cov": {"objective": "clip_cov"}, "gmpo_top_entropy": {"objective": "gmpo", "top_entropy_quantile": 0.5}}
ALTERNATIVES = [
    *({"objective": name} for name in ["clip", "gspo", "cispo", "sapo", "gmpo", "gpg", "kl_cov", "clip_cov"]),
    {"clip_eps_low": 0.1}, {"clip_eps_high": 0.3}, {"dual_clip": 2.0}, {"delta": 3.0}, {"sapo_tau_pos": 3.0},
    {"sapo_tau_neg": 0.5}, {"kl_cov_ratio": 0.5}, {"kl_cov_coef": 3.0}, {"clip_cov_ratio": 0.5},
    {"clip_cov_lb": 0.0}, {"clip_cov_ub": 0.0}, {"top_entropy_quantile": 0.3}, {"kl_estimator": "k1"},
    {"kl_estimator": "k2"}, {"kl_estimator": "k3_is"}, {"kl_beta": 0.1}, {"entropy_coef": 0.01},
    {"aggregation": "token_mean"}, {"objective": "gmpo", "aggregation": "token_mean"},
    {"objective": "gmpo", "top_entropy_quantile": 0.5}, {"objective": "gspo", "top_entropy_quantile": 0.5},
    {"objective": "clip_cov", "clip_cov_ratio": 0.5}, {"objective": "sapo", "sapo_tau_pos": 3.0},
    {"objective": "clip", "dual_clip": 2.0},
]


@pytest.mark.parametrize("run_name", RUNS)
def test_the_alternatives_called_inert_at_ratio_one_are_exactly_those_whose_gradient_is_the_same(run_name):
    """For every changed field of every alternative: the loss gradient with the alternative's value and
    with the run's (the alternative's other changes kept) agree at ratio 1 to float64 rounding exactly
    when `inert_at_ratio_one` says so, and differ by more than 1e-6 relative otherwise."""
    x = loss_inputs()
    run = TrainConfig(**WIDE_CLIP_COV, **RUNS[run_name])
    checked = {True: 0, False: 0}
    for changes in ALTERNATIVES:
        alternative = dataclasses.replace(run, **changes)
        for field in changes:
            if getattr(alternative, field) == getattr(run, field):
                continue                                    # no change: nothing to compare
            reverted = dataclasses.replace(alternative, **{field: getattr(run, field)})
            grad, grad_reverted = loss_gradient(alternative, x, True), loss_gradient(reverted, x, True)
            inert = inert_at_ratio_one(run, alternative, field)
            gap = float((grad - grad_reverted).norm() / grad_reverted.norm())
            assert (gap < 1e-12) if inert else (gap > 1e-6), (changes, field, inert, gap)
            checked[inert] += 1
    assert min(checked.values()) >= 5, checked                # both kinds were really exercised


@pytest.mark.parametrize(("run_changes", "changes"), [
    ({}, {"objective": "gspo"}), ({}, {"objective": "cispo"}), ({}, {"objective": "sapo"}),
    ({}, {"objective": "gmpo"}), ({}, {"objective": "gpg"}), ({}, {"objective": "kl_cov"}),
    ({}, {"clip_eps_low": 0.1}), ({}, {"clip_eps_high": 0.1}), ({}, {"dual_clip": 1.25}), ({}, {"delta": 1.25}),
    ({"objective": "sapo"}, {"sapo_tau_pos": 3.0}), ({"objective": "sapo"}, {"sapo_tau_neg": 0.5}),
    ({"objective": "kl_cov"}, {"kl_cov_coef": 3.0}), ({"objective": "kl_cov"}, {"kl_cov_ratio": 0.5}),
])
def test_alternatives_inert_at_ratio_one_differ_off_it(run_changes, changes):
    """The same alternatives at ratios exp(0.4 z) (z standard normal): the gradients part."""
    x = loss_inputs()
    run = TrainConfig(**run_changes)
    alternative = dataclasses.replace(run, **changes)
    assert all(inert_at_ratio_one(run, alternative, field) for field in changes)
    grad, grad_run = loss_gradient(alternative, x, False), loss_gradient(run, x, False)
    assert float((grad - grad_run).norm() / grad_run.norm()) > 1e-3


# ---------------------------------------------------------------- refused when the config is built

@pytest.mark.parametrize(("values", "needle"), [
    (dict(counterfactuals="objective=gspo"), "objective=gspo gives the same gradient as objective=clip at ratio 1"),
    (dict(counterfactuals="advantage=dr_grpo+clip_eps_high=0.28"), "clip_eps_high=0.28"),
    (dict(counterfactuals="sapo_tau_neg=2", objective="sapo"), "sapo_tau_neg=2"),
    (dict(counterfactuals="objective=gmpo"), "objective=gmpo"),
    (dict(counterfactuals="kl_estimator=k1", kl_beta=0.0), "--kl-beta 0"),
    (dict(counterfactuals="kl_beta=0.1", kl_beta=0.0, mini_batches=2), "--kl-beta 0"),
    (dict(counterfactuals="kl_beta=0.1", kl_placement="reward"), "--kl-placement reward"),
    (dict(counterfactuals="advantage=rloo,kl_estimator=k2", kl_placement="reward", mini_batches=2),
     "--kl-placement reward"),
])
def test_alternatives_that_cannot_be_compared_are_refused_in_one_line(values, needle):
    with pytest.raises(GrpoError, match=None) as err:
        TrainConfig(counterfactual_every=1, **values)
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("values", [
    dict(counterfactuals="objective=gspo", mini_batches=2),                 # off ratio 1 from the 2nd update
    dict(counterfactuals="clip_eps_high=0.28+dual_clip=3", inner_epochs=2),
    dict(counterfactuals="objective=clip_cov,objective=gmpo+top_entropy_quantile=0.2,kl_estimator=k3_is"),
    dict(counterfactuals="objective=gmpo", top_entropy_quantile=0.2),
    dict(counterfactuals="clip_eps_low=0.2,kl_beta=0"),     # the run's own value: a null that must read cos 1
])
def test_alternatives_that_can_differ_are_accepted(values):
    TrainConfig(counterfactual_every=1, **values)


def test_std_norm_experiment_keeps_its_counterfactuals():
    """experiments/std_norm.py compares advantage x aggregation settings at one update per step."""
    from experiments.std_norm import EXPERIMENT

    for cfg in EXPERIMENT.arms.values():
        assert cfg.inner_epochs * cfg.mini_batches == 1 and cfg.counterfactuals.count("+aggregation=") == 4


# ---------------------------------------------------------------- the probe at a hand-set pi_old

class PositionLogits(torch.nn.Module):
    """A policy whose logits at sequence position p are the row W[p] of a table: log-probs and their
    gradients can be written down by hand."""

    def __init__(self, positions: int, vocab: int) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(positions, vocab))

    def forward(self, input_ids, attention_mask, position_ids, use_cache=False, logits_to_keep=0):
        logits = self.table[position_ids]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def hand_run(counterfactuals: str) -> tuple[Components, TrainState]:
    cfg = TrainConfig(prompts_per_step=1, group_size=2, max_new_tokens=2, kl_beta=0.0, mini_batches=2,
                      micro_batch_size=1, counterfactuals=counterfactuals, counterfactual_every=1)
    device = torch.device("cpu")
    components = Components(cfg=cfg, task=None, tokenizer=SimpleNamespace(eos_token_id=1), reference=None,
                            sampler=None, device=device, alternatives=tuple(alternative_configs(cfg)))
    return components, TrainState(PositionLogits(3, 2), None, RandomStreams.seeded(0, device))


def test_probe_at_a_hand_set_pi_old_by_hand():
    """One prompt token, two completions of two tokens, [0, 0] and [1, 1], rewards 1 and 0, so A = +a, -a.
    The table is 0: every log-prob is log 1/2, and d logp / dW of token k at completion position j is
    e_j (x) (onehot(k) - 1/2): +v_j for token 0, -v_j for token 1 (v_j orthogonal across positions).
    pi_old is set so that the ratio of completion 0's first token is 1.5, every other ratio 1.
    seq_mean_token_mean weighs each token 1/4; the policy term's gradient is -A r grad logp unless cut:
      clip (eps 0.2):       r = 1.5 > 1.2 with A > 0 is cut      g   = -a/4 (  v_0 + 2 v_1)
      gpg (no ratio):       -A grad logp                          g_a = -a/4 (2 v_0 + 2 v_1)
      gspo: completion 0's s = sqrt(1.5) = 1.2247 > 1.2, cut     g_a = -a/4 (  v_0 +   v_1)
      clip_eps_high=0.6:    1.5 < 1.6, not cut                   g_a = -a/4 (2.5 v_0 + 2 v_1)
    cos = 6 / sqrt(5 * 8), 3 / sqrt(5 * 2), 6.5 / sqrt(5 * 10.25); norm ratios sqrt(8/5), sqrt(2/5),
    sqrt(10.25/5). At ratio 1 (no pi_old) nothing is cut and all three are clip's gradient."""
    c, s = hand_run("objective=gpg,objective=gspo,clip_eps_high=0.6")
    half = math.log(0.5)
    rollout = Rollout(prompt_ids=torch.zeros(2, 1, dtype=torch.long), prompt_mask=torch.ones(2, 1),
                      completion_ids=torch.tensor([[0, 0], [1, 1]]), completion_mask=torch.ones(2, 2),
                      truncated=torch.zeros(2, dtype=torch.bool), entropy=torch.zeros(2, 2),
                      logp=torch.full((2, 2), half))
    old_logp = torch.full((2, 2), half)
    old_logp[0, 0] = half - math.log(1.5)                    # ratio pi / pi_old = 1.5
    args = (c, s, 1, rollout, torch.tensor([[1.0, 0.0]]), torch.tensor([[2, 2]]), rollout.completion_mask, None)
    out = {k: float(v) for k, v in counterfactual_metrics(*args, old_logp).items()}
    assert out["cf/objective=gpg/cos"] == pytest.approx(6 / math.sqrt(40), abs=1e-6)
    assert out["cf/objective=gpg/norm_ratio"] == pytest.approx(math.sqrt(8 / 5), abs=1e-6)
    assert out["cf/objective=gspo/cos"] == pytest.approx(3 / math.sqrt(10), abs=1e-6)
    assert out["cf/objective=gspo/norm_ratio"] == pytest.approx(math.sqrt(2 / 5), abs=1e-6)
    assert out["cf/clip_eps_high=0.6/cos"] == pytest.approx(6.5 / math.sqrt(51.25), abs=1e-6)
    assert out["cf/clip_eps_high=0.6/norm_ratio"] == pytest.approx(math.sqrt(10.25 / 5), abs=1e-6)
    on_policy = {k: float(v) for k, v in counterfactual_metrics(*args, None).items()}
    assert on_policy == pytest.approx({k: 1.0 for k in out}, abs=1e-6)
