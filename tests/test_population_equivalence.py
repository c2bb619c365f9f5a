"""Issue Q: over a full demo-length run, a batched population's seeds end where single runs end.

Batched, a seed's step 1 equals its single run's to float tolerance (tests/test_population_batched.py); after
that a token drawn at a near-tie can differ, so the runs can part ways and then only their statistics agree. The
demo's grpo arm (40 steps, scored on all 427 held-out problems) trains seeds 0-4 twice, side by side on two
cores: as a population stepped seed by seed (`--population-batching off`, each seed its single run bit for
bit, tests/test_population.py) and batched (`on`). Their final accuracies must not differ by Welch's
two-sample t-test at 5%; the test prints what that budget could have detected.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from experiments.demo import EXPERIMENT
from grpo.setup.config import config_flags

SEEDS = 5


def train(out_dir: Path, batching: str) -> subprocess.Popen:
    config = dataclasses.replace(EXPERIMENT.arms["grpo"], seed=0, population=SEEDS, population_batching=batching,
                                 threads=1, quiet=True, out_dir=str(out_dir), wandb_dir=str(out_dir))
    command = [sys.executable, "-m", "grpo.commands.cli", "train", *config_flags(config)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def final(out_dir: Path, key: str) -> np.ndarray:
    return np.array([json.loads((out_dir / f"seed{k}" / "summary.json").read_text())["final"][key]
                     for k in range(SEEDS)])


def metric_drift(a: Path, b: Path) -> float:
    """The largest |difference| of a numeric metric (but time/*) between two runs' metrics lines."""
    lines = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (a, b)]
    assert len(lines[0]) == len(lines[1])
    return max((abs(x[key] - y[key]) for x, y in zip(*lines) for key in x
                if not key.startswith("time/") and isinstance(x[key], float)), default=0.0)


@pytest.mark.slow
def test_a_batched_population_ends_where_single_runs_end(tmp_path):
    singles, batched = tmp_path / "off", tmp_path / "on"
    processes = [train(singles, "off"), train(batched, "on")]
    for process in processes:
        _, err = process.communicate()
        assert process.returncode == 0, err[-2000:]
    alone, together = final(singles, "eval/accuracy"), final(batched, "eval/accuracy")
    # The batched seeds ran their own computation (else this compares a run with itself): besides time/*, their
    # metrics lines differ from the singles' (by float rounding at least).
    drift = max(metric_drift(singles / f"seed{k}", batched / f"seed{k}") for k in range(SEEDS))
    assert drift > 0
    welch = stats.ttest_ind(together, alone, equal_var=False)
    p = 1.0 if np.isnan(welch.pvalue) and together.mean() == alone.mean() else welch.pvalue   # both constant, equal
    # The smallest true difference this budget detects 80% of the time (two samples of 5, pooled sd).
    sd = np.sqrt((alone.var(ddof=1) + together.var(ddof=1)) / 2)
    detectable = (stats.t.ppf(0.975, 2 * SEEDS - 2) + stats.t.ppf(0.8, 2 * SEEDS - 2)) * sd * np.sqrt(2 / SEEDS)
    print(f"\nfinal eval/accuracy, seeds 0-{SEEDS - 1}: singles {np.round(alone, 4).tolist()}, batched "
          f"{np.round(together, 4).tolist()}; difference {together.mean() - alone.mean():+.4f}, Welch p = "
          f"{p:.3f}; detectable at 80% power: {detectable:.4f}; largest metric drift {drift:.2e}")
    assert p >= 0.05, (alone, together, welch)
