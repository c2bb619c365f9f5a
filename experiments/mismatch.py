"""Sampler-learner precision mismatch (issue O): the rollouts drawn in bf16, the learner scoring in fp32,
with each of the corrections the big trainers ship for it, against an fp32 run with no mismatch.

  fp32            rollouts in fp32: the sampler is the learner (baseline; no mismatch to correct)
  bf16            rollouts in bf16, no correction: pi_old is the learner's, the bf16 gap is ignored
  token_truncate  bf16 + per-token IS weight pi_old/pi_rollout clamped at 2 (TRL's
                  vllm_importance_sampling_correction, token_truncate mode; verl's token-level TIS
                  threshold 2; TRL's own default C_max is 3)
  sequence_mask   bf16 + the sequence's weight (the product over its tokens) zeroing completions outside
                  [0, 2] (TRL's sequence_mask mode; verl's sequence-level mask)
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
A tiny model's bf16 gap is small (bf16 keeps 8 bits of mantissa; the logits of a 2-layer model round
little), so the question at this scale is whether the gap is large enough for any correction to act:
the masked and truncated fractions say how often each did.

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
        "sequence_mask": "bounds [0, 2] on the sequence weight (TRL's sequence modes default to [0, 3])",
        "icepop": "a 2-layer preset model and bf16 rounding only, where the paper's gap comes from an MoE "
                  "inference engine",
    },
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
