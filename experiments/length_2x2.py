"""The length 2x2 of the paper checks (R4, R5, P8, D5): {1/|o| length normalisation, constant normaliser} x
{group std, no std}, plus DAPO's token mean, on a task where wrong completions have a free length.

Dr. GRPO (Liu et al. 2025) finds GRPO's wrong answers grow longer over training than Dr. GRPO's, and that the
growth follows the 1/|o| normalisation, not the std (App. C); DAPO's token-level loss gives less length growth
than the sample-level one. Under 1/|o| a wrong completion of |o| tokens is pushed down by |A|/|o| per token,
so long wrong ones lose probability slower than short ones; a constant normaliser (or the batch's token count)
pushes every completion of a group alike. That bias moves a length only where the length is free and tied to
correctness within a prompt (paper-claims.md R3's corollary): on plain arithmetic the wrong completions are
the warm start's slips, as long as right ones. So the sweep trains on arithmetic_rambling
(grpo/setup/tasks.py): a quarter of the warm start's demonstrations write the column sums 1-3 times and then a
wrong answer, so wrong completions start out anywhere from the bare columns to three passes long (18-55
tokens), longer than right ones on average. One level (2-digit sums): with a mix of levels the wrong
completions' length would also move with which level stays wrong.

Evaluation samples 16 completions per held-out prompt (the default), for D5's unbiased pass@16. No prompt
pool and no counterfactual gradients (experiments/std_norm.py's probes): the checks read only the step
metrics len/*, accuracy and the evals.
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.setup.config import TrainConfig

# arm -> (advantage, aggregation): the 2x2 and DAPO's token mean (each arm changes one knob from a neighbour).
ARM_SETTINGS = {"grpo": ("grpo", "seq_mean_token_mean"),            # std, 1/|o|
                "no_std": ("dr_grpo", "seq_mean_token_mean"),       # no std, 1/|o|
                "std_sum_norm": ("grpo", "seq_mean_token_sum_norm"),  # std, constant normaliser
                "dr_grpo": ("dr_grpo", "seq_mean_token_sum_norm"),  # no std, constant normaliser: Dr. GRPO
                "token_mean": ("grpo", "token_mean")}               # std, DAPO's token mean
base = TrainConfig(task="arithmetic_rambling", digits="2")
EXPERIMENT = Experiment(
    name="length_2x2",
    base=base,
    arms={arm: replace(base, advantage=a, aggregation=g) for arm, (a, g) in ARM_SETTINGS.items()},
    budget=f"prompts per step ({base.prompts_per_step}), group size ({base.group_size}) and steps",
    baseline="grpo",
    # Evals at 0, 20, 40: D5 reads the first and the last, the rest read step metrics.
    quick={"steps": 40, "eval_every": 20, "save_every": 20},
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
