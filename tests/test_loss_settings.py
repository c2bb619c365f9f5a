"""The loss's settings are declared once, in losses.LossSettings (objectives.ObjectiveParams the objectives'
part of it): TrainConfig holds a field of each name (default, --help), update.loss_settings copies them by
name, the counterfactual's LOSS_FIELDS are derived from them, and no setting reaches the loss beside them."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from typing import get_type_hints

import pytest

from grpo.algorithm.update import loss_settings
from grpo.formulas.kl import kl_per_token
from grpo.formulas.losses import AGGREGATIONS, LossSettings, policy_loss
from grpo.formulas.objectives import OBJECTIVES, SELECTIONS, ObjectiveParams, top_entropy_keep
from grpo.setup import alternatives
from grpo.setup.config import TrainConfig

SETTING_NAMES = {field.name for field in dataclasses.fields(LossSettings)}
CONFIG_NAMES = {field.name for field in dataclasses.fields(TrainConfig)}

# The fields of TrainConfig's objective section that are not policy_loss's settings, and who reads them.
OBJECTIVE_SECTION_NOT_LOSS = {
    "advantage": "advantages.compute_advantages",
    "adv_eps": "advantages.compute_advantages",
    "kl_placement": "the trainer's reward shaping; update.loss_settings zeroes kl_beta under reward",
    "kl_reference": "step.build_run: builds the reference at beta 0 too, so kl/* are logged without a penalty",
}

# A value for every setting, each unlike TrainConfig's default, that TrainConfig accepts together.
CHANGED = dict(objective="sapo", aggregation="token_mean", kl_beta=0.07, kl_estimator="k2", clip_eps_low=0.15,
               clip_eps_high=0.3, dual_clip=3.0, delta=2.0, sapo_tau_pos=1.5, sapo_tau_neg=2.5, kl_cov_ratio=0.01,
               kl_cov_coef=2.0, clip_cov_ratio=0.001, clip_cov_lb=0.5, clip_cov_ub=4.0, entropy_coef=0.01,
               top_entropy_quantile=0.5)


def test_every_setting_is_a_train_config_field_of_the_same_type():
    missing = sorted(SETTING_NAMES - CONFIG_NAMES)
    assert not missing, f"LossSettings fields without a TrainConfig field (default, --help): {missing}"
    config_types, setting_types = get_type_hints(TrainConfig), get_type_hints(LossSettings)
    differ = {name: (setting_types[name], config_types[name]) for name in SETTING_NAMES
              if setting_types[name] != config_types[name]}
    assert not differ, f"LossSettings and TrainConfig type these fields differently: {differ}"


def objective_section_fields() -> set[str]:
    """TrainConfig's fields between `# --- objective` and the next `# ---` comment of its source."""
    source = textwrap.dedent(inspect.getsource(TrainConfig))
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# --- objective") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("# ---"))
    body = ast.parse(source).body[0].body
    return {stmt.target.id for stmt in body if isinstance(stmt, ast.AnnAssign) and start < stmt.lineno <= end}


def test_the_config_objective_section_is_the_settings_and_the_named_others():
    section = objective_section_fields()
    assert {"objective", "clip_eps_low", "advantage"} <= section          # the section is found
    not_settings = sorted(section - SETTING_NAMES - set(OBJECTIVE_SECTION_NOT_LOSS))
    assert not not_settings, (f"objective-section fields neither in LossSettings nor named as read elsewhere: "
                              f"{not_settings}")
    assert not set(OBJECTIVE_SECTION_NOT_LOSS) & SETTING_NAMES


def loss_functions():
    """policy_loss and every function it calls with settings-like arguments (registries included)."""
    yield policy_loss
    yield from OBJECTIVES.values()
    yield from SELECTIONS.values()
    yield from AGGREGATIONS.values()
    yield top_entropy_keep
    yield kl_per_token


@pytest.mark.parametrize("function", list(loss_functions()), ids=lambda f: f.__name__)
def test_no_config_field_reaches_the_loss_beside_the_settings(function):
    # A parameter named like a TrainConfig field would be a loss setting passed around LossSettings. One
    # name is shared on purpose: the tensor old_logp (pi_old's log-probs) and --old-logp, which chooses
    # where the step takes that tensor from (learner or sampler) and never reaches the loss itself.
    shared = sorted(set(inspect.signature(function).parameters) & CONFIG_NAMES - {"old_logp"})
    assert not shared, f"{function.__name__} takes config fields as parameters (put them in LossSettings): {shared}"


def test_loss_settings_copies_every_field_by_name():
    defaults = TrainConfig()
    assert set(CHANGED) == SETTING_NAMES
    assert all(value != getattr(defaults, name) for name, value in CHANGED.items())   # a missed copy would show
    cfg = TrainConfig(**CHANGED)
    assert loss_settings(cfg) == LossSettings(**CHANGED)
    assert loss_settings(dataclasses.replace(cfg, kl_placement="reward")) == LossSettings(**{**CHANGED, "kl_beta": 0.0})


def test_settings_have_no_defaults_and_no_positional_construction():
    values = dict(CHANGED)
    objective_values = {field.name: values[field.name] for field in dataclasses.fields(ObjectiveParams)}
    with pytest.raises(TypeError):
        ObjectiveParams(*objective_values.values())
    with pytest.raises(TypeError):
        LossSettings(*values.values())
    values.pop("kl_beta")
    with pytest.raises(TypeError, match="kl_beta"):                   # its default lives in TrainConfig only
        LossSettings(**values)
    assert isinstance(LossSettings(**CHANGED), ObjectiveParams)       # the objectives read the same object


def test_counterfactual_fields_derive_from_the_settings():
    assert alternatives.LOSS_FIELDS == SETTING_NAMES | {"advantage", "adv_eps", "mask_truncated"}
    assert alternatives.LOSS_FIELDS <= CONFIG_NAMES
    for name in ["RATIO_FIELDS", "CLIP_COV_FIELDS", "KL_FIELDS"]:
        stray = sorted(getattr(alternatives, name) - SETTING_NAMES)
        assert not stray, f"alternatives.{name} names fields that are not loss settings: {stray}"
