"""Paper checks: the published GRPO claims of /work/shared/paper-claims.md, each measured on grpo-lab, with a verdict.

    python -m experiments.paper_checks [--quick] [--only R4,G2,...] [--exact-only] [--out-dir D] [--parallel K]

A claim is one entry of CLAIMS: its ID, the claim in one line, its source, the quantity measured, its kind
(E: an exact identity checked to float tolerance without training; S: a direction of effect, read off the runs
of a shared sweep with seeds and a calibrated interval) and its check. Adding a claim is one function (in
experiments/claim_checks.py for an exact one; an S one in experiments/sweep_claims.py or its sweep's
claims_<sweep>.py) plus one line in CLAIMS; see docs/paper-checks.md.

Verdicts: held (an identity to its tolerance; a direction detected), contradicted (the identity fails by more
than its tolerance; the opposite direction detected), not detected at this budget (S, with the detectable
size), not applicable (with the reason), not run (an S claim whose check or sweep is not built yet).
The results go to <out-dir>/paper_checks.json; analysis.report renders them as the report's "Paper checks"
table (analysis/paper_checks.py), beside the sweeps' sections when <out-dir> holds sweeps.

S claims share sweeps (SWEEPS): each names the experiment whose runs it reads, so one G sweep serves G2-G5,
one length 2x2 serves R4, R5 and P8. Without --exact-only the sweeps the built S checks need run (or resume:
finished runs are skipped) under <out-dir>/<sweep>/ with experiments/sweep.py; S claims whose check is not
built yet are listed with verdict "not run" and the sweep they need. Every S claim of the list has its check.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from experiments import claim_checks as exact
from experiments import claims_groups as groups
from experiments import claims_length as length
from experiments import claims_updates as updates
from experiments import sweep_claims as stat
from experiments.claim_checks import Result
from grpo import GrpoError

NOT_RUN = "not run"


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str                                 # the claim in one line, as the table states it
    source: str                                # paper (arXiv id) and where in it
    quantity: str                              # what is measured
    kind: str                                  # "E" exact identity, "S" statistical direction
    check: Callable[..., Result] | None = None  # E: check(); S: check(frame of the sweep's runs); None: not built
    sweep: str | None = None                   # S: the SWEEPS entry whose runs it reads
    arms: tuple[str, ...] = ()                 # S: the arms of that sweep it compares
    steps: str = ""                            # S: the steps it reads ("0", "all", "first third", ...)


# The shared sweeps of the S claims: name -> (experiment module, what it adds for the claims).
SWEEPS = {
    "length_2x2": ("experiments.length_2x2", "{1/|o|, constant normaliser} x {std, no std} plus token_mean, on a "
                   "free-length task variant where wrong completions vary in length"),
    "group_size": ("experiments.group_size_paper", "G = 2, 4, 8, 16 at equal completions per step; a prompt pool "
                   "of 128; 16 extra samples per prompt at step 1 for the unbiased per-prompt q^G"),
    "kl_beta": ("experiments.kl_beta_paper", "beta = 0, 1e-3, 1e-2, 1e-1, the reference built at beta = 0 too; "
                "per-token k1, k3 stds"),
    "inner_epochs": ("experiments.inner_epochs", "mu = 1, 2, 4; plus clip-higher and gspo arms at mu = 2"),
    "dapo": ("experiments.dapo", "the DAPO ladder (dynamic sampling arm)"),
    "entropy": ("experiments.entropy", "clip baseline, kl_cov, clip_cov"),
}


CLAIMS = [
    Claim("D1", "Group advantages sum to 0; at ratio 1, beta 0 the loss is 0 and its gradient is REINFORCE with "
          "the group-mean baseline", "DeepSeekMath 2402.03300 eq. 3", "sum of A; loss; gradient vs REINFORCE", "E",
          exact.check_d1),
    Claim("D2", "The k3 term's per-token gradient coefficient is A + beta (pi_ref/pi - 1)",
          "DeepSeekMath 2402.03300 eq. 20-21", "d loss / d logp per token", "E", exact.check_d2),
    Claim("D5", "RL sharpens: pass@1 rises more than pass@16, which stays roughly flat",
          "DeepSeekMath 2402.03300 Fig. 7", "change of unbiased pass@1 and pass@16, held-out set", "S",
          length.check_d5, sweep="length_2x2", arms=("grpo",), steps="first and last eval"),
    Claim("R1", "G/(G-1) (r_i - mean r) equals the RLOO advantage r_i - mean_{j != i} r_j",
          "Dr. GRPO 2503.20783", "rloo advantages vs leave-one-out", "E", exact.check_r1),
    Claim("R2", "Binary rewards, k of G correct: std normalisation multiplies A by 1/sigma_k, sigma_k = "
          "sqrt(k(G-k))/G (sample std: sqrt(G/(G-1)) larger), largest near all-correct or all-wrong",
          "Dr. GRPO 2503.20783 Sec. 3", "grpo / dr_grpo advantage ratio", "E", exact.check_r2),
    Claim("R3", "Tabular model, length independent of the answer: under 1/|o| the expected gradient on the length "
          "logit has sign -sign(A); under a constant normaliser it is 0", "Dr. GRPO 2503.20783 Sec. 3",
          "E[d objective / d length logit]", "E", exact.check_r3),
    Claim("R4", "GRPO makes wrong completions longer over training than Dr. GRPO at about equal accuracy",
          "Dr. GRPO 2503.20783 Fig. 5", "slope of len/wrong_mean over steps", "S", length.check_r4,
          sweep="length_2x2", arms=("grpo", "dr_grpo"), steps="all"),
    Claim("R5", "The length effect follows the length normalisation, not std", "Dr. GRPO 2503.20783 App. C Fig. 8",
          "slope of len/wrong_mean, 2x2 main effects", "S", length.check_r5,
          sweep="length_2x2", arms=("grpo", "no_std", "std_sum_norm", "dr_grpo"), steps="all"),
    Claim("G1", "A group is constant with prob q^G + (1-q)^G, 2/(G+1) over q ~ U(0,1); C(k,G)/C(n,G) is unbiased "
          "for q^G", "DAPO 2503.14476 Sec. 3.2", "enumerated P(constant); E[estimate]", "E", exact.check_g1),
    Claim("G2", "At the first step the zero-variance share equals E_q[q^G + (1-q)^G], above the pooled "
          "pbar^G + (1-pbar)^G",
          "DAPO 2503.14476 Sec. 3.2", "accuracy/constant_group_frac vs zero_var/unbiased_frac vs "
          "zero_var/expected_frac", "S", groups.check_g2, sweep="group_size", arms=("G2", "G4", "G8", "G16"),
          steps="1 (the first training step)"),
    Claim("G3", "The zero-variance share falls as G grows; the all-correct share rises over training",
          "DAPO 2503.14476 Fig. 3b", "zero_var/frac by G; zero_var/all_correct_frac slope", "S", stat.check_g3,
          sweep="group_size", arms=("G2", "G4", "G8", "G16"), steps="first 10% and all"),
    Claim("G4", "At equal rollouts per step, G = 2 trains about as well as G = 16 (equivalence, margin stated)",
          "2-GRPO 2510.00977", "final eval accuracy, G2 - G16", "S", groups.check_g4, sweep="group_size",
          arms=("G2", "G16"), steps="last 2 evals"),
    Claim("G5", "Zero variance persists: P(zero-var next | zero-var before) >> P(zero-var next | informative before)",
          "GRESO", "ledger transitions", "S", groups.check_g5, sweep="group_size", arms=("G8",), steps="all"),
    Claim("K2", "Under pi: E[k1] = E[k3] = KL(pi||pi_ref), E[k2] != KL in general, k3 >= 0",
          "Schulman 2020, Approximating KL", "enumerated expectations", "E", exact.check_k2),
    Claim("K3", "Expected gradients as losses: k1 -> 0, k2 -> grad KL, k3 -> biased, (pi/pi_old) k3 -> grad KL",
          "2510.01555", "autograd vs enumerated expectations", "E", exact.check_k3),
    Claim("K5", "Near the reference std(k1)/std(k3) >> 1 (~14 at KL 0.005)", "Schulman 2020",
          "per-token std ratio at early steps", "S", groups.check_k5, sweep="kl_beta", arms=("beta0",),
          steps="2-6"),
    Claim("B2", "At beta = 0 the KL grows over training; the final KL falls as beta rises", "DeepSeekMath 2402.03300",
          "kl/k3 slope; final kl/k3 by beta", "S", groups.check_b2, sweep="kl_beta",
          arms=("beta0", "beta0.001", "beta0.01", "beta0.1"), steps="all"),
    Claim("P3", "Soft overlong punishment: 0 up to L_max - L_cache, -0.5 at the buffer's midpoint, -1 at L_max, "
          "continuous", "DAPO 2503.14476 eq. 13", "overlong_penalty vs eq. 13", "E", exact.check_p3),
    Claim("P5", "Clip-higher (eps_high 0.28 vs 0.2) slows the fall of entropy (off-policy updates)",
          "DAPO 2503.14476 Fig. 2", "entropy slope", "S", updates.check_p5, sweep="inner_epochs",
          arms=("mu2", "mu2_clip_higher"), steps="from 1"),
    Claim("P7", "Dynamic sampling reaches a reward threshold in fewer optimizer steps, more generated samples",
          "DAPO 2503.14476 Fig. 6", "steps and samples to an eval-accuracy threshold", "S", updates.check_p7,
          sweep="dapo", arms=("token_level", "dynamic"), steps="all evals"),
    Claim("P8", "The token-level loss gives less length growth than the sample-level one", "DAPO 2503.14476 Sec. 3.3",
          "slope of len/mean", "S", length.check_p8, sweep="length_2x2", arms=("grpo", "token_mean"), steps="all"),
    Claim("M1", "With mu = 1 and one mini-batch the ratio is 1, clip fraction 0, token- and sequence-level IS coincide",
          "PPO; TRL PR 2899", "ratio, clip fractions, clip vs gspo loss and gradient", "E", exact.check_m1),
    Claim("M2", "Clip fraction and KL(pi_old||pi) rise with the inner epoch index", "PPO; TRL PR 2899",
          "inner/k/clip_frac, inner/k/kl_old", "S", stat.check_m2, sweep="inner_epochs", arms=("mu4",),
          steps="from 1"),
    Claim("M3", "Reward per rollout batch rises faster with mu = 2, 4 than 1; per optimizer step it does not",
          "PPO; TRL PR 2899", "reward slope per step and per update", "S", updates.check_m3, sweep="inner_epochs",
          arms=("mu1", "mu2", "mu4"), steps="from 1"),
    Claim("H1", "The entropy change has the sign of -Cov(log pi, A), mostly positive, so entropy falls",
          "Cui et al. 2505.22617", "entropy/cov_logp_adv and the next step's entropy change", "S", updates.check_h1,
          sweep="entropy", arms=("baseline",), steps="from 1"),
    Claim("H2", "R ~ -a e^H + b: a fit on the first third predicts the rest (RMSE vs constant)",
          "Cui et al. 2505.22617", "RMSE of the fit vs a constant", "S", updates.check_h2, sweep="entropy",
          arms=("baseline",), steps="fit on the first third, scored on the rest"),
    Claim("H3", "Clip-Cov and KL-Cov keep entropy higher than the clip baseline at similar accuracy",
          "Cui et al. 2505.22617", "late entropy and accuracy", "S", updates.check_h3, sweep="entropy",
          arms=("baseline", "kl_cov", "clip_cov"), steps="last third"),
    Claim("Q1", "GSPO at eps 3e-4/4e-4 clips a far larger share than token clip at 0.2/0.28 (~15% vs 0.13%)",
          "GSPO 2507.18071 (secondary figures)", "clip/seq_frac vs clip fractions", "S", updates.check_q1,
          sweep="inner_epochs", arms=("mu2", "mu2_gspo"), steps="from 1"),
    Claim("Q2", "Two binary rewards: sum-then-normalise ties (1,0) and (0,1); normalise-then-sum separates them by "
          "1/s1 - 1/s2 (a tie when the rewards' group std are equal); (0,1) vs (0,2) totals separate",
          "GDPO 2601.05242 Sec. 2", "advantage gaps over every group, G = 2..5", "E", exact.check_q2),
]


def select(claims: list[Claim], only: list[str] | None, exact_only: bool) -> list[Claim]:
    """The claims named by --only (all when None), E claims only with --exact-only; GrpoError names unknown IDs."""
    known = {c.id for c in claims}
    unknown = [i for i in only or () if i not in known]
    if unknown:
        raise GrpoError(f"unknown claim id(s) {', '.join(unknown)}; choose from {', '.join(c.id for c in claims)}")
    chosen = [c for c in claims if only is None or c.id in only]
    return [c for c in chosen if c.kind == "E" or not exact_only]


def sweep_arms(claims: list[Claim]) -> dict[str, list[str]]:
    """sweep -> the arms the built S checks among `claims` read (in order, each once)."""
    arms: dict[str, list[str]] = {}
    for claim in claims:
        if claim.kind == "S" and claim.check is not None:
            arms.setdefault(claim.sweep, [])
            arms[claim.sweep] += [a for a in claim.arms if a not in arms[claim.sweep]]
    return arms


# The two budgets of the S claims, both on each sweep's --quick cadence (evals, checkpoints: sweep.QUICK or the
# experiment's own). --quick: 3 seeds x 40 steps (27.5 min on 2 cores). The full run: more seeds for the
# intervals' power and twice the steps for the slopes, 3.3x the quick run's seed-steps, under the 3 h target.
FULL = {"seeds": 5, "steps": 80}


def budget_flags(quick: bool) -> list[str]:
    """The sweep flags of the S claims' budget: --quick alone, or --quick with the FULL seeds and steps."""
    return ["--quick"] if quick else ["--quick", "--seeds", str(FULL["seeds"]), "--steps", str(FULL["steps"])]


def run_sweep(name: str, arms: list[str], out_dir: Path, quick: bool, parallel: int | None) -> int:
    """Run (or resume; finished runs are skipped) the arms of sweep `name` under <out_dir>/<name> on the
    budget_flags(quick), as `python -m <its experiment> --out-dir ... --arms ... --no-report` would; returns
    its exit code."""
    import importlib

    from experiments import sweep      # deferred: the sweep runner imports the model stack

    experiment = importlib.import_module(SWEEPS[name][0]).EXPERIMENT
    missing = [arm for arm in arms if arm not in experiment.arms]
    if missing:
        raise GrpoError(f"sweep {name} ({SWEEPS[name][0]}) has no arm(s) {', '.join(missing)} yet")
    argv = ["--out-dir", str(out_dir / name), "--arms", ",".join(arms), "--no-report",
            "--parallel", str(parallel or sweep.DEFAULT_PARALLEL), *budget_flags(quick)]
    return sweep.main(experiment, argv)


def sweep_frame(claim: Claim, out_dir: Path):
    """The tidy frame of the claim's arms in <out_dir>/<sweep> (analysis.load)."""
    from analysis.load import load_runs

    frame = load_runs([out_dir / claim.sweep])
    return frame[frame["arm"].isin(claim.arms)]


def run_claim(claim: Claim, out_dir: Path) -> Result:
    """The claim's result; a check that raises is recorded as not run with its error (the command then exits 1)."""
    if claim.check is None:
        module, arms = SWEEPS[claim.sweep]
        return Result(NOT_RUN, "", note=f"S check not built yet; needs sweep {claim.sweep} ({module}: {arms})")
    try:
        return claim.check() if claim.kind == "E" else claim.check(sweep_frame(claim, out_dir))
    except Exception as err:  # one broken check (or a missing sweep) must not cost the others
        return Result(NOT_RUN, "", note=f"the check raised {type(err).__name__}: {err}")


def record(claim: Claim, result: Result, seconds: float) -> dict:
    """One row of paper_checks.json."""
    steps = claim.steps + (f" of {result.steps}" if result.steps is not None else "")
    return {"id": claim.id, "claim": claim.claim, "source": claim.source, "quantity": claim.quantity,
            "kind": claim.kind, "verdict": result.verdict, "measured": result.measured, "error": result.error,
            "tolerance": result.tolerance, "note": result.note, "sweep": claim.sweep,
            "arms": list(claim.arms), "steps": steps or None, "seeds": result.seeds, "seconds": round(seconds, 3)}


def write_checks(out_dir: Path, rows: list[dict], argv: list[str], seconds: float) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "paper_checks.json"
    payload = {"generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join(["python -m experiments.paper_checks", *argv]), "seconds": round(seconds, 2),
               "checks": rows}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)     # a kill mid-write leaves the previous file whole
    return path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.paper_checks",
        description="Test the published GRPO claims (IDs: " + ", ".join(c.id for c in CLAIMS) + ") against "
                    "grpo-lab and write <out-dir>/paper_checks.json and a report with their verdicts.")
    parser.add_argument("--out-dir", type=Path, default=Path("runs") / "paper_checks",
                        help="where paper_checks.json, the report and the S claims' sweeps go")
    parser.add_argument("--only", type=lambda text: [i.strip() for i in text.split(",") if i.strip()], default=None,
                        metavar="ID,ID,...", help="comma-separated claim IDs to check (default: all)")
    parser.add_argument("--exact-only", action="store_true",
                        help="only the exact (E) claims: no training, a few seconds")
    parser.add_argument("--quick", action="store_true",
                        help="the S claims' small budget: 3 seeds x 40 steps (default: the full run's "
                             f"{FULL['seeds']} seeds x {FULL['steps']} steps)")
    # Default None: the sweeps' own default (experiments.sweep.DEFAULT_PARALLEL), read when a sweep runs, so
    # --exact-only does not import the sweep runner and its model stack.
    parser.add_argument("--parallel", type=int, default=None,
                        help="runs at once in the S claims' sweeps, each with cores/parallel threads "
                             "(default: experiments.sweep's)")
    parser.add_argument("--no-report", action="store_true", help="write paper_checks.json only, no report")
    args = parser.parse_args(argv)
    if args.parallel is not None and args.parallel < 1:
        parser.error("--parallel must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        claims = select(CLAIMS, args.only, args.exact_only)
    except GrpoError as err:
        print(f"paper_checks: error: {err}", file=sys.stderr)
        return 2
    start, rows = time.perf_counter(), []
    for name, arms in sweep_arms(claims).items():
        try:
            code = run_sweep(name, arms, args.out_dir, args.quick, args.parallel)
        except (GrpoError, SystemExit) as err:   # its claims are then recorded as not run (no runs to read)
            code = err.code if isinstance(err, SystemExit) else f"2 ({err})"
        if code != 0:
            print(f"paper_checks: sweep {name} exited {code}; its claims read the runs that finished")
    for claim in claims:
        began = time.perf_counter()
        result = run_claim(claim, args.out_dir)
        rows.append(record(claim, result, time.perf_counter() - began))
        print(f"{claim.id:3} {result.verdict:14} {result.measured or result.note}")
    seconds = time.perf_counter() - start
    path = write_checks(args.out_dir, rows, argv, seconds)
    print(f"{len(rows)} claims in {seconds:.1f} s; paper_checks.json: {path}")
    if not args.no_report:
        from analysis.report import write_report   # analysis renders the JSON (it never imports grpo)
        report = write_report(args.out_dir)
        print(f"report: {report} (and {report.with_suffix('.html').name})")
    return 1 if any(r["verdict"] == NOT_RUN and r["kind"] == "E" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
