"""Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like Training: A Critical Perspective"):
does dividing advantages by the group std, and normalising the loss by each completion's length,
bias training? The std removal and the aggregation change are separate arms (frameworks couple them
or split them inconsistently; verl PR #990).
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.config import TrainConfig

base = TrainConfig()
EXPERIMENT = Experiment(
    name="std_norm",
    base=base,
    arms={
        "grpo": base,                                                     # group std + seq_mean_token_mean
        "no_std": replace(base, advantage="dr_grpo"),                     # no std, seq_mean_token_mean
        "dr_grpo": replace(base, advantage="dr_grpo", aggregation="seq_mean_token_sum_norm"),  # the full fix
        "token_mean": replace(base, aggregation="token_mean"),            # group std + DAPO's token mean
    },
    budget=f"prompts per step ({base.prompts_per_step}), group size ({base.group_size}) and steps",
    baseline="grpo",
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
