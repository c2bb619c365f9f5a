"""GDPO's multi-reward normalisation (Liu et al. 2026, "GDPO: Group reward-Decoupled Normalization Policy
Optimization") on the tiny preset: two reward functions, correctness and the answer-tag format, weighted
1 : 0.5 as the real-model runs weight correctness and format (PRETRAINED_DEFAULTS: correct_extracted 1.0,
format_if_correct 0.5; experiments/real_model.py has the same arm on SmolLM2-135M).

  sum_then_normalize  the weighted rewards summed, then GRPO's group normalisation (baseline)
  normalize_then_sum  GDPO: each reward normalised within its group, summed with its weight, then
                      normalised over the batch, so a completion right but badly formatted and one
                      well formatted but wrong no longer get the same advantage when the weights are equal

The preset's strict `format` reward stands in for format_if_correct: a preset's tokenizer has no chat
template and no prose answers to extract from, so correct and format are the rewards it has.

Holds fixed: prompts and completions per step and steps. The tiny preset on arithmetic, 16 prompts x 8.
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.setup.config import TrainConfig

base = TrainConfig(reward_weights={"correct": 1.0, "format": 0.5})
EXPERIMENT = Experiment(
    name="gdpo",
    base=base,
    arms={
        "sum_then_normalize": base,
        "normalize_then_sum": replace(base, reward_normalization="normalize_then_sum"),
    },
    budget=f"prompts per step ({base.prompts_per_step}) x group size ({base.group_size}) and steps",
    baseline="sum_then_normalize",
    knob="reward_normalization",
    departures={"normalize_then_sum": "the strict format reward in place of format_if_correct (a preset has "
                                      "no prose answers); the paper's models and tasks are far larger"},
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
