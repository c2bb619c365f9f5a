"""KL penalty weight beta with k3 in the loss (GRPO paper, Shao et al. 2024, uses 0.04; DAPO and
Dr. GRPO drop it). The beta = 0 arm never builds a reference model; all arms log k1, k2, k3 where a
reference exists, so their KL shares a scale.
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.setup.config import TrainConfig

base = TrainConfig(kl_estimator="k3")
EXPERIMENT = Experiment(
    name="kl_beta",
    base=base,
    arms={f"beta{beta:g}": replace(base, kl_beta=beta) for beta in (0.0, 1e-3, 1e-2, 1e-1)},
    budget=f"prompts per step ({base.prompts_per_step}), group size ({base.group_size}) and steps",
    baseline="beta0",
    knob="kl_beta",
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
