"""Held-out evaluation: greedy accuracy and unbiased pass@k from n sampled completions.

pass@k = 1 - C(n - c, k) / C(n, k) per prompt (Chen et al. 2021, "Evaluating Large Language Models
Trained on Code"), averaged over prompts; c = number of correct completions among n. It is logged at k = 1,
the group size G and each of PASS_AT_K that the n samples reach (k <= n).

Step 0 evaluates the warm start, which every arm and seed of a sweep starts from: its greedy flags are
the same for every run and its sampled ones for every run of a seed. With a `store` folder (beside the
cached warm start) they are computed once and kept under a key of everything they depend on, the
source of the modules that compute them included.

The prompts are cut into fixed blocks, each decoded as one batch with its own generator seeded by
(seed, step, block). Under data parallelism the blocks are dealt round-robin to the ranks, so every
rank works and the result does not depend on the number of ranks; resuming re-evaluates identically.

The sampler decodes with the model passed in (`Sampler.generate_from`), never with the weights it was
last synced to: evaluation scores the learner's current weights even where a sampler's lag behind.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib
import json
import os
from math import comb
from pathlib import Path

import torch

from grpo.base import distributed as dist
from grpo.engine import gemm
from grpo.engine.sampler import decode_completions, encode_prompts
from grpo.setup.rewards import correct_extracted_reward, correct_reward, response_text
from grpo.setup.tasks import render_prompt

PASS_AT_K_PROMPTS = 32
# Prompts per decoded batch. Larger batches cost less per prompt (the decode loop drops rows as they end);
# measured on the demo's warm-started model, 1 thread: 200 greedy prompts + 32 x 16 samples 2.3 s in blocks
# of 128 / 8, and all 450 held-out prompts 3.2 s in blocks of 512 / 32 (16 sampled prompts a block, unmeasured,
# keep two blocks for two ranks). Under data parallelism the ranks share out whole blocks: fewer greedy prompts
# than 2 blocks leave the greedy pass to one rank (the results do not depend on the number of ranks either way).
GREEDY_BLOCK = 512       # prompts per greedy batch
SAMPLED_BLOCK = 16       # prompts per sampled batch (each repeated n times)


# pass@k's k logged besides 1 and G, each when the eval draws at least k samples per prompt: 16 is DeepSeekMath's
# large k for "RL sharpens" (pass@1 rises, pass@16 stays; experiments/paper_checks.py D5).
PASS_AT_K = (16,)


def pass_at_k_metrics(counts: list[int], num_samples: int, group_size: int) -> dict[str, float]:
    """eval/pass@<k> for k = 1, group_size and PASS_AT_K up to num_samples: the mean over prompts of the unbiased
    pass@k; counts: each prompt's correct completions out of num_samples."""
    ks = sorted(k for k in {1, group_size, *PASS_AT_K} if k <= num_samples)
    return {f"eval/pass@{k}": sum(pass_at_k(num_samples, c, k) for c in counts) / len(counts) for k in ks}


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is correct) from n samples with c correct."""
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - comb(num_samples - num_correct, k) / comb(num_samples, k)


# The run's correctness reward (TrainConfig.correctness_reward) -> the function that judges eval answers,
# bound here rather than read from the reward registry, which tests may script for training steps.
JUDGES = {"correct": correct_reward, "correct_extracted": correct_extracted_reward}


def correct_flags(model, sampler, tokenizer, examples, *, max_new_tokens: int, temperature: float,
                  generator, greedy: bool, device, reward=correct_reward, worked_example: bool = False) -> list[float]:
    """1.0 / 0.0 per example: is its one completion (decoded as one batch) correct by `reward`?"""
    prompts = [render_prompt(e, tokenizer, worked_example) for e in examples]
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    rollout = sampler.generate_from(model, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens,
                                    temperature=temperature, generator=generator, greedy=greedy,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    texts = decode_completions(tokenizer, rollout.completion_ids, rollout.completion_mask)
    return [reward(response_text(t, e), e) for t, e in zip(texts, examples)]


def blockwise(examples: list, block: int, run) -> list[float]:
    """run(block_index, examples of the block) for this rank's blocks; every block's flags, in order."""
    blocks = [examples[i:i + block] for i in range(0, len(examples), block)]
    mine = {i: run(i, blocks[i]) for i in range(dist.rank(), len(blocks), dist.world_size())}
    every = {i: flags for part in dist.gather_objects(mine) for i, flags in part.items()}
    return [flag for i in range(len(blocks)) for flag in every[i]]


@functools.cache
def code_fingerprint() -> str:
    """A hash of the source of the modules an evaluation runs through."""
    names = ("grpo.engine.evaluation", "grpo.engine.sampler", "grpo.engine.fast_sampler", "grpo.setup.rewards", "grpo.setup.tasks", "grpo.setup.tokenizer")
    sources = b"".join(Path(importlib.import_module(name).__file__).read_bytes() for name in names)
    return hashlib.sha256(sources).hexdigest()[:16]


def stored(folder: Path | None, key: dict, compute) -> list[float]:
    """compute(), or its result kept in `folder` under `key`; a parallel run with the same key waits
    for the first instead of computing it again."""
    if folder is None:
        return compute()
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = folder / f"{name}.json"
    with open(folder / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return json.loads(path.read_text())["flags"]
        except (OSError, ValueError, KeyError):      # absent or damaged: compute it (again)
            pass
        flags = compute()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "flags": flags}))
        os.replace(tmp, path)
        return flags


def evaluate(model, sampler, tokenizer, task, cfg, step: int, device, store: Path | None = None) -> dict[str, float]:
    """eval/accuracy (greedy), eval/pass@1, eval/pass@G and eval/pass@16 (sampled, pass_at_k_metrics), on the
    held-out split.
    store: a folder that keeps the flags for runs that evaluate the same weights (step 0's warm start)."""
    was_training = model.training
    model.eval()
    examples = task.eval_examples()[: cfg.num_eval_prompts]
    common = dict(max_new_tokens=cfg.max_new_tokens, device=device, reward=JUDGES[cfg.correctness_reward],
                  worked_example=cfg.worked_example)
    # What the flags depend on besides the weights (the store's folder stands for those).
    key = {"code": code_fingerprint(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "device": device.type, "dtype": cfg.compute_dtype, "sampler": type(sampler).__name__,
           "onednn": gemm.available(), "step": step,
           "prompts": len(examples), "blocks": [GREEDY_BLOCK, SAMPLED_BLOCK, PASS_AT_K_PROMPTS],
           "max_new_tokens": cfg.max_new_tokens, "worked_example": cfg.worked_example, "judge": cfg.correctness_reward}

    def greedy_flags() -> list[float]:
        return blockwise(examples, GREEDY_BLOCK, lambda i, chunk: correct_flags(
            model, sampler, tokenizer, chunk, temperature=1.0, generator=None, greedy=True, **common))

    greedy = stored(store, {**key, "greedy": True}, greedy_flags)
    num_samples = max(cfg.num_eval_samples, cfg.group_size)

    def sampled_block(index: int, chunk: list) -> list[float]:
        generator = torch.Generator(device=device).manual_seed((cfg.seed * 1_000_003 + step) * 1_000 + index)
        repeated = [e for e in chunk for _ in range(num_samples)]
        return correct_flags(model, sampler, tokenizer, repeated, temperature=cfg.temperature,
                             generator=generator, greedy=False, **common)

    sampled = stored(store, {**key, "seed": cfg.seed, "temperature": cfg.temperature, "samples": num_samples},
                     lambda: blockwise(examples[:PASS_AT_K_PROMPTS], SAMPLED_BLOCK, sampled_block))
    counts = torch.tensor(sampled).view(-1, num_samples).sum(-1).long().tolist()
    model.train(was_training)
    return {"eval/accuracy": sum(greedy) / len(greedy), **pass_at_k_metrics(counts, num_samples, cfg.group_size)}
