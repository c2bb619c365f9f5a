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

from dataclasses import replace

from experiments.group_size import COMPLETIONS_PER_STEP
from experiments.sweep import Experiment, main
from grpo.setup.config import TrainConfig

PROMPT_POOL = 128
EXTRA_SAMPLES = 16          # >= the largest G (16), so every arm gets an unbiased estimate (G2: 512 extra)
base = TrainConfig(prompt_pool=PROMPT_POOL, zero_var_extra_samples=EXTRA_SAMPLES)
EXPERIMENT = Experiment(
    name="group_size",
    base=base,
    arms={f"G{g}": replace(base, group_size=g, prompts_per_step=COMPLETIONS_PER_STEP // g) for g in (2, 4, 8, 16)},
    budget=f"completions per step ({COMPLETIONS_PER_STEP} = prompts x G) and steps",
    baseline="G8",
    knob="group_size",
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
