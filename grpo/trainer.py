"""The GRPO step, top to bottom: sample -> reward -> advantage -> inner epochs of clipped-ratio updates
with a KL penalty to a frozen reference -> metrics.

Read `grpo_step` for one step; every formula is one import away (advantages, kl, losses, metrics).
The run around it (resume, evaluation and checkpoint cadence, logging, the failure summary) is
`grpo/runner.py`. Departures from the seed notebook: every prompt gets its own group; rewards read
the completion only; log-probs are shifted (policy.py); prompt, padding and post-EOS tokens are
masked; the whole batch's loss is back-propagated (not the last group's); the reference is a frozen
copy of the warm-started policy (not a second random model); the advantage epsilon is a fixed
positive constant.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from grpo import GrpoError, TrainingDiverged, distributed as dist, fast_sampler
from grpo.advantages import compute_advantages
from grpo.config import TrainConfig
from grpo.evaluation import evaluate
from grpo.losses import policy_loss
from grpo.metrics import (TokenWeightedMean, advantage_metrics, entropy_metric, gradient_token_metrics,
                          length_metrics, reward_metrics, to_floats, zero_variance_metrics)
from grpo.models import is_preset, load_tokenizer
from grpo.policy import completion_logp
from grpo.rewards import response_text, score
from grpo.sampler import KVCacheSampler, Rollout, decode_completions, encode_prompts
from grpo.tasks import make_task, render_prompt
from grpo.timing import StageTimer
from grpo.warmstart import warm_started_model

__all__ = ["Trainer", "TrainingDiverged", "build_trainer", "grpo_step"]

SAMPLE_ROWS = 2          # prompts (with all their completions) written to samples.jsonl
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Trainer:
    """Everything a step touches. Built by `build_trainer`; `grpo_step` is the algorithm."""
    cfg: TrainConfig
    task: object
    tokenizer: object
    policy: torch.nn.Module
    reference: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    sampler: object
    device: torch.device
    # Separate streams, so that arms differing in inner epochs or mini-batches (which shuffle more
    # often) still draw the same prompts for the same seed: the report's pairing by seed relies on it.
    prompt_rng: torch.Generator      # prompt draws
    shuffle_rng: torch.Generator     # mini-batch shuffles
    sample_rng: torch.Generator      # token sampling
    timer: StageTimer = field(default=None)
    samples: int = 0                 # completions generated so far (all ranks)
    tokens: int = 0                  # completion tokens generated so far (all ranks)
    elapsed: float = 0.0

    def __post_init__(self) -> None:
        if self.timer is None:
            self.timer = StageTimer(self.device)

    def autocast(self):
        """bf16 autocast for forward passes when --dtype bf16 (log-probs and the loss stay fp32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.dtype == "bf16")

    def evaluate(self, step: int) -> dict[str, float]:
        with self.autocast():
            return evaluate(self.policy, self.sampler, self.tokenizer, self.task, self.cfg, step, self.device)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise GrpoError("--device cuda was asked for, but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return dist.local_device(torch.device(name))


def build_trainer(cfg: TrainConfig, log=print) -> Trainer:
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = make_task(cfg)
    # A preset model uses the task's character tokenizer; a local checkpoint brings its own.
    tokenizer = task.tokenizer if is_preset(cfg.model) else load_tokenizer(cfg.model)
    # The policy keeps fp32 master weights; --dtype bf16 runs its forward passes under autocast.
    policy = warm_started_model(cfg, task, tokenizer, device, log=log)
    dist.broadcast_parameters(policy)     # every rank starts from rank 0's weights
    if cfg.gradient_checkpointing:
        if hasattr(policy, "activation_checkpointing_enable"):          # transformers >= 5.2x
            policy.activation_checkpointing_enable({"use_reentrant": False})
        else:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.config.use_cache = False
    policy.train()
    reference = None
    if cfg.kl_beta > 0:   # with kl_beta == 0 no reference is ever built
        # A copy that never trains, so it is stored in the compute dtype: under bf16 it takes half the
        # memory (and its KL at step 1 is then only bf16-close to 0); under fp32 it is exact.
        reference = copy.deepcopy(policy).to(COMPUTE_DTYPES[cfg.dtype]).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rank_seed = cfg.seed * 1000 + dist.rank()
    return Trainer(cfg=cfg, task=task, tokenizer=tokenizer, policy=policy, reference=reference,
                   optimizer=optimizer, sampler=make_sampler(cfg, policy), device=device,
                   prompt_rng=torch.Generator().manual_seed(rank_seed),
                   shuffle_rng=torch.Generator().manual_seed(rank_seed + 2),
                   sample_rng=torch.Generator(device=device).manual_seed(rank_seed + 1))


def make_sampler(cfg: TrainConfig, policy):
    if cfg.sampler == "auto" and fast_sampler.supports(policy):
        return fast_sampler.StaticCacheSampler()
    return KVCacheSampler()


def rollout_logp(t: Trainer, model, rollout: Rollout, rows: torch.Tensor) -> torch.Tensor:
    """Log-probs [B, T] of the rollout's rows under `model`, scored as the sampler drew them."""
    return completion_logp(model, rollout.prompt_ids[rows], rollout.prompt_mask[rows], rollout.completion_ids[rows],
                           t.cfg.temperature, eos_token_id=t.tokenizer.eos_token_id,
                           min_new_tokens=t.cfg.min_new_tokens)


@torch.no_grad()
def frozen_logp(t: Trainer, model, rollout: Rollout) -> torch.Tensor:
    """Log-probs [N, T] under a model without gradients, in chunks of micro_batch_size completions."""
    rows = torch.arange(rollout.completion_ids.shape[0], device=rollout.completion_ids.device)
    with t.autocast():
        return torch.cat([rollout_logp(t, model, rollout, r) for r in rows.split(t.cfg.micro_batch_size)])


def generate(t: Trainer, prompts: list[str]) -> Rollout:
    cfg = t.cfg
    prompt_ids, prompt_mask = encode_prompts(t.tokenizer, prompts, t.device)
    t.policy.eval()
    with t.autocast():
        rollout = t.sampler.generate(t.policy, prompt_ids, prompt_mask, max_new_tokens=cfg.max_new_tokens,
                                     temperature=cfg.temperature, generator=t.sample_rng,
                                     eos_token_id=t.tokenizer.eos_token_id, pad_token_id=t.tokenizer.pad_token_id,
                                     min_new_tokens=cfg.min_new_tokens)
    t.policy.train()
    return rollout


def score_rollout(t: Trainer, rollout: Rollout, examples: list) -> tuple[list[str], dict[str, torch.Tensor]]:
    """(completion texts, each reward function's values [P, G] over every rank's prompts)."""
    G = t.cfg.group_size
    texts = decode_completions(t.tokenizer, rollout.completion_ids, rollout.completion_mask)
    owners = [examples[i // G] for i in range(len(texts))]
    values = score([response_text(text, e) for text, e in zip(texts, owners)], owners, t.cfg.reward_weights)
    return texts, {name: dist.cat_across(torch.tensor(v, dtype=torch.float32).view(-1, G))
                   for name, v in values.items()}


def optimizer_step(t: Trainer, step: int, epoch: int) -> torch.Tensor:
    """Sum gradients over ranks, clip, step; returns the norm before clipping. A non-finite norm stops
    the run before the step, so no NaN ever reaches the weights (or a checkpoint)."""
    dist.sum_gradients(t.policy)
    grad_norm = torch.nn.utils.clip_grad_norm_(t.policy.parameters(), t.cfg.max_grad_norm)
    if not torch.isfinite(grad_norm):
        raise TrainingDiverged(f"non-finite gradient norm at step {step} (inner epoch {epoch})")
    t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def update_policy(t: Trainer, step: int, rollout: Rollout, advantages: torch.Tensor, ref_logp, old_logp) -> dict:
    """Inner epochs x mini-batches (one optimizer step each) x micro-batches (gradient accumulation).

    Normalisers are the whole mini-batch's (over all ranks), so micro-batch losses add up exactly.
    old_logp None means exactly on-policy (one epoch, one mini-batch): pi_old = pi_theta detached.
    Returns the policy statistics over all epochs plus the per-epoch keys, loss and grad_norm.
    """
    cfg, mask = t.cfg, rollout.completion_mask
    totals, out, losses, grad_norms = TokenWeightedMean(), {}, [], []
    for epoch in range(1, cfg.inner_epochs + 1):
        epoch_stats, epoch_losses = TokenWeightedMean(), []
        order = torch.randperm(mask.shape[0], generator=t.shuffle_rng).to(t.device)
        for mini_batch in order.tensor_split(cfg.mini_batches):   # exactly mini_batches pieces (chunk may give fewer)
            with t.timer("train"):
                num_seqs = float(dist.sum_across(torch.tensor(float(len(mini_batch)))))
                num_tokens = float(dist.sum_across(mask[mini_batch].sum().cpu()))
                mini_loss = torch.zeros((), device=t.device)
                for rows in mini_batch.split(cfg.micro_batch_size):
                    with t.autocast():
                        logp = rollout_logp(t, t.policy, rollout, rows)
                    loss, stats = policy_loss(
                        logp, logp.detach() if old_logp is None else old_logp[rows],
                        None if ref_logp is None else ref_logp[rows], advantages[rows], mask[rows],
                        clip_eps_low=cfg.clip_eps_low, clip_eps_high=cfg.clip_eps_high, kl_beta=cfg.kl_beta,
                        kl_estimator=cfg.kl_estimator, aggregation=cfg.aggregation,
                        num_seqs=num_seqs, num_tokens=num_tokens, max_len=cfg.max_new_tokens)
                    loss.backward()
                    mini_loss += loss.detach()
                    epoch_stats.add(stats, stats["tokens"])
                    # KL to the reference is reported for the rollout policy (epoch 1), not averaged over drift.
                    totals.add({k: v for k, v in stats.items() if epoch == 1 or not k.startswith("kl/")},
                               stats["tokens"])
            if dist.any_across(not bool(torch.isfinite(mini_loss))):
                raise TrainingDiverged(f"non-finite loss at step {step} (inner epoch {epoch})")
            with t.timer("optimizer"):
                grad_norms.append(optimizer_step(t, step, epoch))
            epoch_losses.append(mini_loss)
        summary = epoch_stats.result(dist.sum_across, dist.max_across)
        out[f"inner/{epoch}/clip_frac"] = summary["clip/low_frac"] + summary["clip/high_frac"]
        out[f"inner/{epoch}/ratio_mean"] = summary["ratio/mean"]
        out[f"inner/{epoch}/kl_old"] = summary["kl_old"]
        # Each rank's loss is its share of the global loss: the sum over ranks is the loss.
        out[f"inner/{epoch}/loss"] = dist.sum_across(torch.stack(epoch_losses).mean())
        losses += epoch_losses
    policy_stats = {k: v for k, v in totals.result(dist.sum_across, dist.max_across).items() if k != "kl_old"}
    return {**policy_stats, **out, "loss": dist.sum_across(torch.stack(losses).mean()),
            "grad_norm": torch.stack(grad_norms).float().mean()}


def grpo_step(t: Trainer, step: int) -> tuple[dict, list[dict]]:
    """One GRPO step. Returns (metrics as floats, rows for samples.jsonl)."""
    cfg, G = t.cfg, t.cfg.group_size
    P = cfg.prompts_per_step // dist.world_size()     # this rank's prompts
    t.timer.reset()

    # 1. Sample G completions for each of P prompts (rows p*G .. p*G+G-1 belong to prompt p).
    with t.timer("rollout"):
        examples = t.task.sample(t.prompt_rng, P)
        rollout = generate(t, [render_prompt(e, t.tokenizer) for e in examples for _ in range(G)])
    mask = rollout.completion_mask                    # [N, T]; 0 = padding after EOS

    with t.timer("reward"):
        # 2. Rule rewards on the decoded completions: [P, G] over every rank's prompts.
        texts, parts = score_rollout(t, rollout, examples)
        rewards = sum(cfg.reward_weights[name] * values for name, values in parts.items())
        if not bool(torch.isfinite(rewards).all()):
            raise TrainingDiverged(f"non-finite reward at step {step}")
        # 3. Group-relative advantages on the whole step's reward matrix (batch statistics span all
        #    ranks), then this rank's rows: one advantage per completion, [N].
        all_advantages = compute_advantages(rewards, cfg.advantage, eps=cfg.adv_eps)
        advantages = all_advantages[dist.rank_rows(cfg.prompts_per_step)].flatten().to(t.device)
        # 4. Log-probs that stay fixed through the inner epochs: the reference's, and pi_old's unless the
        #    update is exactly on-policy (one epoch, one mini-batch), where pi_old = pi_theta detached.
        on_policy = cfg.inner_epochs == 1 and cfg.mini_batches == 1
        ref_logp = frozen_logp(t, t.reference, rollout) if t.reference else None
        old_logp = None if on_policy else frozen_logp(t, t.policy, rollout)

    # 5. Inner epochs of clipped updates.
    policy_stats = update_policy(t, step, rollout, advantages, ref_logp, old_logp)

    # 6. Metrics over the whole step's batch: pure functions of tensors at hand, one .item() each.
    with t.timer("metrics"):
        lengths = mask.sum(-1)
        row_values = dist.cat_across(torch.stack([lengths, rollout.truncated.float(),
                                                  (rollout.entropy * mask).sum(-1)], dim=1).cpu())
        all_lengths, truncated, entropy_sums = row_values.unbind(1)
        correct = parts.get("correct")
        t.samples += len(all_lengths)
        t.tokens += int(all_lengths.sum())
        metrics = {
            **reward_metrics(rewards, parts, correct),
            **advantage_metrics(all_advantages),
            **zero_variance_metrics(rewards, correct),
            **length_metrics(all_lengths, truncated, None if correct is None else correct.flatten()),
            **entropy_metric(entropy_sums, all_lengths),
            **policy_stats,
            **gradient_token_metrics(all_advantages.flatten(), all_lengths,
                                     policy_stats["clip/low_frac"] + policy_stats["clip/high_frac"]),
        }
        try:
            metrics = to_floats(metrics)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err} at step {step}") from None
    local_rewards = rewards[dist.rank_rows(cfg.prompts_per_step)].flatten()
    rows = [{"step": step, "prompt": examples[i // G].prompt, "completion": texts[i],
             "reward": float(local_rewards[i]), "advantage": float(advantages[i])}
            for i in range(min(SAMPLE_ROWS, P) * G)]
    return metrics, rows
