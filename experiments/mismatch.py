"""Sampler-learner precision mismatch (issue O): the rollouts drawn in bf16, the learner scoring in fp32,
with each of the corrections the big trainers ship for it, against an fp32 run with no mismatch.

  fp32            rollouts in fp32: the sampler is the learner (baseline; no mismatch to correct)
  bf16            rollouts in bf16, no correction: pi_old is the learner's, the bf16 gap is ignored
  token_truncate  bf16 + per-token IS weight pi_old/pi_rollout clamped at 2 (TRL's
                  vllm_importance_sampling_correction, token_truncate mode; verl's token-level TIS
                  threshold 2; TRL's own default C_max is 3)
  sequence_mask   bf16 + the sequence's weight (the product over its tokens) zeroing completions whose
                  weight exceeds 2 (TRL's sequence_mask mode; verl's sequence-level mask)
  icepop          bf16 + IcePop's two-sided token mask: tokens whose weight leaves [0.5, 5] carry no
                  gradient (Ling team, "Every Step Evolves: Scaling RL for Trillion-Scale Thinking Model",
                  Ring-1T, 2025)
  bypass          bf16 + --old-logp sampler: pi_old is the sampler's own log-probs (verl's bypass mode), so
                  the clip measures the ratio against the policy that drew the tokens and absorbs the gap

Why four mini-batches: with one update per step the ratio pi_theta/pi_old is 1 at that update and the
clip never acts, so bypass would differ from the bf16 arm only in the first update's gradient scale. With
four optimizer steps per GRPO step the ratio moves after the first, the clip acts, and clipping against
the sampler's log-probs (bypass) and against the learner's (the others) are different losses. The IS
weights do not depend on the mini-batches: they compare pi_old with pi_rollout, fixed for the step.

The mismatch/* metrics (grpo/formulas/offpolicy.py) are logged by every bf16 arm except bypass, which never
forms pi_old from the learner (nothing to compare); the fp32 arm logs none (its sampler is the learner).
bf16 keeps 8 significant bits, so the gap is real rounding, but on the tiny preset it is small (the quick
runs of 2026-12-06: k3 ~4e-5 a token, the largest weight of a step ~1.2; docs/2026-12-06-offpolicy-experiments.md):
the question at this scale is whether the gap is large enough for any correction to act, and the masked and
truncated fractions say how often each did.

Holds fixed: prompts and completions per step, mini-batches and steps. Every arm: the tiny preset on
arithmetic, 16 prompts x 8 completions a step, a warm start shared by all arms.
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.setup.config import TrainConfig

base = TrainConfig(mini_batches=4, rollout_dtype="bf16")
EXPERIMENT = Experiment(
    name="mismatch",
    base=base,
    arms={
        "fp32": replace(base, rollout_dtype="fp32"),
        "bf16": base,
        "token_truncate": replace(base, rollout_is="token_truncate"),
        "sequence_mask": replace(base, rollout_is="sequence_mask"),
        "icepop": replace(base, rollout_is="icepop"),
        "bypass": replace(base, old_logp="sampler"),
    },
    budget=f"prompts per step ({base.prompts_per_step}) x group size ({base.group_size}), "
           f"{base.mini_batches} mini-batches per step, and steps",
    baseline="fp32",
    knob="rollout_is",
    departures={
        "token_truncate": "C_max 2 (verl's threshold) where TRL's default is 3",
        "sequence_mask": "upper bound 2 on the sequence weight (verl's threshold) where TRL's default cap is 3",
        "icepop": "the tiny preset and bf16 rounding only, where the paper's gap comes from an MoE model "
                  "and its inference engine",
    },
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
