"""Verdicts on a family of paired differences: Holm's step-down t-tests, intervals that agree with them,
the smallest effect the seeds could detect, and the seeds an effect would need.

A report makes several comparisons at once (every arm against the baseline; every pair a probe claim
tests). Each one's own 95% interval would let a null sweep of 7 arms claim something about one report
in four. So a family of m comparisons is tested with Holm's step-down procedure on the paired t-tests
(Holm 1979, "A simple sequentially rejective multiple test procedure"): sort the two-sided p-values
p(1) <= ... <= p(m); reject H(j) while p(j) <= alpha / (m - j + 1), stop at the first that is not. The
chance of any false claim in the family stays <= alpha (0.05) whatever the dependence between tests.

Intervals shown beside the verdicts are t-intervals at each comparison's Holm level: 1 - alpha/(m - j + 1)
for a rejected H(j), and for every comparison from the first non-rejected rank k on, 1 - alpha/(m - k + 1).
So an interval excludes 0 exactly when its comparison is rejected (p(j) <= its level's alpha), and
the adjusted p-value, max over i <= j of (m - i + 1) p(i), is <= alpha exactly then too.

m counts the comparisons with at least 2 pairs. Identical paired differences (no spread; accuracy is
discrete, so at 2-3 seeds this happens) give no verdict and no interval: their t statistic is infinite
or undefined, not evidence. They stay in m with p = 1, so a tie never makes the others' test laxer.

Detectable effect: the smallest true paired difference the test detects with 80% power,
(t_{1 - alpha/(2m), n-1} + t_{0.8, n-1}) * s/sqrt(n), s the observed sd of the paired differences. It uses
alpha/m, the level of Holm's first step and the strictest one: Holm rejects whatever that level rejects,
so an effect of this size is found at least as often by the verdict. The formula is the usual
approximation (the non-central t taken as a shifted central one, s taken for sigma); at 3 seeds it is
optimistic: in simulation (tests/test_calibration_verdicts.py) a true effect of the median stated size is
found 55-60% of the time at 3 seeds and about 67% at 5, and one of twice that size over 96% of the time.
Seeds needed for an effect E: the smallest n whose detectable size at the same level and the same s is
<= |E| (None past MAX_SEEDS).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 1000
# Paired differences closer than this (relative to their size, at least 1) count as identical: scores
# computed from the same eval counts can differ in the last bit only through float rounding.
TIE_TOLERANCE = 1e-9


def paired_tests(diffs: np.ndarray, alpha: float = ALPHA, power: float = POWER) -> dict[str, np.ndarray]:
    """Holm's paired t-tests over the last-but-one axis of `diffs` [..., m, n] (NaN: no such pair).

    Each [m, n] slice is one family: m comparisons, each with up to n paired differences. Returns arrays
    of shape [..., m]: n (pairs), mean, sd, tie (n >= 2, no spread), p (two-sided; NaN without a test),
    p_holm (adjusted; NaN without a test), level (the alpha of the comparison's interval), lo, hi (its
    interval; NaN without a test), claim (+1 higher, -1 lower, 0 none), detectable (80% power at alpha/m;
    NaN without a test) and m (family size, broadcast).
    """
    diffs = np.asarray(diffs, dtype=float)
    present = ~np.isnan(diffs)
    n = present.sum(-1)
    count = np.maximum(n, 1)
    mean = np.where(present, diffs, 0.0).sum(-1) / count
    mean = np.where(n > 0, mean, np.nan)
    deviations = np.where(present, diffs - mean[..., None], 0.0)
    sd = np.sqrt((deviations ** 2).sum(-1) / np.maximum(n - 1, 1))
    spread = np.where(present, diffs, -np.inf).max(-1) - np.where(present, diffs, np.inf).min(-1)
    scale = np.maximum(1.0, np.abs(np.where(present, diffs, 0.0)).max(-1))
    counted = n >= 2
    tie = counted & (spread <= TIE_TOLERANCE * scale)
    tested = counted & ~tie
    df = np.maximum(n - 1, 1)
    se = np.where(tested, sd, 1.0) / np.sqrt(count)
    p = np.where(tested, 2 * stats.t.sf(np.abs(mean) / se, df), np.nan)
    m = counted.sum(-1, keepdims=True)

    # Ties sort as p = 1, comparisons with < 2 pairs last (no test).
    order, p_sorted, remaining, passed = _holm_steps(np.where(tested, p, np.where(counted, 1.0, np.inf)), m, alpha)
    step_alpha = alpha / remaining
    adjusted = np.maximum.accumulate(np.minimum(1.0, remaining * p_sorted), axis=-1)
    # The first non-rejected rank's alpha holds for it and every later rank (see the module docstring).
    first_failed = np.argmin(passed, axis=-1)[..., None]
    all_passed = passed.all(-1, keepdims=True)
    level_sorted = np.where(passed | all_passed, step_alpha, np.take_along_axis(step_alpha, first_failed, -1))
    inverse = np.argsort(order, axis=-1)
    reject = np.take_along_axis(passed, inverse, -1) & tested
    level = np.where(counted, np.take_along_axis(level_sorted, inverse, -1), np.nan)
    p_holm = np.where(tested, np.take_along_axis(adjusted, inverse, -1), np.nan)

    half = stats.t.ppf(1 - np.where(tested, level, alpha) / 2, df) * se
    lo, hi = np.where(tested, mean - half, np.nan), np.where(tested, mean + half, np.nan)
    claim = np.where(reject, np.sign(mean), 0).astype(int)
    family_alpha = alpha / np.maximum(m, 1)
    detectable = np.where(tested, (stats.t.ppf(1 - family_alpha / 2, df) + stats.t.ppf(power, df)) * se, np.nan)
    return {"n": n, "mean": mean, "sd": np.where(counted, sd, np.nan), "tie": tie, "p": p, "p_holm": p_holm,
            "level": level, "lo": lo, "hi": hi, "claim": claim, "detectable": detectable,
            "m": np.broadcast_to(m, n.shape)}


def seeds_needed(sd: float, effect: float, m: int, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Smallest n >= 2 with (t_{1-alpha/(2m), n-1} + t_{power, n-1}) * sd/sqrt(n) <= |effect|.

    None when sd or effect is NaN or effect is 0, or when even MAX_SEEDS seeds would not do.
    """
    if not np.isfinite(sd) or not np.isfinite(effect) or effect == 0:
        return None
    n = np.arange(2, MAX_SEEDS + 1)
    df = n - 1
    size = (stats.t.ppf(1 - alpha / (2 * max(m, 1)), df) + stats.t.ppf(power, df)) * sd / np.sqrt(n)
    enough = np.flatnonzero(size <= abs(effect))
    return int(n[enough[0]]) if enough.size else None


def ragged(rows: list) -> np.ndarray:
    """[m, n_max] matrix of paired differences from m arrays of different lengths, NaN-padded."""
    # At least one column: a family whose comparisons have no pair at all gives NaN rows (no test), not an
    # empty reduction.
    width = max((len(r) for r in rows), default=0) or 1
    out = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def equivalence_tests(diffs: np.ndarray, margin: float, alpha: float = ALPHA,
                      power: float = POWER) -> dict[str, np.ndarray]:
    """Equivalence within +-margin of a family of paired differences diffs [..., m, n] (NaN: no such pair):
    TOST, two one-sided paired t-tests (Schuirmann 1987), each comparison's p the larger of
    P(H0: mean <= -margin) and P(H0: mean >= margin), Holm's step-down over the family as in `paired_tests`.

    Equivalence of a comparison is shown when its TOST is rejected by Holm at alpha: then the
    1 - 2 alpha/m interval (returned as lo, hi, at Bonferroni's level, the strictest Holm step, so it
    lies inside +-margin whenever Holm's first step rejects) is the usual picture. A difference beyond
    the margin is shown when the one-sided test of the nearer side (H0: mean <= margin, or mean >= -margin)
    is rejected at alpha/2 per side (two sides), Holm over the family: its claim is then sign(mean).

    Non-superiority (mean < +margin, whatever the lower side) is the TOST's upper test alone, P(H0: mean >=
    margin), Holm over the family: `below`.

    Returns arrays [..., m]: n, mean, sd, tie (as `paired_tests`: no spread, no test), p_tost, equivalent
    (bool), below (bool), beyond (+1 above +margin, -1 below -margin, 0 none), lo, hi, and showable: the smallest
    margin these seeds would show at a true difference 0 with `power`,
    (t_{1 - alpha/m, n-1} + t_{1 - (1 - power)/2, n-1}) * s/sqrt(n) (shifted-central-t approximation,
    s for sigma; NaN without a test).
    """
    diffs = np.asarray(diffs, dtype=float)
    base = paired_tests(diffs, alpha, power)     # n, mean, sd, tie; and which comparisons were tested
    n, mean, sd, tie = base["n"], base["mean"], base["sd"], base["tie"]
    tested = (n >= 2) & ~tie
    df = np.maximum(n - 1, 1)
    se = np.where(tested, sd, 1.0) / np.sqrt(np.maximum(n, 1))
    p_low = stats.t.sf((mean + margin) / se, df)      # H0: mean <= -margin
    p_high = stats.t.cdf((mean - margin) / se, df)    # H0: mean >= +margin
    p_tost = np.where(tested, np.maximum(p_low, p_high), np.nan)
    # Beyond the margin, each side one-sided; the nearer side's p doubled (two sides were looked at).
    p_above = stats.t.sf((mean - margin) / se, df)     # H0: mean <= margin
    p_below = stats.t.cdf((mean + margin) / se, df)    # H0: mean >= -margin
    p_beyond = np.where(tested, np.minimum(1.0, 2 * np.minimum(p_above, p_below)), np.nan)
    m = (n >= 2).sum(-1, keepdims=True)
    equivalent = _holm_reject(p_tost, tested, m, alpha)
    below = _holm_reject(np.where(tested, p_high, np.nan), tested, m, alpha)
    beyond = np.where(_holm_reject(p_beyond, tested, m, alpha), np.sign(mean), 0).astype(int)
    half = stats.t.ppf(1 - alpha / np.maximum(m, 1), df) * se
    lo, hi = np.where(tested, mean - half, np.nan), np.where(tested, mean + half, np.nan)
    showable = np.where(tested, (stats.t.ppf(1 - alpha / np.maximum(m, 1), df)
                                 + stats.t.ppf(1 - (1 - power) / 2, df)) * se, np.nan)
    return {"n": n, "mean": mean, "sd": sd, "tie": tie, "p_tost": p_tost, "equivalent": equivalent,
            "below": below, "beyond": beyond, "lo": lo, "hi": hi, "showable": showable}


def _holm_steps(key: np.ndarray, m: np.ndarray, alpha: float):
    """Holm's step-down over p-values key [..., k] (inf: no test, sorted last) of families of size m [..., 1]:
    order (argsort of key), the sorted p, remaining (m - j + 1 for the j-th smallest, 1-based; ranks past m
    get 1, their p is inf anyway) and passed (the sorted p at or under alpha / remaining, every earlier step
    passed too)."""
    order = np.argsort(key, axis=-1, kind="stable")
    p_sorted = np.take_along_axis(key, order, -1)
    remaining = np.maximum(m - np.arange(key.shape[-1]), 1)
    passed = np.cumprod(p_sorted <= alpha / remaining, axis=-1).astype(bool)
    return order, p_sorted, remaining, passed


def _holm_reject(p: np.ndarray, tested: np.ndarray, m: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down rejections [..., m] of p-values [..., m] (untested: never rejected, sorted last;
    m [..., 1]: the family size, counting ties, as in `paired_tests`)."""
    order, _, _, passed = _holm_steps(np.where(tested, p, np.inf), m, alpha)
    return np.take_along_axis(passed, np.argsort(order, axis=-1), -1) & tested
