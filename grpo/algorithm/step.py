"""The GRPO step, top to bottom: sample -> reward -> advantage -> inner epochs of clipped-ratio updates
with a KL penalty to a frozen reference -> metrics.

Read `grpo_step` for one step; every formula is one import away (advantages, kl, losses, metrics).
A step reads the run's `Components` and changes its `TrainState` (grpo/algorithm/state.py),
and returns a `StepResult`: the metrics and what the run writes beside them (samples, prompt records, the
stored rollout). The run around it (resume, evaluation and checkpoint cadence, logging, the failure
summary) is `grpo/run/runner.py`. Departures from the seed notebook: every prompt gets its own group; rewards read
the completion only; log-probs are shifted (grpo/engine/logprobs.py); prompt, padding and post-EOS tokens are
masked; the whole batch's loss is back-propagated (not the last group's); the reference is a frozen
copy of the warm-started policy (not a second random model); the advantage epsilon is a fixed
positive constant.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from grpo import TrainingDiverged
from grpo.algorithm.collect import Batch, collect_batch, extra_correct_counts, step_advantages, total_reward
from grpo.algorithm.counterfactual import counterfactual_metrics
from grpo.algorithm.metrics import ScoredStep, kl_token_std_metrics, scored_metrics, to_floats
from grpo.algorithm.state import Components, RandomStreams, TrainState
from grpo.algorithm.step_probes import ledger_metrics, unbiased_zero_var_frac
from grpo.algorithm.update import frozen_logp, update_policy
from grpo.base import distributed as dist
from grpo.base.device import DTYPES, resolve_device
from grpo.base.memory import LARGE_MODEL_PARAMS
from grpo.engine import fast_sampler
from grpo.engine import gemm
from grpo.engine.evaluation import evaluate
from grpo.engine.lean_layers import install_lean_layers
from grpo.engine.models import load_tokenizer
from grpo.engine.sampler import KVCacheSampler, Rollout, Sampler
from grpo.engine.warmstart import warm_started_model, warmstart_entry
from grpo.formulas.kl import kl_k1
from grpo.formulas.losses import loss_token_mask
from grpo.formulas.offpolicy import mismatch_metrics, rollout_is_weights, rollout_rejection
from grpo.setup.alternatives import alternative_configs
from grpo.setup.config import TrainConfig
from grpo.setup.presets import is_preset
from grpo.setup.sampler_registry import AUTO, SAMPLERS, check_sampler_name
from grpo.setup.tasks import PromptPool, make_task

__all__ = ["StepResult", "TrainingDiverged", "build_run", "evaluate_policy", "grpo_step"]

# The extra samples' stream: seed * 1000 + 999 - rank, from the top of the seed's block of 1000 down, while the
# run's own streams are seed * 1000 + rank + 0..3 (grpo/algorithm/state.py STREAM_OFFSETS) from its bottom up:
# they meet only past 498 ranks.
EXTRA_SAMPLES_TOP = 999
SAMPLE_ROWS = 2          # prompts (with all their completions) written to samples.jsonl


@dataclass
class StepResult:
    """What one step produced: its metrics (floats, over all ranks) and this rank's batch with the
    values the run writes beside them (`sample_rows`, `prompt_rows`, and the stored rollout of
    grpo/run/rollout_files.py)."""
    step: int
    metrics: dict[str, float]
    batch: Batch                 # this rank's P prompts x G completions, texts and reward parts
    rewards: torch.Tensor        # [N] this rank's total rewards
    advantages: torch.Tensor     # [N] this rank's advantages
    loss_mask: torch.Tensor      # [N, T] the tokens in the loss
    visits: list[int]            # with a prompt pool: each of this rank's prompts' visits so far, else []


def sample_rows(result: StepResult, group_size: int) -> list[dict]:
    """The samples.jsonl rows of a step: the first SAMPLE_ROWS prompts, every completion of each."""
    b = result.batch
    return [{"step": result.step, "prompt": b.examples[i // group_size].prompt, "completion": b.texts[i],
             "reward": float(result.rewards[i]), "advantage": float(result.advantages[i])}
            for i in range(min(SAMPLE_ROWS * group_size, len(b.texts)))]


def prompt_rows(result: StepResult, correctness_reward: str) -> list[dict]:
    """The prompts.jsonl rows of a step (a run with a prompt pool and a correctness reward; else none):
    each of this rank's prompts with its level, solve rate and visit number."""
    correct = result.batch.parts.get(correctness_reward)
    if not result.visits or correct is None:
        return []
    return [{"step": result.step, "index": e.index, "difficulty": e.difficulty, "solve_rate": rate, "visit": visits}
            for e, rate, visits in zip(result.batch.examples, correct.mean(-1).tolist(), result.visits)]


def build_run(cfg: TrainConfig, log=print) -> tuple[Components, TrainState]:
    """The run's components and its starting state (the warm start, a fresh optimizer, seeded streams)."""
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
    if cfg.kl_beta > 0 or cfg.kl_reference:   # with kl_beta == 0 no reference is built unless asked for
        # A copy that never trains, so it is stored in the compute dtype: under bf16 it takes half the
        # memory (and its KL at step 1 is then only bf16-close to 0); under fp32 it is 0 to float rounding (~1e-9).
        reference = copy.deepcopy(policy).to(DTYPES[cfg.compute_dtype]).eval().requires_grad_(False)
    # Step 0 scores the cached warm start; a single process keeps its scores for the runs after it
    # (ranks each evaluate a share of the blocks, so a data-parallel run does not).
    keeps_eval = cfg.num_warmstart_steps > 0 and dist.world_size() == 1
    components = Components(
        cfg=cfg, task=task, tokenizer=tokenizer, reference=reference, sampler=make_sampler(cfg, policy),
        device=device, pool=PromptPool(task, cfg.prompt_pool, cfg.seed) if cfg.prompt_pool else None,
        alternatives=tuple(alternative_configs(cfg)), lean=lean,
        eval_store=warmstart_entry(cfg, tokenizer) / "eval" if keeps_eval else None)
    return components, starting_state(cfg, policy, device)


def starting_state(cfg: TrainConfig, policy: torch.nn.Module, device: torch.device) -> TrainState:
    """A run's state before its first step: `policy` (the warm start), a fresh AdamW over it, the streams
    of cfg.seed on this rank, and the sampler's own weights where the run keeps them."""
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = TrainState(policy, optimizer, RandomStreams.seeded(cfg.seed * 1000 + dist.rank(), device))
    if cfg.sampler_differs:
        # The sampler's own weights: a copy stored in --rollout-dtype when that differs from the compute dtype
        # (it then runs in it, without autocast), else fp32 master weights under the step's autocast like the
        # learner's; kept --staleness steps behind the learner (TrainState.advance_sampler).
        dtype = DTYPES[cfg.rollout_dtype] if cfg.samples_in_own_dtype else torch.float32
        state.sampler_weights = copy.deepcopy(policy).to(dtype)
        state.sampler_weights.eval().requires_grad_(False)
        if cfg.staleness:
            state.behind = [state.learner_snapshot()]
    return state


def make_sampler(cfg: TrainConfig, policy) -> Sampler:
    """The --sampler's class from the registry, built and synced to the policy's weights; auto is the
    static-cache loop where it supports the policy, else hf (grpo/engine/sampler.py: the interface)."""
    name = cfg.sampler
    if name == AUTO:
        name = fast_sampler.StaticCacheSampler.name if fast_sampler.supports(policy) else KVCacheSampler.name
    check_sampler_name(name)
    sampler = SAMPLERS[name](cfg)
    sampler.sync_weights(policy)
    return sampler


def evaluate_policy(c: Components, s: TrainState, step: int) -> dict[str, float]:
    """The held-out metrics (grpo/engine/evaluation.py) of the learner's current weights."""
    with c.autocast():
        return evaluate(s.policy, c.sampler, c.tokenizer, c.task, c.cfg, step, c.device,
                        store=c.eval_store if step == 0 else None)


def grpo_step(c: Components, s: TrainState, step: int) -> StepResult:
    """One GRPO step: collect -> rewards -> reference -> advantages -> pi_old -> probes -> updates."""
    cfg, G = c.cfg, c.cfg.group_size
    P = cfg.prompts_per_step // dist.world_size()     # this rank's prompts
    c.timer.reset()

    # 1. Collect: G completions for each of P prompts (rows p*G .. p*G+G-1 belong to prompt p), scored;
    #    with --dynamic-sampling, zero-variance groups are replaced (grpo/algorithm/collect.py).
    with c.timer("rollout"):
        batch = collect_batch(c, s, P, step)
        # --zero-var-extra-samples: n more completions per prompt at the first step, from their own stream,
        # at the weights this step's rollouts came from (before any update).
        extra = extra_zero_var(c, s, batch.examples) if step == 1 and cfg.zero_var_extra_samples else {}
    policy_lag = s.policy_lag
    rollout, mask = batch.rollout, batch.rollout.completion_mask    # [N, T]; 0 = padding after EOS
    loss_mask = loss_token_mask(mask, rollout.truncated, cfg.mask_truncated)
    s.samples += int(dist.sum_across(torch.tensor(batch.generated)))
    s.tokens += int(dist.sum_across(torch.tensor(batch.generated_tokens)))

    with c.timer("reward"):
        # 2. Rewards [P, G] over every rank's prompts.
        parts = {name: dist.cat_across(values) for name, values in batch.parts.items()}
        rewards = total_reward(parts, cfg.reward_weights)
        if not bool(torch.isfinite(rewards).all()):
            raise TrainingDiverged(f"non-finite reward at step {step}")
        lengths = dist.cat_across(mask.sum(-1).cpu().view(P, G))
        # 3. The reference's log-probs; with --kl-placement reward, beta * sum_t k1 leaves the reward.
        ref_logp = frozen_logp(c, c.reference, rollout) if c.reference else None
        shaped, kl_penalty = rewards, {}
        if cfg.kl_placement == "reward" and ref_logp is not None and cfg.kl_beta > 0:
            penalty = dist.cat_across((cfg.kl_beta * (kl_k1(rollout.logp, ref_logp) * mask).sum(-1)).cpu().view(P, G))
            shaped, kl_penalty["reward/kl_penalty/mean"] = rewards - penalty, penalty.mean()
        # 4. Group-relative advantages on the whole step's reward matrix (batch statistics span all
        #    ranks), then this rank's rows: one advantage per completion, [N].
        #    With --reward-normalization normalize_then_sum (GDPO), each reward function is normalised first.
        all_advantages = step_advantages(cfg, parts, shaped, lengths)
        advantages = all_advantages[dist.rank_rows(cfg.prompts_per_step)].flatten().to(c.device)
        # 5. pi_old's log-probs stay fixed through the inner epochs: the learner's at the start of the step,
        #    or the sampler's own (--old-logp sampler). Exactly on-policy (one epoch, one mini-batch, the
        #    sampler the learner itself, no correction), pi_old = pi_theta detached.
        old_logp = pi_old_logp(c, s, rollout)
        # 5b. Off-policy corrections against the sampler's log-probs (grpo/formulas/offpolicy.py): weights on the
        #     policy term, rejected tokens out of the loss, and the mismatch metrics.
        #     When the sampler is the learner at the learner's precision, its log-probs are pi_old's by
        #     construction (the decode loop and the learner's forward differ by float rounding, ~1e-13 nats a
        #     token): the corrections then read pi_old's, so their weights are exactly 1 and the mismatch 0.
        sampler_logp = rollout.logp if cfg.sampler_differs or old_logp is None else old_logp
        token_weights, update_mask, mismatch = off_policy_correction(cfg, sampler_logp, old_logp, loss_mask)

    # 6. Probe: the gradient other settings would take on these rollouts, all at the weights the step's
    #    last update starts from (the step's own with one update), against pi_old.
    counterfactual = {}

    def probe() -> None:
        with c.timer("counterfactual"):
            counterfactual.update(counterfactual_metrics(c, s, step, rollout, shaped, lengths, mask, ref_logp, old_logp))

    # 7. Inner epochs of clipped updates.
    probes = bool(cfg.counterfactual_every) and step % cfg.counterfactual_every == 0
    policy_stats = update_policy(c, s, step, rollout, advantages, update_mask, ref_logp, old_logp, token_weights,
                                 sequence_mask=loss_mask, sampler_logp=sampler_logp,
                                 before_last_update=probe if probes else None)
    s.advance_sampler(cfg.staleness)      # the weights the next step's rollouts come from

    # 8. Metrics over the whole step's batch: pure functions of tensors at hand, one .item() each.
    with c.timer("metrics"):
        examples = [e for part in dist.gather_objects(batch.examples) for e in part]   # every rank's, in order
        scored = scored_step(c, batch, examples, parts, rewards, all_advantages, loss_mask)
        ledger, visits = ledger_update(c, s, batch.examples, examples, scored)
        dynamic = {k: (dist.max_across if k == "dynamic/rounds" else dist.sum_across)(v)
                   for k, v in batch.dynamic.items()}
        metrics = {
            **scored_metrics(scored, cut_frac=policy_stats["grad/cut_frac"], mask_truncated=cfg.mask_truncated,
                             aggregation=cfg.aggregation, max_len=cfg.max_new_tokens),
            **kl_penalty, **{k: v for k, v in policy_stats.items() if k not in ("kl_old", "grad/cut_frac")},
            **dynamic, **counterfactual, **ledger, **mismatch, **extra,
            **(kl_token_std_metrics(sampler_logp, ref_logp, loss_mask, dist.sum_across) if ref_logp is not None else {}),
            **({"staleness/policy_lag": float(policy_lag)} if cfg.staleness else {}),
        }
        try:
            metrics = to_floats(metrics)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err} at step {step}") from None
    local_rewards = rewards[dist.rank_rows(cfg.prompts_per_step)].flatten()
    return StepResult(step, metrics, batch, local_rewards, advantages, loss_mask, visits)


def scored_step(c: Components, batch: Batch, examples: list, parts: dict, rewards: torch.Tensor,
                all_advantages: torch.Tensor, loss_mask: torch.Tensor) -> ScoredStep:
    """The step's ScoredStep: every rank's rows gathered, in rank order (`examples`: every rank's)."""
    rollout, mask = batch.rollout, batch.rollout.completion_mask
    logp_sums = torch.where(loss_mask > 0, rollout.logp, 0.0).sum(-1)
    row_values = dist.cat_across(torch.stack([mask.sum(-1), rollout.truncated.float(),
                                              (rollout.entropy * mask).sum(-1), loss_mask.sum(-1), logp_sums], 1).cpu())
    lengths, truncated, entropy_sums, loss_lengths, logp_sums = row_values.unbind(1)
    return ScoredStep(parts, rewards, all_advantages, lengths, truncated, entropy_sums, loss_lengths,
                      [e.difficulty for e in examples], parts.get(c.cfg.correctness_reward), logp_sums)


def extra_zero_var(c: Components, s: TrainState, examples: list) -> dict[str, torch.Tensor]:
    """zero_var/unbiased_frac from --zero-var-extra-samples n completions per prompt of this rank's `examples`,
    drawn with a generator of their own (seeded from the run's seed and rank, never checkpointed: it is used
    at step 1 only), so the run's own streams, and every other metric, are exactly as without them."""
    cfg = c.cfg
    generator = torch.Generator(device=c.device).manual_seed(cfg.seed * 1000 + EXTRA_SAMPLES_TOP - dist.rank())
    successes = extra_correct_counts(c, s, examples, cfg.zero_var_extra_samples, generator)
    local = unbiased_zero_var_frac(successes, cfg.zero_var_extra_samples, cfg.group_size)
    # Ranks hold equally many prompts: the mean of their means is the mean over every prompt.
    return {"zero_var/unbiased_frac": dist.sum_across(local) / dist.world_size()}


def ledger_update(c: Components, s: TrainState, mine: list, examples: list, scored: ScoredStep) -> tuple[dict, list[int]]:
    """With a prompt pool and a correctness reward: the ledger's metrics for the step, read before the
    step's visits (`examples`: every rank's prompts) are entered into s.ledger, and the visit counts of
    this rank's prompts (`mine`) after it."""
    if c.pool is None or scored.correct is None:
        return {}, []
    rates = scored.correct.mean(-1)
    previous = torch.tensor([s.ledger.get(e.index, (float("nan"), 0))[0] for e in examples])
    metrics = ledger_metrics(previous, rates, c.cfg.group_size)
    for e, rate in zip(examples, rates.tolist()):
        s.ledger[e.index] = (rate, s.ledger.get(e.index, (0.0, 0))[1] + 1)
    return metrics, [s.ledger[e.index][1] for e in mine]


def pi_old_logp(c: Components, s: TrainState, rollout: Rollout) -> torch.Tensor | None:
    """pi_old's log-probs [N, T] for the step's rollouts (module docstring of grpo/formulas/offpolicy.py): the
    sampler's own with --old-logp sampler; else the learner's now, or None when the update is exactly
    on-policy (one epoch, one mini-batch, the sampler the learner at its precision, no correction):
    pi_old is then pi_theta detached."""
    cfg = c.cfg
    if cfg.old_logp == "sampler":
        return rollout.logp
    exact = cfg.inner_epochs == 1 and cfg.mini_batches == 1 and not cfg.measures_mismatch
    return None if exact else frozen_logp(c, s.policy, rollout)


def off_policy_correction(cfg: TrainConfig, rollout_logp: torch.Tensor, old_logp: torch.Tensor | None,
                          loss_mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, dict]:
    """(IS weights on the policy term or None, the update's loss mask: without rejected tokens, the mismatch/*
    metrics) for this rank's rollouts, when the config measures the mismatch (TrainConfig.measures_mismatch):
    the sampler differs from the learner or a correction is on, and pi_old is the learner's. Else nothing to
    correct or measure: pi_old is pi_theta itself, or the sampler's own log-probs (--old-logp sampler)."""
    if not cfg.measures_mismatch:
        return None, loss_mask, {}
    c_min, c_max = cfg.rollout_is_bounds
    corrected = rollout_is_weights(rollout_logp, old_logp, loss_mask, cfg.rollout_is, c_min=c_min, c_max=c_max)
    rejected = rollout_rejection(rollout_logp, old_logp, loss_mask, cfg.rollout_rs,
                                 lower=cfg.rollout_rs_lower, upper=cfg.rollout_rs_upper)
    weights = None if cfg.rollout_is == "none" else corrected.weights
    local = mismatch_metrics(rollout_logp, old_logp, loss_mask, weights,
                             masked=corrected.masked | rejected, truncated=corrected.truncated)
    # Each rank's means over its own tokens, averaged over ranks (equal batches); maxima over ranks.
    metrics = {k: dist.max_across(v) if k.endswith("_max") else dist.sum_across(v) / dist.world_size()
               for k, v in local.items()}
    return weights, loss_mask * ~rejected, metrics
