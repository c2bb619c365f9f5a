"""Per-token log-probs of S seeds' completions, each under its own model, as one forward over the S models'
stacked weights (`stacked.stack_weights`): the learner's and pi_old's of a population (--population S).

Seed s's values are `logprobs.completion_logp(models[s], ...)` of its own rows, to float rounding (the single
path runs a group's prompt once and the completions on its KV cache; here every row runs whole, as
`completion_logp(share_prompts=False)` does). Under grad mode the stack is differentiable: one backward of the
sum of the seeds' losses gives each model the gradient its own computation gives (the seeds share no weight).

Seeds may bring different row counts B_s, prompt widths L_s and completion widths T_s: the rows are stacked
[S, B, L + T] with B, L, T the widest, prompts padded on the left (mask 0, as the tokenizer pads) and
completions on the right (after every scored position: under the causal mask they change nothing scored),
missing rows as all-padding prompts; each seed's [B_s, T_s] is sliced back out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from grpo import GrpoError
from grpo.engine import stacked
from grpo.engine.fast_sampler import _rotate_half, supports
from grpo.engine.sampler import prompt_positions


def pad_seeds(prompt_ids: list[Tensor], prompt_masks: list[Tensor],
              completion_ids: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """The seeds' rows padded to one shape: (prompt_ids [S, B, L], prompt_mask [S, B, L], completion_ids
    [S, B, T]); prompts left-padded with mask 0 (token 0), completions right-padded with token 0, missing
    rows all-padding prompts (mask 0) with token-0 completions."""
    rows = max(p.shape[0] for p in prompt_ids)
    width = max(p.shape[1] for p in prompt_ids)
    length = max(c.shape[1] for c in completion_ids)

    def pad(t: Tensor, left: int, right: int) -> Tensor:
        return F.pad(t, (left, right, 0, rows - t.shape[0]))

    return (torch.stack([pad(p, width - p.shape[1], 0) for p in prompt_ids]),
            torch.stack([pad(m.long(), width - m.shape[1], 0) for m in prompt_masks]),
            torch.stack([pad(c, 0, length - c.shape[1]) for c in completion_ids]))


def unpad_seeds(out: Tensor, completion_ids: list[Tensor]) -> list[Tensor]:
    """Seed s's [B_s, T_s] of a padded [S, B, T]."""
    return [out[s, :c.shape[0], :c.shape[1]] for s, c in enumerate(completion_ids)]


def attention_mask(real: Tensor) -> Tensor:
    """Boolean [S B, 1, N, N] from which positions are real [S B, N]: a query sees the real keys at or before
    it, and itself. Itself keeps a left-padding query (which sees no real key) from an all-masked softmax,
    whose NaN would reach real rows through the values (0 x NaN); no real query sees a padding key, so the
    padding positions' (finite) outputs reach nothing scored."""
    n = real.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=real.device).tril()
    return ((causal & real[:, None, :]) | torch.eye(n, dtype=torch.bool, device=real.device))[:, None]


def attention(layer: stacked.StackedLayer, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, config) -> Tensor:
    """A layer's self-attention over stacked rows x [S, B, N, H] (fused q/k/v, Qwen2's biases, GQA, rotary)."""
    seeds, rows, n, _ = x.shape
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    qkv = stacked.linear(x, layer.qkv, layer.qkv_bias).view(seeds * rows, n, heads + 2 * kv_heads, head_dim)
    q, k, v = qkv.transpose(1, 2).split([heads, kv_heads, kv_heads], dim=1)     # [S B, heads, N, D]
    q, k = (t * cos + _rotate_half(t) * sin for t in (q, k))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=head_dim ** -0.5,
                                         enable_gqa=kv_heads != heads)
    return stacked.linear(out.transpose(1, 2).reshape(seeds, rows, n, heads * head_dim), layer.o)


def hidden_states(weights: stacked.StackedWeights, body, input_ids: Tensor, mask: Tensor,
                  positions: Tensor) -> Tensor:
    """The final (normed) hidden states [S, B, N, H] of the stacked rows input_ids [S, B, N]; mask [S, B, N]
    (1 real, 0 left padding), positions [S, B, N]; `body` (a model's `.model`) gives the config, the
    rotary embedding and the embedding's padding_idx."""
    seeds, rows, n = input_ids.shape
    config, eps = body.config, body.config.rms_norm_eps
    padding_idx = body.embed_tokens.padding_idx
    x = stacked.embed(weights.embed, input_ids, padding_idx)
    cos, sin = body.rotary_emb(x, positions.view(seeds * rows, n))
    cos, sin = cos[:, None], sin[:, None]                                         # [S B, 1, N, D]
    attend = attention_mask(mask.view(seeds * rows, n).bool())
    for layer in weights.layers:
        x = x + attention(layer, stacked.rms_norm(x, layer.norm1, eps), cos, sin, attend, config)
        gate, up = stacked.linear(stacked.rms_norm(x, layer.norm2, eps), layer.gate_up).chunk(2, dim=-1)
        x = x + stacked.linear(F.silu(gate) * up, layer.down)
    return stacked.rms_norm(x, weights.norm, eps)


def population_logp(models: list, prompt_ids: list[Tensor], prompt_masks: list[Tensor],
                    completion_ids: list[Tensor], *, temperature: float, eos_token_id: int | None = None,
                    min_new_tokens: int = 0, with_entropy: bool = False) -> list[Tensor] | list[tuple[Tensor, Tensor]]:
    """Per seed s, log pi_s(completion token j | prompt, tokens < j) [B_s, T_s] in fp32 (and the entropy
    [B_s, T_s] with with_entropy), as `logprobs.completion_logp` gives it under models[s]: at `temperature`,
    EOS banned at j < min_new_tokens. models: S Llama-family models of one config (`fast_sampler.supports`);
    the per-seed lists hold [B_s, L_s], [B_s, L_s] and [B_s, T_s] tensors."""
    if not all(supports(m) for m in models) or any(
            layer.self_attn.o_proj.bias is not None for m in models for layer in m.model.layers):
        raise GrpoError("population_logp needs Llama-family models without an MLP or output-projection bias")
    prompts, prompt_mask, completions = pad_seeds(prompt_ids, prompt_masks, completion_ids)
    num_positions = completions.shape[2]
    # prompt + completion without its last token: positions L-1 .. L+T-2 score completion tokens 0 .. T-1.
    input_ids = torch.cat([prompts, completions[..., :-1]], dim=-1)
    mask = torch.cat([prompt_mask, torch.ones_like(completions[..., :-1])], dim=-1)
    weights = stacked.stack_weights(models)
    hidden = hidden_states(weights, models[0].model, input_ids, mask, prompt_positions(mask))
    logits = stacked.linear(hidden[:, :, -num_positions:], weights.head, weights.head_bias).float()
    # In place: neither the matmul nor the bias add keeps its output for the backward, so the only fp32
    # [S, B, T, V] tensor is this one (logsumexp keeps it).
    if temperature != 1.0:
        logits = logits.div_(temperature)
    if min_new_tokens > 0:
        banned = torch.zeros(logits.shape[2:], dtype=torch.bool, device=logits.device)
        banned[:min_new_tokens, eos_token_id] = True
        logits = logits.masked_fill_(banned, float("-inf"))
    chosen = logits.gather(-1, completions.unsqueeze(-1)).squeeze(-1)
    logp = unpad_seeds(chosen - torch.logsumexp(logits, dim=-1), completion_ids)
    if not with_entropy:
        return logp
    log_probs = torch.log_softmax(logits, dim=-1)
    # -sum p log p, with 0 log 0 = 0 where a token is banned (p = 0, log p = -inf), as completion_logp.
    entropy = -(log_probs.exp() * log_probs.masked_fill(torch.isinf(log_probs), 0.0)).sum(-1)
    return list(zip(logp, unpad_seeds(entropy, completion_ids)))
