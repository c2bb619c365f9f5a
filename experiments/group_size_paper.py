"""The group_size sweep of the paper checks (G2-G5): G = 2, 4, 8, 16 at 64 completions per step, as
experiments.group_size, on a base with two additions the claims need:

- a prompt pool of 128 problems (--prompt-pool), so prompts recur and the ledger can see whether a
  zero-variance group stays one at the prompt's next visit (G5, GRESO's persistence; G8 revisits a prompt
  every 16 steps);
- 16 extra completions per prompt at the first step, from a random stream of their own
  (--zero-var-extra-samples), for the unbiased per-prompt E[q^G + (1-q)^G] (G2); the run is otherwise
  exactly as without them.
Holds completions per step (64 = prompts x G) and steps fixed.
"""

import dataclasses
from dataclasses import replace

from experiments import group_size
from experiments.sweep import main

PROMPT_POOL = 128
EXTRA_SAMPLES = 16          # >= the largest G (16), so every arm gets an unbiased estimate (G2: 512 extra)
ADDED = dict(prompt_pool=PROMPT_POOL, zero_var_extra_samples=EXTRA_SAMPLES)
EXPERIMENT = dataclasses.replace(
    group_size.EXPERIMENT, base=replace(group_size.EXPERIMENT.base, **ADDED),
    arms={arm: replace(cfg, **ADDED) for arm, cfg in group_size.EXPERIMENT.arms.items()})

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
