"""Tests for grpo/counterfactual.py without a run: which alternatives ratio 1 makes identical (checked
against the loss's own gradients) and the refusals when the config is built."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from grpo import GrpoError
from grpo.config import TrainConfig
from grpo.counterfactual import inert_at_ratio_one
from grpo.losses import policy_loss
from grpo.trainer import loss_kwargs

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
    loss, _ = policy_loss(logp, old_logp, x.ref_logp, x.adv, x.mask, **loss_kwargs(cfg),
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
