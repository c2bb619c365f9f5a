"""The exact (E) paper claims as unit tests on grpo-lab's functions, with hand-computed numbers where the claim has
them; each check reads "contradicted" on a planted bug; the paper_checks command (--only, --exact-only, the JSON)."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from experiments import claim_checks as exact
from experiments import paper_checks
from grpo.formulas.advantages import compute_advantages, normalize_then_sum
from grpo.setup.rewards import overlong_penalty

E_CLAIMS = [c for c in paper_checks.CLAIMS if c.kind == "E"]


@pytest.mark.parametrize("claim", E_CLAIMS, ids=[c.id for c in E_CLAIMS])
def test_every_exact_claim_holds_on_the_harness(claim):
    result = claim.check()
    assert result.verdict == exact.HELD, (result.measured, result.note)
    assert result.error is not None and result.error <= result.tolerance


def test_every_claim_of_the_list_is_registered_once_with_its_kind():
    # The IDs of /work/shared/paper-claims.md, E ones hand-listed.
    ids = [c.id for c in paper_checks.CLAIMS]
    assert len(ids) == len(set(ids)) == 29
    assert {c.id for c in E_CLAIMS} == {"D1", "D2", "R1", "R2", "R3", "G1", "K2", "K3", "P3", "M1", "Q2"}
    assert all(c.check is not None for c in E_CLAIMS)
    assert all(c.sweep in paper_checks.SWEEPS and c.arms and c.steps for c in paper_checks.CLAIMS if c.kind == "S")


# ----- hand-computed numbers


def test_r2_std_multiplier_is_one_over_the_sample_std():
    # G = 4, k = 1: sigma_1 = sqrt(1*3)/4 = 0.4330; the sample std is sigma * sqrt(4/3) = 0.5, so x2.
    # k = 2: sigma_2 = 1/2, sample std 1/sqrt(3), so x sqrt(3) = 1.732: smaller in the middle than at the ends.
    assert exact.std_multiplier(4, 1) == pytest.approx(2.0, abs=1e-12)
    assert exact.std_multiplier(4, 2) == pytest.approx(math.sqrt(3), abs=1e-12)
    assert exact.std_multiplier(4, 3) == pytest.approx(2.0, abs=1e-12)


def test_d2_k3_gradient_coefficient_hand_example():
    # One token, pi = 1/2, pi_ref = 1/4, A = 1, beta = 0.1: coefficient A + beta (pi_ref/pi - 1) = 1 - 0.05 = 0.95,
    # and the loss (minimised) has d/d logp = -0.95.
    logp = torch.tensor([[math.log(0.5)]], dtype=torch.float64, requires_grad=True)
    loss, _ = exact.policy_loss(logp, logp.detach(), torch.tensor([[math.log(0.25)]], dtype=torch.float64),
                                torch.tensor([1.0], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64),
                                exact.settings(kl_beta=0.1, kl_estimator="k3", aggregation="token_mean"))
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == pytest.approx(-0.95, abs=1e-12)


def test_k2_k3_is_unbiased_and_k2_is_not_on_a_coin():
    # pi = (1/2, 1/2), pi_ref = (1/4, 3/4): KL = 1/2 log 2 + 1/2 log(2/3) = 1/2 log(4/3) = 0.143841.
    # E[k2] = 1/2 (1/2 log(1/2)^2 + 1/2 log(3/2)^2) = 1/4 (0.480453 + 0.164402) = 0.161214.
    logits = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    ref_logits = torch.log(torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert exact.expected_estimate(logits, ref_logits, "k3").item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-12)
    assert exact.expected_estimate(logits, ref_logits, "k1").item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-12)
    assert exact.expected_estimate(logits, ref_logits, "k2").item() == pytest.approx(0.161214, abs=1e-6)


def test_g1_constant_group_probability_and_its_uniform_mean():
    # q = 0.5, G = 2: P(constant) = 0.25 + 0.25 = 0.5; q = 0.2, G = 3: 0.008 + 0.512 = 0.52.
    assert exact.constant_probability(0.5, 2) == pytest.approx(0.5, abs=1e-12)
    assert exact.constant_probability(0.2, 3) == pytest.approx(0.52, abs=1e-12)
    # Mean over q ~ U(0,1) of q^3 + (1-q)^3 = 1/4 + 1/4 = 2/(3+1): Simpson's rule is exact for cubics.
    simpson = (exact.constant_probability(0.0, 3) + 4 * exact.constant_probability(0.5, 3)
               + exact.constant_probability(1.0, 3)) / 6
    assert simpson == pytest.approx(0.5, abs=1e-12)


def test_p3_overlong_penalty_midpoint_and_ends():
    # L_max 20, L_cache 8: 0 up to 12, -(14 - 12)/8 = -0.25 at 14, -0.5 at the midpoint 16, -1 at 20 and beyond.
    values = overlong_penalty(torch.tensor([0.0, 12.0, 14.0, 16.0, 20.0, 25.0]), 20, 8, 1.0)
    assert values.tolist() == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]


def test_r3_length_gradient_hand_example():
    # b = 0 (continue w.p. 1/2), L_max 3: outcomes [ans, stop] p 1/2, [ans, cont, stop] p 1/4, [ans, cont, cont]
    # (truncated) p 1/4; d/db log-prob of the length tokens: -1/2, 0, +1. Under 1/|o| the loss is -A mean_t logp,
    # so E[d objective/db] = A (1/2 (-1/2)/2 + 1/4 * 0/3 + 1/4 * 1/3) = A (-1/8 + 1/12) = -A/24.
    assert exact.length_gradient(-1.0, "seq_mean_token_mean", b=0.0, max_len=3) == pytest.approx(1 / 24, abs=1e-12)
    assert exact.length_gradient(1.0, "seq_mean_token_mean", b=0.0, max_len=3) == pytest.approx(-1 / 24, abs=1e-12)
    # Constant normaliser: A E[score] / 3 = 0, score's mean being 0 (-1/4 + 0 + 1/4).
    assert exact.length_gradient(-1.0, "seq_mean_token_sum_norm", b=0.0, max_len=3) == pytest.approx(0.0, abs=1e-15)


def test_q2_gdpo_ties_within_a_group_when_the_rewards_have_equal_std():
    # Group (1,0), (0,1), (0,0): k1 = k2 = 1, equal std: (1,0) and (0,1) tie under both aggregations.
    r1, r2 = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    gdpo = normalize_then_sum({"r1": r1, "r2": r2}, eps=0.0)
    assert gdpo[0, 0] == gdpo[0, 1]
    summed = compute_advantages(r1 + r2, "grpo", eps=0.0)
    assert summed[0, 0] == summed[0, 1]


def test_q2_gdpo_separates_within_a_group_when_the_stds_differ():
    # Group (1,0), (0,1), (1,0), (1,1), G = 4: r1 = [1,0,1,1] (mean 3/4, sample std 1/2), r2 = [0,1,0,1] (mean 1/2,
    # sample std 1/sqrt 3). Per-reward sum: A(1,0) = 1/4 / (1/2) - 1/2 sqrt 3 = -0.3660, A(0,1) = -3/2 + sqrt(3)/2
    # = -0.6340: a gap of 1/s1 - 1/s2 = 2 - sqrt 3. Totals [1,1,1,2] tie under sum-then-normalise.
    r1, r2 = torch.tensor([[1.0, 0.0, 1.0, 1.0]]), torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    per_reward = compute_advantages(r1, "grpo", eps=0.0) + compute_advantages(r2, "grpo", eps=0.0)
    assert per_reward[0, 0].item() == pytest.approx(0.5 - math.sqrt(3) / 2, abs=1e-6)
    assert per_reward[0, 1].item() == pytest.approx(-1.5 + math.sqrt(3) / 2, abs=1e-6)
    group = torch.cat([r1, r2]).T.double()
    summed_gap, gdpo_gap, predicted = exact.gdpo_tie_gap(group, eps=0.0)
    assert summed_gap == 0.0
    assert gdpo_gap == pytest.approx(predicted, abs=1e-12) and gdpo_gap > 0.1


def test_q2_paper_example_totals_01_and_02_collapse_under_sum_only():
    # G = 2, group totals (0,1) and (0,2): both (-1/sqrt 2, 1/sqrt 2) under sum-then-normalise (unbiased std of
    # {0, 1} is 1/sqrt 2, of {0, 2} sqrt 2); GDPO: (0,1) one reward varies -> (-1,1)/sqrt 2, (0,2) both -> twice that.
    totals = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    summed = compute_advantages(totals, "grpo", eps=0.0)
    torch.testing.assert_close(summed[0], summed[1])
    r1, r2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    gdpo = normalize_then_sum({"r1": r1, "r2": r2}, eps=0.0)
    torch.testing.assert_close(gdpo[1], 2 * gdpo[0])


# ----- each check can fail: a planted bug reads contradicted


def test_r1_reads_contradicted_without_the_leave_one_out_scale(monkeypatch):
    monkeypatch.setattr(exact, "rloo_advantages",
                        lambda rewards, eps, lengths: rewards - rewards.mean(-1, keepdim=True))
    assert exact.check_r1().verdict == exact.CONTRADICTED


def test_p3_reads_contradicted_with_an_off_by_one_ramp(monkeypatch):
    real = exact.overlong_penalty
    monkeypatch.setattr(exact, "overlong_penalty", lambda lengths, max_len, buffer, penalty:
                        real(lengths, max_len + 1, buffer, penalty))
    result = exact.check_p3()
    assert result.verdict == exact.CONTRADICTED and "vs eq. 13" in result.note


def test_k3_reads_contradicted_if_k3_is_lost_its_ratio(monkeypatch):
    real = exact.kl_per_token
    monkeypatch.setattr(exact, "kl_per_token", lambda logp, ref, est, old_logp=None:
                        real(logp, ref, "k3" if est == "k3_is" else est, old_logp))
    assert exact.check_k3().verdict == exact.CONTRADICTED


def test_r3_reads_contradicted_when_the_normaliser_follows_length(monkeypatch):
    # A constant normaliser that in fact divides by the length gives a nonzero gradient where 0 is claimed.
    monkeypatch.setitem(exact.policy_loss.__globals__["AGGREGATIONS"], "seq_mean_token_sum_norm",
                        exact.policy_loss.__globals__["AGGREGATIONS"]["seq_mean_token_mean"])
    assert exact.check_r3().verdict == exact.CONTRADICTED


# ----- the command


def test_exact_only_writes_the_json_and_a_report_with_the_table(tmp_path, capsys):
    assert paper_checks.main(["--exact-only", "--only", "R1,P3,K2", "--out-dir", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "paper_checks.json").read_text())["checks"]
    assert [r["id"] for r in rows] == ["R1", "K2", "P3"]           # the registry's order
    assert all(r["verdict"] == "held" and r["error"] <= r["tolerance"] for r in rows)
    report = (tmp_path / "report.md").read_text()
    assert "## Paper checks" in report and "| R1 |" in report and "3 held" in report
    assert str(tmp_path / "report.md") in capsys.readouterr().out


def test_exact_only_skips_s_claims_and_without_it_an_unbuilt_one_is_listed_not_run(tmp_path, monkeypatch):
    assert [c.id for c in paper_checks.select(paper_checks.CLAIMS, ["R4", "R1"], True)] == ["R1"]
    # Every listed S claim has its check; a claim registered without one (check None) runs no sweep.
    unbuilt = [dataclasses.replace(c, check=None) if c.id == "R4" else c for c in paper_checks.CLAIMS]
    monkeypatch.setattr(paper_checks, "CLAIMS", unbuilt)
    assert paper_checks.main(["--only", "R4", "--out-dir", str(tmp_path), "--no-report"]) == 0
    (row,) = json.loads((tmp_path / "paper_checks.json").read_text())["checks"]
    assert row["verdict"] == "not run" and "length_2x2" in row["note"] and row["steps"] == "all"
    assert not (tmp_path / "length_2x2").exists()


def test_unknown_only_ids_are_one_line_errors_naming_them(tmp_path, capsys):
    assert paper_checks.main(["--only", "R1,X9,Q7", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "X9, Q7" in err and err.startswith("paper_checks: error: unknown claim id(s)")
    assert not (tmp_path / "paper_checks.json").exists()


# ----- statistical claims: M2 on hand-written runs


def write_inner_epoch_runs(root, increments, seeds=5, steps=6):
    """<root>/inner_epochs/mu4/seed<k>/metrics.jsonl: inner/<k>/clip_frac = 0.01 + increments[k-2] summed up to k
    (0.01 at k = 1), plus normal noise of sd 0.003 per run, step and k (fixed seed); kl_old the same / 10."""
    rng = np.random.default_rng(0)
    for seed in range(seeds):
        run = root / "inner_epochs" / "mu4" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"inner_epochs": 4, "seed": seed}))
        lines = []
        for step in range(steps + 1):
            record = {"step": step, "samples": 8 * step, "tokens": 100 * step}
            value = 0.01
            for k in range(1, 5):
                value += increments[k - 2] if k >= 2 else 0.0
                wobble = rng.normal(0.0, 0.003)
                record[f"inner/{k}/clip_frac"] = value + wobble
                record[f"inner/{k}/kl_old"] = (value + wobble) / 10
            lines.append(json.dumps(record))
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("increments, verdict", [((0.02, 0.03, 0.04), "held"),
                                                  ((-0.02, -0.03, -0.04), "contradicted"),
                                                  ((0.0, 0.0, 0.0), "not detected at this budget")])
def test_m2_reads_the_direction_planted_in_the_runs(tmp_path, increments, verdict):
    write_inner_epoch_runs(tmp_path, increments)
    claim = next(c for c in paper_checks.CLAIMS if c.id == "M2")
    result = paper_checks.run_claim(claim, tmp_path)
    assert result.verdict == verdict, (result.measured, result.note)
    assert result.seeds == 5 and result.steps == 6
    assert "clip_frac k1->2" in result.measured and "kl_old k3->4" in result.measured
    if verdict == "not detected at this budget":
        assert "detectable size in the family with these seeds" in result.note


def test_s_claims_share_their_sweeps_arms_and_a_missing_sweep_is_not_run(tmp_path):
    claims = paper_checks.select(paper_checks.CLAIMS, ["M2", "M3", "R1"], False)
    assert paper_checks.sweep_arms(claims) == {"inner_epochs": ["mu4", "mu1", "mu2"]}   # M2's, then M3's
    result = paper_checks.run_claim(claims[1], tmp_path)                      # M2, no runs under tmp_path
    assert result.verdict == "not run" and "AnalysisError" in result.note


def test_a_check_that_raises_is_recorded_not_run_and_the_command_exits_1(tmp_path, monkeypatch):
    broken = paper_checks.Claim("R1", "x", "y", "z", "E", lambda: 1 / 0)
    monkeypatch.setattr(paper_checks, "CLAIMS", [broken if c.id == "R1" else c for c in paper_checks.CLAIMS])
    assert paper_checks.main(["--only", "R1", "--out-dir", str(tmp_path), "--no-report"]) == 1
    (row,) = json.loads((tmp_path / "paper_checks.json").read_text())["checks"]
    assert row["verdict"] == "not run" and "ZeroDivisionError" in row["note"]


def write_group_size_runs(root, sign, seeds=4, steps=20):
    """<root>/group_size/G<g>/seed<k>: zero_var/frac = 0.5 + sign * (0.3 - 0.1 log2 G) and all_correct_frac =
    0.1 + sign * 0.01 step, each plus normal noise of sd 0.02 (fixed seed). sign +1 is the claim's direction."""
    rng = np.random.default_rng(1)
    for g in (2, 4, 8, 16):
        for seed in range(seeds):
            run = root / "group_size" / f"G{g}" / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "config.json").write_text(json.dumps({"group_size": g, "seed": seed}))
            records = [{"step": 0, "samples": 0, "tokens": 0, "eval/accuracy": 0.5}]
            records += [{"step": step, "samples": 64 * step, "tokens": 640 * step,
                         "zero_var/frac": 0.5 + sign * (0.3 - 0.1 * math.log2(g)) + rng.normal(0, 0.02),
                         "zero_var/all_correct_frac": 0.1 + sign * 0.01 * step + rng.normal(0, 0.02)}
                        for step in range(1, steps + 1)]
            (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")


@pytest.mark.parametrize("sign, verdict", [(1, "held"), (-1, "contradicted")])
def test_g3_reads_the_direction_planted_in_the_runs(tmp_path, sign, verdict):
    write_group_size_runs(tmp_path, sign)
    claim = next(c for c in paper_checks.CLAIMS if c.id == "G3")
    result = paper_checks.run_claim(claim, tmp_path)
    assert result.verdict == verdict, (result.measured, result.note)
    assert result.seeds == 4 and result.steps == 20 and "early = steps 1..2" in result.note
    assert "zero_var/frac G2-G4" in result.measured and "all_correct slope G16" in result.measured


def test_a_sweep_without_the_claims_arms_is_an_error_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setitem(paper_checks.SWEEPS, "inner_epochs", ("experiments.group_size", "a sweep without mu4"))
    with pytest.raises(paper_checks.GrpoError, match="has no arm"):
        paper_checks.run_sweep("inner_epochs", ["mu4"], tmp_path, True, 1)


@pytest.mark.parametrize("quick, seeds, steps", [(True, 3, 40), (False, 5, 80)])
def test_the_budgets_plan_their_seeds_and_steps_on_the_quick_cadence(tmp_path, quick, seeds, steps):
    from experiments import length_2x2, sweep

    args, train_args = sweep.parse_args(length_2x2.EXPERIMENT, ["--out-dir", str(tmp_path), "--arms", "grpo",
                                                                *paper_checks.budget_flags(quick)])
    runs = sweep.plan_runs(length_2x2.EXPERIMENT, args.out_dir, list(range(args.seeds)),
                           {"quick": args.quick, "steps": args.steps, "train_args": train_args, "arms": args.arms},
                           args.parallel)
    assert [r.seed for r in runs] == list(range(seeds))
    assert {(r.config.steps, r.config.eval_every) for r in runs} == {(steps, 20)}   # length_2x2's evals: 0, 20, ...
