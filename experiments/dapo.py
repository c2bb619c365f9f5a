"""DAPO's ladder (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
table 1): GRPO, then one component added per arm, each arm keeping the ones before it.

  baseline        GRPO: clip 0.2, seq_mean_token_mean
  clip_higher     + clip-higher: eps_high 0.28 (room for low-probability tokens to grow)
  overlong        + soft overlong punishment: the last 8 tokens before max-new-tokens cost up to 1
  token_level     + token-level loss (token_mean): long completions weigh by their tokens
  dynamic         + dynamic sampling: zero-variance groups replaced by fresh prompts

Four mini-batches per step, so the ratio (and with it clip-higher) acts after the first optimizer
step. Dynamic sampling generates more completions per step: the report compares the arms at matched
generated samples (x axis: samples).
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.config import TrainConfig

base = TrainConfig(mini_batches=4)
clip_higher = replace(base, clip_eps_high=0.28)
overlong = replace(clip_higher, overlong_buffer=8, overlong_penalty=1.0)
token_level = replace(overlong, aggregation="token_mean")
EXPERIMENT = Experiment(
    name="dapo",
    base=base,
    arms={
        "baseline": base,
        "clip_higher": clip_higher,
        "overlong": overlong,
        "token_level": token_level,
        "dynamic": replace(token_level, dynamic_sampling=True),
    },
    budget="generated samples (the report's x axis); prompts per step and steps are equal, so the dynamic "
           "arm spends more samples per step",
    baseline="baseline",
    report_x="samples",
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
