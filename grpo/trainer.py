"""The GRPO loop, top to bottom: sample -> reward -> advantage -> inner epochs of clipped-ratio
updates with a KL penalty to a frozen reference -> log -> checkpoint.

Read `grpo_step` for one step; every formula is one import away (advantages, kl, losses, metrics).
Departures from the seed notebook: every prompt gets its own group; rewards read the completion only;
log-probs are shifted (policy.py); prompt, padding and post-EOS tokens are masked; the whole batch's
loss is back-propagated (not the last group's); the reference is a frozen copy of the warm-started
policy (not a second random model); the advantage epsilon is a fixed positive constant.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from grpo import GrpoError, distributed as dist, fast_sampler
from grpo.advantages import compute_advantages
from grpo.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from grpo.config import TrainConfig
from grpo.evaluation import evaluate
from grpo.losses import policy_loss
from grpo.models import check_model_dir, is_preset, load_tokenizer
from grpo.metrics import (TokenWeightedMean, advantage_metrics, entropy_metric, gradient_token_metrics,
                          length_metrics, reward_metrics, to_floats, zero_variance_metrics)
from grpo.policy import completion_logp
from grpo.rewards import response_text, score
from grpo.sampler import KVCacheSampler, Rollout, decode_completions, encode_prompts
from grpo.tasks import make_task, render_prompt
from grpo.tracking import RunStore, WandbMirror, progress_bar, read_summary
from grpo.warmstart import warm_started_model

SAMPLE_ROWS = 2          # prompts (with all their completions) written to samples.jsonl


class TrainingDiverged(GrpoError):
    """A non-finite loss or reward: the run stops, keeping its last good checkpoint."""

    exit_code = 1     # not bad input: the run itself failed


@dataclass
class Trainer:
    """Everything a step touches. Built by `build_trainer`; `grpo_step` is the algorithm."""
    cfg: TrainConfig
    task: object
    tokenizer: object
    policy: torch.nn.Module
    reference: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    sampler: object
    device: torch.device
    data_rng: torch.Generator        # prompt draws and mini-batch shuffles
    sample_rng: torch.Generator      # token sampling
    samples: int = 0                 # completions generated so far (all ranks)
    tokens: int = 0                  # completion tokens generated so far (all ranks)
    elapsed: float = 0.0
    timings: dict = field(default_factory=dict)

    def autocast(self):
        """bf16 autocast for forward passes when --dtype bf16 (log-probs and the loss stay fp32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.dtype == "bf16")

    def evaluate(self, step: int) -> dict[str, float]:
        with self.autocast():
            return evaluate(self.policy, self.sampler, self.tokenizer, self.task, self.cfg, step, self.device)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise GrpoError("--device cuda was asked for, but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return dist.local_device(torch.device(name))


def build_trainer(cfg: TrainConfig, log=print) -> Trainer:
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = make_task(cfg)
    # A preset model uses the task's character tokenizer; a local checkpoint brings its own.
    tokenizer = task.tokenizer if is_preset(cfg.model) else load_tokenizer(cfg.model)
    # The policy keeps fp32 master weights; --dtype bf16 runs its forward passes under autocast.
    policy = warm_started_model(cfg, task, tokenizer, device, log=log)
    if cfg.gradient_checkpointing:
        if hasattr(policy, "activation_checkpointing_enable"):          # transformers >= 5.2x
            policy.activation_checkpointing_enable({"use_reentrant": False})
        else:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.config.use_cache = False
    policy.train()
    reference = None
    if cfg.kl_beta > 0:   # with kl_beta == 0 no reference is ever built
        # An exact copy (fp32 like the policy's master weights; bf16 runs it under autocast too), so
        # the KL is exactly 0 at the first step.
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rank_seed = cfg.seed * 1000 + dist.rank()
    return Trainer(cfg=cfg, task=task, tokenizer=tokenizer, policy=policy, reference=reference,
                   optimizer=optimizer, sampler=make_sampler(cfg, policy), device=device,
                   data_rng=torch.Generator().manual_seed(rank_seed),
                   sample_rng=torch.Generator(device=device).manual_seed(rank_seed + 1))


def make_sampler(cfg: TrainConfig, policy):
    if cfg.sampler == "auto" and fast_sampler.supports(policy):
        return fast_sampler.StaticCacheSampler()
    return KVCacheSampler()


def rollout_logp(model, rollout: Rollout, rows: torch.Tensor, temperature: float) -> torch.Tensor:
    return completion_logp(model, rollout.prompt_ids[rows], rollout.prompt_mask[rows],
                           rollout.completion_ids[rows], temperature)


@torch.no_grad()
def frozen_logp(model, rollout: Rollout, chunk: int, temperature: float) -> torch.Tensor:
    """Log-probs [N, T] under a model without gradients, in chunks of `chunk` completions."""
    rows = torch.arange(rollout.completion_ids.shape[0], device=rollout.completion_ids.device)
    return torch.cat([rollout_logp(model, rollout, r, temperature) for r in rows.split(chunk)])


def grpo_step(t: Trainer, step: int) -> tuple[dict, list[dict]]:
    """One GRPO step. Returns (metrics as floats, rows for samples.jsonl)."""
    cfg = t.cfg
    P = cfg.prompts_per_step // dist.world_size()     # this rank's prompts
    G = cfg.group_size
    tick = time.perf_counter()

    # 1. Sample G completions for each of P prompts (each prompt repeated G times, rows p*G .. p*G+G-1).
    examples = t.task.sample(t.data_rng, P)
    prompt_ids, prompt_mask = encode_prompts(t.tokenizer, [render_prompt(e, t.tokenizer) for e in examples for _ in range(G)],
                                           t.device)
    t.policy.eval()
    with t.autocast():
        rollout = t.sampler.generate(t.policy, prompt_ids, prompt_mask, max_new_tokens=cfg.max_new_tokens,
                                     temperature=cfg.temperature, generator=t.sample_rng,
                                     eos_token_id=t.tokenizer.eos_token_id, pad_token_id=t.tokenizer.pad_token_id,
                                     min_new_tokens=cfg.min_new_tokens)
    t.policy.train()
    mask = rollout.completion_mask                    # [N, T]; 0 = padding after EOS
    tock = time.perf_counter(); t.timings["rollout"] = tock - tick; tick = tock

    # 2. Rule rewards on the decoded completions, [P, G].
    texts = decode_completions(t.tokenizer, rollout.completion_ids, mask)
    responses = [response_text(text, examples[i // G]) for i, text in enumerate(texts)]
    parts = {name: torch.tensor(values).view(P, G)
             for name, values in score(responses, [examples[i // G] for i in range(P * G)], cfg.reward_weights).items()}
    rewards = sum(cfg.reward_weights[name] * values for name, values in parts.items())
    if dist.any_across(not bool(torch.isfinite(rewards).all())):
        raise TrainingDiverged(f"non-finite reward at step {step}")
    correct = parts["correct"] if "correct" in parts else rewards.new_zeros(P, G)

    # 3. Group-relative advantages, one per completion.
    advantages = compute_advantages(rewards, cfg.advantage, eps=cfg.adv_eps).flatten().to(t.device)  # [N]

    # 4. Log-probs that stay fixed through the inner epochs: the reference's, and pi_old's unless the
    #    update is exactly on-policy (one epoch, one mini-batch), where pi_old = pi_theta detached.
    on_policy = cfg.inner_epochs == 1 and cfg.mini_batches == 1
    with t.autocast():
        ref_logp = frozen_logp(t.reference, rollout, cfg.micro_batch_size, cfg.temperature) if t.reference else None
        old_logp = None if on_policy else frozen_logp(t.policy, rollout, cfg.micro_batch_size, cfg.temperature)
    tock = time.perf_counter(); t.timings["reward"] = tock - tick; tick = tock

    # 5. Inner epochs x mini-batches (one optimizer step each) x micro-batches (gradient accumulation).
    #    Normalisers are the whole mini-batch's (over all ranks), so micro-batch losses add up exactly.
    totals, per_epoch, losses, grad_norms = TokenWeightedMean(), {}, [], []
    optimizer_time = 0.0
    num_rows = rollout.completion_ids.shape[0]
    for epoch in range(1, cfg.inner_epochs + 1):
        epoch_stats, epoch_losses = TokenWeightedMean(), []
        order = torch.randperm(num_rows, generator=t.data_rng).to(t.device)
        for mini_batch in order.tensor_split(cfg.mini_batches):   # exactly mini_batches pieces (chunk may give fewer)
            num_seqs = float(dist.sum_across(torch.tensor(float(len(mini_batch)))))
            num_tokens = float(dist.sum_across(mask[mini_batch].sum().cpu()))
            mini_loss = torch.zeros((), device=t.device)
            for rows in mini_batch.split(cfg.micro_batch_size):
                with t.autocast():
                    logp = rollout_logp(t.policy, rollout, rows, cfg.temperature)
                loss, stats = policy_loss(
                    logp, logp.detach() if on_policy else old_logp[rows],
                    None if ref_logp is None else ref_logp[rows], advantages[rows], mask[rows],
                    clip_eps_low=cfg.clip_eps_low, clip_eps_high=cfg.clip_eps_high, kl_beta=cfg.kl_beta,
                    kl_estimator=cfg.kl_estimator, aggregation=cfg.aggregation,
                    num_seqs=num_seqs, num_tokens=num_tokens, max_len=cfg.max_new_tokens)
                loss.backward()
                mini_loss += loss.detach()
                epoch_stats.add(stats, stats["tokens"])
                # KL to the reference is reported for the rollout policy (epoch 1), not averaged over drift.
                totals.add({k: v for k, v in stats.items() if epoch == 1 or not k.startswith("kl/")}, stats["tokens"])
            if dist.any_across(not bool(torch.isfinite(mini_loss))):
                raise TrainingDiverged(f"non-finite loss at step {step} (inner epoch {epoch})")
            tock = time.perf_counter()
            dist.sum_gradients(t.policy)
            grad_norms.append(torch.nn.utils.clip_grad_norm_(t.policy.parameters(), cfg.max_grad_norm))
            t.optimizer.step()
            t.optimizer.zero_grad(set_to_none=True)
            optimizer_time += time.perf_counter() - tock
            epoch_losses.append(mini_loss)
        summary = epoch_stats.result()
        per_epoch[f"inner/{epoch}/clip_frac"] = summary["clip/low_frac"] + summary["clip/high_frac"]
        per_epoch[f"inner/{epoch}/ratio_mean"] = summary["ratio/mean"]
        per_epoch[f"inner/{epoch}/kl_old"] = summary["kl_old"]
        # Each rank's loss is its share of the global loss: the sum over ranks is the loss.
        per_epoch[f"inner/{epoch}/loss"] = dist.sum_across(torch.stack(epoch_losses).mean())
        losses += epoch_losses
    t.timings["optimizer"] = optimizer_time
    t.timings["train"] = time.perf_counter() - tick - optimizer_time

    # 6. Metrics: pure functions of tensors already at hand, one .item() each at the boundary.
    tick = time.perf_counter()
    t.samples += int(dist.sum_across(torch.tensor(num_rows)))
    t.tokens += int(dist.sum_across(mask.sum().long().cpu()))
    policy_stats = totals.result()
    clipped = policy_stats["clip/low_frac"] + policy_stats["clip/high_frac"]
    metrics = {
        **reward_metrics(rewards, parts, correct),
        **advantage_metrics(advantages),
        **zero_variance_metrics(rewards, correct),
        **length_metrics(mask, rollout.truncated, correct.flatten().to(t.device)),
        **entropy_metric(rollout.entropy, mask),
        **{k: v for k, v in policy_stats.items() if k != "kl_old"},
        **per_epoch,
        **gradient_token_metrics(advantages, mask, clipped),
        "loss": dist.sum_across(torch.stack(losses).mean()),
        "grad_norm": torch.stack(grad_norms).float().mean(),
    }
    metrics = dist.mean_metrics(to_floats(metrics))
    t.timings["metrics"] = time.perf_counter() - tick
    rows = [{"step": step, "prompt": examples[i // G].prompt, "completion": texts[i],
             "reward": float(rewards.flatten()[i]), "advantage": float(advantages[i])}
            for i in range(min(SAMPLE_ROWS, P) * G)]
    return metrics, rows


def rng_states(t: Trainer) -> dict[str, torch.Tensor]:
    return {"data": t.data_rng.get_state(), "sample": t.sample_rng.get_state().cpu(), "torch": torch.get_rng_state()}


def restore(t: Trainer, store: RunStore | None) -> int:
    """Load the newest checkpoint, if any, on every rank; return the step to continue after (0: fresh).
    Only rank 0 (the one with a store) rewrites the logs."""
    checkpoints = checkpoint_dirs(t.cfg.run_dir)
    if not checkpoints:
        if store:
            store.truncate_after(-1)
        return 0
    state = load_checkpoint(checkpoints[-1], t.policy, t.optimizer, t.device)
    if state["step"] > t.cfg.steps:
        raise GrpoError(f"{t.cfg.run_dir} already has a checkpoint at step {state['step']}, past --steps {t.cfg.steps}")
    if len(state["rng"]) != dist.world_size():
        raise GrpoError(f"{checkpoints[-1]} was written by {len(state['rng'])} rank(s); resume it with as many, "
                        f"not {dist.world_size()}")
    rng = state["rng"][dist.rank()]        # one entry per rank: each rank resumes its own streams
    t.data_rng.set_state(rng["data"].cpu())
    t.sample_rng.set_state(rng["sample"].cpu())
    torch.set_rng_state(rng["torch"].cpu())
    t.samples, t.tokens, t.elapsed = int(state["samples"]), int(state["tokens"]), float(state["elapsed"])
    if store:
        store.truncate_after(state["step"])   # lines after the checkpoint are recomputed identically
    return state["step"]


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
    if not is_preset(cfg.model):
        check_model_dir(cfg.model)        # before the run directory is claimed by a typo
    store = RunStore(cfg) if main else None
    previous = read_summary(cfg.run_dir)          # every rank reads it, so every rank decides alike
    if previous.get("status") == "finished" and previous.get("steps_done", 0) >= cfg.steps:
        if main:
            log(f"{store.dir} already finished {previous['steps_done']} steps; nothing to do")
        return previous
    t = build_trainer(cfg, log=log if main else (lambda *_: None))
    start = restore(t, store)
    wandb = WandbMirror(cfg, store.dir, previous.get("wandb_id")) if main else None
    if main:
        store.write_summary(status="running", steps_done=start, error=None, wandb_id=wandb.id)
        if start > 0:
            log(f"resuming {store.dir} from step {start}")
    bar = progress_bar(cfg.steps, start, quiet=cfg.quiet or not main)

    def record(step: int, metrics: dict, eval_metrics: dict) -> dict:
        out = {"step": step, "samples": t.samples, "tokens": t.tokens, "time/elapsed": round(t.elapsed, 3),
               **metrics, **eval_metrics}
        if main:
            store.append(store.metrics_path, out)
            wandb.log(out)
        return out

    try:
        if start == 0:
            record(0, {}, t.evaluate(0) if main else {})
        for step in range(start + 1, cfg.steps + 1):
            tick = time.perf_counter()
            metrics, rows = grpo_step(t, step)
            step_time = time.perf_counter() - tick
            t.elapsed += step_time
            metrics.update({f"time/{k}": v for k, v in t.timings.items()})
            metrics["time/step"] = step_time
            eval_metrics = {}
            if main and (step % cfg.eval_every == 0 or step == cfg.steps):
                eval_metrics = t.evaluate(step)
            out = record(step, metrics, eval_metrics)
            if main and (step % cfg.log_samples_every == 0 or step == 1):
                for row in rows:
                    store.append(store.samples_path, row)
                wandb.log_samples(step, rows)
            if step % cfg.save_every == 0 or step == cfg.steps:
                every_rank_rng = dist.gather_objects(rng_states(t))
                if main:
                    save_checkpoint(store.dir, step, t.policy, t.optimizer, every_rank_rng,
                                    {"samples": t.samples, "tokens": t.tokens, "elapsed": t.elapsed})
                    store.write_summary(steps_done=step)
            bar.set_postfix(reward=f"{out['reward/mean']:.3f}", acc=f"{out['accuracy']:.2f}",
                            **({"kl": f"{out['kl/k3']:.4f}"} if "kl/k3" in out else {}), refresh=False)
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
