"""A real pretrained model: SmolLM2-135M-Instruct (`--model smollm2-135m`, installed by `make smollm2`)
trained with GRPO and with Dr. GRPO's fix on word-problem additions ("What is 38+47?"), on the CPU.

The base is what `grpo train --model smollm2-135m` runs (TrainConfig.for_model: PRETRAINED_DEFAULTS), on
1-2 digit sums for 25 steps: the prompts go through the chat template with an instruction and one worked
example in the <think>/<answer> format, the reward is correct_extracted (the answer tag, else \\boxed{},
else the last number) plus half a point of format_if_correct (format_partial's credit, paid only with a
correct answer), at lr 1e-5, 4 prompts x G 8. Evaluation is greedy accuracy on 32 held-out problems and
pass@k from 8 samples on 32, at the start and the end; the training curves (reward, accuracy, format,
length) come from every step's own completions.

Measured before these defaults (2026-12-02/03: 4 prompts x G 4, lr 2e-5, format_partial at 0.5 ungated;
docs/2026-12-02-smollm2-first-runs.md and docs/2026-12-03-smollm2-bf16.md have the numbers): without the
worked example 81% of the step-1 groups had zero reward variance,
with it 6%; 33.6 min for the sweep in bf16 on 2 AVX512-BF16 cores (fp32: 51.6 min), a W3 step 57.5 s in
fp32 against 31.5 s in bf16. grpo's seed 0 learned the format hack (well-formed tags around any number
paid 0.5) while its held-out accuracy fell; format_if_correct pays that nothing. Not rerun since.

The gdpo arm (issue O; Liu et al. 2026, "GDPO: Group reward-Decoupled Normalization Policy Optimization")
normalises correct_extracted and format_if_correct within each group before summing them 1 : 0.5, instead of
normalising their sum; experiments/gdpo.py runs the same comparison on the tiny preset in minutes. Not run
on SmolLM2 yet (a W3-sized step is 30-60 s on these 2 cores).
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.setup.config import TrainConfig

base = TrainConfig.for_model(
    "smollm2-135m", task="arithmetic", steps=25, max_new_tokens=64,
    eval_prompts=32, eval_every=25, save_every=5, log_samples_every=5,
)
EXPERIMENT = Experiment(
    name="real_model",
    base=base,
    arms={
        "grpo": base,
        "dr_grpo": replace(base, advantage="dr_grpo", aggregation="seq_mean_token_sum_norm"),
        # GDPO: correctness and format normalised within the group each, then summed 1 : 0.5 (the base's
        # reward weights; format_partial's weight 0 adds nothing).
        "gdpo": replace(base, reward_normalization="normalize_then_sum"),
    },
    budget=f"completions per step ({base.num_completions}) and steps ({base.steps})",
    baseline="grpo",
    seeds=2,
    quick={"steps": 3, "eval_every": 3, "save_every": 3, "eval_prompts": 8},
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
