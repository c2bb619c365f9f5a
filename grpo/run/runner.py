"""The run around the algorithm: start or resume, evaluation and checkpoint cadence, the local store
and its wandb mirror, the progress bar, and the summary a failure leaves behind.

`train(cfg)` is what `grpo train` calls. Resuming loads the newest readable checkpoint (a corrupt one
is skipped with a warning naming it), truncates metrics.jsonl to its step, deletes the stored rollout
files (--store-rollouts) of the steps after it, and recomputes the rest, which reproduces the same lines:
the RNG streams of every rank travel in the checkpoint.
"""

from __future__ import annotations

import sys
import time

import torch

from grpo import GrpoError
from grpo.base import distributed as dist
from grpo.engine import gemm
from grpo.run.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from grpo.setup.config import TrainConfig
from grpo.base.device import resolve_device
from grpo.engine.models import check_model_dir
from grpo.setup.presets import is_preset
from grpo.base.progress import progress_bar
from grpo.run.store import RunStore, read_summary
from grpo.run.wandb_mirror import WandbMirror
from grpo.run.rollout_files import prune_rollouts, rollout_tensors, write_rollout_file
from grpo.algorithm.state import STREAMS, Components, TrainState
from grpo.algorithm.step import StepResult, build_run, evaluate_policy, grpo_step, prompt_rows, sample_rows

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
    s.rng.load_state_dict(rng)
    torch.set_rng_state(rng["torch"].cpu())
    s.load_counters(checkpoint)
    if "behind" in checkpoint:          # --staleness: the lagging weights the sampler draws from
        s.behind = checkpoint["behind"]
    s.resync_sampler()
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


def train(cfg: TrainConfig, log=print) -> dict:
    """Run (or resume) GRPO training as `cfg` says; returns the run summary."""
    device = resolve_device(cfg.device)
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
    store = RunStore(cfg) if main else None
    previous = read_summary(cfg.run_dir)          # every rank reads it, so every rank decides alike
    if previous.get("status") == "finished" and previous.get("steps_done", 0) >= cfg.steps:
        if main:
            log(f"{store.dir} already finished {previous['steps_done']} steps; nothing to do")
        return previous
    ran_in = previous.get("compute_dtype")
    if ran_in is not None and ran_in != cfg.compute_dtype:     # an unset --dtype resolved on other hardware
        raise GrpoError(f"{cfg.run_dir} ran its forwards in {ran_in}, but an unset --dtype resolves to "
                        f"{cfg.compute_dtype} on this machine: resume it where it started, or start a new run "
                        f"with an explicit --dtype")
    c, s = build_run(cfg, log=quiet_log)
    start = restore(c, s, store, warn=warn if main else (lambda message: None))
    for note in cfg.warnings() if main else []:
        warn(note)
    wandb = WandbMirror(cfg, store.dir, previous.get("wandb_id")) if main else None
    if main:
        # The dtype the forwards ran in: --dtype unset resolves by model and hardware (TrainConfig.compute_dtype);
        # and whether large fp32 CPU linear layers ran through oneDNN (GRPO_ONEDNN, grpo/engine/gemm.py).
        store.write_summary(status="running", steps_done=start, error=None, wandb_id=wandb.id,
                            compute_dtype=cfg.compute_dtype, onednn_linears=gemm.available())
        if start > 0:
            log(f"resuming {store.dir} from step {start}")
    bar = progress_bar(cfg.steps, start, quiet=cfg.quiet or not main)
    # A pretrained model's step takes tens of seconds on a CPU: the bar names the phase it is in.
    c.timer.on_enter = lambda stage: bar.set_description(f"grpo [{stage}]")

    def evaluate(step: int) -> dict:
        bar.set_description("grpo [eval]")
        tick = time.perf_counter()
        metrics = evaluate_policy(c, s, step)
        return {**metrics, "time/eval": time.perf_counter() - tick}

    def record(step: int, metrics: dict, eval_metrics: dict) -> dict:
        out = {"step": step, "samples": s.samples, "tokens": s.tokens, "time/elapsed": round(s.elapsed, 3),
               **metrics, **eval_metrics}
        if main:
            store.append(store.metrics_path, out)
            wandb.log(out)
        return out

    try:
        if start == 0:
            record(0, {}, evaluate(0))
        for step in range(start + 1, cfg.steps + 1):
            tick = time.perf_counter()
            result = grpo_step(c, s, step)
            step_time = time.perf_counter() - tick
            s.elapsed += step_time
            metrics = {**result.metrics, **{f"time/{k}": v for k, v in c.timer.seconds.items()}}
            metrics["time/step"] = step_time
            # Every rank evaluates its share of the held-out prompts (no rank idles at a barrier).
            eval_metrics = evaluate(step) if step % cfg.eval_every == 0 or step == cfg.steps else {}
            out = record(step, metrics, eval_metrics)
            write_step_files(c, result, store)
            if main and (step % cfg.log_samples_every == 0 or step == 1):
                rows = sample_rows(result, cfg.group_size)
                for row in rows:
                    store.append(store.samples_path, row)
                wandb.log_samples(step, rows)
            if step % cfg.save_every == 0 or step == cfg.steps:
                every_rank_rng = dist.gather_objects(rng_states(s))
                if main:
                    save_checkpoint(store.dir, step, s.policy, s.optimizer, every_rank_rng,
                                    {**s.counters(), **({"behind": s.behind} if s.behind else {})})
                    store.write_summary(steps_done=step)
            postfix = {"reward": f"{out['reward/mean']:.3f}"}
            postfix.update({"acc": f"{out['accuracy']:.2f}"} if "accuracy" in out else {})
            postfix.update({"kl": f"{out['kl/k3']:.4f}"} if "kl/k3" in out else {})
            bar.set_postfix(**postfix, refresh=False)
            bar.update(1)
    except BaseException as err:
        if main:
            reason = str(err) if isinstance(err, GrpoError) else f"{type(err).__name__}: {err}"
            store.write_summary(status="failed" if not isinstance(err, KeyboardInterrupt) else "interrupted",
                                error=reason)
            wandb.finish()
        raise
    finally:
        bar.close()
    summary = {}
    if main:
        if start >= cfg.steps:     # killed after the final checkpoint, before the summary said so
            out = store.last_record()
        final = {k: v for k, v in out.items() if not k.startswith("time/") or k == "time/elapsed"}
        store.write_summary(status="finished", steps_done=cfg.steps, final=final, error=None)
        wandb.finish()
        summary = store.summary()
    dist.shutdown()
    return summary
