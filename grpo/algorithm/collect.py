"""A step's training batch: prompts drawn, G completions each sampled and scored, and with DAPO's
dynamic sampling, zero-variance groups replaced by fresh prompts.

Dynamic sampling (Yu et al. 2025, DAPO, section 3.2): a group whose total reward is constant has
advantage 0 everywhere and contributes no gradient, so it is dropped and new prompts are drawn, round
after round, until P groups have signal or --max-resample-rounds rounds were generated. After the last
round, dropped groups fill the batch (in the order they were drawn) and `dynamic/filled_groups` says
how many: the batch never silently holds a zero-variance group. Every completion generated counts in
the step's `samples` and `tokens`, dropped ones included: that is the compute a comparison must match.
The first round draws from the same prompt stream as a run without dynamic sampling; the extra rounds
draw from their own generator, so the arms of an ablation still share their first-round prompts.
Everything here is per rank (no collectives), so ranks may need different numbers of rounds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from grpo.algorithm.state import Components, TrainState
from grpo.base import distributed as dist
from grpo.engine.sampler import Rollout, concat_rollouts, decode_completions, encode_prompts, select_rows
from grpo.formulas.advantages import compute_advantages, normalize_then_sum
from grpo.setup.rewards import overlong_penalty, response_text, score
from grpo.setup.tasks import render_prompt


@dataclass
class Batch:
    """P prompts x G completions (rows p*G .. p*G+G-1 belong to prompt p), on this rank."""
    examples: list
    rollout: Rollout
    texts: list[str]
    parts: dict[str, torch.Tensor]     # each reward function's values [P, G] (overlong included)
    generated: int                     # completions generated for it, dropped groups included
    generated_tokens: int
    dynamic: dict[str, torch.Tensor] = field(default_factory=dict)   # rounds, dropped, filled


def generate(c: Components, s: TrainState, prompts: list[str], generator: torch.Generator | None = None) -> Rollout:
    """One completion per prompt from the sampler, synced to the state's sampler weights (the learner itself
    unless the run keeps other weights for sampling), in eval mode, under the step's autocast unless
    --rollout-dtype names another dtype (its copy then runs in that dtype). Tokens are drawn with
    `generator`, by default the run's sampling stream."""
    cfg, policy = c.cfg, s.sampler_policy
    prompt_ids, prompt_mask = encode_prompts(c.tokenizer, prompts, c.device)
    # Several states may step on one sampler: draw from this one's weights. A state's own sampler copy is
    # rewritten in place after every step (and on resume), so a sampler that copies weights is synced again.
    if c.sampler.model is not policy or s.sampler_weights is not None:
        c.sampler.sync_weights(policy)
    policy.eval()
    # Under bf16 autocast an fp32 copy (--dtype bf16 --rollout-dtype fp32) would compute in bf16 all the same.
    with contextlib.nullcontext() if cfg.samples_in_own_dtype else c.autocast():
        options = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       eos_token_id=c.tokenizer.eos_token_id, pad_token_id=c.tokenizer.pad_token_id,
                       min_new_tokens=cfg.min_new_tokens)
        generator = s.rng.sample if generator is None else generator
        rollout = (c.sampler.generate(prompt_ids, prompt_mask, generator=generator, **options)
                   if c.population is None else       # a batched population: with the other seeds' (batching.py)
                   c.population.generate(c.sampler, policy, prompt_ids, prompt_mask, generator, **options))
    if s.sampler_weights is None:         # the learner itself: back to training mode (a copy stays in eval)
        policy.train()
    return rollout


def score_rollout(c: Components, rollout: Rollout, examples: list) -> tuple[list[str], dict[str, torch.Tensor]]:
    """(completion texts, each reward function's values [P, G]); DAPO's overlong shaping as `overlong`."""
    cfg, G = c.cfg, c.cfg.group_size
    texts = decode_completions(c.tokenizer, rollout.completion_ids, rollout.completion_mask)
    owners = [examples[i // G] for i in range(len(texts))]
    values = score([response_text(text, e) for text, e in zip(texts, owners)], owners, cfg.reward_weights)
    parts = {name: torch.tensor(v, dtype=torch.float32).view(-1, G) for name, v in values.items()}
    if cfg.overlong_buffer:
        lengths = rollout.completion_mask.sum(-1).cpu().view(-1, G)
        parts["overlong"] = overlong_penalty(lengths, cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty)
    return texts, parts


def step_advantages(cfg, parts: dict[str, torch.Tensor], shaped: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The step's advantages [P, G]: GDPO's normalise-then-sum of the reward parts (--reward-normalization
    normalize_then_sum), else the --advantage estimator on the (KL-shaped) total reward. The step and
    `grpo rescore` both call this."""
    if cfg.reward_normalization == "normalize_then_sum":
        return normalize_then_sum(parts, {name: cfg.reward_weights.get(name, 1.0) for name in parts}, eps=cfg.adv_eps)
    return compute_advantages(shaped, cfg.advantage, eps=cfg.adv_eps, lengths=lengths)


def total_reward(parts: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The reward the advantage sees [P, G]: weighted reward functions plus the (unweighted) shaping."""
    return sum(weights.get(name, 1.0) * values for name, values in parts.items())


def draw(c: Components, s: TrainState, examples: list) -> Batch:
    """The examples with G sampled, scored completions each."""
    G = c.cfg.group_size
    rollout = generate(c, s, [render_prompt(e, c.tokenizer, c.cfg.worked_example) for e in examples for _ in range(G)])
    texts, parts = score_rollout(c, rollout, examples)
    return Batch(examples, rollout, texts, parts, generated=len(texts),
                 generated_tokens=int(rollout.completion_mask.sum()))


def extra_correct_counts(c: Components, s: TrainState, examples: list, n: int, generator: torch.Generator) -> torch.Tensor:
    """How many of n more completions of each example the correctness reward calls right: [P] float,
    drawn with `generator` (not the run's streams) from the state's sampler weights."""
    rollout = generate(c, s, [render_prompt(e, c.tokenizer, c.cfg.worked_example) for e in examples for _ in range(n)],
                       generator)
    texts = decode_completions(c.tokenizer, rollout.completion_ids, rollout.completion_mask)
    owners = [examples[i // n] for i in range(len(texts))]
    name = c.cfg.correctness_reward
    values = score([response_text(text, e) for text, e in zip(texts, owners)], owners, {name: 1.0})[name]
    return torch.tensor(values, dtype=torch.float64).view(-1, n).sum(-1)


def groups_of(batch: Batch, prompts: list[int], G: int) -> Batch:
    """The batch restricted to some of its prompts (with their G completions each), in that order."""
    rows = [p * G + g for p in prompts for g in range(G)]
    return Batch([batch.examples[p] for p in prompts], select_rows(batch.rollout, torch.tensor(rows, dtype=torch.long)),
                 [batch.texts[r] for r in rows], {k: v[prompts] for k, v in batch.parts.items()}, 0, 0)


def joined(batches: list[Batch], pad_token_id: int) -> Batch:
    return Batch([e for b in batches for e in b.examples], concat_rollouts([b.rollout for b in batches], pad_token_id),
                 [x for b in batches for x in b.texts],
                 {k: torch.cat([b.parts[k] for b in batches]) for k in batches[0].parts}, 0, 0)


def first_round_prompts(c: Components, s: TrainState, step: int, num_prompts: int) -> list:
    """This rank's prompts of the step: fresh draws, or the next ones of the prompt pool's epochs."""
    if c.pool is None:
        return c.task.sample(s.rng.prompt, num_prompts)
    start = (step - 1) * c.cfg.prompts_per_step + dist.rank() * num_prompts
    return c.pool.take(start, num_prompts)


def collect_batch(c: Components, s: TrainState, num_prompts: int, step: int) -> Batch:
    """This rank's batch of num_prompts groups: one draw, or DAPO's dynamic sampling (module docstring)."""
    cfg = c.cfg
    first = draw(c, s, first_round_prompts(c, s, step, num_prompts))
    if not cfg.dynamic_sampling:
        return first
    kept, dropped, generated, tokens, rounds = [], [], 0, 0, 0
    batch = first
    while True:
        rounds += 1
        generated, tokens = generated + batch.generated, tokens + batch.generated_tokens
        rewards = total_reward(batch.parts, cfg.reward_weights)
        constant = (rewards.amax(-1) == rewards.amin(-1)).tolist()
        kept.append(groups_of(batch, [p for p, c in enumerate(constant) if not c], cfg.group_size))
        dropped.append(groups_of(batch, [p for p, c in enumerate(constant) if c], cfg.group_size))
        missing = num_prompts - sum(len(b.examples) for b in kept)
        if missing == 0 or rounds == cfg.max_resample_rounds:
            break
        # The extra rounds have their own generator: the prompt stream of other arms stays paired.
        batch = draw(c, s, (c.pool or c.task).sample(s.rng.resample, missing))
    pool = joined(dropped, c.tokenizer.pad_token_id)
    filled = groups_of(pool, list(range(missing)), cfg.group_size)
    out = joined([b for b in [*kept, filled] if b.examples], c.tokenizer.pad_token_id)
    out.generated, out.generated_tokens = generated, tokens
    out.dynamic = {"dynamic/rounds": torch.tensor(float(rounds)),
                   "dynamic/dropped_groups": torch.tensor(float(len(pool.examples) - missing)),
                   "dynamic/filled_groups": torch.tensor(float(missing))}
    return out
