"""`grpo rescore <run-dir>`: a run's model-free metrics recomputed from its stored rollouts under other
advantage, aggregation or masking settings, written as a new run directory the analysis reads like any other.

`grpo train --store-rollouts` writes every step's rollouts to <run>/rollouts/step_<n>_rank<r>.safetensors.
For each stored step, in order (a step's rank files concatenated in rank order, as the trainer gathers
them), rescore rebuilds the step's total reward [P, G] from the stored reward parts and the run's
reward weights (grpo.algorithm.collect.total_reward), the advantages as the step forms them (the chosen estimator,
or GDPO's per-reward normalisation: collect.step_advantages), the completion
lengths (completion_mask row sums) and the loss lengths (0 for truncated completions under
--mask-truncated), and logs the metrics grpo_step computes that need no model: reward/*, accuracy,
adv/*, zero_var/*, accuracy/constant_group_frac, len/*, entropy and entropy/cov_logp_adv (the sampler's, stored;
the latter only from files that hold its log-probs), by_difficulty/*,
bias/len_corr_*, bias/len_spread_within and grad_tokens/*, plus step, samples and tokens (by_difficulty/<d>/weight
and bias/* under the chosen aggregation). Each comes from the function in grpo/algorithm/metrics.py or grpo/algorithm/step_probes.py the trainer calls, with the trainer's arguments.

What it cannot see, it does not log: loss, ratios, clipping, KL, gradient norms and evaluation need the
model. grad_tokens/* take cut_frac = 0, i.e. the update is taken as exactly on-policy (ratio 1, no clip):
the run's own value for a run with several inner epochs or mini-batches, clip_cov's detached tokens or
--top-entropy-quantile < 1 differs.

--objective changes no recomputed value. On-policy every objective's gradient on a token of completion i
is A_i times the aggregation's weight for that token: the ratios are 1, so no clip bound is active, sapo's
gate weight is 1, kl_cov's penalty has zero gradient, and gspo's and gmpo's sequence ratios give each of
i's tokens the weight a token ratio would. The objective thus enters none of the numbers here; it is
recorded in the new config, so the rescored run names the setting it stands for. (clip_cov alone cuts
tokens on-policy, a random --clip-cov-ratio share, 2e-4 by default; grad_tokens/* here do not count it.)

Samples and tokens count the stored completions. With --dynamic-sampling the dropped groups were never
stored, so they are taken from the run's own metrics.jsonl (the compute the run spent is what a
comparison must match). A run with --kl-placement reward and kl_beta > 0 is refused: its advantages saw
a KL penalty that needs the reference model's log-probs.

Output: <run>/rescore/<name>/ with config.json (the run's config with the changed fields, arm
"<arm>@<name>", out_dir that directory), metrics.jsonl (one line per stored step) and summary.json
(status finished). The same name again overwrites it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from grpo import GrpoError, TrainingDiverged
from grpo.algorithm.collect import step_advantages, total_reward
from grpo.algorithm.metrics import ScoredStep, scored_metrics, to_floats
from grpo.formulas.advantages import ADVANTAGES
from grpo.formulas.losses import AGGREGATIONS
from grpo.formulas.objectives import OBJECTIVES
from grpo.run.rollout_files import stored_files
from grpo.run.store import write_json
from grpo.setup.config import TrainConfig

# The settings rescore can change, in the order they appear in a default name.
FIELDS = ("advantage", "adv_eps", "aggregation", "objective", "mask_truncated")
REQUIRED = ("completion_mask", "truncated", "entropy")    # read besides the reward/<name> parts
OPTIONAL = ("logp",)          # read when stored: the sampler's log-probs, for entropy/cov_logp_adv


@dataclass
class StoredStep:
    """One step's stored rollouts over all ranks, reduced to what rescoring reads. N = P * G rows."""
    step: int
    parts: dict[str, Tensor]     # each reward function's values [P, G] (overlong included)
    lengths: Tensor              # [N] completion tokens, EOS included (float)
    truncated: Tensor            # [N] 1 = hit max_new_tokens without EOS (float)
    entropy_sums: Tensor         # [N] sampling entropy summed over each completion's tokens
    difficulty: list[str]        # [P] the task's level label of each prompt ("" = none)
    logp_sums: Tensor | None = None  # [N] the sampler's log-probs summed over each completion's tokens (None:
                                     # a file without them)


def read_config(run_dir: Path) -> TrainConfig:
    """The run's TrainConfig from <run>/config.json; GrpoError if the directory or file is missing or bad."""
    if not run_dir.is_dir():
        raise GrpoError(f"no run directory {run_dir}")
    path = run_dir / "config.json"
    if not path.is_file():
        raise GrpoError(f"{run_dir} has no config.json: not a grpo-lab run directory")
    try:
        values = json.loads(path.read_text())
        return TrainConfig.from_dict(values)
    except (OSError, ValueError, TypeError, GrpoError) as err:
        raise GrpoError(f"{path} is unreadable ({err})") from None


def rollout_files(run_dir: Path) -> dict[int, list[Path]]:
    """{step: that step's rank files in rank order}, steps 1..K; GrpoError when none are stored or
    a step or rank is missing (samples and tokens are cumulative, so a gap would shift them)."""
    found, folder = stored_files(run_dir), run_dir / "rollouts"
    if not found:
        raise GrpoError(f"{run_dir} has no stored rollouts; run it with --store-rollouts")
    missing = sorted(set(range(1, max(found) + 1)) - set(found))
    if missing:
        raise GrpoError(f"{folder} lacks the rollouts of step(s) {missing}")
    ranks = len(found[1])
    for step, files in found.items():
        if sorted(files) != list(range(ranks)):
            raise GrpoError(f"{folder}: step {step} has rank files {sorted(files)}, expected ranks 0..{ranks - 1}")
    return {step: [files[r] for r in range(ranks)] for step, files in sorted(found.items())}


def read_rollout(path: Path, step: int, rank: int, group_size: int) -> tuple[dict[str, Tensor], dict]:
    """(tensors, meta) of one rank file, checked for the keys and row counts rescoring reads."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["meta"])
            tensors = {key: f.get_tensor(key) for key in f.keys()
                       if key in REQUIRED or key in OPTIONAL or key.startswith("reward/")}
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
        raise GrpoError(f"{path} is corrupt ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    missing = [key for key in REQUIRED if key not in tensors]
    if missing or not any(key.startswith("reward/") for key in tensors):
        raise GrpoError(f"{path} is corrupt (no {', '.join(missing) or 'reward/<name>'} tensor)")
    if not isinstance(meta, dict) or any(t.dim() == 0 for t in tensors.values()):
        raise GrpoError(f"{path} is corrupt (its meta is not an object, or a tensor has no rows)")
    if (meta.get("step"), meta.get("rank"), meta.get("group_size")) != (step, rank, group_size):
        raise GrpoError(f"{path} is corrupt (its meta says step {meta.get('step')}, rank {meta.get('rank')}, "
                        f"group size {meta.get('group_size')}; expected {step}, {rank}, {group_size})")
    rows = tensors["completion_mask"].shape[0]
    labels = meta.get("difficulty")
    row_keys = [key for key in tensors if key in ("truncated", "entropy") or key.startswith("reward/")]
    if (not isinstance(labels, list) or rows != len(labels) * group_size
            or any(tensors[key].shape[0] != rows for key in row_keys)
            or any(tensors[key].shape != tensors["completion_mask"].shape for key in ("entropy", *OPTIONAL)
                   if key in tensors)):
        raise GrpoError(f"{path} is corrupt (row counts disagree with {len(labels or [])} prompts x G = {group_size})")
    return tensors, meta


def load_step(step: int, paths: list[Path], group_size: int) -> StoredStep:
    """A step's rank files read and joined in rank order (rows p*G .. p*G+G-1 belong to prompt p)."""
    lengths, truncated, entropy_sums, logp_sums, parts, labels = [], [], [], [], {}, []
    for rank, path in enumerate(paths):
        tensors, meta = read_rollout(path, step, rank, group_size)
        mask = tensors["completion_mask"].float()              # 0 = padding after EOS
        lengths.append(mask.sum(-1))
        truncated.append(tensors["truncated"].float())
        entropy_sums.append((tensors["entropy"] * mask).sum(-1))
        if "logp" in tensors:
            logp_sums.append(torch.where(mask > 0, tensors["logp"].float(), 0.0).sum(-1))
        for key, values in tensors.items():
            if key.startswith("reward/"):
                parts.setdefault(key.removeprefix("reward/"), []).append(values.float().view(-1, group_size))
        labels += meta["difficulty"]
    if any(len(values) != len(paths) for values in parts.values()):
        raise GrpoError(f"the rank files of step {step} store different reward functions")
    return StoredStep(step, {name: torch.cat(values) for name, values in parts.items()}, torch.cat(lengths),
                      torch.cat(truncated), torch.cat(entropy_sums), labels,
                      torch.cat(logp_sums) if len(logp_sums) == len(paths) else None)


def step_metrics(stored: StoredStep, cfg: TrainConfig) -> dict[str, Tensor]:
    """grpo_step's model-free metrics for one stored step under `cfg` (module docstring)."""
    P, G = stored.parts[next(iter(stored.parts))].shape
    rewards = total_reward(stored.parts, cfg.reward_weights)                          # [P, G]
    advantages = step_advantages(cfg, stored.parts, rewards, stored.lengths.view(P, G))       # as the step did
    # --mask-truncated: a truncated completion has no token in the loss.
    loss_lengths = stored.lengths * (1 - stored.truncated) if cfg.mask_truncated else stored.lengths
    # The log-probs' sums over the loss tokens: a truncated completion has none under --mask-truncated.
    logp_sums = stored.logp_sums
    if logp_sums is not None and cfg.mask_truncated:
        logp_sums = logp_sums * (1 - stored.truncated)
    scored = ScoredStep(stored.parts, rewards, advantages, stored.lengths, stored.truncated, stored.entropy_sums,
                        loss_lengths, stored.difficulty, stored.parts.get(cfg.correctness_reward), logp_sums)
    # On-policy: no token's policy gradient is cut.
    return scored_metrics(scored, cut_frac=torch.tensor(0.0), mask_truncated=cfg.mask_truncated,
                          aggregation=cfg.aggregation, max_len=cfg.max_new_tokens)


def logged_axes(run_dir: Path) -> dict[int, tuple[int, int]]:
    """{step: (samples, tokens)} from the run's metrics.jsonl (unreadable lines skipped)."""
    path, axes = run_dir / "metrics.jsonl", {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
            axes[int(record["step"])] = (int(record["samples"]), int(record["tokens"]))
        except (ValueError, KeyError, TypeError):
            continue
    return axes


def rescore_records(run_dir: Path, cfg: TrainConfig) -> list[dict]:
    """One metrics record per stored step of the run in `run_dir`, computed under `cfg`."""
    logged = logged_axes(run_dir) if cfg.dynamic_sampling else {}
    samples = tokens = 0
    records = []
    for step, paths in rollout_files(run_dir).items():
        stored = load_step(step, paths, cfg.group_size)
        samples, tokens = samples + len(stored.lengths), tokens + int(stored.lengths.sum())
        if cfg.dynamic_sampling:
            # Dropped groups' completions were generated (and counted) but never stored.
            if step not in logged:
                raise GrpoError(f"{run_dir / 'metrics.jsonl'} has no step {step}: --dynamic-sampling runs "
                                f"take samples and tokens from it")
            samples, tokens = logged[step]
        try:
            metrics = to_floats(step_metrics(stored, cfg))
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err} at step {step} ({paths[0].parent})") from None
        records.append({"step": step, "samples": samples, "tokens": tokens, **metrics})
    return records


def default_name(changes: dict) -> str:
    """'advantage=dr_grpo+aggregation=token_mean' for the changed fields (FIELDS order), 'same' for none."""
    def text(value) -> str:
        if isinstance(value, bool):
            return json.dumps(value)                       # true / false
        return f"{value:g}" if isinstance(value, float) else str(value)

    return "+".join(f"{field}={text(changes[field])}" for field in FIELDS if field in changes) or "same"


def rescored_config(cfg: TrainConfig, run_dir: Path, changes: dict, name: str, out_dir: Path) -> TrainConfig:
    """The run's config with `changes`, arm '<arm>@<name>' and out_dir the rescore directory (checked).

    A run logged without experiment or arm is named by its path in the analysis (<experiment>/<arm>/seed<k>);
    the rescored run carries those names explicitly, so it sits beside its run.
    """
    where = run_dir.resolve()
    # replace() runs TrainConfig's checks: a bad --adv-eps is a one-line GrpoError naming the flag.
    return dataclasses.replace(cfg, **changes, experiment=cfg.experiment or where.parent.parent.name,
                               arm=f"{cfg.arm or where.parent.name}@{name}", out_dir=str(out_dir))


def rescore(run_dir: Path, changes: dict, name: str | None = None) -> Path:
    """Rescore the run in `run_dir` with the config fields in `changes` (FIELDS); returns the new run dir."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    changes = {field: value for field, value in changes.items() if value is not None and value != getattr(cfg, field)}
    name = default_name(changes) if name is None else name
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise GrpoError(f"--name must be a plain directory name, got {name!r}")
    if cfg.kl_placement == "reward" and cfg.kl_beta > 0:
        raise GrpoError(f"{run_dir} used --kl-placement reward: its rewards carry a KL penalty that needs the "
                        f"reference model, which rescore does not have")
    out_dir = run_dir / "rescore" / name
    new_cfg = rescored_config(cfg, run_dir, changes, name, out_dir)
    records = rescore_records(run_dir, new_cfg)             # everything read before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", new_cfg.to_dict())
    tmp = out_dir / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(record) + "\n" for record in records))
    tmp.replace(out_dir / "metrics.jsonl")
    write_json(out_dir / "summary.json", {"status": "finished", "steps_done": records[-1]["step"],
                                           "final": records[-1], "error": None, "rescored_from": str(run_dir)})
    return out_dir


class _Parser(argparse.ArgumentParser):
    """argparse with a usage error raised as GrpoError (one `grpo: error:` line, exit 2)."""

    def error(self, message: str):
        raise GrpoError(f"{self.prog}: {message}")


def main(argv: list[str]) -> int:
    parser = _Parser(
        prog="grpo rescore",
        description="Recompute a run's model-free metrics (rewards, advantages, zero-variance groups, lengths, "
                    "entropy, difficulty and length-bias probes, gradient-token shares) from its stored rollouts "
                    "(grpo train --store-rollouts) under other settings, into <run-dir>/rescore/<name>/, a run "
                    "directory the analysis reads like any other. Flags left out keep the run's value.",
        epilog="On-policy every objective's per-token gradient weight is A times the aggregation weight, so "
               "--objective changes no recomputed value; it is only recorded in the new config. Loss, ratio, "
               "clip, KL and evaluation metrics need the model and are not written; grad_tokens/* take the "
               "update as exactly on-policy (nothing clipped).")
    parser.add_argument("run_dir", type=Path, help="a run directory written with --store-rollouts")
    parser.add_argument("--advantage", choices=sorted(ADVANTAGES), help="advantage estimator")
    parser.add_argument("--adv-eps", type=float, help="added to the std in std-normalised advantages")
    parser.add_argument("--aggregation", choices=sorted(AGGREGATIONS),
                        help="token-loss aggregation (changes bias/len_corr_* and by_difficulty/<d>/weight)")
    parser.add_argument("--objective", choices=sorted(OBJECTIVES),
                        help="policy objective: recorded in the config only (see below)")
    parser.add_argument("--mask-truncated", action=argparse.BooleanOptionalAction, default=None,
                        help="DAPO's overlong filtering: truncated completions carry no loss")
    parser.add_argument("--name", help="output folder under <run-dir>/rescore/; default: the changed settings "
                                       "joined, e.g. advantage=dr_grpo+aggregation=token_mean ('same' if none)")
    args = parser.parse_args(argv)
    out_dir = rescore(args.run_dir, {field: getattr(args, field) for field in FIELDS}, args.name)
    print(f"rescored {args.run_dir} into {out_dir}")
    return 0
