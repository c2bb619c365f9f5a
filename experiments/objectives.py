"""The objective zoo: GRPO's clipped ratio against every published variant grpo-lab implements, on the
same rollouts budget. Each arm is its paper's method as the paper defines it: the objective, and the
advantage estimator, aggregation, clip values and KL term the paper pairs it with.

  clip     GRPO (Shao et al. 2024): std-normalised advantage, PPO clip 0.2, seq_mean_token_mean, k3 KL
           to the reference at beta 0.04
  dapo     DAPO (Yu et al. 2025), as the dapo ladder's last rung (every row of its table 1): overlong
           filtering, clip-higher 0.2 / 0.28, soft overlong punishment (a fifth of the length budget, as the
           paper's 4096 of 20480), token_mean, dynamic sampling, no KL term
  dr_grpo  Dr. GRPO (Liu et al. 2025): no std in the advantage, seq_mean_token_sum_norm (the constant
           max length), no KL term
  gspo     GSPO (Zheng et al. 2025): sequence ratio clipped at the paper's 3e-4 / 4e-4, sequence mean, no KL
  cispo    CISPO (MiniMax-M1 2025): clipped IS weight on REINFORCE, token_mean, no lower bound, no KL
  sapo     SAPO (Gao et al. 2025): soft gate, tau 1.0 / 1.05, seq_mean_token_mean, no KL
  gmpo     GMPO (Zhao et al. 2025): geometric mean ratio, log-space clip at the paper's 0.4, no KL
  gpg      GPG (Chu et al. 2025): -A logp with the GPG advantage (group mean out, no std, rescaled by
           the share of groups with signal), token_mean (the paper's 1 / sum |o_i|), no KL, no clip

Departures from the papers, by arm (also in EXPERIMENT.departures, and so in sweep.json and the report):
  dapo   dynamic sampling gives up after --max-resample-rounds 4 and fills the batch with zero-variance
         groups, where the paper samples until every group has signal
  cispo  the IS weight is bounded below at 0.01 (--clip-eps-low must be < 1) instead of not at all; its
         upper bound 0.28 is our choice (DAPO's clip-higher), not a value taken from the paper
  gpg    it shares the 4 mini-batches: from the second on, -A logp follows rollouts of an older policy
         with no ratio to correct for it
and for every arm: a tiny model on arithmetic, 16 prompts x 8 completions a step.

With one inner epoch and one mini-batch every update is on-policy (ratio = 1) and most objectives give
the same gradient, so the base takes 4 mini-batches per step: from the second optimizer step on the
ratio moves and the objectives differ. Every arm draws the same prompts per seed (dapo's extra
dynamic-sampling rounds come from their own generator, so it generates more completions: compare it
on the samples axis, `--x samples`).
"""

from dataclasses import replace

from experiments.dapo import EXPERIMENT as DAPO_LADDER
from experiments.sweep import Experiment, main
from grpo.setup.config import TrainConfig

base = TrainConfig(mini_batches=4)
NO_KL = dict(kl_beta=0.0)
# DAPO as its ladder's last rung defines it (table 1, every component), on this experiment's base.
DAPO = DAPO_LADDER.arms["dynamic"]
EXPERIMENT = Experiment(
    name="objectives",
    base=base,
    arms={
        "clip": base,
        "dapo": DAPO,
        "dr_grpo": replace(base, advantage="dr_grpo", aggregation="seq_mean_token_sum_norm", **NO_KL),
        "gspo": replace(base, objective="gspo", clip_eps_low=3e-4, clip_eps_high=4e-4, **NO_KL),
        "cispo": replace(base, objective="cispo", clip_eps_low=0.99, clip_eps_high=0.28, aggregation="token_mean",
                         **NO_KL),
        "sapo": replace(base, objective="sapo", sapo_tau_pos=1.0, sapo_tau_neg=1.05, **NO_KL),
        "gmpo": replace(base, objective="gmpo", clip_eps_low=0.4, clip_eps_high=0.4, **NO_KL),
        "gpg": replace(base, objective="gpg", advantage="gpg", aggregation="token_mean", **NO_KL),
    },
    budget=f"prompts per step ({base.prompts_per_step}), group size ({base.group_size}), "
           f"{base.mini_batches} mini-batches and steps (dapo generates more: see samples)",
    baseline="clip",
    knob="objective",
    departures={
        "dapo": DAPO_LADDER.departures["dynamic"],
        "cispo": "IS weight bounded below at 0.01 (paper: no lower bound); upper bound 0.28 is ours (DAPO's)",
        "gpg": "4 mini-batches: later ones follow -A logp off-policy with no ratio to correct it",
    },
)

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
