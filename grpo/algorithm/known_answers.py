"""Simulated steps with a known answer, for calibrating probes (STYLE.md: "a null case where it must read
null and a planted case where it must find what was planted").

Small pure functions: tensors, floats and a torch.Generator in, tensors out; no model, no config. A
step is P prompts x G completions, the group structure in the shape [P, G] like the trainer's:
- `solve_rates`: per-prompt probability q of a correct completion, drawn uniformly in [low, high].
- `difficulty_mixture`: prompts spread evenly over levels, each level with its own solve rate and
  mean completion length (a harder level: lower q and longer completions), the mixture under which a
  correlation pooled over groups reads the levels instead of anything within a group.
- `binary_rewards`: G Bernoulli(q) draws per prompt, float 0/1 [P, G]. Calling it twice with the
  same rates is a frozen policy visiting the same prompts twice; `improved` plants a policy that
  got better between the visits.
- `completion_lengths`: token counts [P, G] around each prompt's mean length, with a chosen spread
  within the group and an optional planted length-correctness dependence.
Seeds: pass a seeded torch.Generator (CPU), so a test's numbers are reproducible.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grpo import GrpoError


def solve_rates(num_prompts: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    """Per-prompt solve rates q ~ Uniform[low, high]: [P] float32."""
    return low + (high - low) * torch.rand(num_prompts, generator=generator)


def difficulty_mixture(num_prompts: int, level_rates: list[float], level_lengths: list[float],
                       generator: torch.Generator) -> tuple[list[str], Tensor, Tensor]:
    """Prompts of len(level_rates) difficulty levels, as evenly as P allows, in random order.

    Level k (labelled "d1", "d2", ...) has solve rate level_rates[k] and mean completion length
    level_lengths[k]. Returns (labels: P strings, q: [P], mean_lengths: [P]).
    """
    if len(level_rates) != len(level_lengths):
        raise GrpoError(f"{len(level_rates)} level rates for {len(level_lengths)} level lengths")
    level = torch.arange(num_prompts) % len(level_rates)
    level = level[torch.randperm(num_prompts, generator=generator)]                 # [P]
    rates, lengths = torch.tensor(level_rates), torch.tensor(level_lengths, dtype=torch.float32)
    return [f"d{k + 1}" for k in level.tolist()], rates[level], lengths[level]


def binary_rewards(q: Tensor, group_size: int, generator: torch.Generator) -> Tensor:
    """G independent Bernoulli(q_p) draws per prompt: float 0/1 [P, G] (1 = correct)."""
    return (torch.rand(q.shape[0], group_size, generator=generator) < q.unsqueeze(-1)).float()


def improved(q: Tensor, gain: float) -> Tensor:
    """Solve rates after a planted improvement: q + gain (1 - q), i.e. a share `gain` of the prompt's
    failures now succeeds; gain 0 is the frozen policy, gain 1 solves everything. [P]."""
    return q + gain * (1 - q)


def completion_lengths(mean_lengths: Tensor, correct: Tensor, spread: float, generator: torch.Generator,
                       correct_factor: float = 1.0) -> Tensor:
    """Token counts [P, G] (long, >= 1): prompt p's mean length times a log-normal factor per completion.

    mean_lengths: [P]; correct: [P, G] float 0/1. The factor exp(spread z - spread^2 / 2), z ~ N(0, 1)
    independent of everything, has mean 1 and a coefficient of variation of about `spread` (exactly
    sqrt(exp(spread^2) - 1)) before rounding; spread 0 gives every completion of a group the same
    length. correct_factor multiplies the length of correct completions only: 1 (the default) makes
    length independent of correctness within a group (the null); 0.7 plants correct answers 30%
    shorter than wrong ones of the same prompt.
    """
    z = torch.randn(correct.shape, generator=generator)
    factor = torch.exp(spread * z - spread ** 2 / 2) * torch.where(correct > 0, correct_factor, 1.0)
    return (mean_lengths.unsqueeze(-1) * factor).round().clamp(min=1).long()
