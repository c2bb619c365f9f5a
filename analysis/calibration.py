"""Simulated sweeps with a known answer, to calibrate the report's verdicts (and any new one).

A simulated sweep is an array of final scores [R, A, S]: R independent reports, A arms (arm 0 the
baseline), S seeds. A seed shifts every arm's score alike (same prompts, same init: what pairing removes),
and each run adds its own noise. `effects` plants a true difference per arm; all zeros is the global null
(all arms from one distribution). `accuracy_sweep` draws discrete accuracies (k correct of n_eval), so
ties between paired differences happen as they do in real sweeps at 2-3 seeds.

Verdicts are calibrated on the arrays (`paired_diffs` -> `verdicts.paired_tests`, thousands of reports
in milliseconds); `tidy` turns one report into the tidy frame `analysis.load` would give, so the report's
own functions (tables, captions) can be checked on the same draws.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import verdicts


def _effects(arms: int, effects) -> np.ndarray:
    planted = np.zeros(arms) if effects is None else np.asarray(effects, dtype=float)
    if planted.shape != (arms,):
        raise ValueError(f"effects must give one value per arm ({arms}), got shape {planted.shape}")
    return planted


def normal_sweep(rng: np.random.Generator, reports: int, arms: int, seeds: int, effects=None,
                 noise: float = 0.02, seed_noise: float = 0.03, mean: float = 0.5) -> np.ndarray:
    """[reports, arms, seeds] scores: mean + effects[arm] + a seed's shared shift + the run's own noise,
    both normal (sd seed_noise, noise). The paired differences then have sd noise * sqrt(2)."""
    shift = rng.normal(0.0, seed_noise, (reports, 1, seeds))
    own = rng.normal(0.0, noise, (reports, arms, seeds))
    return mean + _effects(arms, effects)[None, :, None] + shift + own


def accuracy_sweep(rng: np.random.Generator, reports: int, arms: int, seeds: int, n_eval: int = 20,
                   effects=None, solve_rate: float = 0.5, seed_noise: float = 0.05) -> np.ndarray:
    """[reports, arms, seeds] accuracies k/n_eval, k ~ Binomial(n_eval, solve_rate + a seed's shared shift
    + effects[arm]) (clipped to [0, 1]): discrete scores, so equal paired differences occur."""
    shift = rng.normal(0.0, seed_noise, (reports, 1, seeds))
    rate = np.clip(solve_rate + _effects(arms, effects)[None, :, None] + shift, 0.0, 1.0)
    return rng.binomial(n_eval, np.broadcast_to(rate, (reports, arms, seeds))) / n_eval


def paired_diffs(scores: np.ndarray) -> np.ndarray:
    """[..., A, S] scores -> [..., A - 1, S] paired differences of every arm to arm 0 (the baseline)."""
    return scores[..., 1:, :] - scores[..., :1, :]


def unadjusted_claims(diffs: np.ndarray, alpha: float = verdicts.ALPHA) -> np.ndarray:
    """[..., m] True where a comparison's own (1 - alpha) t-interval excludes 0: the report's verdict before
    Holm, kept to show how often it claims on a null sweep. Ties and single pairs never claim here."""
    tests = verdicts.paired_tests(diffs[..., None, :], alpha)      # each comparison a family of one
    return tests["claim"][..., 0] != 0


def arm_names(arms: int) -> list[str]:
    """'base', 'arm1', 'arm2', ...: arm 0 is the baseline."""
    return ["base", *(f"arm{a}" for a in range(1, arms))]


def tidy(scores: np.ndarray, metric: str = "eval/accuracy", experiment: str = "sim") -> pd.DataFrame:
    """One report's [A, S] scores as a tidy frame: per run, an eval at step 0 (the value 0) and one at
    step 10 holding its score, so `aggregate.final_scores` gives the score back."""
    arms, seeds = scores.shape
    arm, seed, step = np.meshgrid(np.arange(arms), np.arange(seeds), [0, 10], indexing="ij")
    step = step.ravel()
    return pd.DataFrame({"experiment": experiment, "arm": np.asarray(arm_names(arms))[arm.ravel()],
                         "seed": seed.ravel(), "step": step, "samples": 80 * step, "tokens": 800 * step,
                         metric: np.where(step > 0, np.repeat(scores.ravel(), 2), 0.0)})
