"""Sweeps through populations (--population auto): the planned processes, run dirs equal to single runs',
restarts after a partial run, a failed population reported per seed; and `grpo bench --population S`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tyro

from experiments import kl_beta
from experiments.sweep import main as sweep_main
from grpo.commands.cli import main as grpo_main
from grpo.setup.config import TrainConfig

# One arm, tiny runs: 2 supervised warm-start steps, 4 prompts x G 4, 8 new tokens, a checkpoint every step.
TINY = ["--arms", "beta0", "--no-report", "--parallel", "1", "--warmstart-steps", "2", "--prompts-per-step", "4",
        "--group-size", "4", "--max-new-tokens", "8", "--eval-prompts", "4", "--eval-samples", "4",
        "--save-every", "1", "--wandb-mode", "disabled"]


def dry_run(capsys, sweep: Path, *flags: str) -> list[str]:
    """The `grpo train` command lines a dry run of the kl_beta sweep prints (comment lines dropped)."""
    assert sweep_main(kl_beta.EXPERIMENT, ["--dry-run", "--out-dir", str(sweep), *flags]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]


def parsed(line: str) -> TrainConfig:
    """The config `grpo train` builds from a printed command line."""
    args = line.split()[2:]
    return tyro.cli(TrainConfig, args=args, default=TrainConfig.flag_defaults(args))


# ---------------------------------------------------------------- the plan (dry runs)

def test_auto_plans_one_population_per_arm_whose_members_are_the_single_runs(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    flags = ["--seeds", "3", "--arms", "beta0,beta0.1"]
    auto = dry_run(capsys, sweep, *flags)
    off = dry_run(capsys, sweep, *flags, "--population", "off")
    assert len(auto) == 2 and len(off) == 2 * 3
    singles = [parsed(line) for line in off]
    assert [c.out_dir for c in singles] == [str(sweep / arm / f"seed{k}") for arm in ("beta0", "beta0.1") for k in range(3)]
    for line, arm in zip(auto, ("beta0", "beta0.1")):
        assert f"--population 3" in line and f"--out-dir {sweep / arm} " in line
        population = parsed(line)
        # The population trains exactly the three runs `off` starts, writing the same run dirs.
        assert population.members() == [c for c in singles if c.arm == arm]
    assert not sweep.exists()                    # a dry run writes nothing


def test_a_pretrained_model_and_per_seed_warm_starts_run_one_process_per_seed(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    pretrained = dry_run(capsys, sweep, "--seeds", "2", "--arms", "beta0", "--model", str(tmp_path / "some_model"))
    per_seed = dry_run(capsys, sweep, "--seeds", "2", "--arms", "beta0", "--warmstart-seed", "per-seed")
    for lines in (pretrained, per_seed):
        assert len(lines) == 2 and "--population" not in " ".join(lines)
        assert [parsed(line).out_dir for line in lines] == [str(sweep / "beta0" / f"seed{k}") for k in (0, 1)]


def test_finished_seeds_are_skipped_and_a_gap_splits_the_population(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for seed in (1, 4):          # seeds 0, 2, 3 and 5 are left: blocks [0], [2, 3], [5]
        (sweep / "beta0" / f"seed{seed}").mkdir(parents=True)
        (sweep / "beta0" / f"seed{seed}" / "summary.json").write_text(json.dumps({"status": "finished", "steps_done": 10**6}))
    # 3 processes at 3 at a time: no block is split (`balanced`); the longest goes first.
    lines = dry_run(capsys, sweep, "--seeds", "6", "--arms", "beta0", "--parallel", "3")
    configs = [parsed(line) for line in lines]
    assert [(c.seed, c.population) for c in configs] == [(2, 2), (0, 1), (5, 1)]
    assert [c.out_dir for c in configs] == [str(sweep / "beta0"), str(sweep / "beta0" / "seed0"),
                                            str(sweep / "beta0" / "seed5")]
    assert [m.out_dir for m in configs[0].members()] == [str(sweep / "beta0" / f"seed{k}") for k in (2, 3)]


# ---------------------------------------------------------------- real tiny sweeps

def run_sweep(sweep: Path, cache: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GRPO_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "experiments.kl_beta", "--out-dir", str(sweep), "--steps", "2",
                           *TINY, *flags], capture_output=True, text=True, env=env, timeout=600)


def metrics_lines(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock keys (time/*), which no two runs share."""
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """The same 3-seed x 2-step sweep run with --population off and auto (one warm-start cache)."""
    root = tmp_path_factory.mktemp("population_sweeps")
    out = {}
    for mode in ("off", "auto"):
        done = run_sweep(root / mode, root / "cache", "--seeds", "3", "--population", mode)
        assert done.returncode == 0, done.stdout + done.stderr
        out[mode] = (root / mode, done.stdout)
    return root, out


def test_a_population_sweep_writes_the_run_dirs_of_single_runs(sweeps):
    _, out = sweeps
    (off, off_stdout), (auto, auto_stdout) = out["off"], out["auto"]
    assert "3 processes (0 populations)" in off_stdout and "1 processes (1 populations)" in auto_stdout
    assert (auto / "beta0" / "population_seed0-2.log").is_file()
    for seed in range(3):
        assert f"beta0/seed{seed} finished" in auto_stdout
        single, member = off / "beta0" / f"seed{seed}", auto / "beta0" / f"seed{seed}"
        lines = metrics_lines(member)
        assert [line["step"] for line in lines] == [0, 1, 2]
        assert lines == metrics_lines(single)
        saved = [json.loads((d / "config.json").read_text()) for d in (single, member)]
        for config, root in zip(saved, (off, auto)):        # the sweep's root is the only difference
            assert config["out_dir"] == str(root / "beta0" / f"seed{seed}") and config["population"] == 1
        assert {k: v for k, v in saved[0].items() if k not in ("out_dir", "wandb_dir")} == \
               {k: v for k, v in saved[1].items() if k not in ("out_dir", "wandb_dir")}
        assert json.loads((member / "summary.json").read_text())["status"] == "finished"


def test_a_restarted_population_sweep_resumes_each_seed_and_skips_finished_ones(sweeps, tmp_path):
    root, out = sweeps
    sweep = tmp_path / "sweep"
    shutil.copytree(out["auto"][0], sweep)
    runs = sweep / "beta0"
    before = {seed: metrics_lines(runs / f"seed{seed}") for seed in range(3)}
    # As a kill leaves it: seed 0 checkpointed step 1 only, seed 1 had not started, seed 2 finished.
    shutil.rmtree(runs / "seed0" / "checkpoints" / "step_000002")
    (runs / "seed0" / "summary.json").write_text(json.dumps({"status": "running", "steps_done": 1}))
    shutil.rmtree(runs / "seed1")
    untouched = (runs / "seed2" / "metrics.jsonl").stat().st_mtime_ns
    again = run_sweep(sweep, root / "cache", "--seeds", "3")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "(1 already finished)" in again.stdout and "1 processes (1 populations)" in again.stdout
    assert "resuming" in (runs / "population_seed0-1.log").read_text()      # seed 0 went on from its checkpoint
    assert (runs / "seed2" / "metrics.jsonl").stat().st_mtime_ns == untouched
    for seed in range(3):
        assert metrics_lines(runs / f"seed{seed}") == before[seed]


def test_a_failed_population_is_reported_per_seed(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "beta0" / "seed1").mkdir(parents=True)       # seed 1's dir holds a stranger's file: grpo train refuses
    (sweep / "beta0" / "seed1" / "notes.txt").write_text("not a run")
    done = run_sweep(sweep, tmp_path / "cache", "--seeds", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    log = sweep / "beta0" / "population_seed0-1.log"
    for seed in (0, 1):
        assert f"beta0/seed{seed} FAILED (exit 2), see {log}" in done.stdout
        assert f"beta0/seed{seed}: failed, log {log}" in done.stdout
    assert "kl_beta: 0 finished, 2 failed, 0 unfinished, 0 missing" in done.stdout
    assert "seed1 exists and is not a grpo-lab run directory" in log.read_text()


# ---------------------------------------------------------------- grpo bench --population

def bench(tmp_path: Path, *flags: str) -> dict:
    out = tmp_path / f"bench{len(list(tmp_path.iterdir()))}.json"
    assert grpo_main(["bench", "--steps", "2", "--warmup", "0", "--threads", "1", "--completion-len", "4",
                      "--peak-gflops", "50", "--json-out", str(out), *flags]) == 0
    return json.loads(out.read_text())


def test_bench_population_reports_seed_steps_per_second(tmp_path, capsys):
    one, two = bench(tmp_path), bench(tmp_path, "--population", "2", "--compare-loop")
    assert one["population"] == 1 and two["population"] == 2
    assert one["seed_steps_per_s"] == pytest.approx(1 / one["median_s_per_step"])
    assert two["seed_steps_per_s"] == pytest.approx(2 / two["median_s_per_step"])
    # Every prompt is 7 tokens and every completion exactly 4: two seeds do twice one seed's matmul FLOPs.
    assert two["flops_per_step"] == pytest.approx(2 * one["flops_per_step"], rel=1e-12)
    assert set(two["phases_s"]) >= {"rollout", "reward", "train", "optimizer", "jsonl"}
    assert two["peak_rss_mib"] > 0 and two["median_s_per_step"] > 0
    loop = two["loop"]
    assert loop["seed_steps_per_s"] == pytest.approx(2 / loop["median_s_per_step"])
    assert two["population_speedup"] == pytest.approx(two["seed_steps_per_s"] / loop["seed_steps_per_s"])


@pytest.mark.parametrize("sizes, parallel, expected", [
    ([3] * 5, 2, [3, 3, 3, 3, 2, 1]),     # 9 -> 8 run-lengths of wall time at 2 at a time
    ([3] * 3, 2, [3, 3, 2, 1]),           # 6 -> 5
    ([3] * 4, 2, [3, 3, 3, 3]),           # already a multiple: unchanged
    ([5], 2, [3, 2]),                     # one arm: both cores busy
    ([1, 1, 1], 2, [1, 1, 1]),            # nothing left to split
    ([2, 3], 1, [3, 2]),                  # one at a time: longest first, no split
])
def test_blocks_are_split_so_every_core_stays_busy(sizes, parallel, expected):
    from experiments.sweep import balanced

    blocks = [[f"a{a}s{k}" for k in range(n)] for a, n in enumerate(sizes)]
    out = balanced(blocks, parallel)
    assert [len(b) for b in out] == expected
    assert sorted(run for b in out for run in b) == sorted(run for b in blocks for run in b)
    assert all(len({run.split("s")[0] for run in b}) == 1 for b in out)     # a block stays within one arm
