"""The demo: a quick cut across the ablations that runs on 2 CPU cores in under 10 minutes and ends
with the analysis report. Arms: GRPO (baseline), Dr. GRPO's full fix, a smaller group at the same
completions per step, and no KL penalty; 3 seeds each.
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.config import TrainConfig

base = TrainConfig(steps=80, eval_every=20, save_every=20, log_samples_every=20)
EXPERIMENT = Experiment(
    name="demo",
    base=base,
    arms={
        "grpo": base,
        "dr_grpo": replace(base, advantage="dr_grpo", aggregation="seq_mean_token_sum_norm"),
        "G4": replace(base, group_size=4, prompts_per_step=base.prompts_per_step * 2),
        "beta0": replace(base, kl_beta=0.0),
    },
    budget=f"completions per step ({base.num_completions}) and steps ({base.steps})",
    baseline="grpo",
    seeds=3,
    quick={"steps": 20, "eval_every": 10},
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
