"""The run around the algorithm: start or resume, evaluation and checkpoint cadence, the local store
and its wandb mirror, the progress bar, and the summary a failure leaves behind.

`train(cfg)` is what `grpo train` calls. Resuming loads the newest readable checkpoint (a corrupt one
is skipped with a warning naming it), truncates metrics.jsonl to its step, deletes the stored rollout
files (--store-rollouts) of the steps after it, and recomputes the rest, which reproduces the same lines:
the RNG streams of every rank travel in the checkpoint.

With --population S (grpo/algorithm/population.py) `train` runs S seeds' runs side by side, each a `Member`
with its own run directory, summary, wandb run and checkpoints, resumed from its own newest checkpoint (a
kill between two seeds' checkpoint writes leaves them at different steps: each continues where it stopped,
the lagging ones stepping alone until they catch up). A single run is a population of one.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch

from grpo import GrpoError
from grpo.algorithm.population import build_population, step_population
from grpo.algorithm.state import STREAMS, Components, TrainState
from grpo.algorithm.step import StepResult, evaluate_policy, prompt_rows, sample_rows
from grpo.base import distributed as dist
from grpo.base.device import resolve_device
from grpo.base.progress import progress_bar
from grpo.engine import gemm
from grpo.engine.models import check_model_dir
from grpo.run.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from grpo.run.rollout_files import prune_rollouts, rollout_tensors, write_rollout_file
from grpo.run.store import RunStore, read_summary
from grpo.run.wandb_mirror import WandbMirror
from grpo.setup.config import TrainConfig
from grpo.setup.presets import is_preset

def warn(message: str) -> None:
    """One line on stderr, beside the CLI's `grpo: error:` lines."""
    print(f"grpo: warning: {message}", file=sys.stderr, flush=True)


def rng_states(s: TrainState) -> dict[str, torch.Tensor]:
    """This rank's random streams, the global torch one included."""
    return {**s.rng.state_dict(), "torch": torch.get_rng_state()}


def load_newest_good(cfg: TrainConfig, s: TrainState, device, warn) -> tuple[dict, object] | tuple[None, None]:
    """(checkpoint, path) of the newest checkpoint that loads into `s`'s policy and optimizer; a corrupt
    newer one is skipped with a warning.

    (None, None) when there is no checkpoint at all. GrpoError when every checkpoint is corrupt.
    """
    checkpoints = checkpoint_dirs(cfg.run_dir)
    for path in reversed(checkpoints):
        try:
            return load_checkpoint(path, s.policy, s.optimizer, device), path
        except GrpoError as err:
            warn(f"{err}; falling back to the checkpoint before it")
    if checkpoints:
        raise GrpoError(f"no readable checkpoint in {cfg.run_dir / 'checkpoints'} "
                        f"({len(checkpoints)} corrupt); delete them to start over")
    return None, None


def restore(c: Components, s: TrainState, store: RunStore | None, warn=lambda message: None) -> int:
    """Load the newest good checkpoint, if any, into `s` on every rank; return the step to continue after
    (0: fresh). Only rank 0 (the one with a store) rewrites the logs: it truncates metrics.jsonl to the
    checkpoint's step and deletes every rank's stored rollout files of later steps, as a resume that stops
    short of them (fewer --steps, or killed again) would otherwise leave `grpo rescore` steps the run never
    logged; rank 0 does it before any rank steps again."""
    cfg = c.cfg
    checkpoint, path = load_newest_good(cfg, s, c.device, warn)
    if checkpoint is None:
        if store:
            store.truncate_after(-1)
            prune_rollouts(cfg.run_dir, 0)
        return 0
    if checkpoint["step"] > cfg.steps:
        raise GrpoError(f"{cfg.run_dir} already has a checkpoint at step {checkpoint['step']}, past --steps {cfg.steps}")
    if len(checkpoint["rng"]) != dist.world_size():
        raise GrpoError(f"{path} was written by {len(checkpoint['rng'])} rank(s); resume it with as many, "
                        f"not {dist.world_size()}")
    rng = checkpoint["rng"][dist.rank()]        # one entry per rank: each rank resumes its own streams
    if not set(STREAMS) <= set(rng):
        raise GrpoError(f"{path} was written by an older grpo-lab (RNG streams {sorted(rng)}); start a new run")
    s.load_progress(checkpoint, rng)
    torch.set_rng_state(rng["torch"].cpu())
    if store:
        store.truncate_after(checkpoint["step"])   # lines after the checkpoint are recomputed identically
        prune_rollouts(cfg.run_dir, checkpoint["step"])
    return checkpoint["step"]


def write_step_files(c: Components, result: StepResult, store: RunStore | None) -> None:
    """prompts.jsonl rows (rank 0, every rank's prompts gathered) and, with --store-rollouts, this rank's
    rollout file."""
    prompts = dist.gather_objects(prompt_rows(result, c.cfg.correctness_reward))
    if store is not None:
        for row in (row for part in prompts for row in part):
            store.append(store.prompts_path, row)
    if c.cfg.store_rollouts:
        write_rollout_file(c.cfg.run_dir, *rollout_tensors(result, c.cfg.group_size))


@dataclass
class Member:
    """One run inside `train`: the single run, or one seed of a population. `store` and `wandb` are rank 0's
    (None on the other ranks); `start` is the step it resumed after (0: fresh); `last`, its last record."""
    c: Components
    s: TrainState
    store: RunStore | None
    wandb: WandbMirror | None
    start: int
    last: dict = field(default_factory=dict)
    error: BaseException | None = None

    @property
    def seed(self) -> int:
        return self.c.cfg.seed


def check_population_dir(cfg: TrainConfig) -> None:
    """Refuse to put a population's seed<k>/ folders inside a single run's directory."""
    marks = [name for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoints")
             if (cfg.run_dir / name).exists()]
    if marks:
        raise GrpoError(f"{cfg.run_dir} is a single run's directory (it holds {marks[0]}); --population "
                        f"{cfg.population} writes one run per seed in <out-dir>/seed<k>/: choose another --out-dir")


def population_error(failed: list[Member]) -> BaseException:
    """The error `train` raises when seeds failed: one seed's (or a bug's) as it was raised, else the first
    error's kind (TrainingDiverged exits 1, bad input 2) naming every failed seed."""
    errors = [m.error for m in failed]
    if len(failed) == 1 or not all(isinstance(e, GrpoError) for e in errors):
        return next((e for e in errors if not isinstance(e, GrpoError)), errors[0])
    return type(errors[0])("; ".join(f"seed {m.seed}: {m.error}" for m in failed))


def open_runs(cfg: TrainConfig, main: bool, log) -> tuple[list[tuple[TrainConfig, RunStore | None, dict]], dict]:
    """The runs of cfg.members() left to train, each with its store (rank 0's) and its previous summary, and
    the summaries of those already finished, by seed."""
    pending, done = [], {}
    for run in cfg.members():
        store = RunStore(run) if main else None
        previous = read_summary(run.run_dir)          # every rank reads it, so every rank decides alike
        if previous.get("status") == "finished" and previous.get("steps_done", 0) >= run.steps:
            if main:
                log(f"{store.dir} already finished {previous['steps_done']} steps; nothing to do")
            done[run.seed] = previous
            continue
        ran_in = previous.get("compute_dtype")
        if ran_in is not None and ran_in != run.compute_dtype:     # an unset --dtype resolved on other hardware
            raise GrpoError(f"{run.run_dir} ran its forwards in {ran_in}, but an unset --dtype resolves to "
                            f"{run.compute_dtype} on this machine: resume it where it started, or start a new run "
                            f"with an explicit --dtype")
        pending.append((run, store, previous))
    return pending, done


def start_members(cfg: TrainConfig, pending: list, main: bool, log) -> list[Member]:
    """Build the pending runs (one population), restore each from its own newest checkpoint, open its wandb
    run and mark it running (rank 0)."""
    members = []
    for (run, store, previous), (c, s) in zip(pending, build_population([p[0] for p in pending], log=log)):
        members.append(Member(c, s, store, None, restore(c, s, store, warn=warn if main else (lambda message: None))))
    for note in cfg.warnings() if main else []:
        warn(note)
    for m, (run, store, previous) in zip(members, pending):
        if main:
            m.wandb = WandbMirror(run, store.dir, previous.get("wandb_id"))
            # The dtype the forwards ran in: --dtype unset resolves by model and hardware (TrainConfig.compute_dtype);
            # and whether large fp32 CPU linear layers ran through oneDNN (GRPO_ONEDNN, grpo/engine/gemm.py).
            store.write_summary(status="running", steps_done=m.start, error=None, wandb_id=m.wandb.id,
                                compute_dtype=run.compute_dtype, onednn_linears=gemm.available())
            if m.start > 0:
                log(f"resuming {store.dir} from step {m.start}")
    return members


def train(cfg: TrainConfig, log=print) -> dict:
    """Run (or resume) GRPO training as `cfg` says; returns the run summary (with --population S > 1:
    status finished and each seed's summary under `runs`)."""
    device = resolve_device(cfg.device)
    if cfg.population > 1 and dist.launched_world_size() > 1:
        raise GrpoError(f"--population trains its seeds in one process and does not combine with data parallelism "
                        f"(torchrun launched {dist.launched_world_size()} ranks): run it without torchrun")
    dist.init_from_env(device)
    if cfg.prompts_per_step % dist.world_size():
        raise GrpoError(f"--prompts-per-step ({cfg.prompts_per_step}) must divide evenly over {dist.world_size()} ranks")
    if cfg.num_completions // dist.world_size() < cfg.mini_batches:
        raise GrpoError(f"--mini-batches ({cfg.mini_batches}) exceeds the completions each of "
                        f"{dist.world_size()} ranks holds ({cfg.num_completions // dist.world_size()})")
    main = dist.is_main()
    quiet_log = log if main else (lambda *_: None)
    if not is_preset(cfg.model):
        check_model_dir(cfg.model, log=quiet_log)   # before a typo claims the run dir; converts a GGUF once
    if cfg.population > 1:
        check_population_dir(cfg)
    pending, done = open_runs(cfg, main, log)
    if not pending:
        return done[cfg.seed] if cfg.population == 1 else {"status": "finished", "runs": done}
    members = start_members(cfg, pending, main, quiet_log)
    bar = progress_bar(cfg.steps * len(members), sum(m.start for m in members), quiet=cfg.quiet or not main)
    for m in members:
        # A pretrained model's step takes tens of seconds on a CPU: the bar names the phase (and seed) it is in.
        tag = f"grpo seed{m.seed}" if cfg.population > 1 else "grpo"
        m.c.timer.on_enter = lambda stage, tag=tag: bar.set_description(f"{tag} [{stage}]")

    def evaluate(m: Member, step: int) -> dict:
        bar.set_description("grpo [eval]")
        tick = time.perf_counter()
        metrics = evaluate_policy(m.c, m.s, step)
        return {**metrics, "time/eval": time.perf_counter() - tick}

    def record(m: Member, step: int, metrics: dict, eval_metrics: dict) -> dict:
        out = {"step": step, "samples": m.s.samples, "tokens": m.s.tokens, "time/elapsed": round(m.s.elapsed, 3),
               **metrics, **eval_metrics}
        if main:
            m.store.append(m.store.metrics_path, out)
            m.wandb.log(out)
        m.last = out
        return out

    def after_step(m: Member, step: int, result: StepResult, step_time: float) -> None:
        c, s, store = m.c, m.s, m.store
        s.elapsed += step_time
        metrics = {**result.metrics, **{f"time/{k}": v for k, v in c.timer.seconds.items()}}
        metrics["time/step"] = step_time
        # Every rank evaluates its share of the held-out prompts (no rank idles at a barrier).
        eval_metrics = evaluate(m, step) if step % cfg.eval_every == 0 or step == cfg.steps else {}
        out = record(m, step, metrics, eval_metrics)
        write_step_files(c, result, store)
        if main and (step % cfg.log_samples_every == 0 or step == 1):
            rows = sample_rows(result, cfg.group_size)
            for row in rows:
                store.append(store.samples_path, row)
            m.wandb.log_samples(step, rows)
        if step % cfg.save_every == 0 or step == cfg.steps:
            every_rank_rng = dist.gather_objects(rng_states(s))
            if main:
                save_checkpoint(store.dir, step, s.policy, s.optimizer, every_rank_rng,
                                s.progress())
                store.write_summary(steps_done=step)
        postfix = {"seed": m.seed} if cfg.population > 1 else {}
        postfix.update({"reward": f"{out['reward/mean']:.3f}"})
        postfix.update({"acc": f"{out['accuracy']:.2f}"} if "accuracy" in out else {})
        postfix.update({"kl": f"{out['kl/k3']:.4f}"} if "kl/k3" in out else {})
        bar.set_postfix(**postfix, refresh=False)
        bar.update(1)

    def fail(m: Member, err: BaseException) -> None:
        m.error = err
        if main:
            reason = str(err) if isinstance(err, GrpoError) else f"{type(err).__name__}: {err}"
            m.store.write_summary(status="failed" if not isinstance(err, KeyboardInterrupt) else "interrupted",
                                  error=reason)
            m.wandb.finish()

    try:
        for m in members:
            if m.start == 0:
                record(m, 0, {}, evaluate(m, 0))
        for step in range(min(m.start for m in members) + 1, cfg.steps + 1):
            # The seeds due at this step: a seed resumed from a later checkpoint waits for the others.
            due = [m for m in members if m.start < step and m.error is None]
            for m, (result, step_time) in zip(due, step_population([(m.c, m.s) for m in due], step)):
                if isinstance(result, Exception):
                    fail(m, result)             # this seed stops; the others go on
                else:
                    after_step(m, step, result, step_time)
            if all(m.error is not None for m in members):
                break
    except BaseException as err:
        for m in members:
            if m.error is None:
                fail(m, err)
            if m.store:     # the error's traceback keeps the members alive: their locks go now
                m.store.close()
        raise
    finally:
        bar.close()
    summaries = {}
    for m in (m for m in members if m.error is None):
        if main:
            if m.start >= cfg.steps:     # killed after the final checkpoint, before the summary said so
                m.last = m.store.last_record()
            final = {k: v for k, v in m.last.items() if not k.startswith("time/") or k == "time/elapsed"}
            m.store.write_summary(status="finished", steps_done=cfg.steps, final=final, error=None)
            m.wandb.finish()
            summaries[m.seed] = m.store.summary()
    failed = [m for m in members if m.error is not None]
    if failed:
        for m in members:
            if m.store:
                m.store.close()
        raise population_error(failed)
    dist.shutdown()
    if cfg.population == 1:
        return summaries.get(cfg.seed, {})
    return {"status": "finished", "runs": {**done, **summaries}}
