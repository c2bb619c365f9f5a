"""analysis.report end to end on hand-written synthetic sweeps, and the CLI's handling of bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.report import write_report

REPO = Path(__file__).resolve().parents[1]
ALL_FIGURES = ["eval_curve", "reward_curve", "train_accuracy", "format_partial", "length_curve",
               "zero_variance", "kl", "inner_epochs", "length"]


# ----- helpers: a synthetic sweep with every metric the figures use -----

def eval_accuracy(arm, seed, step):
    """grpo scores 0.25 at step 3 and 0.5 at step 6, dr_grpo 0.125 more; each seed adds 0.125.

    So a run's final score (mean of its eval points after step 0) is 0.375 + 0.125 * seed for grpo:
    grpo seeds score 37.5, 50, 62.5 (mean 50.0), dr_grpo 62.5 (mean), a paired +12.5 points each.
    """
    base = {0: 0.0, 3: 0.25, 6: 0.5}[step] + 0.125 * seed
    return base + (0.125 if arm == "dr_grpo" and step > 0 else 0.0)


def training_record(step, seed):
    p = 0.3 + 0.05 * step
    return {"reward/mean": p, "accuracy": p, "zero_var/frac": 0.25, "zero_var/all_correct_frac": 0.05,
            "zero_var/all_wrong_frac": 0.15, "accuracy/constant_group_frac": 0.3,
            "zero_var/expected_frac": 0.18, "kl/k1": 0.01 * step,
            "kl/k2": 0.011 * step, "kl/k3": 0.009 * step + 0.001 * seed,
            "inner/1/clip_frac": 0.0, "inner/1/kl_old": 0.0, "inner/2/clip_frac": 0.03, "inner/2/kl_old": 0.002,
            "len/correct_mean": 100.0 + step, "len/wrong_mean": 150.0 + 2 * step, "len/mean": 125.0 + 1.5 * step,
            "reward/format_partial/mean": 0.2 + 0.01 * step}


def probe_record(arm, step, seed):
    """The trainer's probes: two difficulty levels, the length bias, the prompt ledger, and counterfactual
    gradients every 2 steps. Half the groups are d1 (accuracy 0.9), with weight 0.5 + 0.1 * seed under
    dr_grpo and 0.1 more under grpo; the other half d2 (accuracy 0.4), weight 0.5."""
    d1_weight = 0.5 + 0.1 * seed + (0.1 if arm == "grpo" else 0.0)
    record = {"by_difficulty/d1/accuracy": 0.9, "by_difficulty/d1/weight": d1_weight,
              "by_difficulty/d1/groups": 0.5, "by_difficulty/d2/accuracy": 0.4, "by_difficulty/d2/weight": 0.5,
              "by_difficulty/d2/groups": 0.5, "bias/len_corr_neg": -0.2, "bias/len_corr_pos": 0.1,
              "ledger/revisit_frac": 0.5, "ledger/zero_var_measured": 0.3, "ledger/zero_var_predicted": 0.2,
              **{f"ledger/{move}": 0.1 for move in ("wrong_to_mixed", "mixed_to_correct", "wrong_to_correct",
                                                     "correct_to_mixed", "mixed_to_wrong", "correct_to_wrong")}}
    if step % 2 == 0:
        record.update({"cf/aggregation=token_mean/cos": 0.9, "cf/aggregation=token_mean/norm_ratio": 1.1})
    return record


def write_sweep(root, arms=("grpo", "dr_grpo"), seeds=(0, 1, 2), steps=6, lean=False, skip=(), statuses=None,
                drop=(), probes=False):
    """<root>/sweep.json and <root>/<arm>/seed<k>/ for every arm and seed not in `skip`; metrics in
    `drop` are left out of the training records (as a run from before they existed); `probes` adds
    `probe_record`'s keys."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.json").write_text(json.dumps({
        "experiment": "std_norm", "arms": {a: {"advantage": a} for a in arms}, "seeds": list(seeds),
        "budget": "prompts per step (2) and steps", "baseline": arms[0], "knob": None,
        "created": "2025-01-01T00:00:00", "git_commit": "deadbee",
        "versions": {"torch": "2.13.0", "transformers": "4.57.0", "grpo_lab": "0.1.0"}}))
    for arm in arms:
        for seed in seeds:
            if (arm, seed) in skip:
                continue
            run = root / arm / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "config.json").write_text(json.dumps({
                "experiment": "std_norm", "arm": arm, "seed": seed, "advantage": arm, "group_size": 4,
                "kl_beta": 0.04, "steps": steps, "eval_every": 3, "inner_epochs": 2}))
            lines = []
            for step in range(steps + 1):
                rec = {"step": step, "samples": 8 * step, "tokens": 800 * step, "time/elapsed": float(step)}
                if step > 0:
                    rec.update({"reward/mean": 0.3 + 0.05 * step} if lean else training_record(step, seed))
                    rec.update(probe_record(arm, step, seed) if probes else {})
                    rec = {k: v for k, v in rec.items() if k not in drop}
                if step % 3 == 0:
                    rec["eval/accuracy"] = eval_accuracy(arm, seed, step)
                lines.append(json.dumps(rec))
            (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
            status = (statuses or {}).get((arm, seed), "finished")
            (run / "summary.json").write_text(json.dumps({
                "status": status, "steps_done": steps, "final": {},
                "error": "boom: NaN loss" if status == "failed" else None}))
    return root


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "analysis.report", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


# ----- tests -----

def test_report_end_to_end_on_a_2_arm_3_seed_sweep(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    report = write_report([sweep])
    assert report == (sweep / "report.md").resolve()
    text = report.read_text()
    html = (sweep / "report.html").read_text()
    # Eval points at steps 3 and 6: the score averages 2 of the default window's 3, and says so.
    assert "averaged over its last 3 eval points after step 0 (here 2) (no smoothing)" in text

    for name in ALL_FIGURES:
        png, svg = sweep / "figures" / f"{name}.png", sweep / "figures" / f"{name}.svg"
        assert png.read_bytes()[:4] == b"\x89PNG", name
        assert "<svg" in svg.read_text()[:2000], name
        assert f"figures/{name}.png" in text
    assert html.count("data:image/png;base64,") == len(ALL_FIGURES)

    # What was run.
    assert "| budget held fixed | prompts per step (2) and steps |" in text
    assert "deadbee" in text and "torch 2.13.0" in text and "grpo (baseline), dr_grpo" in text
    # Final table, numbers from eval_accuracy's docstring. grpo: 37.5, 50, 62.5 have s = 12.5, so the
    # half-width is t_{0.975,2} * 12.5 / sqrt(3) = 4.3027 * 7.217 = 31.05. IQM of 3 seeds trims nothing.
    assert "| grpo | 3 | 50.0 [18.9, 81.1] | = mean (n < 4 trims nothing) | baseline |" in text
    assert "| dr_grpo | 3 | 62.5 [31.4, 93.6] |" in text
    # Every seed differs by exactly 12.5: no spread, so no interval and no verdict (it used to read
    # "+12.5 [12.5, 12.5] (3 pairs): higher").
    assert "| +12.5 (3 pairs): no verdict: identical differences, no spread |  |  | no spread |" in text
    # Data-generated captions.
    assert "dr_grpo vs grpo: +12.5 points, 3 seeds: no verdict: identical differences, no spread" in text
    assert ("All correct or all wrong (accuracy/constant_group_frac) vs the share expected if every prompt "
            "had the step's solve rate pbar, pbar^G + (1-pbar)^G (zero_var/expected_frac): "
            "grpo 30.0 vs 18.0, dr_grpo 30.0 vs 18.0") in text
    assert "Zero reward variance, no gradient (zero_var/frac): grpo 25.0, dr_grpo 25.0." in text
    assert "Fewer than 5 seeds (grpo: 3, dr_grpo: 3): the t-intervals are valid but wide" in text
    assert "too narrow" not in text and "bootstrap" not in text


def test_cli_prints_the_report_path_last(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", lean=True)
    result = run_cli(sweep, "--out", tmp_path / "out", "--x", "samples")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == str((tmp_path / "out" / "report.md").resolve())
    assert any("report.html" in line for line in lines[:-1])
    assert (tmp_path / "out" / "report.html").is_file()
    assert "x axis: samples" in (tmp_path / "out" / "report.md").read_text()


def test_absent_metrics_skip_their_figures(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", lean=True)  # only reward/mean and eval/accuracy
    write_report(sweep)
    assert sorted(p.stem for p in (sweep / "figures").glob("*.png")) == ["eval_curve", "reward_curve"]


def test_one_seed_sweep_says_plainly_that_no_ci_is_possible(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", seeds=(0,), lean=True)
    text = write_report(sweep).read_text()
    assert "Only one seed per arm: no confidence interval is possible" in text
    assert "| grpo | 1 | 37.5 (no CI: 1 seed) |" in text
    assert "dr_grpo vs grpo: +12.5 points (no CI: 1 seed), 1 seed" in text


def test_failed_missing_and_unfinished_runs_are_warned(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", lean=True, skip={("dr_grpo", 2)},
                        statuses={("grpo", 1): "failed", ("grpo", 2): "running"})
    (sweep / "grpo" / "seed0" / "metrics.jsonl").open("a").write('{"step": 7, "sam')
    text = write_report(sweep).read_text()
    assert "grpo/seed1 failed after 6 steps: boom: NaN loss" in text
    assert "1 run(s) missing (declared in sweep.json, no run on disk): dr_grpo/seed2" in text
    assert "1 run(s) unfinished" in text and "grpo/seed2" in text
    assert "truncated last line" in text and "grpo/seed0/metrics.jsonl" in text
    assert "| dr_grpo | 2 | missing |" in text


@pytest.mark.parametrize("make_input", [lambda tmp: tmp / "does-not-exist", lambda tmp: tmp])
def test_cli_bad_input_is_one_error_line_and_exit_2(tmp_path, make_input):
    result = run_cli(make_input(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_analysis_never_imports_torch():
    code = "import analysis.report, sys; assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_iqm_is_reported_from_4_seeds_without_a_ci(tmp_path):
    # grpo seeds 0, 1, 2, 5 score 37.5, 50, 62.5, 100 (eval_accuracy): mean 62.5; the IQM trims one
    # from each end, mean(50, 62.5) = 56.25, shown as 56.2 (round half to even).
    sweep = write_sweep(tmp_path / "sweep", seeds=(0, 1, 2, 5), lean=True)
    text = write_report(sweep).read_text()
    assert "| arm | seeds | mean [95% CI] | IQM (no CI) |" in text
    assert "| grpo | 4 | 62.5 [" in text and "] | 56.2 | baseline |" in text
    assert "trims nothing" not in text and "Fewer than 5 seeds (grpo: 4, dr_grpo: 4)" in text


def test_zero_variance_figure_and_caption_without_constant_group_frac(tmp_path):
    # A run from before accuracy/constant_group_frac: the figure is still drawn, the caption says why
    # there is no comparison with the theory.
    sweep = write_sweep(tmp_path / "sweep", drop={"accuracy/constant_group_frac"})
    text = write_report(sweep).read_text()
    assert (sweep / "figures" / "zero_variance.png").is_file()
    assert "No comparison with theory: accuracy/constant_group_frac not logged" in text
    assert "Zero reward variance, no gradient (zero_var/frac): grpo 25.0, dr_grpo 25.0." in text
    assert "figure zero_variance failed" not in text


def test_probe_figures_and_claims_in_the_report(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", probes=True)
    text = write_report(sweep).read_text()
    for name in ["difficulty_weight", "ledger", "counterfactual", "length"]:
        assert (sweep / "figures" / f"{name}.png").is_file(), name
    assert "failed" not in text
    # d1's share, w / (w + 0.5): grpo 0.6/1.1, 0.7/1.2, 0.8/1.3 against dr_grpo 0.5/1.0, 0.6/1.1, 0.7/1.2,
    # paired differences 0.04545, 0.03788, 0.03205: mean 0.03846, s 0.006721, half-width
    # 4.30265 * 0.006721 / sqrt(3) = 0.01670, so [0.0218, 0.0552] in points (one pair: a family of one).
    assert ('Claim "std normalisation up-weights near-solved groups" (the easiest level\'s share under advantage=grpo '
            "minus under advantage=dr_grpo, paired by seed; it holds if positive; 95% t-interval): grpo vs dr_grpo, "
            "easiest level with signal d1: holds (+3.8 points [2.2, 5.5]), 3 seeds.") in text
    assert "it needs two arms that differ only in aggregation (seq_mean_token_mean vs" in text
    # Measured minus predicted is 10 points in every run: no spread, no verdict.
    assert "grpo 30.0 vs 20.0, difference +10.0 points, 3 seeds: no verdict: identical differences" in text
    assert "grpo: lowest cosine aggregation=token_mean 0.90 (no spread)" in text


def test_probe_figures_are_skipped_without_their_keys(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")  # every other metric, no probe
    write_report(sweep)
    drawn = {p.stem for p in (sweep / "figures").glob("*.png")}
    assert not drawn & {"difficulty_weight", "ledger", "counterfactual"} and "length" in drawn


# ----- rescored arms, matched compute, warm start, departures, --effect -----

def add_rescored_run(sweep, arm="grpo", name="dr", seeds=(0, 1, 2)):
    """<arm>/seed<k>/rescore/<name>/ as `grpo rescore` writes it: arm '<arm>@<name>', the run's own steps,
    and (for this test) the run's eval/accuracy copied, so a paired difference to its run would be exactly 0."""
    for seed in seeds:
        run = sweep / arm / f"seed{seed}"
        out = run / "rescore" / name
        out.mkdir(parents=True)
        config = json.loads((run / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**config, "arm": f"{arm}@{name}", "advantage": "dr_grpo"}))
        (out / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text())
        (out / "summary.json").write_text(json.dumps({"status": "finished", "steps_done": 6, "final": {}}))


def test_rescored_arms_stay_out_of_the_final_scores_and_outcome_curves(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", probes=True)
    add_rescored_run(sweep)
    text = write_report(sweep).read_text()
    table = text.split("### Final scores")[1].split("### Figures")[0]
    assert "grpo@dr" not in table and "0.0 [0.0, 0.0]" not in text
    eval_caption = text.split("![Eval accuracy]")[1].split("####")[0]
    assert "grpo@dr" not in eval_caption
    assert "Rescored arms (grpo@dr) share their run's rollouts" in text
    assert "grpo@dr (rescored, not trained)" in text
    # It stays in the probe figures, where the comparison is on the same rollouts.
    ledger_caption = text.split("![Prompt ledger]")[1].split("####")[0]
    assert "grpo@dr 30.0 vs 20.0" in ledger_caption
    # grpo@dr has advantage=dr_grpo and grpo's rollouts: a pair for the std claim, marked as exact.
    assert "grpo vs grpo@dr (same rollouts), easiest level with signal d1:" in text
    # The length-bias probe is read on the same rollouts too, so the rescoring is in its caption; the
    # lengths themselves are an outcome of training, so not in the length caption.
    bias_caption = text.split("![Length bias")[1].split("####")[0]
    assert "(bias/len_corr_neg), mean over the steps that logged it:" in bias_caption and "grpo@dr" in bias_caption
    length_caption = text.split("![Length of correct vs wrong")[1].split("####")[0]
    assert "grpo@dr" not in length_caption and "bias/len_corr" not in length_caption


def test_matched_axis_from_the_x_axis_or_the_budget_held_fixed():
    from analysis.report import matched_axis

    assert matched_axis("completions per step (16) and steps (40)", "step") is None
    assert matched_axis("completions per step (16) and steps (40)", "tokens") == "tokens"
    assert matched_axis("generated samples (the report's x axis); prompts per step and steps are equal", "step") \
        == "samples"
    assert matched_axis("tokens generated", "step") == "tokens" and matched_axis(None, "step") is None


def double_sampler_sweep(root):
    """Arm 'dynamic' samples twice as many completions per step as 'grpo' (16 vs 8 per step)."""
    sweep = write_sweep(root, arms=("grpo", "dynamic"), lean=True)
    for seed in (0, 1, 2):
        path = sweep / "dynamic" / f"seed{seed}" / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**r, "samples": 16 * r["step"]}) + "\n" for r in records))
    return sweep


def test_equal_steps_with_unequal_samples_are_warned_and_samples_x_scores_at_matched_compute(tmp_path):
    sweep = double_sampler_sweep(tmp_path / "sweep")
    text = write_report(sweep).read_text()
    assert ("Compared at equal steps, but the arms had sampled different numbers of completions by then "
            "(grpo 48, dynamic 96, mean over seeds): not matched compute") in text
    # At equal steps both arms score as in eval_accuracy: 37.5, 50, 62.5 by seed (paired differences all 0).
    assert "| 0.0 (3 pairs): no verdict" in text
    # At matched samples: grpo reaches 48 samples at step 6 (its evals after step 0: 24 and 48 samples),
    # dynamic at step 3. Both are scored at grpo's eval points, 24 and 48 samples. grpo keeps 37.5, 50, 62.5.
    # dynamic (evals 0.125 * seed at 0 samples, 0.25 + 0.125 * seed at 48): at 24 halfway, 0.125 + 0.125 *
    # seed; at 48, 0.25 + 0.125 * seed; mean 18.75, 31.25, 43.75 (mean 31.25, s 12.5, t(0.975, 2) 4.303:
    # +-31.05). Every seed's difference is -18.75: no spread, no verdict.
    text = write_report(sweep, out_dir=tmp_path / "samples", x="samples").read_text()
    assert "At matched compute: every run is scored at 48 samples, the most that all of them reached" in text
    assert "| dynamic | 3 | 31.2 [0.2, 62.3] |" in text and "| −18.8 (3 pairs): no verdict" in text
    assert "Compared at equal steps" not in text


def set_configs(sweep, **fields):
    """Rewrite every run's config.json with `fields`; a callable value gets (arm, seed)."""
    for config_path in sweep.glob("*/seed*/config.json"):
        config = json.loads(config_path.read_text())
        config.update({k: v(config["arm"], config["seed"]) if callable(v) else v for k, v in fields.items()})
        config_path.write_text(json.dumps(config))


def test_report_says_what_the_seeds_vary_and_shows_the_departures(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", lean=True)
    set_configs(sweep, warmstart_seed=0)
    spec = json.loads((sweep / "sweep.json").read_text())
    spec["departures"] = {"dr_grpo": "no std normalisation but the paper's token-sum norm"}
    (sweep / "sweep.json").write_text(json.dumps(spec))
    text = write_report(sweep).read_text()
    assert ("| warm start | one shared by all seeds of an arm (warmstart_seed 0): the seeds vary the RL run only, "
            "so every interval is conditional on that warm start |") in text
    assert "What the seeds vary: the warm start is one shared by all seeds" in text
    assert "Deliberate departures from the paper:" in text
    assert "| dr_grpo | no std normalisation but the paper's token-sum norm |" in text

    set_configs(sweep, warmstart_seed=lambda arm, seed: seed)
    text = write_report(sweep).read_text()
    assert "one per seed (warmstart_seed varies with the seed): the intervals include the warm start's variance" in text


def test_cli_effect_adds_the_seeds_needed_column_and_refuses_a_non_positive_effect(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", arms=("grpo", "dr_grpo", "G4"), lean=True)
    assert run_cli(sweep, "--effect", "2").returncode == 0
    assert "| seeds for 2.0 points |" in (sweep / "report.md").read_text()
    bad = run_cli(sweep, "--effect", "0")
    assert bad.returncode == 2 and bad.stderr.startswith("error: effect must be a positive number")


def test_sweep_takes_effect_for_its_report():
    from experiments.demo import EXPERIMENT
    from experiments.sweep import parse_args

    args, _ = parse_args(EXPERIMENT, ["--effect", "1.5"])
    assert args.effect == 1.5
    assert parse_args(EXPERIMENT, [])[0].effect == 1.0      # the demo asks how many seeds a 1-point question needs
    from experiments.std_norm import EXPERIMENT as STD_NORM
    assert parse_args(STD_NORM, [])[0].effect is None       # no column unless an experiment or the user names one
    with pytest.raises(SystemExit):     # refused before any run, not after the sweep
        parse_args(EXPERIMENT, ["--effect", "0"])


# ----- the "Paper checks" table from a hand-written paper_checks.json

PAPER_CHECKS = {"checks": [
    {"id": "R2", "claim": "std multiplies A by 1/sigma_k", "source": "Dr. GRPO 2503.20783", "quantity": "ratio",
     "kind": "E", "verdict": "held", "measured": "max |error| 2.2e-16", "error": 2.2e-16, "tolerance": 1e-9,
     "note": ""},
    {"id": "Q2", "claim": "GDPO separates (1,0) and (0,1)", "source": "GDPO 2601.05242", "quantity": "gap",
     "kind": "E", "verdict": "contradicted", "measured": "gap 0 in 452 of 700 groups", "error": 0.27,
     "tolerance": 1e-9, "note": "ties when the stds are equal"},
    {"id": "R4", "claim": "GRPO grows wrong lengths", "source": "Dr. GRPO Fig. 5", "quantity": "slope", "kind": "S",
     "verdict": "not detected at this budget", "measured": "+0.4 [-0.2, 1.0] tokens/step", "seeds": 5,
     "steps": "all", "sweep": "length_2x2", "note": "detectable: 0.9 tokens/step"}]}


def test_paper_checks_alone_make_a_report_with_the_table(tmp_path):
    (tmp_path / "paper_checks.json").write_text(json.dumps(PAPER_CHECKS))
    report = write_report(tmp_path).read_text()
    assert "## Paper checks" in report and "## Experiment" not in report
    assert "On this harness, 3 claims: 1 held, 1 not detected at this budget, 1 contradicted." in report
    assert ("| Q2 | GDPO separates (1,0) and (0,1) | GDPO 2601.05242 | gap | gap 0 in 452 of 700 groups | contradicted "
            "| ties when the stds are equal |") in report
    assert "| max \\|error\\| 2.2e-16 | held |" in report        # a | in a cell is escaped
    assert "seeds 5, steps all, sweep length_2x2; detectable: 0.9 tokens/step" in report
    assert "<th>budget and notes</th>" in (tmp_path / "report.html").read_text()


def test_paper_checks_come_before_the_experiments_beside_a_sweep(tmp_path):
    write_sweep(tmp_path / "std_norm")
    (tmp_path / "paper_checks.json").write_text(json.dumps(PAPER_CHECKS))
    report = write_report(tmp_path).read_text()
    assert report.index("## Paper checks") < report.index("## Experiment: std_norm")


def test_a_broken_paper_checks_file_is_an_analysis_error(tmp_path):
    from analysis.load import AnalysisError
    (tmp_path / "paper_checks.json").write_text(json.dumps({"checks": [{"id": "R2"}]}))
    with pytest.raises(AnalysisError, match="not a paper checks file"):
        write_report(tmp_path)
