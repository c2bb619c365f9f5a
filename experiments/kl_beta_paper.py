"""The kl_beta sweep of the paper checks (K5, B2): beta = 0, 1e-3, 1e-2, 1e-1 with k3 in the loss, as
experiments.kl_beta, except that every arm builds the reference (--kl-reference), so the beta = 0 arm logs
kl/* (and the per-token kl/k1_token_std, kl/k3_token_std) without any penalty: B2 needs its KL's growth and
K5 the stds near the reference. Holds prompts per step, group size and steps fixed.
"""

import dataclasses
from dataclasses import replace

from experiments import kl_beta
from experiments.sweep import main

EXPERIMENT = dataclasses.replace(
    kl_beta.EXPERIMENT, base=replace(kl_beta.EXPERIMENT.base, kl_reference=True),
    arms={arm: replace(cfg, kl_reference=True) for arm, cfg in kl_beta.EXPERIMENT.arms.items()})

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
