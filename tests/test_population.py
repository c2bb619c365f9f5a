"""--population S: S seeds trained as S independent runs in one process (grpo/algorithm/population.py,
grpo/run/runner.py). Each seed's run directory must be the one its single run writes: the same metrics lines
(all but time/*), samples, checkpoint weights and config (but out_dir), readable by analysis as single runs,
and resumable seed by seed after a kill. These tests run the seeds' model compute in turn
(--population-batching off), so equality is exact; tests/test_population_batched.py checks the batched
compute against the same single runs to float tolerance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.load import load_runs, load_statuses
from conftest import MIXED, cli_args, one_error_line
from grpo import GrpoError
from grpo.commands.cli import main
from grpo.run import runner
from grpo.run.checkpoint import checkpoint_dirs
from grpo.run.runner import train

QUIET = dict(log=lambda *_: None)
SEEDS = (0, 1)
# Three steps of the mixed toy (groups right and wrong, so the updates move the weights), a checkpoint at
# every step (a kill can fall between two seeds' writes) and samples at every step.
RUN = dict(**MIXED, steps=3, save_every=1, log_samples_every=1, population_batching="off")


def lines(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    """The file's JSON lines without time/* (seconds differ from run to run)."""
    rows = [json.loads(line) for line in (run_dir / name).read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


@pytest.fixture(scope="module")
def singles(tmp_path_factory) -> Path:
    """Seeds 0 and 1 as single runs, in <dir>/seed<k> (what a sweep's arm holds)."""
    from conftest import SMALL_CONFIG
    from grpo.setup.config import TrainConfig

    root = tmp_path_factory.mktemp("singles") / "single"
    for seed in SEEDS:
        train(TrainConfig(**{**SMALL_CONFIG, **RUN, "seed": seed, "out_dir": str(root / f"seed{seed}")}), **QUIET)
    return root


def assert_same_runs(population: Path, singles: Path) -> None:
    """Every seed's directory holds its single run's metrics, samples, config (but out_dir), final weights."""
    for seed in SEEDS:
        mine, alone = population / f"seed{seed}", singles / f"seed{seed}"
        assert lines(mine) == lines(alone), f"seed {seed}"
        assert lines(mine, "samples.jsonl") == lines(alone, "samples.jsonl")
        config, single_config = (json.loads((d / "config.json").read_text()) for d in (mine, alone))
        assert config.pop("out_dir") == str(mine) and single_config.pop("out_dir") == str(alone)
        assert config == single_config and config["seed"] == seed and config["population"] == 1
        weights = [(checkpoint_dirs(d)[-1] / "model.safetensors").read_bytes() for d in (mine, alone)]
        assert weights[0] == weights[1]
        assert json.loads((mine / "summary.json").read_text())["status"] == "finished"
    assert lines(population / "seed0") != lines(population / "seed1")      # the seeds really differ


def test_each_seed_of_a_population_writes_its_single_run(make_cfg, tmp_path, singles):
    summary = train(make_cfg(tmp_path, **RUN, population=2, out_dir=str(tmp_path / "pop")), **QUIET)
    assert summary["status"] == "finished" and sorted(summary["runs"]) == list(SEEDS)
    assert sorted(p.name for p in (tmp_path / "pop").iterdir()) == ["seed0", "seed1"]
    assert_same_runs(tmp_path / "pop", singles)
    # Analysis cannot tell them apart: the same frame (but the arm, named after the folder) and statuses.
    population, single = load_runs(tmp_path / "pop", cache=False), load_runs(singles, cache=False)
    assert set(population["arm"]) == {"pop"} and set(single["arm"]) == {"single"}
    drop = ["experiment", "arm", *(c for c in population.columns if c.startswith("time/"))]
    assert population.drop(columns=drop).equals(single.drop(columns=drop))
    assert list(load_statuses(tmp_path / "pop")["status"]) == ["finished", "finished"]


def test_a_killed_population_resumes_every_seed_from_its_own_checkpoint(make_cfg, tmp_path, monkeypatch, singles):
    """Killed while seed 1 writes its step-2 checkpoint: seed 0 has step 2's, seed 1 only step 1's (and a
    metrics line of step 2 its checkpoint does not cover). The same command again resumes each where it stopped."""
    cfg = make_cfg(tmp_path, **RUN, population=2, out_dir=str(tmp_path / "pop"))
    save = runner.save_checkpoint

    def killed_at_seed1_step2(run_dir, step, *args, **kwargs):
        if run_dir.name == "seed1" and step == 2:
            raise KeyboardInterrupt
        return save(run_dir, step, *args, **kwargs)

    monkeypatch.setattr(runner, "save_checkpoint", killed_at_seed1_step2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, **QUIET)
    monkeypatch.setattr(runner, "save_checkpoint", save)
    pop = tmp_path / "pop"
    assert [d.name for d in checkpoint_dirs(pop / "seed0")] == ["step_000001", "step_000002"]
    assert [d.name for d in checkpoint_dirs(pop / "seed1")] == ["step_000001"]
    assert [row["step"] for row in lines(pop / "seed1")] == [0, 1, 2]
    assert {json.loads((pop / f"seed{k}" / "summary.json").read_text())["status"] for k in SEEDS} == {"interrupted"}
    train(cfg, **QUIET)
    assert_same_runs(pop, singles)


def test_a_finished_population_says_so_and_a_longer_one_resumes_every_seed(make_cfg, tmp_path, singles):
    """--steps is resumable: 2 steps, then the same population to 3 resumes both seeds from step 2 (whose
    line then also holds the evaluation a run's last step gets; the rest equals the 3-step single run's)."""
    cfg = make_cfg(tmp_path, **RUN, population=2, out_dir=str(tmp_path / "pop"))
    train(make_cfg(tmp_path, **{**RUN, "steps": 2}, population=2, out_dir=str(tmp_path / "pop")), **QUIET)
    train(cfg, **QUIET)
    for seed in SEEDS:
        mine, alone = lines(tmp_path / "pop" / f"seed{seed}"), lines(singles / f"seed{seed}")
        assert [mine[i] for i in (0, 1, 3)] == [alone[i] for i in (0, 1, 3)]
        assert {k: mine[2][k] for k in alone[2]} == alone[2] and any(k.startswith("eval/") for k in mine[2])
    said = []
    assert train(cfg, log=said.append)["status"] == "finished"
    assert len(said) == 2 and all("already finished 3 steps" in line for line in said)
    # A seed's directory is a single run's: `grpo train --seed 1 --out-dir <pop>/seed1` takes it as its own.
    alone = make_cfg(tmp_path, **RUN, seed=1, out_dir=str(tmp_path / "pop" / "seed1"))
    assert train(alone, log=said.append)["steps_done"] == 3 and "already finished" in said[-1]


def test_population_one_is_the_single_run(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, population=1)
    assert cfg.members() == [cfg] and cfg.run_dir == tmp_path / "run"
    population = make_cfg(tmp_path, seed=3, population=2, out_dir="")
    assert [(m.seed, m.population, m.out_dir) for m in population.members()] == [
        (3, 1, "runs/arithmetic_tiny/seed3"), (4, 1, "runs/arithmetic_tiny/seed4")]


def test_population_below_one_is_refused(make_cfg, tmp_path, capsys):
    code = main(["train", *cli_args(make_cfg(tmp_path)), "--population", "0"])
    assert code == 2 and "--population must be >= 1, got 0" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_population_under_torchrun_is_refused_in_one_line(make_cfg, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")       # as torchrun --nproc_per_node 2 sets it
    code = main(["train", *cli_args(make_cfg(tmp_path)), "--population", "2"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "--population" in line and "data parallelism" in line
    assert not (tmp_path / "run").exists()


def test_a_single_runs_directory_is_not_a_population_and_back(make_cfg, tmp_path, capsys):
    """--population 2 --out-dir <a single run's dir> is refused, touching nothing; --population 1 --out-dir
    <a population's dir> is refused, naming how to resume it."""
    single = make_cfg(tmp_path, steps=1)
    train(single, **QUIET)
    before = sorted(p.name for p in single.run_dir.rglob("*"))
    code = main(["train", *cli_args(single), "--population", "2"])
    assert code == 2 and "single run's directory" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in single.run_dir.rglob("*")) == before
    pop = make_cfg(tmp_path, steps=1, population=2, out_dir=str(tmp_path / "pop"))
    train(pop, **QUIET)
    with pytest.raises(GrpoError, match="population's runs"):
        train(make_cfg(tmp_path, steps=1, out_dir=str(tmp_path / "pop")), **QUIET)


def test_each_seed_logs_to_a_wandb_run_of_its_own(make_cfg, tmp_path):
    """Offline wandb: seed<k>/wandb holds one run per seed, open side by side, each with its summary's id."""
    train(make_cfg(tmp_path, steps=1, population=2, wandb_mode="offline", out_dir=str(tmp_path / "pop")), **QUIET)
    ids = []
    for seed in SEEDS:
        run_dir = tmp_path / "pop" / f"seed{seed}"
        offline = [p.name for p in (run_dir / "wandb").glob("offline-run-*")]
        wandb_id = json.loads((run_dir / "summary.json").read_text())["wandb_id"]
        assert len(offline) == 1 and offline[0].endswith(wandb_id)
        ids.append(wandb_id)
    assert len(set(ids)) == 2


def test_a_diverged_seed_fails_alone_and_the_others_finish(make_cfg, tmp_path, monkeypatch, singles):
    import grpo.algorithm.population as population_module
    from grpo import TrainingDiverged

    step = population_module.grpo_step

    def seed1_diverges_at_step_2(c, s, n):
        if c.cfg.seed == 1 and n == 2:
            raise TrainingDiverged("non-finite reward at step 2")
        return step(c, s, n)

    monkeypatch.setattr(population_module, "grpo_step", seed1_diverges_at_step_2)
    with pytest.raises(TrainingDiverged, match="step 2"):
        train(make_cfg(tmp_path, **RUN, population=2, out_dir=str(tmp_path / "pop")), **QUIET)
    summaries = [json.loads((tmp_path / "pop" / f"seed{k}" / "summary.json").read_text()) for k in SEEDS]
    assert [s["status"] for s in summaries] == ["finished", "failed"] and "step 2" in summaries[1]["error"]
    assert lines(tmp_path / "pop" / "seed0") == lines(singles / "seed0")
    assert [row["step"] for row in lines(tmp_path / "pop" / "seed1")] == [0, 1]


def test_seed_dependent_parts_are_each_seeds_own(make_cfg, tmp_path):
    """A prompt pool (its epoch order), counterfactual alternatives (their selections), dynamic sampling and
    stored rollouts depend on the seed: each seed's files equal its single run's."""
    options = dict(**MIXED, steps=2, population_batching="off", prompt_pool=8, dynamic_sampling=True, store_rollouts=True, mini_batches=2,
                   counterfactuals="objective=clip_cov+clip_cov_ratio=0.2+clip_cov_lb=-1000+clip_cov_ub=1000", counterfactual_every=1)
    train(make_cfg(tmp_path, **options, population=2, out_dir=str(tmp_path / "pop")), **QUIET)
    for seed in SEEDS:
        alone = make_cfg(tmp_path, **options, seed=seed, out_dir=str(tmp_path / "single" / f"seed{seed}"))
        train(alone, **QUIET)
        mine = tmp_path / "pop" / f"seed{seed}"
        assert lines(mine) == lines(alone.run_dir) and any(k.startswith("cf/") for k in lines(mine)[1])
        assert lines(mine, "prompts.jsonl") == lines(alone.run_dir, "prompts.jsonl")
        rollouts = [sorted((d / "rollouts").iterdir()) for d in (mine, alone.run_dir)]
        assert [p.name for p in rollouts[0]] == [p.name for p in rollouts[1]] != []
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(*rollouts))
    assert lines(tmp_path / "pop" / "seed0", "prompts.jsonl") != lines(tmp_path / "pop" / "seed1", "prompts.jsonl")


def test_every_component_is_either_shared_or_each_seeds_own():
    """A Components field added later must be placed: shared across the seeds (seed-independent) or built per
    seed. Fails when a field is in neither list (it would be shared silently) or in both."""
    import dataclasses

    from grpo.algorithm.population import OWN_FIELDS, SHARED_FIELDS
    from grpo.algorithm.state import Components

    names = {f.name for f in dataclasses.fields(Components)}
    assert set(SHARED_FIELDS) | set(OWN_FIELDS) == names
    assert not set(SHARED_FIELDS) & set(OWN_FIELDS)
