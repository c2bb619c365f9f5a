"""Paired A/B of a code switch on a workload whose steps vary: every step runs both ways from the same state.

    .venv/bin/python bench/paired.py --set grpo.engine.gemm.MIN_WEIGHT_ELEMENTS=0 [--steps 16] [--null]
                                     [--json-out F] [-- grpo train flags ...]

A is the code as it is; B is the same code with each `--set MODULE.NAME=VALUE` (a Python literal) in force.
Both run `grpo_step` from copies of the same TrainState (policy, optimizer, random streams), in
alternating order, and the run continues from A's result; so both sides of a step see the same prompts,
the same completion lengths and the same machine minute. Alternating A and B by step instead is biased
wherever lengths vary from step to step: on the demo's config a null A/B read 14% apart that way, and 1.002
paired (median of 16 step ratios). `--null` runs A twice, to show the noise floor on this machine.

Prints one JSON object: each step's seconds both ways, the median/min/max of the step ratios B/A, and the
median seconds of each phase both ways. The config is `grpo train`'s (its defaults and any flags after
`--`), without wandb. A setting acts only where the code reads the name at step time: a constant read while
the run is built (`build_run`), or imported by value into another module, is not switched.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import gc
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

from grpo import GrpoError


def parse_setting(text: str) -> tuple[object, str, object]:
    """`MODULE.NAME=VALUE` -> (the imported module, NAME, the literal VALUE); the name must exist there."""
    target, sep, literal = text.partition("=")
    module_name, _, name = target.rpartition(".")
    if not sep or not module_name or not name:
        raise GrpoError(f"--set {text!r}: expected MODULE.NAME=VALUE, e.g. grpo.engine.gemm.MIN_WEIGHT_ELEMENTS=0")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, TypeError, ValueError):      # TypeError: a relative name such as ".gemm"
        raise GrpoError(f"--set {text!r}: no module {module_name!r}") from None
    if not hasattr(module, name):
        raise GrpoError(f"--set {text!r}: {module_name} has no {name!r}")
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError):
        raise GrpoError(f"--set {text!r}: {literal!r} is not a Python literal") from None
    return module, name, value


@contextlib.contextmanager
def applied(settings: list[tuple[object, str, object]]):
    """The settings in force inside the block, the old values back after it."""
    old = [(module, name, getattr(module, name)) for module, name, _ in settings]
    try:
        for module, name, value in settings:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in old:
            setattr(module, name, value)


def paired_steps(c, state, steps: int, switch, first_step: int = 1, progress=None):
    """Run steps first_step .. first_step + steps - 1 both ways, A plain and B inside `switch()`, each from a
    copy of the same TrainState on the run's components (which a step never changes), B first on every
    other step. Returns (the state after A's last step, one record per step: {"step", "first", "a_s", "b_s",
    "a_phases", "b_phases", "a_metrics", "b_metrics"})."""
    from grpo.algorithm.step import grpo_step

    records = []
    for step in range(first_step, first_step + steps):
        order = ("a", "b") if (step - first_step) % 2 == 0 else ("b", "a")
        record, after = {"step": step, "first": order[0]}, {}
        for side in order:
            trial = state.copy()
            # Discarded copies hold reference cycles (the patched forwards of their layers): free them
            # here, or the collector may do it inside a timed step.
            gc.collect()
            with switch() if side == "b" else contextlib.nullcontext():
                tick = time.perf_counter()
                metrics = grpo_step(c, trial, step).metrics
                record[f"{side}_s"] = time.perf_counter() - tick
            record[f"{side}_phases"], record[f"{side}_metrics"] = dict(c.timer.seconds), metrics
            after[side] = trial
        state = after["a"]
        records.append(record)
        if progress is not None:
            progress(record)
    return state, records


def summary(records: list[dict]) -> dict:
    """Step ratios B/A (median, min, max) and each phase's median seconds both ways."""
    ratios = [r["b_s"] / r["a_s"] for r in records]
    names = {side: list(dict.fromkeys(k for r in records for k in r[f"{side}_phases"])) for side in ("a", "b")}
    phases = {side: {k: statistics.median(r[f"{side}_phases"].get(k, 0.0) for r in records) for k in names[side]}
              for side in ("a", "b")}
    return {"steps": len(records), "ratio_b_over_a": {"median": statistics.median(ratios), "min": min(ratios),
                                                      "max": max(ratios)},
            "median_a_s": statistics.median(r["a_s"] for r in records),
            "median_b_s": statistics.median(r["b_s"] for r in records), "phases_s": phases,
            "per_step": [{k: r[k] for k in ("step", "first", "a_s", "b_s")} for r in records]}


def main(argv: list[str]) -> int:
    cut = argv.index("--") if "--" in argv else len(argv)
    own, train_flags = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="bench/paired.py", description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="MODULE.NAME=VALUE",
                        help="what B changes (repeatable)")
    parser.add_argument("--null", action="store_true", help="B = A: the noise floor of the comparison")
    parser.add_argument("--steps", type=int, default=16, help="paired steps (each runs twice)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON object here")
    args = parser.parse_args(own)
    if args.steps < 1:
        raise GrpoError(f"--steps must be >= 1, got {args.steps}")
    if args.settings and args.null:
        raise GrpoError("--null runs A twice: it takes no --set")
    if not args.settings and not args.null:
        raise GrpoError("nothing to compare: give B's --set MODULE.NAME=VALUE, or --null")
    if args.json_out and not args.json_out.parent.is_dir():
        raise GrpoError(f"--json-out {args.json_out}: no folder {args.json_out.parent}")
    settings = [parse_setting(text) for text in args.settings]
    from grpo.setup.flags import parse_flags          # after the checks above: these imports take seconds
    from grpo.setup.config import TrainConfig
    from grpo.algorithm.step import build_run

    cfg = parse_flags(TrainConfig, train_flags, "bench/paired.py (grpo train flags after --)")
    cfg = dataclasses.replace(cfg, wandb_mode="disabled", quiet=True)
    c, state = build_run(cfg, log=lambda *_: None)

    def progress(record: dict) -> None:
        print(f"step {record['step']}: A {record['a_s']:.3f} s, B {record['b_s']:.3f} s ({record['first']} first)",
              file=sys.stderr, flush=True)

    _, records = paired_steps(c, state, args.steps, lambda: applied(settings), progress=progress)
    result = {"set": args.settings, "null": args.null, **summary(records)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except GrpoError as err:
        print(f"bench/paired.py: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code)
