"""The sweep runner: arms rebuild exactly from their flags, dry runs, kill-and-restart without re-running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tyro

from experiments import (dapo, demo, entropy, gdpo, group_size, inner_epochs, kl_beta, mismatch, objectives, staleness,
                         std_norm)
from experiments.sweep import plan_runs
from grpo.setup.config import TrainConfig, config_flags

EXPERIMENTS = [dapo, demo, entropy, gdpo, group_size, inner_epochs, kl_beta, mismatch, objectives, staleness, std_norm]
TINY = ["--warmstart-steps", "2", "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "8",
        "--eval-prompts", "4", "--eval-samples", "4", "--save-every", "1", "--wandb-mode", "disabled"]


@pytest.mark.parametrize("module", EXPERIMENTS, ids=lambda m: m.EXPERIMENT.name)
def test_every_arm_rebuilds_exactly_from_its_flags(module, tmp_path):
    runs = plan_runs(module.EXPERIMENT, tmp_path, [0, 1], {"quick": False, "steps": None, "train_args": []}, 1)
    assert len(runs) == 2 * len(module.EXPERIMENT.arms)
    for run in runs:
        assert tyro.cli(TrainConfig, args=config_flags(run.config)) == run.config
        assert run.dir == tmp_path / run.arm / f"seed{run.seed}"


def test_reward_weights_naming_any_reward_survive_the_flags():
    config = TrainConfig(reward_weights={"correct_extracted": 1.0, "format_partial": 0.25})   # no default key
    assert config_flags(config) == ["--reward-weights", "correct_extracted=1.0,format_partial=0.25"]
    assert tyro.cli(TrainConfig, args=config_flags(config)) == config


def test_arms_differ_only_in_the_ablated_knob():
    base = std_norm.EXPERIMENT.base
    assert std_norm.EXPERIMENT.arms["no_std"] == TrainConfig(**{**base.to_dict(), "advantage": "dr_grpo"})
    sizes = {a: (c.prompts_per_step, c.group_size) for a, c in group_size.EXPERIMENT.arms.items()}
    assert {p * g for p, g in sizes.values()} == {64}          # completions per step held fixed
    assert kl_beta.EXPERIMENT.arms["beta0"].kl_beta == 0.0


def test_overrides_apply_to_every_arm_and_bad_ones_are_refused(tmp_path):
    runs = plan_runs(kl_beta.EXPERIMENT, tmp_path, [0], {"quick": True, "steps": 7, "train_args": ["--lr", "3e-4"]}, 2)
    assert {r.config.lr for r in runs} == {3e-4}
    assert {r.config.steps for r in runs} == {7}
    assert {r.config.threads for r in runs} == {max(1, (os.cpu_count() or 1) // 2)}
    assert sorted(r.config.kl_beta for r in runs) == [0.0, 1e-3, 1e-2, 1e-1]   # the arm's knob survives
    bad = subprocess.run([sys.executable, "-m", "experiments.kl_beta", "--dry-run", "--group-size", "1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--group-size" in bad.stderr and "Traceback" not in bad.stderr


def test_dry_run_prints_one_command_per_run_and_runs_nothing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "experiments.inner_epochs", "--dry-run", "--seeds", "2",
                          "--population", "off", "--out-dir", str(tmp_path / "sweep")],
                         capture_output=True, text=True, check=True)
    header, *lines = out.stdout.strip().splitlines()
    assert header.startswith("# warmstart_seed: same ")
    assert len(lines) == 5 * 2 and all(line.startswith("grpo train ") for line in lines)   # 5 arms x 2 seeds
    assert "--inner-epochs 4" in out.stdout
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------- what the seeds vary

def test_warmstart_seed_per_seed_gives_each_seed_its_own_warm_start(tmp_path):
    from experiments.sweep import write_sweep_json
    from grpo.setup.tasks import make_task
    from grpo.engine.warmstart import warmstart_entry

    plan = {"quick": True, "steps": None, "train_args": ["--warmstart-seed", "7"]}
    same = plan_runs(kl_beta.EXPERIMENT, tmp_path, [0, 1, 2], plan, 1)
    assert {r.config.warmstart_seed for r in same} == {7}                       # the arm's value, every seed
    per_seed = plan_runs(kl_beta.EXPERIMENT, tmp_path, [0, 1, 2], {**plan, "warmstart_seed": "per-seed"}, 1)
    assert all(r.config.warmstart_seed == r.seed for r in per_seed)
    assert all(tyro.cli(TrainConfig, args=config_flags(r.config)) == r.config for r in per_seed)
    # three seeds, three warm starts in the cache (it keys on warmstart_seed); one with "same"
    entries = {warmstart_entry(r.config, make_task(r.config).tokenizer) for r in per_seed}
    assert len(entries) == 3
    assert len({warmstart_entry(r.config, make_task(r.config).tokenizer) for r in same}) == 1

    write_sweep_json(kl_beta.EXPERIMENT, tmp_path, per_seed, [0, 1, 2], "per-seed")
    declared = json.loads((tmp_path / "sweep.json").read_text())
    assert declared["warmstart_seed"] == "per-seed"
    assert all("warmstart_seed" not in fields for fields in declared["arms"].values())   # a run's, not an arm's
    write_sweep_json(kl_beta.EXPERIMENT, tmp_path / "same", same, [0, 1, 2])
    assert json.loads((tmp_path / "same" / "sweep.json").read_text())["warmstart_seed"] == "same"


def test_dry_run_shows_the_warmstart_seed_choice(tmp_path):
    def dry(*flags: str) -> list[str]:
        out = subprocess.run([sys.executable, "-m", "experiments.kl_beta", "--dry-run", "--seeds", "2", "--arms",
                              "beta0", "--population", "off", "--out-dir", str(tmp_path / "sweep"), *flags],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip().splitlines()

    header, seed0, seed1 = dry("--warmstart-seed", "per-seed")
    assert header.startswith("# warmstart_seed: per-seed ")
    assert "--warmstart-seed" not in seed0 and "--seed 1 " in seed1 and "--warmstart-seed 1" in seed1
    header, seed0, seed1 = dry()
    assert header.startswith("# warmstart_seed: same ") and "--warmstart-seed" not in seed0 + seed1
    header, seed0, seed1 = dry("--warmstart-seed", "5")                 # a number: grpo train's flag, every run
    assert header.startswith("# warmstart_seed: same ")
    assert "--warmstart-seed 5" in seed0 and "--warmstart-seed 5" in seed1
    bad = subprocess.run([sys.executable, "-m", "experiments.kl_beta", "--dry-run", "--warmstart-seed", "each"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--warmstart-seed" in bad.stderr and "Traceback" not in bad.stderr


def _finished(sweep: Path) -> list[Path]:
    return [p.parent for p in sweep.glob("*/seed*/summary.json")
            if json.loads(p.read_text()).get("status") == "finished"]


def test_killed_sweep_restarts_without_rerunning_finished_runs(tmp_path):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "experiments.inner_epochs", "--out-dir", str(sweep), "--seeds", "1",
               "--arms", "mu1,mu2,mu4", "--steps", "3", "--no-report", *TINY]
    env = {**os.environ, "GRPO_CACHE": str(tmp_path / "cache")}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 240
    while not _finished(sweep) and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_before = {p: (p / "metrics.jsonl").stat().st_mtime_ns for p in _finished(sweep)}
    assert done_before, "no run finished before the deadline:\n" + first.stdout.read().decode()

    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"({len(done_before)} already finished)" in second.stdout or len(done_before) > 1
    assert sorted(_finished(sweep)) == sorted(sweep / f"mu{m}" / "seed0" for m in (1, 2, 4))
    for run_dir, mtime in done_before.items():           # finished runs were not touched again
        assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == mtime
    for run_dir in _finished(sweep):
        steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert steps == [0, 1, 2, 3]                      # no duplicated or missing steps


@pytest.mark.slow
def test_ray_executor_runs_a_two_run_sweep(tmp_path):
    """`--executor ray` on a local Ray (ray.init() on this machine): same run-dir layout, both finish."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "GRPO_CACHE": str(tmp_path / "cache"), "RAY_ADDRESS": "local"}
    out = subprocess.run([sys.executable, "-m", "experiments.kl_beta", "--executor", "ray", "--arms", "beta0,beta0.01",
                          "--out-dir", str(sweep), "--seeds", "1", "--steps", "2", "--no-report", *TINY],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(_finished(sweep)) == [sweep / "beta0" / "seed0", sweep / "beta0.01" / "seed0"]


def test_a_run_dir_of_another_config_is_not_counted_as_finished(tmp_path):
    sweep = tmp_path / "sweep"
    run_dir = sweep / "beta0" / "seed0"
    run_dir.mkdir(parents=True)
    [run] = plan_runs(kl_beta.EXPERIMENT, sweep, [0], {"quick": False, "steps": None, "train_args": [],
                                                       "arms": ["beta0"]}, 1)
    (run_dir / "config.json").write_text(json.dumps({**run.config.to_dict(), "lr": 0.5}))
    (run_dir / "summary.json").write_text(json.dumps({"status": "finished", "steps_done": 10_000}))
    out = subprocess.run([sys.executable, "-m", "experiments.kl_beta", "--out-dir", str(sweep), "--arms", "beta0",
                          "--seeds", "1", "--parallel", "1", "--no-report"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "another config" in out.stderr and "lr" in out.stderr and "Traceback" not in out.stderr


def test_failed_runs_are_reported_with_their_logs_and_fail_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    out = subprocess.run([sys.executable, "-m", "experiments.kl_beta", "--out-dir", str(sweep), "--arms", "beta0,beta0.1",
                          "--seeds", "1", "--model", str(tmp_path / "no_such_model"), *TINY],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    for arm in ("beta0", "beta0.1"):
        log = sweep / arm / "seed0" / "train.log"
        assert f"{arm}/seed0 FAILED (exit 2), see {log}" in out.stdout       # both ran; neither stopped the other
        assert "no_such_model" in log.read_text()
    assert "kl_beta: 0 finished, 2 failed, 0 unfinished, 0 missing" in out.stdout


def test_a_refused_sweep_leaves_sweep_json_untouched(tmp_path):
    sweep = tmp_path / "sweep"
    run_dir = sweep / "beta0" / "seed0"
    run_dir.mkdir(parents=True)
    [run] = plan_runs(kl_beta.EXPERIMENT, sweep, [0], {"quick": False, "steps": None, "train_args": [],
                                                       "arms": ["beta0"]}, 1)
    (run_dir / "config.json").write_text(json.dumps({**run.config.to_dict(), "lr": 0.5}))
    declared = '{"experiment": "kl_beta", "arms": {"beta0": {"lr": 0.5}}, "seeds": [0]}'
    (sweep / "sweep.json").write_text(declared)
    out = subprocess.run([sys.executable, "-m", "experiments.kl_beta", "--out-dir", str(sweep), "--arms", "beta0",
                          "--seeds", "1", "--parallel", "1", "--no-report"], capture_output=True, text=True)
    assert out.returncode == 2 and "another config" in out.stderr
    assert (sweep / "sweep.json").read_text() == declared


def test_sweep_json_merges_arms_and_seeds_of_every_invocation(tmp_path):
    from experiments.sweep import write_sweep_json

    sweep = tmp_path / "sweep"

    def invoke(arms: list[str], seeds: list[int]) -> dict:
        runs = plan_runs(kl_beta.EXPERIMENT, sweep, seeds, {"quick": True, "steps": None, "train_args": [],
                                                            "arms": arms}, 1)
        write_sweep_json(kl_beta.EXPERIMENT, sweep, runs, seeds)
        return json.loads((sweep / "sweep.json").read_text())

    first = invoke(["beta0", "beta0.001", "beta0.01", "beta0.1"], [0, 1, 2])
    second = invoke(["beta0", "beta0.1"], [0])                # a narrower re-run must not shrink it
    assert list(second["arms"]) == ["beta0", "beta0.001", "beta0.01", "beta0.1"]
    assert second["seeds"] == [0, 1, 2]
    assert second["created"] == first["created"] and second["git_commit"] == first["git_commit"]
    assert [i["arms"] for i in second["invocations"]] == [["beta0", "beta0.001", "beta0.01", "beta0.1"],
                                                          ["beta0", "beta0.1"]]
    third = invoke(["beta0"], [3])
    assert third["seeds"] == [0, 1, 2, 3]


def test_warm_starts_are_built_once_before_the_runs_and_are_the_ones_a_run_builds(tmp_path, monkeypatch):
    """The sweep trains each distinct warm start up front (on all cores); a run then loads it from the
    cache, and it holds the weights the run would have trained itself."""
    import torch

    from grpo.commands.prepare import prebuild_warm_starts
    from grpo.setup.tasks import make_task
    from grpo.engine.warmstart import warm_started_model, warmstart_key

    def warm(cache: Path, cfg: TrainConfig) -> dict[str, torch.Tensor]:
        monkeypatch.setenv("GRPO_CACHE", str(cache))
        task = make_task(cfg)
        return warm_started_model(cfg, task, task.tokenizer, torch.device("cpu"), log=lambda *_: None).state_dict()

    runs = plan_runs(demo.EXPERIMENT, tmp_path / "sweep", [0, 1], {"quick": True, "steps": None, "arms": "grpo,G4",
                                                                   "train_args": ["--warmstart-steps", "2"]}, 2)
    monkeypatch.setenv("GRPO_CACHE", str(tmp_path / "cache"))
    logged = []
    prebuild_warm_starts([r.config for r in runs], log=logged.append)
    assert len(logged) == 1 and "2 supervised steps" in logged[0]      # 4 runs, one warm start
    entries = list((tmp_path / "cache" / "warmstart").iterdir())
    cfg = runs[0].config
    assert [e.name for e in entries] == [warmstart_key(cfg, len(make_task(cfg).tokenizer))]
    prebuild_warm_starts([r.config for r in runs], log=logged.append)
    assert len(logged) == 1                                             # cached: nothing trained again
    built_here, built_by_run = warm(tmp_path / "cache", cfg), warm(tmp_path / "own_cache", cfg)
    assert built_here.keys() == built_by_run.keys()
    # The sweep trains on all cores and this process on its own thread count: the sums' order differs, so
    # the weights agree to float32 rounding, not bit for bit (on a 2-core AMD EPYC one weight of 65536 was
    # 1.2e-6 off after 2 steps). Another warm start (another seed, step count or lr) moves every weight by
    # ~lr = 1e-3 per step, far outside this tolerance.
    for name in built_here:
        torch.testing.assert_close(built_here[name], built_by_run[name], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="runs are forked only on Linux")
def test_a_forked_run_exits_with_its_code_and_writes_its_log(tmp_path):
    """Forked: the work's return value is the exit code; an exception is a traceback in the log and exit 1."""
    from experiments.sweep import Forked

    def fails() -> int:
        print("before the failure")
        raise ValueError("boom")

    assert Forked(lambda: 3, tmp_path / "three.log").wait() == 3
    assert Forked(fails, tmp_path / "fails.log").wait() == 1
    log = (tmp_path / "fails.log").read_text()
    assert "before the failure" in log and "ValueError: boom" in log and "Traceback" in log
    assert Forked(lambda: sys.exit(4), tmp_path / "exits.log").wait() == 4


def test_forked_runs_use_several_threads_after_the_sweep_built_warm_starts(tmp_path):
    """The sweep builds the warm starts (all cores) and then forks 2-thread runs: OpenMP threads started
    in the sweep process itself would hang a forked run in its first multi-threaded op."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "GRPO_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "experiments.kl_beta", "--out-dir", str(sweep),
                          "--arms", "beta0,beta0.1", "--seeds", "1", "--steps", "2", "--parallel", "2",
                          "--threads", "2", "--no-report", *TINY],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 supervised steps" in out.stdout                 # the warm start was built before the runs
    assert sorted(_finished(sweep)) == [sweep / "beta0" / "seed0", sweep / "beta0.1" / "seed0"]
    assert json.loads((sweep / "beta0" / "seed0" / "config.json").read_text())["threads"] == 2


# ---------------------------------------------------------------- each arm is its paper's method

# What each paper defines, as we read it (the experiment modules' docstrings cite them): every field an arm
# sets away from the shared base TrainConfig(mini_batches=4). GRPO (Shao et al. 2024) is the base itself:
# std-normalised advantage, clip 0.2, seq_mean_token_mean, k3 KL at beta 0.04.
NO_KL = {"kl_beta": 0.0}
PAPER_CHOICES = {
    "clip": {},
    # DAPO: every row of its table 1, as the ladder's last rung: overlong filtering, clip-higher 0.2 / 0.28,
    # soft overlong punishment over the last fifth of the budget (4096 of 20480) down to -1, token-level loss,
    # dynamic sampling; KL removed (its section 2.3).
    "dapo": {"mask_truncated": True, "clip_eps_high": 0.28, "overlong_buffer": 13, "aggregation": "token_mean",
             "dynamic_sampling": True, **NO_KL},
    # Dr. GRPO: no std, token sums over a constant (the max length), no KL.
    "dr_grpo": {"advantage": "dr_grpo", "aggregation": "seq_mean_token_sum_norm", **NO_KL},
    # GSPO: sequence ratio clipped at 3e-4 / 4e-4, sequence-level mean, std-normalised advantage, no KL.
    "gspo": {"objective": "gspo", "clip_eps_low": 3e-4, "clip_eps_high": 4e-4, **NO_KL},
    # CISPO: 1 / sum |o_i| (token_mean), the IS weight unbounded below (0.99: the largest eps_low allows), no KL.
    "cispo": {"objective": "cispo", "clip_eps_low": 0.99, "clip_eps_high": 0.28, "aggregation": "token_mean", **NO_KL},
    # SAPO: tau_pos 1.0, tau_neg 1.05 (the defaults), sequence mean of token means, no KL.
    "sapo": {"objective": "sapo", **NO_KL},
    # GMPO: log-space clip (e^-0.4, e^0.4), no KL.
    "gmpo": {"objective": "gmpo", "clip_eps_low": 0.4, "clip_eps_high": 0.4, **NO_KL},
    # GPG: the GPG advantage (no std, rescaled by the share of groups with signal), 1 / sum |o_i|, no KL.
    "gpg": {"objective": "gpg", "advantage": "gpg", "aggregation": "token_mean", **NO_KL},
}


def set_fields(config: TrainConfig, base: TrainConfig) -> dict:
    return {k: v for k, v in config.to_dict().items() if v != getattr(base, k)}


def test_each_objectives_arm_is_its_papers_method():
    base = TrainConfig(mini_batches=4)
    assert objectives.EXPERIMENT.base == base
    assert set(objectives.EXPERIMENT.arms) == set(PAPER_CHOICES)
    for arm, config in objectives.EXPERIMENT.arms.items():
        assert set_fields(config, base) == PAPER_CHOICES[arm], arm
    assert base.kl_beta == 0.04 and base.clip_eps_low == base.clip_eps_high == 0.2 and base.advantage == "grpo"


def test_dapo_ladder_adds_one_component_per_rung_in_table_1_order_without_kl():
    # DAPO's table 1: naive GRPO, + overlong filtering, + clip-higher, + soft overlong punishment,
    # + token-level loss, + dynamic sampling. KL is off on every rung (DAPO removes it).
    added = [("baseline", {}), ("overlong_filter", {"mask_truncated": True}),
             ("clip_higher", {"clip_eps_high": 0.28}), ("overlong", {"overlong_buffer": 13}),
             ("token_level", {"aggregation": "token_mean"}), ("dynamic", {"dynamic_sampling": True})]
    arms = dapo.EXPERIMENT.arms
    assert list(arms) == [name for name, _ in added]
    assert set_fields(arms["baseline"], TrainConfig(mini_batches=4)) == NO_KL
    for (before, _), (after, fields) in zip(added, added[1:]):
        assert set_fields(arms[after], arms[before]) == fields, after
    assert {c.kl_beta for c in arms.values()} == {0.0} and {c.overlong_penalty for c in arms.values()} == {1.0}


def test_departures_are_declared_per_arm_and_written_to_sweep_json(tmp_path):
    from experiments.sweep import Experiment, write_sweep_json
    from grpo import GrpoError

    for experiment in (objectives.EXPERIMENT, dapo.EXPERIMENT):
        assert experiment.departures and set(experiment.departures) <= set(experiment.arms)
        assert all(line and "\n" not in line for line in experiment.departures.values())
    assert set(objectives.EXPERIMENT.departures) == {"dapo", "cispo", "gpg"}
    assert set(dapo.EXPERIMENT.departures) == {"dynamic"}
    runs = plan_runs(objectives.EXPERIMENT, tmp_path, [0], {"quick": True, "steps": None, "train_args": [],
                                                            "arms": ["clip", "gpg"]}, 1)
    write_sweep_json(objectives.EXPERIMENT, tmp_path, runs, [0])
    assert json.loads((tmp_path / "sweep.json").read_text())["departures"] == objectives.EXPERIMENT.departures
    with pytest.raises(GrpoError, match="unknown arm"):
        Experiment(name="x", base=TrainConfig(), arms={"a": TrainConfig()}, budget="", baseline="a",
                   departures={"b": "not an arm"})
