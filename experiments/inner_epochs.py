"""Inner epochs mu over the same rollouts (PPO-style reuse; the seed notebook used 10): more updates
per sample, at the price of drift from pi_old that the clip has to contain. Per-epoch clip fractions
and KL from pi_old show that drift.

  mu1, mu2, mu4     clip at 0.2 / 0.2, one mini-batch, 1, 2 or 4 passes over each step's rollouts
  mu2_clip_higher   mu2 with DAPO's clip-higher, clip_eps_high 0.28 (paper-claims P5)
  mu2_gspo          mu2 with GSPO's sequence ratio at its paper's eps, 3e-4 / 4e-4 (clip_eps_low /
                    clip_eps_high; paper-claims Q1)

The clip bounds act only where the ratio has left 1, i.e. off-policy. The two mu2 variants get their
off-policy updates from the second inner epoch (mu = 2, one mini-batch: the first pass is at ratio 1, the
second at the weights the first moved), not from several mini-batches, so they share mu2's rollouts
budget and compare with mu2 directly; their clip fractions are means over both passes, half of them on-policy.
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.setup.config import TrainConfig

base = TrainConfig()
mu2 = replace(base, inner_epochs=2)
EXPERIMENT = Experiment(
    name="inner_epochs",
    base=base,
    arms={**{f"mu{mu}": replace(base, inner_epochs=mu) for mu in (1, 2, 4)},
          "mu2_clip_higher": replace(mu2, clip_eps_high=0.28),
          "mu2_gspo": replace(mu2, objective="gspo", clip_eps_low=3e-4, clip_eps_high=4e-4)},
    budget=f"rollouts: prompts per step ({base.prompts_per_step}), group size ({base.group_size}) and steps",
    baseline="mu1",
    knob="inner_epochs",
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
