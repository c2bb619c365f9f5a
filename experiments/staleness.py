"""Stale rollouts (issue O): step s samples with the weights the learner had k optimizer steps earlier (a
copy kept k steps behind, synced through the sampler, as an asynchronous pipeline would: prime-rl runs one
step off-policy by default, TRL's async GRPO bounds it with max_staleness), k in {0, 1, 2, 4}, each with and
without TRL's token_truncate IS correction (the weight pi_old/pi_rollout per token, clamped at 2).

  k<k>           staleness k, no correction: the learner's pi_old, the lag ignored
  k<k>_truncate  staleness k + --rollout-is token_truncate

k0 is on-policy (bit for bit the run without the flag) and its truncate arm isolates what the correction
does when there is nothing to correct (its weights are 1 to float rounding: the sampler's log-probs come from
the decode loop, pi_old from the learner's forward, and the two round differently). One optimizer step per
GRPO step (one mini-batch, one epoch), so k counts GRPO steps and the lag is k updates of lr 1e-4; the ratio pi_theta/pi_old
is then 1 at the update, so the lag acts only through the rollouts' distribution and the IS weight.
mismatch/* (k3, ess, truncated fraction) measures the lag's size; staleness/policy_lag logs it per step
(0 for the first k steps, when no older weights exist yet).

Holds fixed: prompts and completions per step and steps. The tiny preset on arithmetic, 16 prompts x 8.
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.setup.config import TrainConfig

STALENESS = (0, 1, 2, 4)
base = TrainConfig()
arms = {}
for k in STALENESS:
    arms[f"k{k}"] = replace(base, staleness=k)
    arms[f"k{k}_truncate"] = replace(base, staleness=k, rollout_is="token_truncate")
EXPERIMENT = Experiment(
    name="staleness",
    base=base,
    arms=arms,
    budget=f"prompts per step ({base.prompts_per_step}) x group size ({base.group_size}), one optimizer "
           "step per GRPO step, and steps",
    baseline="k0",
    knob="staleness",
    departures={f"k{k}_truncate": "C_max 2 (verl's threshold) where TRL's default is 3" for k in STALENESS},
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
