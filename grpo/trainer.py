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
from pathlib import Path

import torch

from grpo import TrainingDiverged, distributed as dist, fast_sampler, gemm
from grpo.advantages import compute_advantages
from grpo.config import TrainConfig
from grpo.device import resolve_device
from grpo.evaluation import evaluate
from grpo.batch import collect_batch, total_reward
from grpo.kl import kl_k1
from grpo.lean_layers import install_lean_layers
from grpo.losses import loss_token_mask, policy_loss
from grpo.memory import LARGE_MODEL_PARAMS
from grpo.metrics import (TokenWeightedMean, advantage_metrics, entropy_metric, gradient_token_metrics,
                          length_metrics, reward_metrics, to_floats, zero_variance_metrics)
from grpo.models import load_tokenizer
from grpo.objectives import SELECTIONS, token_covariance, top_entropy_keep
from grpo.sampler import KVCacheSampler, Rollout, Sampler
from grpo.sampler_registry import AUTO, SAMPLERS, check_sampler_name
from grpo.counterfactual import counterfactual_metrics
from grpo.presets import is_preset
from grpo.probes import ledger_metrics, step_probe_metrics
from grpo.tasks import PromptPool, make_task
from grpo.timing import StageTimer
from grpo.update import loss_kwargs, micro_batches, objective_params, rollout_logp
from grpo.warmstart import warm_started_model, warmstart_entry

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
    prompt_rng: torch.Generator      # prompt draws (the first round of each step)
    shuffle_rng: torch.Generator     # mini-batch shuffles
    sample_rng: torch.Generator      # token sampling
    resample_rng: torch.Generator    # dynamic sampling's extra rounds: the first round stays paired
    pool: object = None              # the PromptPool with --prompt-pool, else None (fresh draws)
    ledger: dict = field(default_factory=dict)   # prompt index -> (solve rate at its last visit, visits)
    step_record: dict = field(default_factory=dict)  # the last step's prompt rows and rollout tensors
    timer: StageTimer = field(default=None)
    lean: bool = False               # a large Llama-family policy: lean layers and the chunked head
    eval_store: Path | None = None   # where step 0's evaluation of the (cached) warm start is kept
    samples: int = 0                 # completions generated so far (all ranks)
    tokens: int = 0                  # completion tokens generated so far (all ranks)
    elapsed: float = 0.0

    def __post_init__(self) -> None:
        if self.timer is None:
            self.timer = StageTimer(self.device)

    def autocast(self):
        """bf16 autocast for forward passes when the run computes in bf16 (`compute_dtype`: --dtype, or its
        default for the model and hardware); log-probs and the loss stay fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.compute_dtype == "bf16")

    def evaluate(self, step: int) -> dict[str, float]:
        with self.autocast():
            return evaluate(self.policy, self.sampler, self.tokenizer, self.task, self.cfg, step, self.device,
                            store=self.eval_store if step == 0 else None)


def build_trainer(cfg: TrainConfig, log=print) -> Trainer:
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = make_task(cfg)
    # A preset model uses the task's character tokenizer; a local checkpoint brings its own.
    tokenizer = task.tokenizer if is_preset(cfg.model) else load_tokenizer(cfg.model)
    # The policy keeps fp32 master weights; in bf16 (cfg.compute_dtype) its forward passes run under autocast.
    policy = warm_started_model(cfg, task, tokenizer, device, log=log)
    dist.broadcast_parameters(policy)     # every rank starts from rank 0's weights
    if cfg.gradient_checkpointing:
        if hasattr(policy, "activation_checkpointing_enable"):          # transformers >= 5.2x
            policy.activation_checkpointing_enable({"use_reentrant": False})
        else:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.config.use_cache = False
    policy.train()
    large = sum(p.numel() for p in policy.parameters()) >= LARGE_MODEL_PARAMS
    lean = large and fast_sampler.supports(policy) and policy.lm_head.bias is None
    if lean:
        install_lean_layers(policy)        # the MLPs and norms keep less for the backward
    gemm.install(policy)                   # fp32 CPU linear layers without a lean forward: through oneDNN
    reference = None
    if cfg.kl_beta > 0:   # with kl_beta == 0 no reference is ever built
        # A copy that never trains, so it is stored in the compute dtype: under bf16 it takes half the
        # memory (and its KL at step 1 is then only bf16-close to 0); under fp32 it is 0 to float rounding (~1e-9).
        reference = copy.deepcopy(policy).to(COMPUTE_DTYPES[cfg.compute_dtype]).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rank_seed = cfg.seed * 1000 + dist.rank()
    # Step 0 scores the cached warm start; a single process keeps its scores for the runs after it
    # (ranks each evaluate a share of the blocks, so a data-parallel run does not).
    keeps_eval = cfg.num_warmstart_steps > 0 and dist.world_size() == 1
    eval_store = warmstart_entry(cfg, tokenizer) / "eval" if keeps_eval else None
    return Trainer(cfg=cfg, task=task, tokenizer=tokenizer, policy=policy, reference=reference,
                   pool=PromptPool(task, cfg.prompt_pool, cfg.seed) if cfg.prompt_pool else None,
                   optimizer=optimizer, sampler=make_sampler(cfg, policy), device=device,
                   prompt_rng=torch.Generator().manual_seed(rank_seed),
                   shuffle_rng=torch.Generator().manual_seed(rank_seed + 2),
                   sample_rng=torch.Generator(device=device).manual_seed(rank_seed + 1),
                   resample_rng=torch.Generator().manual_seed(rank_seed + 3), lean=lean, eval_store=eval_store)


def make_sampler(cfg: TrainConfig, policy) -> Sampler:
    """The --sampler's class from the registry, built and synced to the policy's weights; auto is the
    static-cache loop where it supports the policy, else hf (grpo/sampler.py: the interface)."""
    name = cfg.sampler
    if name == AUTO:
        name = fast_sampler.StaticCacheSampler.name if fast_sampler.supports(policy) else KVCacheSampler.name
    check_sampler_name(name)
    sampler = SAMPLERS[name](cfg)
    sampler.sync_weights(policy)
    return sampler


@torch.no_grad()
def frozen_logp(t: Trainer, model, rollout: Rollout) -> torch.Tensor:
    """Log-probs [N, T] under a model without gradients, a micro-batch at a time."""
    out = torch.zeros(rollout.completion_ids.shape, device=rollout.completion_ids.device)
    with t.autocast():
        for rows in micro_batches(t, rollout, torch.arange(len(out), device=out.device)):
            out[rows] = rollout_logp(t, model, rollout, rows)
    return out


def optimizer_step(t: Trainer, step: int, epoch: int) -> torch.Tensor:
    """Sum gradients over ranks, clip, step; returns the norm before clipping. A non-finite norm stops
    the run before the step, so no NaN ever reaches the weights (or a checkpoint)."""
    dist.sum_gradients(t.policy)
    grad_norm = torch.nn.utils.clip_grad_norm_(t.policy.parameters(), t.cfg.max_grad_norm)
    if not torch.isfinite(grad_norm):
        raise TrainingDiverged(f"non-finite gradient norm at step {step} (inner epoch {epoch})")
    t.optimizer.step()
    t.sampler.sync_weights(t.policy)      # the next rollout draws from the weights just stepped
    t.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def update_policy(t: Trainer, step: int, rollout: Rollout, advantages: torch.Tensor, loss_mask: torch.Tensor,
                  ref_logp, old_logp, before_last_update=None) -> dict:
    """Inner epochs x mini-batches (one optimizer step each) x micro-batches (gradient accumulation).

    Normalisers are the whole mini-batch's (over all ranks), so micro-batch losses add up exactly; the
    token selections (kl_cov / clip_cov per mini-batch from pi_old's log-probs, the top-entropy quantile
    over the step) are made before the split for the same reason. old_logp None means exactly
    on-policy (one epoch, one mini-batch): pi_old = pi_theta detached. before_last_update (a probe) is
    called once, at the weights the step's last update starts from. Returns the policy statistics
    over all epochs plus the per-epoch keys, loss and grad_norm.
    """
    cfg = t.cfg
    kwargs = loss_kwargs(cfg)
    selection_logp = rollout.logp if old_logp is None else old_logp     # pi_old's (the sampler's) log-probs
    # clip_cov's draw: a generator of the (seed, step) alone, so resuming repeats it.
    selection_rng = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    entropy_keep = (top_entropy_keep(rollout.entropy, loss_mask, cfg.top_entropy_quantile)
                    if cfg.top_entropy_quantile < 1 else None)
    cov_selected = torch.zeros_like(loss_mask, dtype=torch.bool)
    totals, out, losses, grad_norms = TokenWeightedMean(), {}, [], []
    for epoch in range(1, cfg.inner_epochs + 1):
        epoch_stats, epoch_losses = TokenWeightedMean(), []
        order = torch.randperm(loss_mask.shape[0], generator=t.shuffle_rng).to(t.device)
        for mini_batch in order.tensor_split(cfg.mini_batches):   # exactly mini_batches pieces (chunk may give fewer)
            if before_last_update is not None and len(grad_norms) == cfg.inner_epochs * cfg.mini_batches - 1:
                before_last_update()
            with t.timer("train"):
                num_seqs = float(dist.sum_across(torch.tensor(float(len(mini_batch)))))
                num_tokens = float(dist.sum_across(loss_mask[mini_batch].sum().cpu()))
                if cfg.objective in SELECTIONS:
                    cov = token_covariance(advantages[mini_batch, None], selection_logp[mini_batch], loss_mask[mini_batch])
                    cov_selected[mini_batch] = SELECTIONS[cfg.objective](
                        cov, loss_mask[mini_batch], objective_params(cfg), selection_rng)
                mini_loss = torch.zeros((), device=t.device)
                for rows in micro_batches(t, rollout, mini_batch):
                    with t.autocast():
                        learner = rollout_logp(t, t.policy, rollout, rows, with_entropy=cfg.entropy_coef != 0)
                    logp, entropy = learner if cfg.entropy_coef != 0 else (learner, None)
                    loss, stats = policy_loss(
                        logp, logp.detach() if old_logp is None else old_logp[rows],
                        None if ref_logp is None else ref_logp[rows], advantages[rows], loss_mask[rows],
                        num_seqs=num_seqs, num_tokens=num_tokens, max_len=cfg.max_new_tokens,
                        cov_selected=cov_selected[rows] if cfg.objective in SELECTIONS else None,
                        entropy=entropy, entropy_keep=None if entropy_keep is None else entropy_keep[rows],
                        **kwargs)
                    loss.backward()
                    mini_loss += loss.detach()
                    epoch_stats.add(stats, stats["tokens"], stats["seqs"])
                    # KL to the reference is reported for the rollout policy (epoch 1), not averaged over drift.
                    totals.add({k: v for k, v in stats.items() if epoch == 1 or not k.startswith("kl/")},
                               stats["tokens"], stats["seqs"])
            if dist.any_across(not bool(torch.isfinite(mini_loss))):
                raise TrainingDiverged(f"non-finite loss at step {step} (inner epoch {epoch})")
            with t.timer("optimizer"):
                grad_norms.append(optimizer_step(t, step, epoch))
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


def grpo_step(t: Trainer, step: int) -> tuple[dict, list[dict]]:
    """One GRPO step. Returns (metrics as floats, rows for samples.jsonl)."""
    cfg, G = t.cfg, t.cfg.group_size
    P = cfg.prompts_per_step // dist.world_size()     # this rank's prompts
    t.timer.reset()

    # 1. Sample G completions for each of P prompts (rows p*G .. p*G+G-1 belong to prompt p), and score
    #    them; with --dynamic-sampling, zero-variance groups are replaced (grpo/batch.py).
    with t.timer("rollout"):
        batch = collect_batch(t, P, step)
    rollout, mask = batch.rollout, batch.rollout.completion_mask    # [N, T]; 0 = padding after EOS
    loss_mask = loss_token_mask(mask, rollout.truncated, cfg.mask_truncated)

    with t.timer("reward"):
        # 2. Rewards [P, G] over every rank's prompts.
        parts = {name: dist.cat_across(values) for name, values in batch.parts.items()}
        rewards = total_reward(parts, cfg.reward_weights)
        if not bool(torch.isfinite(rewards).all()):
            raise TrainingDiverged(f"non-finite reward at step {step}")
        lengths = dist.cat_across(mask.sum(-1).cpu().view(P, G))
        # 3. The reference's log-probs; with --kl-placement reward, beta * sum_t k1 leaves the reward.
        ref_logp = frozen_logp(t, t.reference, rollout) if t.reference else None
        shaped, extra = rewards, {}
        if cfg.kl_placement == "reward" and ref_logp is not None:
            penalty = dist.cat_across((cfg.kl_beta * (kl_k1(rollout.logp, ref_logp) * mask).sum(-1)).cpu().view(P, G))
            shaped, extra["reward/kl_penalty/mean"] = rewards - penalty, penalty.mean()
        # 4. Group-relative advantages on the whole step's reward matrix (batch statistics span all
        #    ranks), then this rank's rows: one advantage per completion, [N].
        all_advantages = compute_advantages(shaped, cfg.advantage, eps=cfg.adv_eps, lengths=lengths)
        advantages = all_advantages[dist.rank_rows(cfg.prompts_per_step)].flatten().to(t.device)
        # 5. pi_old's log-probs stay fixed through the inner epochs, unless the update is exactly
        #    on-policy (one epoch, one mini-batch), where pi_old = pi_theta detached.
        on_policy = cfg.inner_epochs == 1 and cfg.mini_batches == 1
        old_logp = None if on_policy else frozen_logp(t, t.policy, rollout)

    # Probe: the gradient other settings would take on these rollouts, all at the weights the step's
    # last update starts from (the step's own with one update), against pi_old.
    counterfactual = {}

    def probe() -> None:
        with t.timer("counterfactual"):
            counterfactual.update(counterfactual_metrics(t, step, rollout, shaped, lengths, mask, ref_logp, old_logp))

    # 6. Inner epochs of clipped updates.
    probes = bool(cfg.counterfactual_every) and step % cfg.counterfactual_every == 0
    policy_stats = update_policy(t, step, rollout, advantages, loss_mask, ref_logp, old_logp,
                                 before_last_update=probe if probes else None)

    # 7. Metrics over the whole step's batch: pure functions of tensors at hand, one .item() each.
    with t.timer("metrics"):
        row_values = dist.cat_across(torch.stack([mask.sum(-1), rollout.truncated.float(),
                                                  (rollout.entropy * mask).sum(-1), loss_mask.sum(-1)], 1).cpu())
        all_lengths, truncated, entropy_sums, loss_lengths = row_values.unbind(1)
        correct = parts.get(cfg.correctness_reward)
        t.samples += int(dist.sum_across(torch.tensor(batch.generated)))
        t.tokens += int(dist.sum_across(torch.tensor(batch.generated_tokens)))
        dynamic = {k: (dist.max_across if k == "dynamic/rounds" else dist.sum_across)(v)
                   for k, v in batch.dynamic.items()}
        metrics = {
            **reward_metrics(rewards, parts, correct), **extra,
            **advantage_metrics(all_advantages),
            **zero_variance_metrics(rewards, correct),
            **length_metrics(all_lengths, truncated, None if correct is None else correct.flatten()),
            **entropy_metric(entropy_sums, all_lengths),
            **{k: v for k, v in policy_stats.items() if k not in ("kl_old", "grad/cut_frac")},
            **gradient_token_metrics(all_advantages.flatten(), all_lengths, loss_lengths,
                                     policy_stats["grad/cut_frac"], cfg.mask_truncated),
            **dynamic, **counterfactual,
            **probe_metrics(t, batch, rewards, correct, all_advantages, all_lengths, loss_lengths),
        }
        try:
            metrics = to_floats(metrics)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err} at step {step}") from None
    t.step_record = step_record(t, step, batch, parts, advantages, loss_mask)
    local_rewards = rewards[dist.rank_rows(cfg.prompts_per_step)].flatten()
    rows = [{"step": step, "prompt": batch.examples[i // G].prompt, "completion": batch.texts[i],
             "reward": float(local_rewards[i]), "advantage": float(advantages[i])}
            for i in range(min(SAMPLE_ROWS, P) * G)]
    return metrics, rows


def probe_metrics(t: Trainer, batch, rewards, correct, all_advantages, all_lengths, loss_lengths) -> dict:
    """Difficulty and length-bias probes over the whole step; the per-prompt ledger with a prompt pool
    (which also updates t.ledger). Inputs are the gathered [P, G] / [N] tensors of grpo_step."""
    cfg, G = t.cfg, t.cfg.group_size
    examples = [e for part in dist.gather_objects(batch.examples) for e in part]
    out = step_probe_metrics(rewards, correct, all_advantages, [e.difficulty for e in examples],
                             loss_lengths.view(all_advantages.shape), cfg.aggregation, cfg.max_new_tokens)
    if t.pool is not None and correct is not None:
        rates = correct.mean(-1)
        previous = torch.tensor([t.ledger.get(e.index, (float("nan"), 0))[0] for e in examples])
        out.update(ledger_metrics(previous, rates, G))
        for e, rate in zip(examples, rates.tolist()):
            t.ledger[e.index] = (rate, t.ledger.get(e.index, (0.0, 0))[1] + 1)
    return out


def step_record(t: Trainer, step: int, batch, parts, advantages, loss_mask) -> dict:
    """What the run writes beside metrics.jsonl: prompts.jsonl rows (prompt pool) and, with
    --store-rollouts, this rank's rollout tensors for `grpo rescore`."""
    cfg, G = t.cfg, t.cfg.group_size
    record = {}
    if t.pool is not None and cfg.correctness_reward in parts:
        rows = parts[cfg.correctness_reward][dist.rank_rows(cfg.prompts_per_step)].mean(-1).tolist()
        record["prompts"] = [{"step": step, "index": e.index, "difficulty": e.difficulty, "solve_rate": rate,
                              "visit": t.ledger[e.index][1]} for e, rate in zip(batch.examples, rows)]
    if cfg.store_rollouts:
        rollout, mine = batch.rollout, dist.rank_rows(cfg.prompts_per_step)
        record["rollout"] = {
            "prompt_ids": rollout.prompt_ids, "prompt_mask": rollout.prompt_mask,
            "completion_ids": rollout.completion_ids, "completion_mask": rollout.completion_mask,
            "loss_mask": loss_mask, "truncated": rollout.truncated.to(torch.uint8), "logp": rollout.logp,
            "entropy": rollout.entropy, "advantages": advantages,
            "prompt_index": torch.tensor([e.index for e in batch.examples]),
            **{f"reward/{name}": values[mine].flatten() for name, values in parts.items()},
        }
        record["rollout_meta"] = {"step": step, "group_size": G, "rank": dist.rank(),
                                  "difficulty": [e.difficulty for e in batch.examples]}
    return record

