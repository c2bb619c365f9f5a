"""The S checks M3, P5, Q1 (inner_epochs sweep), P7 (dapo) and H1, H2, H3 (entropy) on planted tidy frames: a null
reads "not detected at this budget", the planted direction "held", the reversed one "contradicted"; the
entropy/cov_logp_adv metric by hand; the sweeps' new arms and the claims' wiring.

Frames are built as analysis.load.load_runs returns them (one row per run and step; a metric an arm does not log
is NaN there), with numpy noise from fixed seeds, 5 seeds per arm.
"""

import importlib

import numpy as np
import pandas as pd
import pytest
import torch

from experiments import paper_checks
from experiments import claims_updates as stat
from experiments.inner_epochs import EXPERIMENT as INNER_EPOCHS
from grpo.algorithm.metrics import covariance_metric
from grpo.formulas.objectives import token_covariance

HELD, CONTRADICTED, NULL = "held", "contradicted", "not detected at this budget"
SEEDS = 5


def frame_of(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows).assign(experiment="x")


def runs(arms: dict, steps: int, record, seed: int = 0) -> pd.DataFrame:
    """One row per (arm, seed, step 0..steps): record(arm, params, step, rng) -> the metrics of that row."""
    rng = np.random.default_rng(seed)
    rows = []
    for arm, params in arms.items():
        for s in range(SEEDS):
            rows += [{"arm": arm, "seed": s, "step": t, "samples": 128 * t, **record(arm, params, t, rng)}
                     for t in range(steps + 1)]
    return frame_of(rows)


# ----- the metric


def test_cov_logp_adv_by_hand_and_as_the_token_covariance():
    # Three completions: A = 1 with tokens logp (-0.5, -1.5); A = -1 with (-3); A = 0 with (-1).
    # Tokens: A_t = (1, 1, -1, 0), mean 1/4; logp_t = (-0.5, -1.5, -3, -1), mean -6/4 = -1.5.
    # Centred: A (0.75, 0.75, -1.25, -0.25), logp (1, 0, -1.5, 0.5); products 0.75, 0, 1.875, -0.125: sum 2.5,
    # over 4 tokens 0.625.
    advantages = torch.tensor([1.0, -1.0, 0.0])
    out = covariance_metric(advantages, torch.tensor([-2.0, -3.0, -1.0]), torch.tensor([2.0, 1.0, 1.0]))
    assert out["entropy/cov_logp_adv"].item() == pytest.approx(0.625, abs=1e-7)
    # the same tokens padded to [3, 2]: objectives.token_covariance's per-token products, averaged over the mask
    logp = torch.tensor([[-0.5, -1.5], [-3.0, 0.0], [-1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    per_token = token_covariance(advantages[:, None], logp, mask)
    assert (per_token.sum() / mask.sum()).item() == pytest.approx(0.625, abs=1e-7)


def test_cov_logp_adv_is_zero_without_tokens_and_without_advantage():
    zero = covariance_metric(torch.tensor([1.0, -1.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert zero["entropy/cov_logp_adv"].item() == 0.0                                  # no loss token: 0, not NaN
    flat = covariance_metric(torch.zeros(2), torch.tensor([-2.0, -7.0]), torch.tensor([2.0, 3.0]))
    assert flat["entropy/cov_logp_adv"].item() == 0.0                                  # A = 0 everywhere


# ----- the sweeps and the wiring


def test_inner_epochs_gets_the_clip_higher_and_gspo_arms_at_mu2():
    arms = INNER_EPOCHS.arms
    assert arms["mu2_clip_higher"] == type(arms["mu2"])(**{**arms["mu2"].to_dict(), "clip_eps_high": 0.28})
    gspo = arms["mu2_gspo"]
    assert (gspo.objective, gspo.clip_eps_low, gspo.clip_eps_high, gspo.inner_epochs) == ("gspo", 3e-4, 4e-4, 2)
    assert gspo.warnings() == [] and arms["mu4"].inner_epochs == 4        # M2's arm kept


@pytest.mark.parametrize("claim_id, check", [("M3", stat.check_m3), ("P5", stat.check_p5), ("Q1", stat.check_q1),
                                             ("P7", stat.check_p7), ("H1", stat.check_h1), ("H2", stat.check_h2),
                                             ("H3", stat.check_h3)])
def test_claims_are_wired_to_their_checks_and_sweeps_that_have_their_arms(claim_id, check):
    claim = next(c for c in paper_checks.CLAIMS if c.id == claim_id)
    assert claim.check is check
    experiment = importlib.import_module(paper_checks.SWEEPS[claim.sweep][0]).EXPERIMENT
    assert set(claim.arms) <= set(experiment.arms)


def test_a_sweep_without_the_metric_is_not_applicable_naming_it():
    frame = runs({"baseline": None}, 6, lambda arm, p, t, rng: {"entropy": 1.0, "reward/mean": 0.5})
    result = stat.check_h1(frame)
    assert result.verdict == "not applicable" and "entropy/cov_logp_adv" in result.note
    assert "mu4" in stat.check_m3(frame.assign(arm="mu1")).note


# ----- M3


def m3_frame(slopes: dict) -> pd.DataFrame:
    """reward/mean = 0.3 + slope(arm) * step + N(0, 0.02) over 30 steps; inner_epochs = mu."""
    return runs({f"mu{mu}": slope for mu, slope in slopes.items()}, 30,
                lambda arm, slope, t, rng: {"inner_epochs": int(arm[2:]),
                                            "reward/mean": 0.3 + slope * t + rng.normal(0, 0.02)})


@pytest.mark.parametrize("slopes, verdict", [
    ({1: 0.005, 2: 0.005, 4: 0.005}, NULL),           # mu changes nothing per batch (per update: slower, allowed)
    ({1: 0.005, 2: 0.008, 4: 0.012}, HELD),           # faster per batch, slower per update (0.004, 0.003)
    ({1: 0.005, 2: 0.002, 4: 0.001}, CONTRADICTED),   # slower per batch
    ({1: 0.002, 2: 0.008, 4: 0.020}, CONTRADICTED),   # faster per update too (0.004, 0.005 vs 0.002)
])
def test_m3_reads_the_planted_direction(slopes, verdict):
    result = stat.check_m3(m3_frame(slopes))
    assert result.verdict == verdict, (result.measured, result.note)
    assert result.seeds == SEEDS and result.steps == 30 and "reward slope/update mu4-mu1" in result.measured


# ----- P5


@pytest.mark.parametrize("fall, verdict", [(0.01, NULL), (0.005, HELD), (0.02, CONTRADICTED)])
def test_p5_reads_the_planted_direction(fall, verdict):
    """entropy = 1 - fall * step + N(0, 0.02): mu2 falls 0.01 a step, clip-higher `fall`."""
    frame = runs({"mu2": 0.01, "mu2_clip_higher": fall}, 30,
                 lambda arm, f, t, rng: {"entropy": 1.0 - f * t + rng.normal(0, 0.02)})
    result = stat.check_p5(frame)
    assert result.verdict == verdict, (result.measured, result.note)
    assert result.seeds == SEEDS and "entropy slope mu2_clip_higher-mu2" in result.measured


# ----- Q1


def q1_record(arm, gspo_share, t, rng):
    if arm == "mu2":        # token clip: 0.1% low and high each, a cut share equal to their sum
        low, high = (0.001 + rng.normal(0, 0.0005) for _ in range(2))
        return {"clip/low_frac": low, "clip/high_frac": high, "grad_tokens/clipped_frac": low + high}
    share = gspo_share + rng.normal(0, 0.0007)
    return {"clip/seq_frac": share, "grad_tokens/clipped_frac": share}


@pytest.mark.parametrize("gspo_share, verdict", [(0.002, NULL), (0.15, HELD), (0.0, CONTRADICTED)])
def test_q1_reads_the_planted_direction(gspo_share, verdict):
    frame = runs({"mu2": None, "mu2_gspo": gspo_share}, 20, q1_record)
    result = stat.check_q1(frame)
    assert result.verdict == verdict, (result.measured, result.note)
    assert "(paper ~15%)" in result.note and "(paper 0.13%)" in result.note
    assert "grad_tokens/clipped_frac gspo - clip" in result.measured


# ----- P7


def p7_frame(tau: dict, samples_per_step: dict, never: tuple = ()) -> pd.DataFrame:
    """eval/accuracy every 5 steps = 0.3 + 0.4 (1 - exp(-step / tau)) + N(0, 0.01) (exactly 0.3 at step 0, one
    warm start), samples = samples_per_step x step; runs in `never` (arm, seed) stay at 0.3 - 0.05."""
    rng = np.random.default_rng(3)
    rows = []
    for arm in ("token_level", "dynamic"):
        for s in range(SEEDS):
            for t in range(41):
                row = {"arm": arm, "seed": s, "step": t, "samples": samples_per_step[arm] * t}
                if t % 5 == 0:
                    rise = 0.4 * (1 - np.exp(-t / tau[arm])) + rng.normal(0, 0.01) if t else 0.0
                    row["eval/accuracy"] = 0.25 if t and (arm, s) in never else 0.3 + rise
                rows.append(row)
    return frame_of(rows)


@pytest.mark.parametrize("tau, per_step, verdict", [
    ({"token_level": 20, "dynamic": 20}, {"token_level": 128, "dynamic": 128}, NULL),
    ({"token_level": 20, "dynamic": 14}, {"token_level": 128, "dynamic": 256}, HELD),    # 0.7x steps, 1.4x samples
    ({"token_level": 20, "dynamic": 28}, {"token_level": 128, "dynamic": 96}, CONTRADICTED),
])
def test_p7_reads_the_planted_direction(tau, per_step, verdict):
    result = stat.check_p7(p7_frame(tau, per_step))
    assert result.verdict == verdict, (result.measured, result.note)
    assert result.seeds == SEEDS and "threshold: start + 0.5" in result.note


def test_p7_leaves_out_a_seed_whose_run_never_improves_and_says_so():
    result = stat.check_p7(p7_frame({"token_level": 20, "dynamic": 14}, {"token_level": 128, "dynamic": 256},
                                    never=(("dynamic", 2),)))
    assert result.seeds == SEEDS - 1 and "seed(s) 2 left out" in result.note


def test_p7_crossing_is_interpolated_between_evaluations():
    # accuracy 0.3 at step 0 (samples 0), 0.5 at step 10 (samples 1000): 0.45 is reached 3/4 of the way.
    run = pd.DataFrame({"step": [0, 10], "samples": [0, 1000], "eval/accuracy": [0.3, 0.5]})
    assert stat._crossing(run, 0.45) == pytest.approx((7.5, 750.0))
    assert all(np.isnan(stat._crossing(run, 0.6)))


# ----- H1


def h1_frame(sign: float, cov_mean: float) -> pd.DataFrame:
    """C(t) = cov_mean + N(0, 0.03); entropy(t+1) = entropy(t) - sign * C(t) + N(0, 0.03)."""
    rng = np.random.default_rng(4)
    rows = []
    for s in range(SEEDS):
        entropy = 1.5
        for t in range(31):
            cov = cov_mean + rng.normal(0, 0.03)
            rows.append({"arm": "baseline", "seed": s, "step": t, "samples": 128 * t,
                         **({"entropy": entropy, "entropy/cov_logp_adv": cov} if t else {})})
            if t:
                entropy += -sign * cov + rng.normal(0, 0.03)
    return frame_of(rows)


@pytest.mark.parametrize("sign, cov_mean, verdict", [(0.0, 0.0, NULL), (1.0, 0.05, HELD), (-1.0, 0.05, CONTRADICTED)])
def test_h1_reads_the_planted_direction(sign, cov_mean, verdict):
    result = stat.check_h1(h1_frame(sign, cov_mean))
    assert result.verdict == verdict, (result.measured, result.note)
    assert result.seeds == SEEDS and "sign agreement - 0.5" in result.measured


# ----- H2


def h2_record(arm, kind, t, rng):
    if t == 0:
        return {}
    if kind == "null":                       # reward and entropy flat noise: neither model has an edge
        return {"entropy": 1.0 + rng.normal(0, 0.05), "reward/mean": 0.5 + rng.normal(0, 0.03)}
    entropy = 1.5 - 0.04 * t + rng.normal(0, 0.02)
    reward = -0.3 * np.exp(entropy) + 1.8 + rng.normal(0, 0.02)          # R = -a e^H + b
    if kind == "reversed" and t > 10:         # the law breaks after the fit's third: reward falls back
        reward = -0.3 * np.exp(1.5) + 1.8 + rng.normal(0, 0.02)
    return {"entropy": entropy, "reward/mean": reward}


@pytest.mark.parametrize("kind, verdict", [("null", NULL), ("planted", HELD), ("reversed", CONTRADICTED)])
def test_h2_reads_the_planted_direction(kind, verdict):
    result = stat.check_h2(runs({"baseline": kind}, 30, h2_record, seed=5))
    assert result.verdict == verdict, (result.measured, result.note)
    assert result.seeds == SEEDS and "RMSE constant - fit" in result.measured


def test_h2_fit_gain_by_hand():
    # 9 steps; first third = steps 1-3 with e^H = 1, 2, 3 and R = 1, 2, 3: the fit is R = e^H exactly. The rest has
    # e^H = 4..9 and R = e^H: the fit's RMSE is 0; the constant (mean 2) misses by 2..7: sqrt(mean of 4, 9, ..., 49).
    x = np.arange(1.0, 10.0)
    run = pd.DataFrame({"step": np.arange(1, 10), "entropy": np.log(x), "reward/mean": x})
    assert stat._entropy_fit_gain(run) == pytest.approx(np.sqrt(np.mean(np.arange(2.0, 8.0) ** 2)))


# ----- H3


def h3_frame(fall: float, accuracy_shift: float) -> pd.DataFrame:
    """entropy = 1 - 0.02 step (baseline) or 1 - fall * step (kl_cov, clip_cov), + N(0, 0.02); eval/accuracy every 5
    steps = 0.5 (+ accuracy_shift for the remedies) + N(0, 0.01)."""
    def record(arm, params, t, rng):
        remedy = arm != "baseline"
        row = {"entropy": 1.0 - (fall if remedy else 0.02) * t + rng.normal(0, 0.02)} if t else {}
        if t % 5 == 0:
            row["eval/accuracy"] = 0.5 + (accuracy_shift if remedy else 0.0) + rng.normal(0, 0.01)
        return row
    return runs({"baseline": None, "kl_cov": None, "clip_cov": None}, 30, record, seed=6)


@pytest.mark.parametrize("fall, accuracy_shift, verdict", [
    (0.02, 0.0, NULL),
    (0.01, 0.0, HELD),
    (0.01, 0.03, HELD),                # better accuracy is within "similar" (non-inferiority)
    (0.03, 0.0, CONTRADICTED),         # the remedies' entropy falls faster
    (0.01, -0.2, CONTRADICTED),        # entropy kept, accuracy lost by far more than the margin
    (0.01, -0.05, NULL),               # accuracy lost by about the margin: not shown similar
])
def test_h3_reads_the_planted_direction(fall, accuracy_shift, verdict):
    result = stat.check_h3(h3_frame(fall, accuracy_shift))
    assert result.verdict == verdict, (result.measured, result.note)
    assert result.seeds == SEEDS and "late accuracy clip_cov-baseline" in result.measured
    assert "(margin 0.05)" in result.measured


def test_the_inner_epochs_claims_share_one_sweep_of_five_arms():
    claims = paper_checks.select(paper_checks.CLAIMS, ["M2", "M3", "P5", "Q1", "P7", "H1", "H2", "H3"], False)
    arms = {sweep: set(names) for sweep, names in paper_checks.sweep_arms(claims).items()}
    assert arms == {"inner_epochs": {"mu4", "mu1", "mu2", "mu2_clip_higher", "mu2_gspo"},
                    "dapo": {"token_level", "dynamic"}, "entropy": {"baseline", "kl_cov", "clip_cov"}}
