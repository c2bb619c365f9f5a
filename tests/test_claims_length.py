"""The length_2x2 paper checks (R4, R5, P8, D5) on planted runs (a null reads not detected, a planted effect held,
a reversed one contradicted), eval/pass@16 by hand, and the arithmetic_rambling task's free-length wrong answers."""

import json

import numpy as np
import pytest
import torch

from experiments import length_2x2, paper_checks
from experiments import claims_length as stat
from grpo import GrpoError
from grpo.engine.evaluation import pass_at_k_metrics
from grpo.setup.config import TrainConfig
from grpo.setup.rewards import correct_reward, response_text
from grpo.setup.tasks import Arithmetic, ArithmeticRambling

NULL, HELD, CONTRADICTED = "not detected at this budget", "held", "contradicted"
SETTINGS = length_2x2.ARM_SETTINGS


def write_runs(root, wrong_slope=None, mean_slope=None, pass1_change=0.1, pass16_change=0.1, seeds=5, steps=20,
               accuracy=None):
    """<root>/length_2x2/<arm>/seed<k>: len/wrong_mean = 30 + wrong_slope[arm] * step, len/mean = 25 +
    mean_slope[arm] * step (0 slope for arms not named), accuracy 0.6 (or accuracy[arm]), each plus normal noise
    of sd 0.5 (lengths) or 0.02 (accuracy) per run and step; evals at step 0 (pass@1 0.5, pass@16 0.9) and at the
    last step (plus the changes), each with noise of sd 0.02. Fixed seed."""
    rng = np.random.default_rng(7)
    wrong_slope, mean_slope = wrong_slope or {}, mean_slope or {}
    for arm, (advantage, aggregation) in SETTINGS.items():
        for seed in range(seeds):
            run = root / "length_2x2" / arm / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "config.json").write_text(json.dumps({"seed": seed, "advantage": advantage,
                                                         "aggregation": aggregation}))
            records = [{"step": 0, "samples": 0, "tokens": 0, "eval/accuracy": 0.5,
                        "eval/pass@1": 0.5 + rng.normal(0, 0.02), "eval/pass@16": 0.9 + rng.normal(0, 0.02)}]
            for step in range(1, steps + 1):
                records.append({"step": step, "samples": 128 * step, "tokens": 4000 * step,
                                "len/wrong_mean": 30 + wrong_slope.get(arm, 0.0) * step + rng.normal(0, 0.5),
                                "len/mean": 25 + mean_slope.get(arm, 0.0) * step + rng.normal(0, 0.5),
                                "accuracy": (accuracy or {}).get(arm, 0.6) + rng.normal(0, 0.02)})
            records[-1].update({"eval/accuracy": 0.6,
                                "eval/pass@1": 0.5 + pass1_change + rng.normal(0, 0.02),
                                "eval/pass@16": 0.9 + pass16_change + rng.normal(0, 0.02)})
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def claim_result(claim_id, root):
    claim = next(c for c in paper_checks.CLAIMS if c.id == claim_id)
    return paper_checks.run_claim(claim, root)


@pytest.mark.parametrize("slopes, verdict", [({"grpo": 0.3}, HELD), ({"dr_grpo": 0.3}, CONTRADICTED),
                                             ({"grpo": 0.2, "dr_grpo": 0.2}, NULL)])
def test_r4_reads_the_wrong_length_slope_planted(tmp_path, slopes, verdict):
    write_runs(tmp_path, wrong_slope=slopes)
    result = claim_result("R4", tmp_path)
    assert result.verdict == verdict, (result.measured, result.note)
    assert result.seeds == 5 and result.steps == 20
    assert "len/wrong_mean slope grpo-dr_grpo" in result.measured
    assert "accuracy grpo-dr_grpo" in result.note and "about equal" in result.note   # planted equal: 0.6 each


def test_r4_says_when_accuracy_is_not_about_equal_and_keeps_its_verdict(tmp_path):
    # grpo's accuracy 0.7 against dr_grpo's 0.6: the difference 0.1 lies outside +-0.05.
    write_runs(tmp_path, wrong_slope={"grpo": 0.3}, accuracy={"grpo": 0.7})
    result = claim_result("R4", tmp_path)
    assert result.verdict == HELD and "not shown within +-0.05" in result.note
    assert float(result.note.split("accuracy grpo-dr_grpo ")[1].split()[0]) == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("slopes, verdict, std_detected", [
    ({"grpo": 0.3, "no_std": 0.3}, HELD, False),                          # normalisation only: N 0.3, S 0
    ({"grpo": 0.4, "no_std": 0.3, "std_sum_norm": 0.1}, HELD, True),      # N 0.3 > S 0.1, both found
    ({"std_sum_norm": 0.3, "dr_grpo": 0.3}, CONTRADICTED, False),         # normalisation lowers it: N -0.3
    ({"grpo": 0.3, "std_sum_norm": 0.3}, CONTRADICTED, True),             # std drives it: N 0, S 0.3, N-S < 0
    ({arm: 0.2 for arm in SETTINGS}, NULL, False),
])
def test_r5_reads_which_factor_the_planted_slope_follows(tmp_path, slopes, verdict, std_detected):
    write_runs(tmp_path, wrong_slope=slopes)
    result = claim_result("R5", tmp_path)
    assert result.verdict == verdict, (result.measured, result.note)
    assert result.seeds == 5 and "norm main effect N" in result.measured
    assert ("std main effect S" in result.note) and (("(detected)" in result.note) == std_detected), result.note


def test_r5_main_effects_by_hand(tmp_path):
    # Slopes (tokens/step) grpo 0.4, no_std 0.3, std_sum_norm 0.1, dr_grpo 0: N = (0.4 + 0.3 - 0.1 - 0)/2 = 0.3,
    # N + S = grpo - dr_grpo = 0.4, N - S = no_std - std_sum_norm = 0.2, S = (0.4 + 0.1 - 0.3 - 0)/2 = 0.1.
    # Noise sd 0.5 per step over 20 steps: a run's slope error sd 0.5 / sqrt(665) = 0.019, so means within 0.04.
    write_runs(tmp_path, wrong_slope={"grpo": 0.4, "no_std": 0.3, "std_sum_norm": 0.1})
    result = claim_result("R5", tmp_path)
    means = [float(part.split(" [")[0].split()[-1]) for part in result.measured.split("; ")]
    assert means == pytest.approx([0.3, 0.4, 0.2], abs=0.04)
    assert float(result.note.split("std main effect S ")[1].split()[0]) == pytest.approx(0.1, abs=0.04)


@pytest.mark.parametrize("slopes, verdict", [({"grpo": 0.3}, HELD), ({"token_mean": 0.3}, CONTRADICTED),
                                             ({"grpo": -0.2, "token_mean": -0.2}, NULL)])
def test_p8_reads_the_length_slope_planted(tmp_path, slopes, verdict):
    write_runs(tmp_path, mean_slope=slopes, wrong_slope={"grpo": 0.3})   # R4's wrong slope must not leak in
    result = claim_result("P8", tmp_path)
    assert result.verdict == verdict, (result.measured, result.note)
    assert result.seeds == 5 and "len/mean slope grpo-token_mean" in result.measured


@pytest.mark.parametrize("pass1, pass16, verdict", [(0.2, 0.0, HELD), (0.0, 0.2, CONTRADICTED), (0.1, 0.1, NULL)])
def test_d5_reads_the_pass_at_k_changes_planted(tmp_path, pass1, pass16, verdict):
    write_runs(tmp_path, pass1_change=pass1, pass16_change=pass16)
    result = claim_result("D5", tmp_path)
    assert result.verdict == verdict, (result.measured, result.note)
    assert result.seeds == 5 and result.steps == 20
    change = float(result.note.split("change of pass@1 ")[1].split()[0])
    assert change == pytest.approx(pass1, abs=0.03)        # 5 seeds, noise sd 0.02 at each end


def test_d5_without_pass_at_16_is_not_applicable(tmp_path):
    write_runs(tmp_path)
    for path in (tmp_path / "length_2x2" / "grpo").glob("seed*/metrics.jsonl"):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "eval/pass@16"}) + "\n"
                                for r in records))
    result = claim_result("D5", tmp_path)
    assert result.verdict == "not applicable" and "eval/pass@16" in result.note


def test_the_claims_read_the_length_2x2_sweep_and_its_arms_exist():
    assert paper_checks.SWEEPS["length_2x2"][0] == "experiments.length_2x2"
    checks = {"R4": stat.check_r4, "R5": stat.check_r5, "P8": stat.check_p8, "D5": stat.check_d5}
    for claim in paper_checks.CLAIMS:
        if claim.id in checks:
            assert claim.check is checks[claim.id] and claim.sweep == "length_2x2"
            assert set(claim.arms) <= set(length_2x2.EXPERIMENT.arms)
    arms = length_2x2.EXPERIMENT.arms
    assert {arm: (c.advantage, c.aggregation) for arm, c in arms.items()} == {
        "grpo": ("grpo", "seq_mean_token_mean"), "no_std": ("dr_grpo", "seq_mean_token_mean"),
        "std_sum_norm": ("grpo", "seq_mean_token_sum_norm"), "dr_grpo": ("dr_grpo", "seq_mean_token_sum_norm"),
        "token_mean": ("grpo", "token_mean")}
    for config in arms.values():   # only the two knobs differ; D5 needs 16 eval samples; no costly probes
        assert config.task == "arithmetic_rambling" and config.num_eval_samples >= 16
        assert config.counterfactual_every == 0 and config.prompt_pool == 0


# ----- eval/pass@16


def test_pass_at_16_by_hand():
    # n = 16 samples, G = 8, three prompts with c = 0, 4, 16 correct.
    # pass@1 = mean c/n = (0 + 4/16 + 1)/3 = 0.416667.
    # pass@8: 0, 1 - C(12,8)/C(16,8) = 1 - 495/12870 = 0.961538, 1 -> mean 0.653846.
    # pass@16 (k = n): 1 when any sample is correct: (0 + 1 + 1)/3 = 2/3.
    metrics = pass_at_k_metrics([0, 4, 16], 16, 8)
    assert set(metrics) == {"eval/pass@1", "eval/pass@8", "eval/pass@16"}
    assert metrics["eval/pass@1"] == pytest.approx(1.25 / 3, abs=1e-12)
    assert metrics["eval/pass@8"] == pytest.approx((1 - 495 / 12870 + 1) / 3, abs=1e-12)
    assert metrics["eval/pass@16"] == pytest.approx(2 / 3, abs=1e-12)
    # n = 20, c = 2: pass@16 = 1 - C(18,16)/C(20,16) = 1 - 153/4845 = 0.968421.
    assert pass_at_k_metrics([2], 20, 4)["eval/pass@16"] == pytest.approx(1 - 153 / 4845, abs=1e-12)


def test_pass_at_16_is_absent_with_fewer_than_16_samples_and_once_at_g_16():
    assert set(pass_at_k_metrics([1, 2], 8, 8)) == {"eval/pass@1", "eval/pass@8"}
    assert set(pass_at_k_metrics([1, 2], 16, 16)) == {"eval/pass@1", "eval/pass@16"}


# ----- the task variant: wrong completions of free length


def demo_lengths(task, n=2000):
    """(length in tokens with EOS, correct 0/1) of the demonstrations of n training problems drawn by the task."""
    out = []
    for example in task.sample(torch.Generator().manual_seed(0), n):
        demo = task.demonstration(example)
        tokens = len(task.tokenizer(demo.removesuffix("<eos>"), add_special_tokens=False)["input_ids"]) + 1
        out.append((tokens, correct_reward(response_text(demo.removesuffix("<eos>"), example), example)))
    return np.array(out)


def test_rambling_demonstrations_are_wrong_of_varied_length_and_longer_than_right_ones():
    lengths, correct = demo_lengths(ArithmeticRambling(digits="2", rambling=0.25)).T
    wrong = lengths[correct == 0]
    # Binomial share of 2000 draws: sd sqrt(0.25 * 0.75 / 2000) = 0.0097; 3 sd = 0.03.
    assert abs(len(wrong) / len(lengths) - 0.25) < 0.03
    # 1, 2 or 3 passes of the column sums, a third each: a 2-digit pass is "3+4=7 1+2=3" (11 tokens) to
    # "7+5=12 4+8+1=13" (15), plus a space between passes and 7-8 for the tags, answer and EOS: 18-23 tokens for
    # one pass, 30-39 for two, 42-55 for three.
    shares = [np.mean(wrong <= 23), np.mean((wrong >= 30) & (wrong <= 39)), np.mean(wrong >= 42)]
    assert shares == pytest.approx([1 / 3] * 3, abs=0.06) and sum(shares) == 1
    assert wrong.mean() > lengths[correct == 1].mean() + 4


def test_no_rambling_is_arithmetic_and_the_option_is_checked():
    plain, rambling = Arithmetic(digits="2"), ArithmeticRambling(digits="2", rambling=0.0)
    examples = plain.sample(torch.Generator().manual_seed(1), 200)
    assert [rambling.demonstration(e) for e in examples] == [plain.demonstration(e) for e in examples]
    assert demo_lengths(rambling, 300)[:, 1].min() == 1.0
    assert TrainConfig(task="arithmetic_rambling", task_option={"rambling": "0.4"}).task_option == {"rambling": "0.4"}
    with pytest.raises(GrpoError, match="rambling=1.5"):
        TrainConfig(task="arithmetic_rambling", task_option={"rambling": "1.5"})
