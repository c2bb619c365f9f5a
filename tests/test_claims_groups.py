"""The S checks of the group_size and kl_beta sweeps (G2, G4, G5, K5, B2) on planted frames (a null reads
"not detected at this budget", a planted effect "held", a reversed one "contradicted"), the equivalence test
(TOST) and its calibration, and the metrics they read: the unbiased zero-variance estimate, the extra
samples that leave the run unchanged, the reference at beta 0, the per-token KL stds and the ledger's
persistence shares, by hand."""

import importlib
import math
import statistics

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from analysis import verdicts
from experiments import paper_checks
from experiments import claims_groups as stat
from grpo.algorithm.metrics import kl_token_std_metrics
from grpo.algorithm.step_probes import ledger_metrics, unbiased_zero_var_frac

GS = (2, 4, 8, 16)
BETAS = (0.0, 1e-3, 1e-2, 1e-1)


def frame_of(rows: list[dict]) -> pd.DataFrame:
    """A tidy frame as analysis.load gives it: one row per (arm, seed, step)."""
    return pd.DataFrame([{"experiment": "x", **row} for row in rows])


# --- the metrics, by hand

def test_unbiased_zero_var_frac_by_hand():
    # n = 5, G = 2, C(5, 2) = 10. k = 0: 0 + C(5,2)/10 = 1; k = 3: C(3,2)/10 + C(2,2)/10 = 3/10 + 1/10 = 0.4;
    # k = 5: 1. Mean (1 + 0.4 + 1) / 3 = 0.8.
    out = unbiased_zero_var_frac(torch.tensor([0.0, 3.0, 5.0]), 5, 2)
    assert abs(out.item() - 0.8) < 1e-12
    # n = G: the estimate is the indicator of a constant group of the n samples.
    assert unbiased_zero_var_frac(torch.tensor([0.0, 2.0, 4.0]), 4, 4).item() == pytest.approx(2 / 3, abs=1e-12)


def test_unbiased_zero_var_frac_is_unbiased_where_the_pooled_plug_in_is_not():
    # Prompts with q = 0.1 and 0.9, G = 4: E = mean(0.1^4 + 0.9^4) = 0.6562; pooled pbar = 0.5: 2 * 0.5^4 = 0.125.
    rng = torch.Generator().manual_seed(0)
    q = torch.tensor([0.1, 0.9]).repeat(20000)
    k = torch.binomial(torch.full_like(q, 8.0), q, generator=rng)
    truth = 0.1 ** 4 + 0.9 ** 4
    # sd of one prompt's estimate <= 1, 40000 prompts: 4 sd = 0.02
    assert abs(unbiased_zero_var_frac(k, 8, 4).item() - truth) < 0.02
    assert truth - 2 * 0.5 ** 4 > 0.5


def test_kl_token_std_by_hand():
    # Loss tokens with d = ref_logp - logp = 0.1, -0.2, 0.0 and a padding token holding -inf.
    logp = torch.tensor([[-1.0, -2.0, -0.5, float("-inf")]])
    ref_logp = logp + torch.tensor([[0.1, -0.2, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = kl_token_std_metrics(logp, ref_logp, mask)
    # k1 = -d = -0.1, 0.2, 0: mean 1/30, squared deviations 0.017778 + 0.027778 + 0.001111 = 0.046667, / 2, sqrt.
    assert out["kl/k1_token_std"].item() == pytest.approx(math.sqrt(0.046667 / 2), rel=1e-4)
    # k3 = e^d - d - 1 = 0.0051709, 0.0187308, 0
    k3 = [math.exp(0.1) - 0.1 - 1, math.exp(-0.2) + 0.2 - 1, 0.0]
    # (float32 inputs: d itself is rounded to ~1e-8, hence rel 1e-5)
    assert out["kl/k3_token_std"].item() == pytest.approx(statistics.stdev(k3), rel=1e-5)
    assert out["kl/k1_token_std"].item() / out["kl/k3_token_std"].item() > 10    # near the reference
    # Two ranks' sums combined: the std over both ranks' tokens (here the same tokens twice, 6 of them).
    doubled = kl_token_std_metrics(logp, ref_logp, mask, sum_fn=lambda x: 2 * x)
    assert doubled["kl/k3_token_std"].item() == pytest.approx(statistics.stdev(k3 * 2), rel=1e-5)
    assert kl_token_std_metrics(logp, ref_logp, torch.tensor([[1.0, 0.0, 0.0, 0.0]])) == {}


def test_ledger_persistence_shares_by_hand():
    # G = 2. Previous visit: all wrong, mixed, all correct, all correct, never visited; now: W, W, M, C, C.
    before = torch.tensor([0.0, 0.5, 1.0, 1.0, float("nan")])
    now = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0])
    out = ledger_metrics(before, now, 2)
    assert out["ledger/zero_var_before"].item() == 0.75            # W, C, C of 4 revisited
    assert out["ledger/zero_var_kept"].item() == 0.5               # W -> W and C -> C
    assert out["ledger/zero_var_measured"].item() == 0.75
    # persistence over one step: P(zv | zv) = 0.5 / 0.75; P(zv | mixed) = (0.75 - 0.5) / 0.25 = 1
    run = pd.DataFrame([{"ledger/revisit_frac": 0.8, **{k: v.item() for k, v in out.items()}}])
    kept, mixed = stat.persistence(run)
    assert kept == pytest.approx(2 / 3) and mixed == pytest.approx(1.0)


# --- the runs: extra samples and the reference at beta 0 change nothing else

@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Four 2-step runs of one seed: plain, with 8 extra samples at step 1, and at beta 0 without and with
    the reference."""
    from conftest import MIXED, SMALL_CONFIG
    from grpo.run.runner import train
    from grpo.setup.config import TrainConfig
    import json

    root = tmp_path_factory.mktemp("groups")
    variants = {"plain": {}, "extra": {"zero_var_extra_samples": 8},
                "beta0": {"kl_beta": 0.0}, "beta0_ref": {"kl_beta": 0.0, "kl_reference": True}}
    out = {}
    for name, values in variants.items():
        cfg = TrainConfig(**{**SMALL_CONFIG, **MIXED, "steps": 2, "kl_beta": 0.04, **values,
                             "out_dir": str(root / name)})
        train(cfg, log=lambda *_: None)
        out[name] = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
    return out


def _without(records, prefixes):
    return [{k: v for k, v in r.items() if not k.startswith(prefixes)} for r in records]


def test_extra_samples_log_the_estimate_and_leave_every_other_metric_unchanged(tiny_runs):
    plain, extra = tiny_runs["plain"], tiny_runs["extra"]
    step1 = next(r for r in extra if r["step"] == 1)
    assert 0.0 <= step1["zero_var/unbiased_frac"] <= 1.0
    assert all("zero_var/unbiased_frac" not in r for r in extra if r["step"] != 1)
    assert all("zero_var/unbiased_frac" not in r for r in plain)
    # Exactly equal (same seed): the extra draws use a stream of their own.
    assert _without(extra, ("time/", "zero_var/unbiased_frac")) == _without(plain, ("time/",))


def test_the_reference_at_beta_0_logs_kl_without_any_penalty(tiny_runs):
    bare, with_ref = tiny_runs["beta0"], tiny_runs["beta0_ref"]
    assert all(not k.startswith("kl/") for r in bare for k in r)
    trained = [r for r in with_ref if r["step"] >= 1]
    assert all({"kl/k1", "kl/k3", "kl/k1_token_std", "kl/k3_token_std"} <= set(r) for r in trained)
    assert trained[0]["kl/k3"] < 1e-6 < trained[1]["kl/k3"]      # at the reference, then moved away
    assert _without(with_ref, ("time/", "kl/")) == _without(bare, ("time/",))


def test_extra_samples_need_at_least_group_size():
    from grpo import GrpoError
    from grpo.setup.config import TrainConfig

    with pytest.raises(GrpoError, match="zero-var-extra-samples"):
        TrainConfig(group_size=8, zero_var_extra_samples=4)


# --- the equivalence test and its calibration

def test_equivalence_p_values_match_scipy_one_sided_t_tests():
    diffs = np.array([0.01, -0.01, 0.0, 0.02])
    out = verdicts.equivalence_tests(diffs[None, :], 0.05)
    p_low = stats.ttest_1samp(diffs, -0.05, alternative="greater").pvalue
    p_high = stats.ttest_1samp(diffs, 0.05, alternative="less").pvalue
    assert out["p_tost"][0] == pytest.approx(max(p_low, p_high), rel=1e-10)
    assert out["equivalent"][0] and out["beyond"][0] == 0
    # 90% interval (alpha 0.05, m = 1) inside the margin: mean 0.005, sd 0.012910, t_{0.95,3} = 2.3534
    assert out["hi"][0] == pytest.approx(0.005 + 2.353363 * 0.0129099 / 2, rel=1e-4)
    far = verdicts.equivalence_tests(np.array([[0.2, 0.21, 0.19, 0.2]]), 0.05)
    assert not far["equivalent"][0] and far["beyond"][0] == 1
    tie = verdicts.equivalence_tests(np.array([[0.0, 0.0, 0.0]]), 0.05)
    assert not tie["equivalent"][0] and tie["beyond"][0] == 0 and np.isnan(tie["p_tost"][0])


@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_equivalence_at_a_true_difference_of_the_margin_is_declared_at_most_at_alpha(seeds):
    # 4000 datasets, difference = margin = 1, sd 1: equivalence and "beyond" each at most alpha, with 3
    # binomial sd of slack (0.0103).
    rng = np.random.default_rng(seeds)
    diffs = rng.normal(1.0, 1.0, size=(4000, 1, seeds))
    out = verdicts.equivalence_tests(diffs, 1.0)
    assert out["equivalent"].mean() <= 0.05 + 0.0103
    assert (out["beyond"] != 0).mean() <= 0.05 + 0.0103


def test_equivalence_at_a_true_difference_of_0_is_shown_with_enough_seeds():
    rng = np.random.default_rng(7)
    out = verdicts.equivalence_tests(rng.normal(0.0, 1.0, size=(2000, 1, 20)), 1.0)
    assert out["equivalent"].mean() > 0.9
    assert np.median(out["showable"]) < 1.0           # the stated showable margin is below the one used
    few = verdicts.equivalence_tests(rng.normal(0.0, 1.0, size=(2000, 1, 3)), 1.0)
    assert few["equivalent"].mean() < 0.2 and np.median(few["showable"]) > 1.0


def test_equivalence_holm_over_a_family_keeps_the_familywise_rate():
    # 3 comparisons, all at the margin: any false equivalence in the family at most alpha.
    rng = np.random.default_rng(3)
    out = verdicts.equivalence_tests(rng.normal(1.0, 1.0, size=(4000, 3, 5)), 1.0)
    assert out["equivalent"].any(-1).mean() <= 0.05 + 0.0103


# --- planted frames

def g2_frame(jensen: float, gap: float, seeds: int = 4, gap_noise: float = 0.01) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    rows = []
    for g in GS:
        for seed in range(seeds):
            expected = 0.3 + 0.02 * g
            unbiased = expected + jensen + rng.normal(0, 0.01)
            rows.append({"arm": f"G{g}", "seed": seed, "step": 1, "zero_var/expected_frac": expected,
                         "zero_var/unbiased_frac": unbiased,
                         "accuracy/constant_group_frac": unbiased + gap + rng.normal(0, gap_noise)})
            rows.append({"arm": f"G{g}", "seed": seed, "step": 2, "eval/accuracy": 0.5})
    return frame_of(rows)


@pytest.mark.parametrize("jensen, gap, verdict", [(0.1, 0.0, "held"), (0.0, 0.0, stat.NOT_DETECTED),
                                                  (-0.1, 0.0, "contradicted"), (0.1, 0.2, "contradicted")])
def test_g2_on_planted_frames(jensen, gap, verdict):
    result = stat.check_g2(g2_frame(jensen, gap))
    assert result.verdict == verdict, (result.measured, result.note)
    assert result.seeds == 4 and "jensen G16" in result.measured and "TOST" in result.measured
    if verdict == "held":
        assert "equivalence within +-0.1 shown" in result.measured


def test_g2_does_not_hold_on_a_gap_too_noisy_to_show_equivalence():
    """The Jensen gaps are clear, the measured-vs-estimate gap is 0 on average but its noise (sd 0.3 at 4 seeds)
    lets no interval exclude 0 nor show it within +-0.1: "equals" is not shown, so not held."""
    result = stat.check_g2(g2_frame(0.1, 0.0, gap_noise=0.3))
    assert result.verdict == stat.NOT_DETECTED, (result.measured, result.note)
    assert "equivalence of the measured share and the estimate within +-0.1 not shown" in result.note


def test_g2_without_the_estimate_is_not_applicable():
    frame = g2_frame(0.1, 0.0).drop(columns=["zero_var/unbiased_frac"])
    assert stat.check_g2(frame).verdict == "not applicable"


def g4_frame(difference: float, noise: float, seeds: int) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    rows = []
    for seed in range(seeds):
        base = 0.5 + rng.normal(0, 0.05)           # shared by the pair: the seed's luck
        for step in (0, 10, 20, 30, 40):
            for g, shift in ((2, difference), (16, 0.0)):
                value = 0.3 if step == 0 else base + shift + rng.normal(0, noise)
                rows.append({"arm": f"G{g}", "seed": seed, "step": step, "eval/accuracy": value})
            rows.append({"arm": "G16", "seed": seed, "step": step + 1, "zero_var/frac": 0.5})  # a non-eval step
    return frame_of(rows)


@pytest.mark.parametrize("difference, noise, seeds, verdict", [
    (0.0, 0.005, 6, "held"),                      # equivalent, tight: shown within 3 points
    (0.0, 0.05, 3, stat.NOT_DETECTED),            # equivalent, but 3 noisy seeds cannot show it
    (0.10, 0.005, 6, "contradicted"),             # 10 points apart: beyond the margin
    (-0.10, 0.005, 6, "contradicted"),
])
def test_g4_on_planted_frames(difference, noise, seeds, verdict):
    result = stat.check_g4(g4_frame(difference, noise, seeds))
    assert result.verdict == verdict, (result.measured, result.note)
    assert result.seeds == seeds and "G2-G16" in result.measured
    if verdict == stat.NOT_DETECTED:
        assert "could show a margin of about" in result.note


def test_g4_reads_the_last_two_evaluations():
    # G2 ahead by 0.2 at steps 10 and 20 only; equal at 30 and 40: the verdict reads 30 and 40.
    rows = []
    for seed in range(6):
        for step in (0, 10, 20, 30, 40):
            lead = 0.2 if step in (10, 20) else 0.0
            rows += [{"arm": "G2", "seed": seed, "step": step, "eval/accuracy": 0.5 + lead + 0.001 * seed},
                     {"arm": "G16", "seed": seed, "step": step, "eval/accuracy": 0.5 + 0.0013 * seed}]
    assert stat.check_g4(frame_of(rows)).verdict == "held"


def g5_frame(after_zero_var: float, after_mixed: float, seeds: int = 4) -> pd.DataFrame:
    """Revisits from step 5 on; each step's shares with noise: P(zv | zv) and P(zv | mixed) planted."""
    rng = np.random.default_rng(5)
    rows = []
    for seed in range(seeds):
        for step in range(1, 31):
            row = {"arm": "G8", "seed": seed, "step": step, "ledger/revisit_frac": 0.0 if step < 5 else 1.0}
            if step >= 5:
                before = 0.5 + rng.normal(0, 0.05)
                kept = before * (after_zero_var + rng.normal(0, 0.05))
                row.update({"ledger/zero_var_before": before, "ledger/zero_var_kept": kept,
                            "ledger/zero_var_measured": kept + (1 - before) * (after_mixed + rng.normal(0, 0.05))})
            rows.append(row)
    return frame_of(rows)


@pytest.mark.parametrize("after_zero_var, after_mixed, verdict", [
    (0.8, 0.3, "held"), (0.5, 0.5, stat.NOT_DETECTED), (0.3, 0.8, "contradicted")])
def test_g5_on_planted_frames(after_zero_var, after_mixed, verdict):
    result = stat.check_g5(g5_frame(after_zero_var, after_mixed))
    assert result.verdict == verdict, (result.measured, result.note)
    assert result.seeds == 4 and "P(zv|zv)-P(zv|mixed) G8" in result.measured
    # The pooled probabilities are the planted ones (noise of sd 0.05 per step, 26 steps x 4 seeds).
    kept, mixed = result.measured.split("G8: ")[1].split(" vs ")
    assert abs(float(kept) - after_zero_var) < 0.03 and abs(float(mixed) - after_mixed) < 0.03


def test_g5_without_a_prompt_pool_is_not_applicable():
    frame = frame_of([{"arm": "G8", "seed": s, "step": t, "ledger/revisit_frac": 0.0} for s in range(3) for t in (1, 2)])
    assert stat.check_g5(frame).verdict == "not applicable"


def k5_frame(log_ratio: float, seeds: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(6)
    rows = []
    for seed in range(seeds):
        for step in range(1, 11):
            k3_std = 0.0 if step == 1 else 1e-3 * step
            k1_std = 0.0 if step == 1 else k3_std * math.exp(log_ratio + rng.normal(0, 0.2))
            rows.append({"arm": "beta0", "seed": seed, "step": step, "kl/k1_token_std": k1_std,
                         "kl/k3_token_std": k3_std, "kl/k3": 1e-3 * step})
    return frame_of(rows)


@pytest.mark.parametrize("log_ratio, verdict", [(math.log(14), "held"), (0.0, stat.NOT_DETECTED),
                                                (-1.0, "contradicted")])
def test_k5_on_planted_frames(log_ratio, verdict):
    result = stat.check_k5(k5_frame(log_ratio))
    assert result.verdict == verdict, (result.measured, result.note)
    assert "paper ~14 at KL 0.005" in result.measured
    if verdict == "held":
        ratio = float(result.measured.split("; ratio ")[1].split()[0])
        assert 11 < ratio < 18          # 14 times noise of sd 0.2 in the log, averaged over 20 values


def b2_frame(growth: float, order: float, seeds: int = 4, steps: int = 20) -> pd.DataFrame:
    """kl/k3 = base(beta) + growth * step / (1 + 100 beta) + noise; base falls with beta when order = +1."""
    rng = np.random.default_rng(8)
    rows = []
    for beta in BETAS:
        for seed in range(seeds):
            for step in range(0, steps + 1):
                row = {"arm": f"beta{beta:g}", "seed": seed, "step": step}
                if step >= 1:
                    row["kl/k3"] = (0.05 - order * 0.1 * beta ** 0.5 + growth * step / (1 + 100 * beta)
                                    + rng.normal(0, 0.001))
                rows.append(row)
    return frame_of(rows)


@pytest.mark.parametrize("growth, order, verdict", [(0.002, 1.0, "held"), (0.0, 0.0, stat.NOT_DETECTED),
                                                    (-0.002, -1.0, "contradicted")])
def test_b2_on_planted_frames(growth, order, verdict):
    result = stat.check_b2(b2_frame(growth, order))
    assert result.verdict == verdict, (result.measured, result.note)
    assert "kl/k3 slope beta0" in result.measured and "final kl/k3 beta0.01-beta0.1" in result.measured
    assert result.seeds == 4 and result.steps == 20


def test_b2_without_kl_at_beta_0_is_not_applicable():
    frame = b2_frame(0.002, 1.0)
    frame.loc[frame["arm"] == "beta0", "kl/k3"] = np.nan
    assert stat.check_b2(frame).verdict == "not applicable"


# --- the wiring

def test_the_claims_are_built_on_sweeps_that_have_their_arms():
    for claim_id in ("G2", "G3", "G4", "G5", "K5", "B2"):
        claim = next(c for c in paper_checks.CLAIMS if c.id == claim_id)
        assert claim.check is not None
        experiment = importlib.import_module(paper_checks.SWEEPS[claim.sweep][0]).EXPERIMENT
        assert set(claim.arms) <= set(experiment.arms), claim_id
    group_size = importlib.import_module(paper_checks.SWEEPS["group_size"][0]).EXPERIMENT
    assert all(cfg.prompt_pool and cfg.zero_var_extra_samples >= cfg.group_size for cfg in group_size.arms.values())
    assert {cfg.prompts_per_step * cfg.group_size for cfg in group_size.arms.values()} == {64}
    kl_beta = importlib.import_module(paper_checks.SWEEPS["kl_beta"][0]).EXPERIMENT
    assert kl_beta.arms["beta0"].kl_reference and kl_beta.arms["beta0"].kl_beta == 0


def test_non_superiority_is_the_upper_one_sided_test_alone():
    """below: mean < +margin shown, however far below -margin the mean lies (where equivalence fails).
    Row 1: mean -1, sd 0.0816, t = (-1 - 0.5) / (0.0816 / 2) = -36.7 on 3 df: p ~ 2e-5 -> shown, not equivalent.
    Row 2: mean 0.5 = the margin: t = 0, p = 0.5 -> not shown."""
    out = verdicts.equivalence_tests(np.array([[-1.0, -1.1, -0.9, -1.0], [0.5, 0.6, 0.4, 0.5]]), 0.5)
    assert out["below"].tolist() == [True, False] and out["equivalent"].tolist() == [False, False]
