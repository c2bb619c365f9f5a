"""Entropy collapse and its remedies: the sampling entropy falls as RL sharpens the policy; these arms
try to keep it up (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs"; Wang et al. 2025,
"Beyond the 80/20 Rule").

  baseline     GRPO
  bonus        entropy bonus: -0.01 * the learner's token entropy in the token loss
  kl_cov       |log ratio| penalty on the top 1% of tokens by Cov(A, logp)
  clip_cov     0.1% of the tokens with Cov(A, logp) in (1, 5) detached
  top_entropy  the policy term only on the 20% of tokens with the highest sampling entropy

KL-Cov's penalty has no gradient at ratio 1, so the base takes 4 mini-batches per step (as the
paper's off-policy updates do). The selection shares are raised from the paper's (0.2%, 0.02% of
batches of millions of tokens) to 1% and 0.1%, so a few thousand tokens per step select any.
The report shows entropy curves over generated samples.
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.setup.config import TrainConfig

base = TrainConfig(mini_batches=4)
EXPERIMENT = Experiment(
    name="entropy",
    base=base,
    arms={
        "baseline": base,
        "bonus": replace(base, entropy_coef=0.01),
        "kl_cov": replace(base, objective="kl_cov", kl_cov_ratio=0.01),
        "clip_cov": replace(base, objective="clip_cov", clip_cov_ratio=0.001),
        "top_entropy": replace(base, top_entropy_quantile=0.2),
    },
    budget=f"prompts per step ({base.prompts_per_step}), group size ({base.group_size}), "
           f"{base.mini_batches} mini-batches and steps",
    baseline="baseline",
    report_x="samples",
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
