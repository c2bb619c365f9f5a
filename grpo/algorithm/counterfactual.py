"""Same-rollout counterfactual gradients: on a step's own rollouts, the gradient each alternative
setting would take, against the gradient of the run's setting, at the same weights.

For alternative a (e.g. `advantage=dr_grpo`: the run's config with that one field changed; several
fields joined by '+'), with g the run's gradient and g_a the alternative's:
    cf/<a>/cos         = <g_a, g> / (|g_a| |g|)   does the variant point elsewhere?
    cf/<a>/norm_ratio  = |g_a| / |g|              or does it take a step of another size?

Where: every gradient of a step, g and each g_a, is the full-batch gradient at one point, the weights
theta_L that the step's last optimizer update starts from, with the ratio r = pi_theta_L / pi_old
against pi_old (the step's log-probs before its first update), advantages recomputed from the step's
rewards by each setting's estimator, and the loss aggregated over the whole batch. With one update per
step (one inner epoch, one mini-batch) theta_L is the step's starting weights, r = 1 everywhere, and g
is exactly the step the run takes (before clipping its norm). With more updates, theta_L has moved
from pi_old, so the settings that act only through the ratio (clip bounds, dual-clip, delta, SAPO's
tau, KL-Cov, and most objectives: `grpo.setup.alternatives.inert_at_ratio_one`) take gradients that differ
there. All settings share the one point, rather than each taking the point where it can differ, so that the
cosines of a run all measure against the same g and compare with each other (an arm x alternative
heatmap). The point is a function of the config alone (it never varies within a run), so it is not
logged. The price: in multi-update runs g is not a step the run takes (its last update uses one
mini-batch of it), and advantage or aggregation alternatives are compared off-policy too.

Which alternatives are refused, and why, is in grpo/setup/alternatives.py (checked when the config is built).

Cost, on the steps it runs (--counterfactual-every K): one more forward per micro-batch, shared by
all settings, and 1 + (number of alternatives) backward passes; `time/counterfactual` records it.
"""

from __future__ import annotations

import torch

from grpo.algorithm.state import Components, TrainState
from grpo.algorithm.update import loss_settings, micro_batches, model_logp
from grpo.base import distributed as dist
from grpo.formulas.advantages import compute_advantages
from grpo.formulas.losses import loss_token_mask, policy_loss
from grpo.formulas.objectives import SELECTIONS, token_covariance, top_entropy_keep


def flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)])


def counterfactual_metrics(c: Components, s: TrainState, step: int, rollout, shaped_rewards: torch.Tensor,
                           lengths: torch.Tensor, mask: torch.Tensor, ref_logp, old_logp) -> dict[str, torch.Tensor]:
    """cf/<name>/cos and cf/<name>/norm_ratio for every alternative of the run (c.alternatives, parsed once
    from --counterfactuals), at the learner's weights now, against pi_old's log-probs old_logp [N, T]
    (None: pi_old is the policy now, ratio 1)."""
    settings = [("run", c.cfg), *c.alternatives]
    params = [p for p in s.policy.parameters() if p.requires_grad]
    rows = dist.rank_rows(c.cfg.prompts_per_step)
    prepared = []
    for name, cfg in settings:
        loss_cfg = loss_settings(cfg)
        advantages = compute_advantages(shaped_rewards, cfg.advantage, eps=cfg.adv_eps, lengths=lengths)
        loss_mask = loss_token_mask(mask, rollout.truncated, cfg.mask_truncated)
        keep = top_entropy_keep(rollout.entropy, loss_mask, cfg.top_entropy_quantile) \
            if cfg.top_entropy_quantile < 1 else None
        adv = advantages[rows].flatten().to(c.device)
        selected = None
        if cfg.objective in SELECTIONS:     # from pi_old's log-probs, as update_policy selects
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            selection_logp = rollout.logp if old_logp is None else old_logp
            selected = SELECTIONS[cfg.objective](token_covariance(adv[:, None], selection_logp, loss_mask),
                                                 loss_mask, loss_cfg, generator)
        norms = dict(num_seqs=float(dist.sum_across(torch.tensor(float(len(adv))))),
                     num_tokens=float(dist.sum_across(loss_mask.sum().cpu())), max_len=cfg.max_new_tokens)
        prepared.append((name, cfg, loss_cfg, adv, loss_mask, keep, selected, norms))
    needs_entropy = any(cfg.entropy_coef != 0 for _, cfg, *_ in prepared)
    grads = {name: torch.zeros(sum(p.numel() for p in params), device=c.device) for name, *_ in prepared}
    for micro in micro_batches(c, rollout, torch.arange(mask.shape[0], device=c.device)):
        with c.autocast():
            learner = model_logp(c, s.policy, rollout, micro, with_entropy=needs_entropy)
        logp, entropy = learner if needs_entropy else (learner, None)
        for name, cfg, loss_cfg, adv, loss_mask, keep, selected, norms in prepared:
            pi_old = logp.detach() if old_logp is None else old_logp[micro]
            loss, _ = policy_loss(logp, pi_old, None if ref_logp is None else ref_logp[micro], adv[micro],
                                  loss_mask[micro], loss_cfg,
                                  cov_selected=None if selected is None else selected[micro],
                                  entropy=entropy, entropy_keep=None if keep is None else keep[micro], **norms)
            grads[name] += flat_grad(loss, params)
    grads = {name: dist.sum_across(g) for name, g in grads.items()}
    grads = {name: g.double() for name, g in grads.items()}     # a cosine near 1 needs the precision
    run = grads.pop("run")
    run_norm = run.norm()
    out = {}
    if not run_norm > 0:        # no signal in the step (every group constant): nothing to compare with
        return out
    for name, grad in grads.items():
        out[f"cf/{name}/norm_ratio"] = grad.norm() / run_norm
        if grad.norm() > 0:     # a zero gradient has no direction
            out[f"cf/{name}/cos"] = torch.dot(grad, run) / (grad.norm() * run_norm)
    return out
