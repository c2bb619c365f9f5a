"""The policy update of a step (`update_policy`: inner epochs x mini-batches x micro-batches of the loss,
one optimizer step per mini-batch) and what it shares with the counterfactual probe (grpo/algorithm/counterfactual.py):
rows cut into micro-batches, their log-probs under a model, and policy_loss's settings
(losses.LossSettings) from the config.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from grpo import TrainingDiverged
from grpo.algorithm.metrics import TokenWeightedMean
from grpo.algorithm.state import Components, TrainState
from grpo.base import distributed as dist
from grpo.engine.logprobs import completion_logp, worth_sharing
from grpo.engine.sampler import Rollout
from grpo.formulas.losses import LossSettings, policy_loss
from grpo.formulas.objectives import SELECTIONS, masked_mean, token_covariance, top_entropy_keep
from grpo.formulas.offpolicy import off_policy_sequence_mask
from grpo.setup.config import TrainConfig


def model_logp(c: Components, model, rollout: Rollout, rows: torch.Tensor, with_entropy: bool = False):
    """Log-probs [B, T] of the rollout's rows under `model`, scored as the sampler drew them
    (and the learner's entropy [B, T] with them, when asked).

    Only the rows' own longest completion is run: a causal model's values at a position do not
    depend on the positions after it, so the columns past every row's EOS are left out and read 0.
    """
    width = max(1, int(rollout.completion_mask[rows].sum(-1).max()))
    out = completion_logp(model, rollout.prompt_ids[rows], rollout.prompt_mask[rows],
                          rollout.completion_ids[rows, :width], c.cfg.temperature,
                          eos_token_id=c.tokenizer.eos_token_id, min_new_tokens=c.cfg.min_new_tokens,
                          with_entropy=with_entropy, share_prompts=worth_sharing(rollout, c.cfg.group_size),
                          lean_head=c.lean)
    return padded_to(rollout.completion_ids.shape[1], out)


def padded_to(width: int, out):
    """Log-probs [B, w] (or a (log-probs, entropy) pair) run to the rows' widest completion, padded with 0
    to the rollout's `width`: the columns past every row's EOS."""
    if isinstance(out, tuple):
        return tuple(padded_to(width, x) for x in out)
    return out if out.shape[1] == width else F.pad(out, (0, width - out.shape[1]))


def micro_batches(c: Components, rollout: Rollout, rows: torch.Tensor) -> list[torch.Tensor]:
    """`rows` cut into micro-batches of at most --micro-batch-size rows (their losses add up to the same
    total in any grouping). When a group's prompt runs once (`worth_sharing`), they take the rows in
    row order, so a group's completions share a micro-batch and its prompt forward; otherwise shortest
    completion first, so each micro-batch, run only to its own longest completion (`rollout_logp`),
    computes little padding after EOS (the demo's learner: 0.51 -> 0.31 s a step, 1 thread)."""
    rows = rows.sort().values
    if not worth_sharing(rollout, c.cfg.group_size):
        rows = rows[torch.argsort(rollout.completion_mask[rows].sum(-1), stable=True)]
    return list(rows.split(c.cfg.micro_batch))


def loss_settings(cfg: TrainConfig) -> LossSettings:
    """policy_loss's settings: cfg's fields of LossSettings's names (the KL term moves to the reward with
    --kl-placement reward, so the loss then carries none)."""
    values = {field.name: getattr(cfg, field.name) for field in dataclasses.fields(LossSettings)}
    if cfg.kl_placement != "loss":
        values["kl_beta"] = 0.0
    return LossSettings(**values)


@torch.no_grad()
def frozen_logp(c: Components, model, rollout: Rollout) -> torch.Tensor:
    """Log-probs [N, T] under a model without gradients, a micro-batch at a time (in a batched population,
    one computation with the other seeds': grpo/algorithm/batching.py)."""
    if c.population is not None:
        return c.population.frozen_logp(c, model, rollout)
    return frozen_logp_alone(c, model, rollout)


def frozen_logp_alone(c: Components, model, rollout: Rollout) -> torch.Tensor:
    """`frozen_logp` of this run alone."""
    out = torch.zeros(rollout.completion_ids.shape, device=rollout.completion_ids.device)
    with c.autocast():
        for rows in micro_batches(c, rollout, torch.arange(len(out), device=out.device)):
            out[rows] = model_logp(c, model, rollout, rows)
    return out


def optimizer_step(c: Components, s: TrainState, step: int, epoch: int) -> torch.Tensor:
    """Sum gradients over ranks, clip, step; returns the norm before clipping. A non-finite norm stops
    the run before the step, so no NaN ever reaches the weights (or a checkpoint)."""
    dist.sum_gradients(s.policy)
    grad_norm = torch.nn.utils.clip_grad_norm_(s.policy.parameters(), c.cfg.max_grad_norm)
    if not torch.isfinite(grad_norm):
        raise TrainingDiverged(f"non-finite gradient norm at step {step} (inner epoch {epoch})")
    s.optimizer.step()
    c.sampler.sync_weights(s.sampler_policy)      # the next rollout draws from the weights just stepped
    s.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def update_policy(c: Components, s: TrainState, step: int, rollout: Rollout, advantages: torch.Tensor,
                  loss_mask: torch.Tensor, ref_logp, old_logp, token_weights=None, sequence_mask=None,
                  sampler_logp=None, before_last_update=None) -> dict:
    """Inner epochs x mini-batches (one optimizer step each) x micro-batches (gradient accumulation).

    Normalisers are the whole mini-batch's (over all ranks), so micro-batch losses add up exactly; the
    token selections (kl_cov / clip_cov per mini-batch from pi_old's log-probs, the top-entropy quantile
    over the step) are made before the split for the same reason. old_logp None means exactly
    on-policy (one epoch, one mini-batch): pi_old = pi_theta detached. token_weights [N, T] (or None): the
    off-policy correction's weights on the policy term; --off-policy-mask adds DeepSeek-V3.2's sequence mask
    at every update, from the learner's log-probs then, averaged over sequence_mask [N, T] (a completion's
    loss tokens before any rejection; default loss_mask) and against sampler_logp [N, T] (the sampler's
    log-probs as the corrections see them; default the rollout's). before_last_update (a probe) is
    called once, at the weights the step's last update starts from. Returns the policy statistics
    over all epochs plus the per-epoch keys, loss and grad_norm.
    """
    cfg = c.cfg
    settings = loss_settings(cfg)
    sequence_mask = loss_mask if sequence_mask is None else sequence_mask
    sampler_logp = rollout.logp if sampler_logp is None else sampler_logp
    selection_logp = rollout.logp if old_logp is None else old_logp     # pi_old's (the sampler's) log-probs
    # clip_cov's draw: a generator of the (seed, step) alone, so resuming repeats it.
    selection_rng = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    entropy_keep = (top_entropy_keep(rollout.entropy, loss_mask, cfg.top_entropy_quantile)
                    if cfg.top_entropy_quantile < 1 else None)
    cov_selected = torch.zeros_like(loss_mask, dtype=torch.bool)
    totals, out, losses, grad_norms = TokenWeightedMean(), {}, [], []
    for epoch in range(1, cfg.inner_epochs + 1):
        epoch_stats, epoch_losses = TokenWeightedMean(), []
        order = torch.randperm(loss_mask.shape[0], generator=s.rng.shuffle).to(c.device)
        for mini_batch in order.tensor_split(cfg.mini_batches):   # exactly mini_batches pieces (chunk may give fewer)
            if before_last_update is not None and len(grad_norms) == cfg.inner_epochs * cfg.mini_batches - 1:
                before_last_update()
            with c.timer("train"):
                num_seqs = float(dist.sum_across(torch.tensor(float(len(mini_batch)))))
                num_tokens = float(dist.sum_across(loss_mask[mini_batch].sum().cpu()))
                if cfg.objective in SELECTIONS:
                    cov = token_covariance(advantages[mini_batch, None], selection_logp[mini_batch], loss_mask[mini_batch])
                    cov_selected[mini_batch] = SELECTIONS[cfg.objective](
                        cov, loss_mask[mini_batch], settings, selection_rng)
                mini_loss = torch.zeros((), device=c.device)
                for rows in micro_batches(c, rollout, mini_batch):
                    with c.autocast():
                        learner = (model_logp(c, s.policy, rollout, rows, with_entropy=cfg.entropy_coef != 0)
                                   if c.population is None else
                                   c.population.logp(c, s.policy, rollout, rows, cfg.entropy_coef != 0))
                    logp, entropy = learner if cfg.entropy_coef != 0 else (learner, None)
                    weights, offpolicy_stats = off_policy_weights(
                        cfg, sampler_logp[rows], logp, advantages[rows], loss_mask[rows], sequence_mask[rows],
                        None if token_weights is None else token_weights[rows])
                    loss, stats = policy_loss(
                        logp, logp.detach() if old_logp is None else old_logp[rows],
                        None if ref_logp is None else ref_logp[rows], advantages[rows], loss_mask[rows], settings,
                        num_seqs=num_seqs, num_tokens=num_tokens, max_len=cfg.max_new_tokens,
                        cov_selected=cov_selected[rows] if cfg.objective in SELECTIONS else None,
                        entropy=entropy, entropy_keep=None if entropy_keep is None else entropy_keep[rows],
                        token_weights=weights)
                    stats.update(offpolicy_stats)
                    loss.backward() if c.population is None else c.population.backward(loss)
                    mini_loss += loss.detach()
                    epoch_stats.add(stats, stats["tokens"], stats["seqs"])
                    # KL to the reference is reported for the rollout policy (epoch 1), not averaged over drift.
                    totals.add({k: v for k, v in stats.items() if epoch == 1 or not k.startswith("kl/")},
                               stats["tokens"], stats["seqs"])
            if dist.any_across(not bool(torch.isfinite(mini_loss))):
                raise TrainingDiverged(f"non-finite loss at step {step} (inner epoch {epoch})")
            with c.timer("optimizer"):
                grad_norms.append(optimizer_step(c, s, step, epoch))
            epoch_losses.append(mini_loss)
        summary = epoch_stats.result(dist.sum_across, dist.max_across)
        out[f"inner/{epoch}/clip_frac"] = summary["grad/cut_frac"]
        out[f"inner/{epoch}/ratio_mean"] = summary["ratio/mean"]
        out[f"inner/{epoch}/kl_old"] = summary["kl_old"]
        # Each rank's loss is its share of the global loss: the sum over ranks is the loss.
        out[f"inner/{epoch}/loss"] = dist.sum_across(torch.stack(epoch_losses).mean())
        losses += epoch_losses
    policy_stats = totals.result(dist.sum_across, dist.max_across)
    return {**policy_stats, **out, "loss": dist.sum_across(torch.stack(losses).mean()),
            "grad_norm": torch.stack(grad_norms).float().mean()}


def off_policy_weights(cfg: TrainConfig, rollout_logp: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor,
                       loss_mask: torch.Tensor, sequence_mask: torch.Tensor,
                       weights: torch.Tensor | None) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """(A micro-batch's weights on the policy term, their statistics): the IS weights, times DeepSeek-V3.2's
    off-policy sequence mask at the learner's log-probs now (--off-policy-mask; its mean log-ratio is over
    each completion's tokens before rejection, `sequence_mask`); and, when the step measures the mismatch,
    the ratio to the sampler's log-probs (ratio_rollout/mean, ratio_rollout/max)."""
    stats = {}
    if cfg.off_policy_mask is not None:
        dropped = off_policy_sequence_mask(rollout_logp, logp.detach(), advantages, sequence_mask,
                                           delta=cfg.off_policy_mask)
        kept = (~dropped).to(logp.dtype)
        weights = kept if weights is None else weights * kept
        stats["offpolicy/masked_token_frac"] = masked_mean(dropped.to(logp.dtype), loss_mask)
    if cfg.measures_mismatch:
        with torch.no_grad():
            active = loss_mask > 0
            ratio = torch.exp(torch.where(active, logp.detach() - rollout_logp, 0.0))
            stats["ratio_rollout/mean"] = masked_mean(ratio, loss_mask)
            stats["ratio_rollout/max"] = torch.where(active, ratio, 0.0).max()
    return weights, stats
