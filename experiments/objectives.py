"""The objective zoo: GRPO's clipped ratio against every published variant grpo-lab implements, on the
same rollouts budget. Each arm changes the objective (and only what its paper changes with it):

  clip     GRPO (Shao et al. 2024): PPO clip at 0.2, seq_mean_token_mean
  dapo     DAPO (Yu et al. 2025): clip-higher 0.28, token_mean, overlong filtering, dynamic sampling
  dr_grpo  Dr. GRPO (Liu et al. 2025): no std in the advantage, seq_mean_token_sum_norm
  gspo     GSPO (Zheng et al. 2025): sequence ratio clipped at the paper's 3e-4 / 4e-4
  cispo    CISPO (MiniMax-M1 2025): clipped IS weight on REINFORCE, no lower bound (eps_low 0.99)
  sapo     SAPO (Gao et al. 2025): soft gate, tau 1.0 / 1.05
  gmpo     GMPO (Zhao et al. 2025): geometric mean ratio, log-space clip at the paper's 0.4
  gpg      GPG (Chu et al. 2025): plain policy gradient -A logp

With one inner epoch and one mini-batch every update is on-policy (ratio = 1) and most objectives give
the same gradient, so the base takes 4 mini-batches per step: from the second optimizer step on the
ratio moves and the objectives differ. Every arm draws the same prompts per seed (dapo's extra
dynamic-sampling rounds come from their own generator, so it generates more completions: compare it
on the samples axis, `--x samples`).
"""

from dataclasses import replace

from experiments.sweep import Experiment, main
from grpo.config import TrainConfig

base = TrainConfig(mini_batches=4)
EXPERIMENT = Experiment(
    name="objectives",
    base=base,
    arms={
        "clip": base,
        "dapo": replace(base, clip_eps_high=0.28, aggregation="token_mean", mask_truncated=True,
                        dynamic_sampling=True),
        "dr_grpo": replace(base, advantage="dr_grpo", aggregation="seq_mean_token_sum_norm"),
        "gspo": replace(base, objective="gspo", clip_eps_low=3e-4, clip_eps_high=4e-4),
        "cispo": replace(base, objective="cispo", clip_eps_low=0.99, clip_eps_high=0.28, aggregation="token_mean"),
        "sapo": replace(base, objective="sapo"),
        "gmpo": replace(base, objective="gmpo", clip_eps_low=0.4, clip_eps_high=0.4),
        "gpg": replace(base, objective="gpg"),
    },
    budget=f"prompts per step ({base.prompts_per_step}), group size ({base.group_size}), "
           f"{base.mini_batches} mini-batches and steps (dapo generates more: see samples)",
    baseline="clip",
    knob="objective",
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
