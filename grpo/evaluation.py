"""Held-out evaluation: greedy accuracy and unbiased pass@k from n sampled completions.

pass@k = 1 - C(n - c, k) / C(n, k) per prompt (Chen et al. 2021, "Evaluating Large Language Models
Trained on Code"), averaged over prompts; c = number of correct completions among n.
"""

from __future__ import annotations

from math import comb

import torch

from grpo.rewards import correct_reward, response_text
from grpo.sampler import decode_completions, encode_prompts
from grpo.tasks import render_prompt

PASS_AT_K_PROMPTS = 32


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is correct) from n samples with c correct."""
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - comb(num_samples - num_correct, k) / comb(num_samples, k)


def correct_flags(model, sampler, tokenizer, examples, *, max_new_tokens: int, temperature: float,
                  generator, greedy: bool, device, batch_size: int = 256) -> list[float]:
    flags = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        prompt_ids, prompt_mask = encode_prompts(tokenizer, [render_prompt(e, tokenizer) for e in chunk], device)
        rollout = sampler.generate(model, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens,
                                   temperature=temperature, generator=generator, greedy=greedy,
                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        texts = decode_completions(tokenizer, rollout.completion_ids, rollout.completion_mask)
        flags += [correct_reward(response_text(t, e), e) for t, e in zip(texts, chunk)]
    return flags


def evaluate(model, sampler, tokenizer, task, cfg, step: int, device) -> dict[str, float]:
    """eval/accuracy (greedy), eval/pass@1 and eval/pass@G (sampled), on the held-out split."""
    was_training = model.training
    model.eval()
    examples = task.eval_examples()[: cfg.eval_prompts]
    greedy = correct_flags(model, sampler, tokenizer, examples, max_new_tokens=cfg.max_new_tokens,
                           temperature=1.0, generator=None, greedy=True, device=device)
    # Sampling uses its own generator seeded by (seed, step): resuming a run re-evaluates identically.
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
    num_samples = max(cfg.eval_samples, cfg.group_size)
    repeated = [e for e in examples[:PASS_AT_K_PROMPTS] for _ in range(num_samples)]
    sampled = correct_flags(model, sampler, tokenizer, repeated, max_new_tokens=cfg.max_new_tokens,
                            temperature=cfg.temperature, generator=generator, greedy=False, device=device)
    counts = torch.tensor(sampled).view(-1, num_samples).sum(-1).long().tolist()
    model.train(was_training)
    metrics = {"eval/accuracy": sum(greedy) / len(greedy)}
    for k in sorted({1, cfg.group_size}):
        metrics[f"eval/pass@{k}"] = sum(pass_at_k(num_samples, c, k) for c in counts) / len(counts)
    return metrics
