"""analysis.load: tidy frame from hand-written run dirs, bad files, unfinished runs, statuses, cache."""

import json
import time

import pandas as pd
import pytest

from analysis.load import CACHE_NAME, AnalysisError, AnalysisWarning, load_runs, load_statuses

BASE_CONFIG = {"task": "gsm8k", "model": "tiny", "steps": 2, "prompts_per_step": 2, "group_size": 4,
               "advantage": "grpo", "kl_beta": 0.0, "lr": 1e-6, "eval_every": 2}


# ----- helpers: write run dirs by hand (the trainer's data contract) -----

def write_run(run_dir, config=None, records=(), summary=None, raw_lines=()):
    """Write config.json, metrics.jsonl (records as JSON, then raw_lines verbatim), summary.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (run_dir / "config.json").write_text(json.dumps(config))
    lines = [json.dumps(r) for r in records] + list(raw_lines)
    if lines:
        (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))


def record(step, **metrics):
    """A metrics record: step s has drawn 8 completions per step and 10 tokens per completion."""
    return {"step": step, "samples": 8 * step, "tokens": 80 * step, "time/elapsed": 1.5 * step, **metrics}


def make_sweep(root, arms=("grpo", "dr_grpo"), seeds=(0, 1), steps=2):
    (root).mkdir(parents=True, exist_ok=True)
    (root / "sweep.json").write_text(json.dumps({
        "experiment": "std_norm", "arms": {a: {"advantage": a} for a in arms}, "seeds": list(seeds),
        "budget": "prompts per step", "baseline": arms[0], "knob": None}))
    for arm in arms:
        for seed in seeds:
            config = {**BASE_CONFIG, "experiment": "std_norm", "arm": arm, "seed": seed, "advantage": arm,
                      "out_dir": f"/runs/{arm}/{seed}"}
            records = [record(0, **{"eval/accuracy": 0.1})] + [
                record(s, **{"reward/mean": 0.5, "loss": 0.1 * s}) for s in range(1, steps + 1)]
            write_run(root / arm / f"seed{seed}", config, records,
                      {"status": "finished", "steps_done": steps, "final": {}, "error": None})
    return root


# ----- tests -----

def test_frame_has_ids_differing_config_axes_and_metrics(tmp_path):
    df = load_runs(make_sweep(tmp_path / "sweep"))
    assert len(df) == 2 * 2 * 3  # 2 arms x 2 seeds x steps 0, 1, 2
    # advantage differs between arms; out_dir differs between seeds only; lr is the same everywhere.
    assert list(df.columns[:7]) == ["experiment", "arm", "seed", "advantage", "step", "samples", "tokens"]
    assert {"eval/accuracy", "reward/mean", "loss", "time/elapsed"} <= set(df.columns)
    assert "out_dir" not in df.columns and "lr" not in df.columns
    assert set(df["experiment"]) == {"std_norm"} and sorted(df["seed"].unique()) == [0, 1]
    assert df.loc[df["arm"] == "dr_grpo", "advantage"].eq("dr_grpo").all()
    step0 = df[df["step"] == 0]
    assert step0["reward/mean"].isna().all() and step0["eval/accuracy"].eq(0.1).all()


def test_sweep_knob_is_a_column_even_when_constant(tmp_path):
    root = make_sweep(tmp_path / "sweep")
    spec = json.loads((root / "sweep.json").read_text())
    (root / "sweep.json").write_text(json.dumps({**spec, "knob": "group_size"}))
    assert load_runs(root)["group_size"].eq(4).all()


def test_corrupt_and_truncated_lines_are_skipped_with_a_warning_naming_the_file(tmp_path):
    run = tmp_path / "exp" / "grpo" / "seed0"
    write_run(run, {**BASE_CONFIG, "experiment": "exp", "arm": "grpo", "seed": 0},
              [record(0), record(1, loss=1.0)],
              raw_lines=["this is not json", "[1, 2]", json.dumps(record(2, loss=2.0)), '{"step": 3, "samp'])
    with pytest.warns(AnalysisWarning, match=r"3 bad line.*\[3, 4, 6\].*truncated last line.*metrics\.jsonl"):
        df = load_runs(run, cache=False)
    assert df["step"].tolist() == [0, 1, 2]
    assert df["loss"].tolist()[1:] == [1.0, 2.0]


def test_repeated_step_keeps_the_last_record(tmp_path):
    run = tmp_path / "exp" / "a" / "seed0"
    write_run(run, None, [record(0), record(1, loss=1.0), record(1, loss=5.0)])
    df = load_runs(run, cache=False)
    assert df["loss"].dropna().tolist() == [5.0]


def test_empty_metrics_file_is_skipped_with_a_warning(tmp_path):
    root = make_sweep(tmp_path / "sweep")
    empty = root / "grpo" / "seed1" / "metrics.jsonl"
    empty.write_text("")
    with pytest.warns(AnalysisWarning, match=r"empty file .*grpo/seed1/metrics\.jsonl"):
        df = load_runs(root)
    assert len(df) == 3 * 3 and not ((df["arm"] == "grpo") & (df["seed"] == 1)).any()


def test_corrupt_config_falls_back_to_the_path(tmp_path):
    run = tmp_path / "myexp" / "armA" / "seed7"
    write_run(run, None, [record(0), record(1, loss=0.0)])
    (run / "config.json").write_text("{not json")
    with pytest.warns(AnalysisWarning, match=r"corrupt file .*seed7/config\.json"):
        df = load_runs(run)
    assert (df["experiment"].iloc[0], df["arm"].iloc[0], df["seed"].iloc[0]) == ("myexp", "armA", 7)


def test_unfinished_sweep_loads_and_statuses_cover_declared_runs(tmp_path):
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "sweep.json").write_text(json.dumps({"experiment": "e", "arms": {"a": {}, "b": {}}, "seeds": [0, 1],
                                                 "baseline": "a", "knob": None}))
    cfg = {**BASE_CONFIG, "experiment": "e", "steps": 5}
    write_run(root / "a" / "seed0", {**cfg, "arm": "a", "seed": 0}, [record(s) for s in range(6)],
              {"status": "finished", "steps_done": 5, "final": {}, "error": None})
    # Running: no summary yet, last line half-written.
    write_run(root / "a" / "seed1", {**cfg, "arm": "a", "seed": 1}, [record(0), record(1), record(2)],
              raw_lines=['{"step": 3, "sampl'])
    write_run(root / "b" / "seed0", {**cfg, "arm": "b", "seed": 0}, [record(0), record(1)],
              {"status": "failed", "steps_done": 1, "final": {}, "error": "CUDA out of memory"})
    # b/seed1 was never started.
    with pytest.warns(AnalysisWarning, match="truncated last line"):
        df = load_runs(root)
    assert df.groupby(["arm", "seed"]).size().to_dict() == {("a", 0): 6, ("a", 1): 3, ("b", 0): 2}

    statuses = load_statuses(root).set_index(["arm", "seed"])
    assert statuses["status"].to_dict() == {("a", 0): "finished", ("a", 1): "running",
                                            ("b", 0): "failed", ("b", 1): "missing"}
    assert statuses.loc[("a", 1), "steps_done"] == 2  # last complete line
    assert statuses.loc[("b", 0), "error"] == "CUDA out of memory"


def test_missing_dir_and_dir_without_runs_raise(tmp_path):
    with pytest.raises(AnalysisError, match="no such directory"):
        load_runs(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(AnalysisError, match="no run directories"):
        load_runs(tmp_path / "empty")


def test_cache_is_reused_and_invalidated_when_the_jsonl_grows(tmp_path):
    root = make_sweep(tmp_path / "sweep")
    first = load_runs(root)
    cache = root / "grpo" / "seed0" / CACHE_NAME
    assert cache.is_file()
    pd.testing.assert_frame_equal(load_runs(root), first)
    pd.testing.assert_frame_equal(load_runs(root, cache=False), first)
    with (root / "grpo" / "seed0" / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps(record(3, loss=9.0)) + "\n")
    again = load_runs(root)
    assert len(again) == len(first) + 1
    assert again.loc[(again["arm"] == "grpo") & (again["seed"] == 0), "loss"].iloc[-1] == 9.0


def test_bad_line_warning_repeats_when_reading_from_cache(tmp_path):
    run = tmp_path / "e" / "a" / "seed0"
    write_run(run, None, [record(0), record(1, loss=0.0)], raw_lines=["garbage"])
    for _ in range(2):  # second read comes from the cache
        with pytest.warns(AnalysisWarning, match="1 bad line"):
            load_runs(run)


def test_loading_a_4x5x1000_sweep_is_fast(tmp_path):
    metrics = {f"m{i}/x": 0.5 for i in range(50)}  # about as many keys as the trainer logs
    for arm in ("a", "b", "c", "d"):
        for seed in range(5):
            write_run(tmp_path / "s" / arm / f"seed{seed}", {"experiment": "s", "arm": arm, "seed": seed},
                      [record(s, **metrics) for s in range(1001)])
    load_runs(tmp_path / "s")  # builds the parquet cache
    start = time.perf_counter()
    df = load_runs(tmp_path / "s")
    assert time.perf_counter() - start < 2.0
    assert len(df) == 4 * 5 * 1001
