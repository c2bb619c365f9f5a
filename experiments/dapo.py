"""DAPO's ladder (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
table 1): GRPO, then one component added per arm, each arm keeping the ones before it, in the table's order.

  baseline         GRPO: clip 0.2, seq_mean_token_mean, std-normalised advantage
  overlong_filter  + overlong filtering: truncated completions carry no loss
  clip_higher      + clip-higher: eps_high 0.28 (room for low-probability tokens to grow)
  overlong         + soft overlong punishment: within the last 13 tokens before max-new-tokens the reward
                   falls linearly to -1 (the paper's L_cache = 4096 of L_max = 20480: the same fifth)
  token_level      + token-level loss (token_mean): long completions weigh by their tokens
  dynamic          + dynamic sampling: zero-variance groups replaced by fresh prompts

No arm has a KL term: DAPO removes it (its section 2.3), so it is off on every rung, the baseline
included, and each rung differs from the one before by its component alone.

Departures from the paper (also in EXPERIMENT.departures, and so in sweep.json and the report):
  dynamic  dynamic sampling gives up after --max-resample-rounds 4 and fills the batch with
           zero-variance groups, where the paper samples until every group has signal
and for every arm: a tiny model on arithmetic, 16 prompts x 8 completions a step.

Four mini-batches per step, so the ratio (and with it clip-higher) acts after the first optimizer
step. Dynamic sampling generates more completions per step: the report compares the arms at matched
generated samples (x axis: samples).
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.setup.config import TrainConfig

base = TrainConfig(mini_batches=4, kl_beta=0.0)
# The soft overlong punishment starts L_cache = 4096 tokens before L_max = 20480 (section 4.1): a fifth.
OVERLONG_BUFFER = round(base.max_new_tokens * 4096 / 20480)
overlong_filter = replace(base, mask_truncated=True)
clip_higher = replace(overlong_filter, clip_eps_high=0.28)
overlong = replace(clip_higher, overlong_buffer=OVERLONG_BUFFER, overlong_penalty=1.0)
token_level = replace(overlong, aggregation="token_mean")
EXPERIMENT = Experiment(
    name="dapo",
    base=base,
    arms={
        "baseline": base,
        "overlong_filter": overlong_filter,
        "clip_higher": clip_higher,
        "overlong": overlong,
        "token_level": token_level,
        "dynamic": replace(token_level, dynamic_sampling=True),
    },
    budget="generated samples (the report's x axis); prompts per step and steps are equal, so the dynamic "
           "arm spends more samples per step",
    baseline="baseline",
    report_x="samples",
    departures={
        "dynamic": "dynamic sampling stops after 4 rounds and fills with zero-variance groups (paper: until full)",
    },
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
