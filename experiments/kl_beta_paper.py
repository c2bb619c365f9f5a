"""The kl_beta sweep of the paper checks (K5, B2): beta = 0, 1e-3, 1e-2, 1e-1 with k3 in the loss, as
experiments.kl_beta, except that every arm builds the reference (--kl-reference), so the beta = 0 arm logs
kl/* (and the per-token kl/k1_token_std, kl/k3_token_std) without any penalty: B2 needs its KL's growth and
K5 the stds near the reference. Holds prompts per step, group size and steps fixed.
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.setup.config import TrainConfig

base = TrainConfig(kl_estimator="k3", kl_reference=True)
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
