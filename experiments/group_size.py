"""Group size G at a fixed number of completions per step (prompts x G constant): larger groups give
a better baseline and fewer zero-variance groups (expected share p^G + (1-p)^G) but fewer prompts.
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.setup.config import TrainConfig

COMPLETIONS_PER_STEP = 64
base = TrainConfig()
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
