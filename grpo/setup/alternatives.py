"""The alternatives of --counterfactuals (grpo/algorithm/counterfactual.py): which fields they may change, the
config of each, and the ones refused, all checked when the config is built.

An alternative is the run's config with one field changed (several joined by '+'), e.g.
`advantage=dr_grpo,aggregation=token_mean+objective=gspo`: two alternatives.

Refused when the config is built (one line each, `grpo: error: ...`):
  - with one update per step, a change that gives the same gradient at ratio 1 (`inert_at_ratio_one`);
  - a KL change (kl_beta, kl_estimator) when the run's kl_beta is 0: no reference model is built;
  - a KL change under --kl-placement reward: the KL there shapes the reward before the advantage, and
    the probe reuses the run's shaped reward, so it would not reach the alternative's gradient.
"""

from __future__ import annotations

import dataclasses

from grpo import GrpoError
from grpo.formulas.losses import LossSettings
from grpo.setup.flags import parse_flags

# The fields an alternative may change: those that act on advantages or the loss of fixed rollouts, i.e.
# every setting of policy_loss (LossSettings), the advantage estimator and the loss's token mask.
LOSS_FIELDS = frozenset(field.name for field in dataclasses.fields(LossSettings)) | {
    "advantage", "adv_eps", "mask_truncated"}
# Below, subsets of LossSettings's fields (tests/test_loss_settings.py checks).
# Fields that act on the loss only through the ratio r: at r = 1 no clip bound is reached (eps > 0,
# dual_clip > 1, delta > 1 + eps_high), SAPO's gate weighs every token 4 s (1 - s) = 1 whatever tau, and
# KL-Cov's |log r| has zero gradient (torch's sign(0) = 0).
RATIO_FIELDS = frozenset({"clip_eps_low", "clip_eps_high", "dual_clip", "delta", "sapo_tau_pos", "sapo_tau_neg",
                          "kl_cov_ratio", "kl_cov_coef"})
# Which tokens clip_cov detaches, at any ratio; no other objective reads them.
CLIP_COV_FIELDS = frozenset({"clip_cov_ratio", "clip_cov_lb", "clip_cov_ub"})
KL_FIELDS = frozenset({"kl_beta", "kl_estimator"})


def parse_alternatives(spec: str) -> list[tuple[str, dict[str, str]]]:
    """'advantage=dr_grpo,aggregation=token_mean+objective=gspo' -> [(name, {field: text value}), ...]."""
    alternatives = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        changes = {}
        for change in item.split("+"):
            field, sep, value = change.partition("=")
            field = field.strip().replace("-", "_")
            if not sep or not value.strip():
                raise GrpoError(f"--counterfactuals: {change!r} is not field=value")
            if field not in LOSS_FIELDS:
                raise GrpoError(f"--counterfactuals: {field!r} cannot change on fixed rollouts; choose from "
                                f"{', '.join(sorted(LOSS_FIELDS))}")
            changes[field] = value.strip()
        alternatives.append((item, changes))
    return alternatives


def alternative_configs(cfg) -> list[tuple[str, object]]:
    """(name, config) of each alternative: the run's config with the named fields changed (validated)."""
    # type(cfg) is TrainConfig, named without importing grpo.setup.config (which imports this module).
    # The alternatives carry no alternatives of their own (their configs would check them again, forever).
    base = dataclasses.replace(cfg, counterfactuals="", counterfactual_every=0)
    out = []
    for name, changes in parse_alternatives(cfg.counterfactuals):
        flags = [arg for field, value in changes.items() for arg in (f"--{field.replace('_', '-')}", value)]
        out.append((name, parse_flags(type(cfg), flags, "--counterfactuals", default=base)))
    return out


def on_policy_objective(cfg) -> str:
    """The objective whose gradient cfg's objective takes at ratio 1. There every objective's policy term
    has clip's gradient, -A grad logp per token (gspo's s_i, cispo's weight, sapo's gate factor are 1;
    gmpo's geometric mean spreads -A_i over a sequence's tokens as the aggregation does), except
    clip_cov's, which detaches its selected tokens, and gmpo's under a top-entropy selection: its
    sequence value averages the kept tokens only, so each weighs |o_i| / |kept_i| times clip's."""
    if cfg.objective == "clip_cov" or (cfg.objective == "gmpo" and cfg.top_entropy_quantile < 1):
        return cfg.objective
    return "clip"


def inert_at_ratio_one(run, alternative, field: str) -> bool:
    """Whether `alternative`'s value of `field` gives the gradient the run's value would give (the
    alternative's other fields as they are) wherever the ratio is 1."""
    if field in RATIO_FIELDS:
        return True
    if field in CLIP_COV_FIELDS:
        return alternative.objective != "clip_cov"
    if field == "objective":
        reverted = dataclasses.replace(alternative, objective=run.objective)
        return on_policy_objective(alternative) == on_policy_objective(reverted)
    return False


def check_alternatives(cfg) -> None:
    """Raise a one-line GrpoError for an alternative of cfg.counterfactuals that cannot be compared
    (see the module docstring); called when the config is built (TrainConfig.__post_init__)."""
    updates = cfg.inner_epochs * cfg.mini_batches
    for (_, changes), (_, alternative) in zip(parse_alternatives(cfg.counterfactuals), alternative_configs(cfg)):
        for field, value in changes.items():
            change = f"{field}={value}"
            if field in KL_FIELDS and cfg.kl_beta == 0:
                raise GrpoError(f"--counterfactuals: {change} needs the reference model, which a run with "
                                f"--kl-beta 0 does not build")
            if field in KL_FIELDS and cfg.kl_placement == "reward":
                raise GrpoError(f"--counterfactuals: {change} would reshape the reward under --kl-placement "
                                f"reward, and the probe reuses the run's shaped reward; compare KL settings under "
                                f"--kl-placement loss")
            if (updates == 1 and getattr(alternative, field) != getattr(cfg, field)
                    and inert_at_ratio_one(cfg, alternative, field)):
                raise GrpoError(f"--counterfactuals: {change} gives the same gradient as {field}={getattr(cfg, field)} "
                                f"at ratio 1; with one update per step every ratio is 1 (set --mini-batches or "
                                f"--inner-epochs > 1)")
