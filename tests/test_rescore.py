"""grpo rescore: model-free metrics recomputed from stored rollouts reproduce the run's own, change as the
formulas say under another estimator or aggregation, land in a run directory the analysis reads, and
bad input is one `grpo: error:` line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from analysis.load import find_run_dirs, load_runs, load_statuses
from conftest import MIXED, SMALL_CONFIG, one_error_line
from grpo.commands.cli import main
from grpo.run.runner import train
from grpo.setup.config import TrainConfig

# Keys the rescored record must carry whenever the run logged them (area prefixes and exact names).
REPRODUCED = ("adv/", "reward/", "zero_var/", "len/", "bias/", "accuracy", "accuracy/constant_group_frac",
              "entropy", "samples", "tokens")

RUNS = {
    # seed toy with mixed groups, the run's defaults (grpo, seq_mean_token_mean)
    "mixed": dict(MIXED, experiment="exp", arm="base"),
    # DAPO's truncation masking and overlong shaping (a third reward part), another estimator and aggregation
    "dapo": dict(MIXED, mask_truncated=True, overlong_buffer=4, advantage="rloo", aggregation="token_mean"),
    # arithmetic labels its prompts by difficulty (by_difficulty/*)
    "arithmetic": dict(steps=2),
    # GDPO: each reward function normalised in its group before the sum (rescore forms them as the step did)
    "gdpo": dict(MIXED, reward_normalization="normalize_then_sum", reward_weights={"correct": 1.0, "format": 0.5}),
    # dynamic sampling stores the kept groups only; samples and tokens come from the run's log
    "dynamic": dict(MIXED, dynamic_sampling=True, max_resample_rounds=2),
}


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory):
    """stored_run(kind) -> the run directory of a small --store-rollouts run (trained once per module)."""
    runs = {}

    def make(kind: str) -> Path:
        if kind not in runs:
            values = {**SMALL_CONFIG, "steps": 3, "store_rollouts": True, **RUNS[kind]}
            cfg = TrainConfig(**values, out_dir=str(tmp_path_factory.mktemp(kind) / "run"))
            train(cfg, log=lambda *_: None)
            runs[kind] = cfg.run_dir
        return runs[kind]

    return make


def read_records(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def rescore(args: list[str], capsys) -> Path:
    assert main(["rescore", *map(str, args)]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("rescored ") and " into " in out
    return Path(out.split(" into ")[-1])


def stored(run_dir: Path, step: int) -> dict[str, np.ndarray]:
    """Rank 0's stored tensors of a step, as float64 numpy arrays."""
    with safe_open(str(run_dir / "rollouts" / f"step_{step:06d}_rank0.safetensors"), "pt") as f:
        return {key: f.get_tensor(key).double().numpy() for key in f.keys()}


# ---------------------------------------------------------------- a run by hand, numbers on paper

def write_hand_run(run_dir: Path, correct_name: str = "correct") -> None:
    """Two ranks of one prompt each (G = 2), steps 1 and 2 alike, rank files of different widths T.

    rank 0, level d1: correct [1, 0], format [1, 1], lengths [2, 4] (the 4 truncated), entropy 0.5/token
    rank 1, level d2: correct [1, 1], format [1, 1], lengths [3, 3],                    entropy 0.25/token
    With weights correct 1, format 0.5 the total rewards are [[1.5, 0.5], [1.5, 1.5]]. `correct_name`
    names the correctness reward (correct, or correct_extracted as a pretrained model's run has it).
    """
    cfg = TrainConfig(prompts_per_step=2, group_size=2, max_new_tokens=4, kl_beta=0.0,
                      reward_weights={correct_name: 1.0, "format": 0.5}, out_dir=str(run_dir))
    (run_dir / "rollouts").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
    ranks = [(["d1"], [1.0, 0.0], [2, 4], [0, 1], 0.5), (["d2"], [1.0, 1.0], [3, 3], [0, 0], 0.25)]
    for step in (1, 2):
        for rank, (labels, correct, lengths, truncated, entropy) in enumerate(ranks):
            width = max(lengths)
            mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).float()
            tensors = {"completion_mask": mask, "loss_mask": mask.clone(), "entropy": torch.full_like(mask, entropy),
                       "truncated": torch.tensor(truncated, dtype=torch.uint8),
                       f"reward/{correct_name}": torch.tensor(correct), "reward/format": torch.ones(2)}
            meta = {"step": step, "group_size": 2, "rank": rank, "difficulty": labels}
            save_file(tensors, str(run_dir / "rollouts" / f"step_{step:06d}_rank{rank}.safetensors"),
                      metadata={"meta": json.dumps(meta)})


def test_hand_run_gives_the_numbers_on_paper(tmp_path, capsys):
    run_dir = tmp_path / "exp" / "arm" / "seed0"
    write_hand_run(run_dir)
    out = rescore([run_dir, "--advantage", "dr_grpo", "--mask-truncated"], capsys)
    assert out == run_dir / "rescore" / "advantage=dr_grpo+mask_truncated=true"
    records = read_records(out)
    assert sorted(records) == [1, 2]
    r = records[2]
    expected = {
        "samples": 8, "tokens": 24,                         # 4 completions of 2+4+3+3 tokens per step
        "reward/mean": 1.25, "reward/correct/mean": 0.75, "reward/format/mean": 1.0, "accuracy": 0.75,
        "adv/abs_mean": 0.25, "adv/zero_frac": 0.5, "adv/mean": 0.0,    # dr_grpo: [[0.5, -0.5], [0, 0]]
        "zero_var/frac": 0.5, "zero_var/all_correct_frac": 0.5, "zero_var/all_wrong_frac": 0.0,
        "accuracy/constant_group_frac": 0.5,
        "len/mean": 3.0, "len/max": 4.0, "len/truncated_frac": 0.25, "len/correct_mean": 8 / 3, "len/wrong_mean": 4.0,
        "entropy": (2 * 0.5 + 4 * 0.5 + 6 * 0.25) / 12,
        # seq_mean_token_mean: a completion's loss tokens together weigh |A| / 4; the truncated one has none:
        # d1 0.5 / 4 of a total 0.5 / 4 -> the whole share, d2 (constant group) none
        "by_difficulty/d1/weight": 1.0, "by_difficulty/d2/weight": 0.0, "by_difficulty/d1/zero_var_frac": 0.0,
        "by_difficulty/d2/zero_var_frac": 1.0, "by_difficulty/d1/groups": 0.5, "by_difficulty/d1/accuracy": 0.5,
        # --mask-truncated drops the truncated completion's 4 tokens; the constant group's 6 have A = 0
        "grad_tokens/truncated_frac": 4 / 12, "grad_tokens/zero_adv_frac": 6 / 12, "grad_tokens/active_frac": 2 / 12,
        "grad_tokens/clipped_frac": 0.0,
    }
    for key, value in expected.items():
        assert r[key] == pytest.approx(value, abs=1e-6), key
    assert not any(key.startswith("bias/len_corr") for key in r)      # one completion per sign: no correlation
    # lengths within groups: d1 keeps one completion in the loss (2 tokens), d2's two have 3 each -> spread 0
    assert r["bias/len_spread_within"] == 0.0
    assert records[1]["samples"] == 4 and records[1]["tokens"] == 12
    config = json.loads((out / "config.json").read_text())
    # A run logged without experiment or arm is named by its path, as the analysis names it.
    assert (config["experiment"], config["arm"]) == ("exp", "arm@advantage=dr_grpo+mask_truncated=true")
    assert (config["advantage"], config["mask_truncated"], config["out_dir"]) == ("dr_grpo", True, str(out))
    assert json.loads((out / "summary.json").read_text())["steps_done"] == 2


def test_a_run_judged_by_correct_extracted_gets_its_correctness_keys(tmp_path, capsys):
    """The correctness reward is the run's (TrainConfig.correctness_reward), as in the trainer: the same
    numbers on paper as under `correct` (accuracy 0.75, one all-correct group in two, d1 half right)."""
    run_dir = tmp_path / "exp" / "arm" / "seed0"
    write_hand_run(run_dir, correct_name="correct_extracted")
    r = read_records(rescore([run_dir, "--advantage", "dr_grpo"], capsys))[2]
    for key, value in {"accuracy": 0.75, "zero_var/all_correct_frac": 0.5, "len/correct_mean": 8 / 3,
                       "by_difficulty/d1/accuracy": 0.5, "reward/correct_extracted/mean": 0.75}.items():
        assert r[key] == pytest.approx(value, abs=1e-6), key


def test_same_name_overwrites(tmp_path, capsys):
    run_dir = tmp_path / "run"
    write_hand_run(run_dir)
    first = rescore([run_dir, "--name", "mine"], capsys)
    text = (first / "metrics.jsonl").read_text()
    (first / "metrics.jsonl").write_text(text + text)                 # a stale, longer file
    assert rescore([run_dir, "--name", "mine", "--aggregation", "seq_mean_token_mean"], capsys) == first
    assert (first / "metrics.jsonl").read_text() == text
    assert rescore([run_dir], capsys).name == "same"                   # nothing changed



# ---------------------------------------------------------------- real stored runs

@pytest.mark.parametrize("kind", sorted(RUNS))
def test_own_settings_reproduce_the_logged_metrics(stored_run, kind, capsys):
    run_dir = stored_run(kind)
    out = rescore([run_dir], capsys)
    logged, rescored = read_records(run_dir), read_records(out)
    assert sorted(rescored) == [1, 2, 3][:len(rescored)] and sorted(rescored) == sorted(set(logged) - {0})
    for step, record in rescored.items():
        run_keys = {k for k in logged[step] if k.startswith(REPRODUCED)}
        assert run_keys <= set(record), run_keys - set(record)
        for key, value in record.items():
            assert key in logged[step], key                               # nothing the run does not log
            assert value == pytest.approx(logged[step][key], abs=1e-6), (step, key)
    assert any(key.startswith("bias/") for r in rescored.values() for key in r) or kind == "arithmetic"
    if kind == "arithmetic":
        assert any(key.startswith("by_difficulty/") for key in rescored[1])


def test_dr_grpo_abs_mean_is_the_mean_distance_to_the_group_mean(stored_run, capsys):
    run_dir = stored_run("mixed")
    config = json.loads((run_dir / "config.json").read_text())
    G, weights = config["group_size"], config["reward_weights"]
    logged, rescored = read_records(run_dir), read_records(rescore([run_dir, "--advantage", "dr_grpo"], capsys))
    differs = 0
    for step, record in rescored.items():
        tensors = stored(run_dir, step)
        rewards = sum(weights[name] * tensors[f"reward/{name}"] for name in weights).reshape(-1, G)
        by_hand = np.abs(rewards - rewards.mean(1, keepdims=True)).mean()
        assert record["adv/abs_mean"] == pytest.approx(by_hand, abs=1e-6)
        if by_hand > 0:
            # grpo divides by the group std (< 1 here: rewards in [0, 1.1]), so its |A| is larger
            assert logged[step]["adv/abs_mean"] > record["adv/abs_mean"] + 1e-3
            differs += 1
    assert differs, "the run's groups were all constant: the test needs mixed groups"


def within_group_correlation(x: np.ndarray, y: np.ndarray, chosen: np.ndarray) -> float | None:
    """A loop over groups (rows): each chosen value relative to its group's chosen mean, then one
    correlation of all the deviations about 0. None without 2 degrees of freedom or y varying."""
    dx, dy, dof = [], [], 0
    for xs, ys, keep in zip(x, y, chosen):
        xs, ys = xs[keep], ys[keep]
        if len(xs) == 0:
            continue
        dof += len(xs) - 1
        dx += list(xs / xs.mean() - 1) if xs.max() > xs.min() else [0.0] * len(xs)
        dy += list(ys / ys.mean() - 1) if ys.max() > ys.min() else [0.0] * len(ys)
    dx, dy = np.array(dx), np.array(dy)
    if dof < 2 or not (dy ** 2).sum() > 0:
        return None
    return float((dx * dy).sum() / np.sqrt((dx ** 2).sum() * (dy ** 2).sum())) if (dx ** 2).sum() > 0 else 0.0


def test_token_mean_length_bias_is_the_within_group_correlation_of_abs_advantage_and_length(stored_run, capsys):
    run_dir = stored_run("mixed")
    G = json.loads((run_dir / "config.json").read_text())["group_size"]
    logged = read_records(run_dir)
    rescored = read_records(rescore([run_dir, "--aggregation", "token_mean"], capsys))
    compared, pulled = 0, []
    for step, record in rescored.items():
        tensors = stored(run_dir, step)
        advantages = tensors["advantages"].reshape(-1, G)                              # the run's grpo A
        lengths = tensors["completion_mask"].sum(1).reshape(-1, G)
        for key, sign in (("bias/len_corr_pos", advantages > 0), ("bias/len_corr_neg", advantages < 0)):
            # token_mean weighs every token by 1 / num_tokens: only |A_i| varies with the completion
            expected = within_group_correlation(np.abs(advantages), lengths, sign)
            if expected is None:
                assert key not in record
                continue
            assert record[key] == pytest.approx(expected, abs=1e-6), (step, key)
            # seq_mean_token_mean (the run's) also divides by |o_i|, pulling the correlation down
            pulled.append(record[key] - logged[step][key])
            compared += 1
    assert compared >= 2
    assert np.mean(pulled) > 0, pulled


def test_objective_changes_no_value_only_the_config(stored_run, capsys):
    run_dir = stored_run("mixed")
    same = read_records(rescore([run_dir], capsys))
    out = rescore([run_dir, "--objective", "gspo"], capsys)
    assert out.name == "objective=gspo"
    assert read_records(out) == same
    assert json.loads((out / "config.json").read_text())["objective"] == "gspo"


def test_analysis_reads_the_rescored_run_as_an_arm_beside_its_run(stored_run, capsys):
    run_dir = stored_run("mixed")
    out = rescore([run_dir, "--advantage", "dr_grpo"], capsys)
    found = find_run_dirs(run_dir)                                   # the run, then what was rescored from it
    assert found[0] == run_dir and out in found and all(p.parent == run_dir / "rescore" for p in found[1:])
    frame = load_runs(run_dir, cache=False)
    assert {"base", "base@advantage=dr_grpo"} <= set(frame["arm"]) and set(frame["experiment"]) == {"exp"}
    rescored = frame[frame["arm"] == "base@advantage=dr_grpo"]
    assert rescored["step"].tolist() == [1, 2, 3]
    assert rescored["advantage"].tolist() == ["dr_grpo"] * 3          # the changed field is an arm column
    statuses = load_statuses(out)
    assert statuses["status"].tolist() == ["finished"] and statuses["steps_done"].tolist() == [3]


# ---------------------------------------------------------------- bad input

def corrupt_step_2(run_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    path = copy / "rollouts" / "step_000002_rank0.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    return copy, str(path)


def no_rollouts(run_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "bare").mkdir()
    shutil.copy(run_dir / "config.json", tmp_path / "bare" / "config.json")
    return tmp_path / "bare", "run it with --store-rollouts"


@pytest.mark.parametrize(("make", "flags"), [
    (lambda run, tmp: (tmp / "nowhere", "no run directory"), []),
    (lambda run, tmp: (tmp, "has no config.json"), []),
    (no_rollouts, []),
    (corrupt_step_2, []),
    (lambda run, tmp: (run, "invalid choice: 'std'"), ["--advantage", "std"]),
    (lambda run, tmp: (run, "dr_grpo"), ["--advantage", "std"]),                 # the registry's names
    (lambda run, tmp: (run, "seq_mean_token_sum_norm"), ["--aggregation", "sum"]),
    (lambda run, tmp: (run, "--adv-eps must be > 0"), ["--adv-eps", "0"]),
    (lambda run, tmp: (run, "--name must be a plain directory name"), ["--name", "../x"]),
    (lambda run, tmp: (run, "unrecognized arguments: --kl-beta"), ["--kl-beta", "0"]),
])
def test_bad_input_is_one_error_line(stored_run, tmp_path, capsys, make, flags):
    run_dir, message = make(stored_run("mixed"), tmp_path)
    before = sorted(p.name for p in (run_dir / "rescore").iterdir()) if (run_dir / "rescore").is_dir() else []
    assert main(["rescore", str(run_dir), *flags]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert message in line
    after = sorted(p.name for p in (run_dir / "rescore").iterdir()) if (run_dir / "rescore").is_dir() else []
    assert after == before                                            # nothing written


def test_help_says_objective_changes_nothing(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["rescore", "--help"])
    assert exit_info.value.code == 0
    assert "--objective changes no recomputed value" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------- a resumed run's stored rollouts

def test_resume_deletes_the_rollouts_of_steps_after_the_checkpoint(tmp_path, capsys, monkeypatch):
    """Killed after step 4's rollouts were written (newest checkpoint: step 2), then resumed to 3 steps:
    metrics.jsonl is cut back to step 2 and recomputed to 3, so step 4's rollout file must go too, or
    rescore would emit a step the run never logged."""
    import grpo.run.runner as runner_module

    cfg = TrainConfig(**{**SMALL_CONFIG, **MIXED, "steps": 4, "save_every": 2, "store_rollouts": True,
                         "out_dir": str(tmp_path / "run")})
    save_checkpoint = runner_module.save_checkpoint

    def killed_at_step_4(run_dir, step, *args, **kwargs):
        if step == 4:
            raise KeyboardInterrupt          # after step 4's metrics line and rollout file, before its checkpoint
        return save_checkpoint(run_dir, step, *args, **kwargs)

    monkeypatch.setattr(runner_module, "save_checkpoint", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, log=lambda *_: None)
    rollouts = cfg.run_dir / "rollouts"
    assert sorted(p.name for p in rollouts.iterdir()) == [f"step_{s:06d}_rank0.safetensors" for s in (1, 2, 3, 4)]

    monkeypatch.setattr(runner_module, "save_checkpoint", save_checkpoint)
    assert train(TrainConfig(**{**cfg.to_dict(), "steps": 3}), log=lambda *_: None)["status"] == "finished"
    logged = sorted(set(read_records(cfg.run_dir)) - {0})
    assert logged == [1, 2, 3]
    assert sorted(p.name for p in rollouts.iterdir()) == [f"step_{s:06d}_rank0.safetensors" for s in logged]
    assert sorted(read_records(rescore([cfg.run_dir], capsys))) == logged
