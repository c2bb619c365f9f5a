"""Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like Training: A Critical Perspective"):
does dividing advantages by the group std, and normalising the loss by each completion's length,
bias training? The std removal and the aggregation change are separate arms (frameworks couple them
or split them inconsistently; verl PR #990).
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.setup.config import TrainConfig

# The probes are on: a pool of 256 fixed problems (prompts recur, so the per-prompt ledger has histories)
# and, every 10 steps, the gradient each arm's setting would take on the run's own rollouts (one
# alternative per arm, named in full, so every arm is compared with the same four: an arm x arm heatmap).
ARM_SETTINGS = {"grpo": ("grpo", "seq_mean_token_mean"), "no_std": ("dr_grpo", "seq_mean_token_mean"),
                "dr_grpo": ("dr_grpo", "seq_mean_token_sum_norm"), "token_mean": ("grpo", "token_mean")}
base = TrainConfig(prompt_pool=256, counterfactual_every=10,
                   counterfactuals=",".join(f"advantage={a}+aggregation={g}" for a, g in ARM_SETTINGS.values()))
EXPERIMENT = Experiment(
    name="std_norm",
    base=base,
    # grpo: group std + seq_mean_token_mean; no_std: the std removed; dr_grpo: the full fix (no std,
    # seq_mean_token_sum_norm); token_mean: group std + DAPO's token mean.
    arms={arm: replace(base, advantage=a, aggregation=g) for arm, (a, g) in ARM_SETTINGS.items()},
    budget=f"prompts per step ({base.prompts_per_step}), group size ({base.group_size}) and steps",
    baseline="grpo",
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
