"""Read sweep and run directories into one tidy DataFrame, and read run statuses.

Layout written by the trainer (the data contract):
  <sweep>/sweep.json                 experiment, arms, seeds, budget, baseline, knob, versions
  <sweep>/<arm>/seed<k>/config.json  the flat config the run used
  <sweep>/<arm>/seed<k>/metrics.jsonl one record per step (step 0 = eval before training)
  <sweep>/<arm>/seed<k>/summary.json status, steps_done, final, error (may be missing)

The frame has one row per (run, step): experiment, arm, seed, the config fields that differ between
arms, step, samples, tokens, then every metric (a key the trainer could not compute is NaN here).
Sweeps in progress load fine: bad lines, a truncated last line and empty or corrupt files are skipped
with an `AnalysisWarning` naming the file. Parsed metrics are cached as parquet beside the JSONL,
keyed by the JSONL's size and mtime, so re-reading a 20-run sweep costs milliseconds.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterable

import pandas as pd

ID_COLUMNS = ("experiment", "arm", "seed")
AXES = ("step", "samples", "tokens")
CACHE_NAME = "metrics.cache.parquet"
_CACHE_KEY = b"grpo_lab_analysis"
_CACHE_VERSION = 1
_SEED_DIR = re.compile(r"seed(\d+)")
_MAX_DEPTH = 4


class AnalysisError(Exception):
    """Input the user has to fix (no such directory, no runs); the CLI prints it and exits 2."""


class AnalysisWarning(UserWarning):
    """A file or line that was skipped, or a run that could not be identified from its config."""


def _warn(message: str) -> None:
    warnings.warn(message, AnalysisWarning, stacklevel=3)


def _as_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Accept one path or several; a bare string is one path, not a sequence of characters."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return [Path(p) for p in paths]


def is_run_dir(path: Path) -> bool:
    """A run dir holds metrics.jsonl or summary.json, or is a `seed<k>` dir with a config.json.

    A bare config.json is not enough: checkpoints written by HF also contain one.
    """
    if (path / "metrics.jsonl").is_file() or (path / "summary.json").is_file():
        return True
    return _SEED_DIR.fullmatch(path.name) is not None and (path / "config.json").is_file()


def find_run_dirs(path: Path) -> list[Path]:
    """Run dirs at or under `path` (a run dir, a sweep dir, or a folder of sweeps), sorted.

    Raises AnalysisError when `path` is not a directory. Descends into a run dir only for the runs
    `grpo rescore` wrote under <run>/rescore/<name>/, which analyse as arms of their own ("<arm>@<name>").
    """
    if not path.exists():
        raise AnalysisError(f"no such directory: {path}")
    if not path.is_dir():
        raise AnalysisError(f"not a directory: {path}")

    def walk(folder: Path, depth: int) -> Iterable[Path]:
        if is_run_dir(folder):
            yield folder
            rescored = folder / "rescore"
            if rescored.is_dir():
                yield from (child for child in sorted(rescored.iterdir()) if is_run_dir(child))
            return
        if depth == _MAX_DEPTH:
            return
        for child in sorted(folder.iterdir()):
            if child.is_dir() and not child.name.startswith("."):
                yield from walk(child, depth + 1)

    return list(walk(path, 0))


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`; None if the file is missing, or (with a warning) corrupt/empty."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        _warn(f"skipped corrupt file {path}: {err}")
        return None
    if not isinstance(value, dict):
        _warn(f"skipped {path}: expected a JSON object, got {type(value).__name__}")
        return None
    return value


def sweep_dir_of(run_dir: Path) -> Path | None:
    """The sweep dir holding `run_dir` (`<sweep>/<arm>/seed<k>`), if it has a sweep.json."""
    candidate = run_dir.parent.parent
    return candidate if (candidate / "sweep.json").is_file() else None


def parse_metrics_lines(lines: list[str]) -> tuple[list[dict], list[int]]:
    """Parse JSONL lines into records; return (records, 1-based numbers of the bad lines).

    A record must be a JSON object with an integer `step`. When a step repeats (a resumed run
    re-logging it), the last record wins.
    """
    by_step: dict[int, dict] = {}
    bad: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step != int(step):
            bad.append(number)
            continue
        by_step[int(step)] = record
    return [by_step[s] for s in sorted(by_step)], bad


def _warn_bad_lines(path: Path, bad: list[int], n_lines: int) -> None:
    if not bad:
        return
    shown = ", ".join(str(n) for n in bad[:5]) + (", ..." if len(bad) > 5 else "")
    tail = " (truncated last line)" if bad[-1] == n_lines else ""
    _warn(f"skipped {len(bad)} bad line(s) [{shown}]{tail} in {path}")


def _file_stamp(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "version": _CACHE_VERSION}


def _read_cache(cache: Path, stamp: dict) -> tuple[pd.DataFrame, dict] | None:
    """The cached frame and its stamp if the cache matches `stamp`; None otherwise (never raises)."""
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(cache)
        meta = json.loads((table.schema.metadata or {}).get(_CACHE_KEY, b"{}"))
        if {k: meta.get(k) for k in stamp} != stamp:
            return None
        return table.to_pandas(), meta
    except Exception:  # a missing, stale or unreadable cache is simply rebuilt
        return None


def _write_cache(cache: Path, frame: pd.DataFrame, meta: dict) -> None:
    """Write the cache atomically; a read-only run dir or missing pyarrow just means no cache."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _CACHE_KEY: json.dumps(meta)})
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, cache)
    except Exception:
        pass


def read_metrics(run_dir: Path, cache: bool = True) -> pd.DataFrame:
    """The run's metrics.jsonl as a frame sorted by step; empty if the file is missing or empty.

    Bad lines are skipped with a warning (repeated when the result comes from the cache).
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return pd.DataFrame()
    stamp = _file_stamp(path)
    cache_path = run_dir / CACHE_NAME
    cached = _read_cache(cache_path, stamp) if cache else None
    if cached is not None:
        frame, meta = cached
        _warn_bad_lines(path, meta.get("bad_lines", []), meta.get("n_lines", 0))
    else:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError as err:
            _warn(f"skipped unreadable file {path}: {err}")
            return pd.DataFrame()
        records, bad = parse_metrics_lines(lines)
        _warn_bad_lines(path, bad, len(lines))
        frame = pd.DataFrame.from_records(records)
        if cache and not frame.empty:
            _write_cache(cache_path, frame, {**stamp, "bad_lines": bad, "n_lines": len(lines)})
    if frame.empty:
        _warn(f"skipped empty file {path}" if stamp["size"] == 0 else f"skipped {path}: no valid records")
    return frame


def run_identity(run_dir: Path, config: dict | None, sweep: dict | None) -> dict:
    """experiment, arm, seed of a run: from its config, else from its path `<experiment>/<arm>/seed<k>`."""
    config = config or {}
    match = _SEED_DIR.fullmatch(run_dir.name)
    fallback_experiment = (sweep or {}).get("experiment") or run_dir.parent.parent.name
    seed = config.get("seed", int(match.group(1)) if match else -1)
    return {
        "experiment": str(config.get("experiment") or fallback_experiment),
        "arm": str(config.get("arm") or run_dir.parent.name),
        "seed": int(seed),
    }


def _hashable(value: object) -> object:
    """Config values as comparable scalars (lists/dicts become their JSON text)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def arm_config_fields(configs: pd.DataFrame, keep: Iterable[str] = ()) -> list[str]:
    """Config fields constant within each (experiment, arm) but differing between arms, plus `keep`.

    Fields that vary between seeds of one arm (output paths, the seed itself) are left out.
    """
    fields = []
    for field in configs.columns:
        if field in ID_COLUMNS:
            continue
        values = configs[field].map(_hashable)
        within = values.groupby([configs["experiment"], configs["arm"]], dropna=False).nunique(dropna=False)
        if (within <= 1).all() and (values.nunique(dropna=False) > 1 or field in keep):
            fields.append(field)
    return fields


def _discover(paths) -> tuple[list[tuple[Path, dict | None, dict | None]], dict[Path, dict]]:
    """([(run_dir, config, sweep spec)], {sweep_dir: spec}) under `paths`; AnalysisError if no runs.

    Only readable sweep.json files appear in the specs; a corrupt one is warned about once.
    """
    runs, specs = [], {}
    for root in _as_paths(paths):
        for run_dir in find_run_dirs(root):
            sweep_dir = sweep_dir_of(run_dir)
            if sweep_dir is not None and sweep_dir not in specs:
                specs[sweep_dir] = read_json(sweep_dir / "sweep.json")
            runs.append((run_dir, read_json(run_dir / "config.json"), specs.get(sweep_dir)))
    if not runs:
        raise AnalysisError(f"no run directories under {', '.join(str(p) for p in _as_paths(paths))}")
    return runs, {d: s for d, s in specs.items() if s is not None}


def load_runs(paths, cache: bool = True) -> pd.DataFrame:
    """One tidy frame for all runs under `paths` (sweep dirs, run dirs, or folders of sweeps).

    Besides the fields that differ between arms, the sweep's `knob` field is always a column.
    Raises AnalysisError if a path is missing or no run has a single metrics record.
    """
    runs, specs = _discover(paths)
    frames, configs, seen = [], [], {}
    for run_dir, config, sweep in runs:
        identity = run_identity(run_dir, config, sweep)
        key = tuple(identity.values())
        if key in seen:
            _warn(f"run {'/'.join(map(str, key))} found twice ({seen[key]} and {run_dir}); kept the first")
            continue
        seen[key] = run_dir
        metrics = read_metrics(run_dir, cache=cache)
        if not metrics.empty:
            frames.append(metrics.assign(**identity))
            configs.append({**(config or {}), **identity})
    if not frames:
        raise AnalysisError(f"no metrics records under {', '.join(str(p) for p in _as_paths(paths))}")
    frame = pd.concat(frames, ignore_index=True)
    config_frame = pd.DataFrame.from_records(configs)
    knobs = {spec.get("knob") for spec in specs.values()}
    fields = [f for f in arm_config_fields(config_frame, keep=knobs) if f not in frame.columns]
    arm_values = config_frame[["experiment", "arm", *fields]].drop_duplicates(["experiment", "arm"])
    for field in fields:
        arm_values[field] = arm_values[field].map(_hashable)
    frame = frame.merge(arm_values, on=["experiment", "arm"], how="left")
    axes = [a for a in AXES if a in frame.columns]
    metric_columns = sorted(c for c in frame.columns if c not in (*ID_COLUMNS, *fields, *AXES))
    frame = frame[[*ID_COLUMNS, *fields, *axes, *metric_columns]]
    frame["seed"] = frame["seed"].astype(int)
    return frame.sort_values(["experiment", "arm", "seed", "step"], ignore_index=True)


def load_run_field(paths, field: str) -> pd.DataFrame:
    """experiment, arm, seed and each run's config value of `field` (None where its config lacks it),
    for fields `load_runs` leaves out because they vary between seeds (warmstart_seed, say)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)  # load_runs has already warned
        runs, _ = _discover(paths)
    rows = {}
    for run_dir, config, sweep in runs:
        identity = run_identity(run_dir, config, sweep)
        rows.setdefault(tuple(identity.values()), {**identity, field: (config or {}).get(field)})
    return pd.DataFrame.from_records(list(rows.values()), columns=[*ID_COLUMNS, field])


def load_sweep_specs(paths) -> dict[str, dict]:
    """sweep.json contents by experiment name, each with `sweep_dir` added; {} for bare run dirs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)  # load_runs has already warned
        _, specs = _discover(paths)
    found: dict[str, dict] = {}
    for sweep_dir, spec in specs.items():
        found.setdefault(str(spec.get("experiment") or sweep_dir.name), {**spec, "sweep_dir": str(sweep_dir)})
    return found


def _last_step(path: Path) -> int | None:
    """Step of the last parseable record of a JSONL, reading only its tail (no warnings)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 65536))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    records, _ = parse_metrics_lines(lines[::-1])
    return records[-1]["step"] if records else None


def _status_row(run_dir: Path, identity: dict, config: dict | None) -> dict:
    """Status of one run dir: summary.json's (which may also say e.g. `interrupted`), else running."""
    summary = read_json(run_dir / "summary.json") or {}
    status = summary.get("status")
    if not isinstance(status, str) or not status:
        status = "running"
    steps_done = summary.get("steps_done")
    if steps_done is None and (run_dir / "metrics.jsonl").is_file():
        steps_done = _last_step(run_dir / "metrics.jsonl")
    return {**identity, "status": status, "steps_done": steps_done,
            "steps": (config or {}).get("steps"), "error": summary.get("error"), "run_dir": str(run_dir)}


def load_statuses(paths) -> pd.DataFrame:
    """One row per run, expected (sweep.json arms x seeds) or found: experiment, arm, seed, status,
    steps_done, steps, error, run_dir. Status is summary.json's as written (`finished`, `failed`, and
    `interrupted` on Ctrl-C); expected runs absent on disk are `missing` (only for sweep dirs given,
    not the sweep around a run dir given alone); a run dir without summary.json counts as `running`
    (it may also have been killed).
    """
    rows = {}
    runs, specs = _discover(paths)
    for run_dir, config, sweep in runs:
        identity = run_identity(run_dir, config, sweep)
        rows.setdefault(tuple(identity.values()), _status_row(run_dir, identity, config))
    roots = [root.resolve() for root in _as_paths(paths)]
    for sweep_dir, spec in specs.items():
        if not any(sweep_dir.resolve().is_relative_to(root) for root in roots):
            continue  # a run dir given on its own: its siblings are not expected
        experiment = str(spec.get("experiment") or sweep_dir.name)
        for arm in spec.get("arms") or {}:
            for seed in spec.get("seeds") or []:
                rows.setdefault((experiment, str(arm), int(seed)), {
                    "experiment": experiment, "arm": str(arm), "seed": int(seed), "status": "missing",
                    "steps_done": None, "steps": None, "error": None,
                    "run_dir": str(sweep_dir / str(arm) / f"seed{seed}")})
    frame = pd.DataFrame.from_records(list(rows.values()))
    frame = frame.astype({"steps_done": "Int64", "steps": "Int64"})  # integers with gaps (missing runs)
    return frame.sort_values(["experiment", "arm", "seed"], ignore_index=True)
