"""Inner epochs mu over the same rollouts (PPO-style reuse; the seed notebook used 10): more updates
per sample, at the price of drift from pi_old that the clip has to contain. Per-epoch clip fractions
and KL from pi_old show that drift.
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.setup.config import TrainConfig

base = TrainConfig()
EXPERIMENT = Experiment(
    name="inner_epochs",
    base=base,
    arms={f"mu{mu}": replace(base, inner_epochs=mu) for mu in (1, 2, 4)},
    budget=f"rollouts: prompts per step ({base.prompts_per_step}), group size ({base.group_size}) and steps",
    baseline="mu1",
    knob="inner_epochs",
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
