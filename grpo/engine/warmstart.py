"""Supervised warm start: a short SFT on task demonstrations, cached on disk.

A random model never earns a reward, so RL starts from a model fine-tuned on demonstrations and
stopped early on purpose: accuracy is partial, so groups of every kind (all right, all wrong, mixed)
occur. The result is cached under a key of (task with its options, model, warm-start settings), so every arm and seed
of an ablation starts from the same weights and they are computed once; a file lock makes parallel
runs wait for the first one instead of training it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from grpo.base.memory import fit_malloc_to_model
from grpo.base.paths import cache_root
from grpo.base.progress import progress_bar
from grpo.engine.models import build_model, check_model_dir, load_pretrained
from grpo.setup.presets import MODEL_PRESETS, is_preset
from grpo.setup.tasks import render_prompt, task_identity

# 2: arithmetic's held-out split by canonical form changed the training problems a warm start sees.
CACHE_VERSION = 2


def model_identity(model: str):
    """What the warm start depends on: a preset's sizes, or a checkpoint's path and its files' sizes
    and modification times (new weights at the same path must not reuse a stale warm start)."""
    if is_preset(model):
        return MODEL_PRESETS[model]
    path = check_model_dir(model).resolve()
    return [str(path)] + sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())


def warmstart_key(cfg, vocab_size: int) -> str:
    spec = {"version": CACHE_VERSION, **task_identity(cfg), "model": model_identity(cfg.model), "vocab_size": vocab_size,
            "steps": cfg.num_warmstart_steps, "lr": cfg.warmstart_lr, "batch": cfg.warmstart_batch_size,
            "seed": cfg.warmstart_seed, "micro_batch": WARMSTART_MICRO_BATCH}   # it moves the weights' rounding
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def initial_model(cfg, task, tokenizer):
    """The un-finetuned policy: a seeded preset or the local checkpoint."""
    if is_preset(cfg.model):
        return build_model(cfg.model, len(tokenizer), seed=cfg.warmstart_seed)
    return load_pretrained(cfg.model)


def demonstration_batch(task, tokenizer, examples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, loss_mask) for prompt + demonstration; the loss covers the demo only."""
    prompts = tokenizer([render_prompt(e, tokenizer) for e in examples], add_special_tokens=False)["input_ids"]
    # The demonstration's literal "<eos>" becomes this tokenizer's own EOS id.
    demos = [ids + [tokenizer.eos_token_id] for ids in tokenizer(
        [task.demonstration(e).removesuffix("<eos>") for e in examples], add_special_tokens=False)["input_ids"]]
    width = max(len(p) + len(d) for p, d in zip(prompts, demos))
    ids = torch.full((len(examples), width), tokenizer.pad_token_id)
    attention = torch.zeros(len(examples), width, dtype=torch.long)
    loss_mask = torch.zeros(len(examples), width)
    for row, (p, d) in enumerate(zip(prompts, demos)):
        start = width - len(p) - len(d)        # left padding, as in rollouts
        ids[row, start:] = torch.tensor(p + d)
        attention[row, start:] = 1
        loss_mask[row, width - len(d):] = 1
    return ids, attention, loss_mask


def supervised_finetune(model, task, tokenizer, *, steps: int, lr: float, batch_size: int, seed: int,
                        device: torch.device) -> None:
    """`steps` AdamW steps of next-token cross-entropy on demonstration tokens."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in progress_bar(steps, 0, quiet=False, desc="warm start"):
        ids, attention, loss_mask = (t.to(device) for t in demonstration_batch(
            task, tokenizer, task.sample(generator, batch_size)))
        optimizer.zero_grad(set_to_none=True)
        demonstration_loss_backward(model, ids, attention, loss_mask)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.zero_grad(set_to_none=True)   # the last SFT gradient must not leak into the first RL step


# Rows per forward/backward of a warm-start batch. The default task's demonstrations vary in length (52% of
# a 64-row batch padded to its longest row is padding); shortest rows first, 16 at a time, each run only to
# its own longest row. 2 threads, one batch of 64 against micro-batches of 16: 0.42-0.43 -> 0.29-0.30 s a step
# (60 steps each way, in one process; 1 thread: 0.66-0.69 -> 0.40-0.42 s). Of 32 rows: 0.29-0.39 s, of 8:
# 0.34-0.37 s (15 steps each).
WARMSTART_MICRO_BATCH = 16


def demonstration_loss_backward(model, ids: torch.Tensor, attention: torch.Tensor, loss_mask: torch.Tensor,
                                micro_batch: int = WARMSTART_MICRO_BATCH) -> torch.Tensor:
    """Backward of the mean cross-entropy over the batch's demonstration tokens (`loss_mask` 1), run in
    micro-batches of `micro_batch` rows, shortest first, each cut to its own longest row (rows are left-padded,
    so the cut drops padding columns only); each micro-batch's sum is divided by the whole batch's token
    count, so the gradients add up to the whole batch's. Returns the loss (a detached scalar)."""
    lengths = attention.sum(-1)
    demo_tokens = loss_mask[:, 1:].sum().clamp(min=1)     # a batch without demonstration tokens: loss 0
    total = torch.zeros((), device=ids.device)
    for rows in torch.argsort(lengths, stable=True).split(micro_batch):
        width = int(lengths[rows].max())
        part_ids, part_attention, targets = ids[rows, -width:], attention[rows, -width:], loss_mask[rows, -width:]
        positions = (part_attention.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=part_ids, attention_mask=part_attention, position_ids=positions).logits[:, :-1]
        token_loss = F.cross_entropy(logits.float().transpose(1, 2), part_ids[:, 1:], reduction="none")
        loss = (token_loss * targets[:, 1:]).sum() / demo_tokens
        loss.backward()
        total += loss.detach()
    return total


def warmstart_entry(cfg, tokenizer) -> Path:
    """The cache folder of `cfg`'s warm start."""
    return cache_root() / "warmstart" / warmstart_key(cfg, len(tokenizer))


def warm_started_model(cfg, task, tokenizer, device: torch.device, log=print):
    """The warm-started policy (fp32, on `device`), from the cache or trained now and cached."""
    model = initial_model(cfg, task, tokenizer).to(device)
    if device.type == "cpu":     # from here on the process trains this model: keep or give back freed memory
        fit_malloc_to_model(sum(p.numel() for p in model.parameters()))
    if cfg.num_warmstart_steps == 0:
        return model
    entry = warmstart_entry(cfg, tokenizer)
    entry.mkdir(parents=True, exist_ok=True)
    weights = entry / "model.safetensors"
    with open(entry / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # a parallel run with the same key waits here
        if weights.exists():
            try:
                load_model(model, weights, device=str(device))
                return model
            except Exception as err:  # a foreign or damaged file: rebuild from a fresh initial model
                log(f"warm start cache {weights} unreadable ({err}); rebuilding it")
                model = initial_model(cfg, task, tokenizer).to(device)
        log(f"warm start: {cfg.num_warmstart_steps} supervised steps on {cfg.task} demonstrations (cached in {entry})")
        supervised_finetune(model, task, tokenizer, steps=cfg.num_warmstart_steps, lr=cfg.warmstart_lr,
                            batch_size=cfg.warmstart_batch_size, seed=cfg.warmstart_seed, device=device)
        tmp = entry / "model.tmp.safetensors"
        save_model(model, str(tmp))
        os.replace(tmp, weights)
    return model
