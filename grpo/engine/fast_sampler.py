"""A lean decode loop for Llama-family models (Llama, Qwen2, Mistral): the `Sampler` fast path, --sampler static.

`KVCacheSampler` calls the `transformers` model once per new token; on a small model most of that
time is the framework's per-call work (mask building, cache bookkeeping, keyword plumbing), not
arithmetic. Here the prompt is prefilled by the model itself, its keys and values are copied into a
preallocated cache, and each new token runs the same layers by hand on the model's own weights:
RMSNorm, one fused q/k/v matmul, rotary embedding from a table built once, scaled-dot-product
attention over the filled part of the cache, one fused gate/up matmul. Same math as the model's
forward (tests compare the two), about a hundred tensor ops per token instead of several hundred.
Rows that have ended (EOS) leave the batch once they are a quarter of it, so a batch whose completions
end early stops paying for them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from grpo import GrpoError
from grpo.engine import gemm
from grpo.engine.lean_layers import autocast_dtype as _matmul_dtype, cast_to, cast_weight
from grpo.engine.sampler import Rollout, Sampler, TokenStream, prompt_positions, shared_prefill
from grpo.setup.sampler_registry import register_sampler

SUPPORTED = {"llama", "qwen2", "mistral"}
# The decode loop drops ended rows from its cache once they are at least 1/COMPACT_AT of the rows it runs:
# each drop copies the cache, so it waits until a quarter of the work can go.
COMPACT_AT = 4


def supports(model) -> bool:
    """Llama-family models whose every layer attends to the whole cache: no sliding window (Qwen2
    turns it on with `use_sliding_window`, Mistral with a non-null `sliding_window`), SiLU MLP, no MLP bias."""
    config = getattr(model, "config", None)
    sliding = getattr(config, "use_sliding_window", False) if getattr(config, "model_type", None) == "qwen2" \
        else getattr(config, "sliding_window", None) is not None
    return (getattr(config, "model_type", None) in SUPPORTED and getattr(config, "hidden_act", "") == "silu"
            and not sliding and not getattr(config, "mlp_bias", False))


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """The models' RMSNorm (fp32 statistics, weight applied in the input dtype)."""
    normed = x.float()
    normed = normed * torch.rsqrt(normed.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


class _Layer:
    """One decoder layer's matmul weights, with q/k/v and gate/up fused into single matmuls. Under
    autocast they are cast once here, to the dtype autocast would cast them to at every token (the same
    values: 2.1-2.5x faster bf16 matmuls for 16 rows of SmolLM2 on an AVX512-BF16 CPU, without the
    per-token cast of 538 MB of weights); the unfused ones through `cast_weight`, whose copies the
    learner's lean layers share until the next optimizer step."""

    def __init__(self, layer, dtype: torch.dtype | None = None) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv_weight = gemm.pack(cast_to(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]), dtype))
        biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
        self.qkv_bias = cast_to(torch.cat(biases), dtype) if biases[0] is not None else None
        self.o_weight, self.o_bias = gemm.pack(cast_weight(attn.o_proj.weight, dtype)), cast_to(attn.o_proj.bias, dtype)
        self.gate_up_weight = gemm.pack(cast_to(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), dtype))
        self.down_weight = gemm.pack(cast_weight(mlp.down_proj.weight, dtype))
        self.norm1, self.norm2 = layer.input_layernorm, layer.post_attention_layernorm


def next_logits(model, layers: list[_Layer], head: tuple[Tensor, Tensor | None], token: Tensor, keys: list[Tensor],
                values: list[Tensor], slot: int, cos: Tensor, sin: Tensor, slot_bias: Tensor,
                dims: tuple[int, int, int, float]) -> Tensor:
    """Run `token` [N] at cache slot `slot` through every layer and the head (weight, bias); its K/V go
    into the cache; logits [N, V]."""
    heads, kv_heads, head_dim, eps = dims
    num_rows, group, scale = token.shape[0], heads // kv_heads, head_dim ** -0.5
    x = model.model.embed_tokens(token)[:, None]                                 # [N, 1, H]
    for i, layer in enumerate(layers):
        h = _rms_norm(x, layer.norm1.weight, eps)
        qkv = gemm.linear(h, layer.qkv_weight, layer.qkv_bias)
        q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
        # Query heads grouped under their kv head: [N, kv_heads, group, D] (one query position).
        q = q.view(num_rows, kv_heads, group, head_dim)
        k = k.view(num_rows, kv_heads, 1, head_dim)
        q = (q * cos + _rotate_half(q) * sin) * scale
        keys[i][:, :, slot] = (k * cos + _rotate_half(k) * sin)[:, :, 0]
        values[i][:, :, slot] = v.view(num_rows, kv_heads, head_dim)
        # Attention for a single query position: two small matmuls beat the fused kernel's setup cost.
        # In the cache's dtype, fp32 under autocast too: bf16 matmuls copy the strided cache slices
        # (SmolLM2, 16 rows: 0.37 vs 0.24 ms a layer and token).
        with torch.autocast(token.device.type, enabled=False):
            scores = torch.matmul(q.to(keys[i].dtype), keys[i][:, :, : slot + 1].transpose(-1, -2)) + slot_bias
            attn = torch.matmul(scores.softmax(-1), values[i][:, :, : slot + 1])     # [N, kv, group, D]
        x = x + gemm.linear(attn.reshape(num_rows, 1, heads * head_dim), layer.o_weight, layer.o_bias)
        h = _rms_norm(x, layer.norm2.weight, eps)
        gate, up = gemm.linear(h, layer.gate_up_weight).chunk(2, dim=-1)
        x = x + gemm.linear(F.silu(gate) * up, layer.down_weight)
    h, (head_weight, head_bias) = _rms_norm(x, model.model.norm.weight, eps)[:, 0], head
    if head_bias is None and h.device.type == "cpu":
        # [V, H] @ [H, N]: with the vocabulary as the long side, a few rows' head runs ~1.5x faster on a CPU
        # (SmolLM2's 49k x 576 head for 16 rows: 19 ms instead of 27-30 ms a token on 2 cores). One copy
        # makes it row-major and fp32, what sampling reads.
        return torch.mm(head_weight, h.t()).t().to(torch.float32, memory_format=torch.contiguous_format)
    return F.linear(h, head_weight, head_bias)


@register_sampler("static")
class StaticCacheSampler(Sampler):
    """`Sampler` for Llama-family models with a preallocated KV cache; same interface and outputs.

    (torch.compile of `next_logits` was tried twice. Sliced to the filled part of the cache, it
    recompiled at every position. Over the whole cache with the unwritten slots masked, and the row and
    slot counts marked dynamic, it compiled once: W1's rollout 20-35% faster at 2 threads, 10% at one,
    but 7.5-9 s of compiling in every process even from inductor's on-disk cache (dynamo's tracing
    1.8 s, AOT metadata 1.4 s, loading the kernels 1.3 s), which a run of 40-250 steps does not earn
    back (~0.035 s a step); so the loop stays eager.)
    """

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """`Sampler.sync_weights`, refusing (at build) a model this loop does not run."""
        if policy is not self.model and not supports(policy):
            model_type = getattr(getattr(policy, "config", None), "model_type", None)
            raise GrpoError(f"--sampler static runs Llama-family models ({', '.join(sorted(SUPPORTED))}: SiLU MLP "
                            f"without bias, no sliding window), not this {model_type}: use --sampler hf")
        super().sync_weights(policy)

    @torch.inference_mode()
    def generate_from(self, model, prompt_ids: Tensor, prompt_mask: Tensor, *, max_new_tokens: int,
                      temperature: float, generator: torch.Generator | None, eos_token_id: int,
                      pad_token_id: int, min_new_tokens: int = 0, greedy: bool = False) -> Rollout:
        config, body = model.config, model.model
        num_rows, prompt_len = prompt_ids.shape
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        eps = config.rms_norm_eps
        dtype = _matmul_dtype(prompt_ids.device)
        layers = [_Layer(layer, dtype) for layer in body.layers]
        head = (cast_weight(model.lm_head.weight, dtype), cast_to(model.lm_head.bias, dtype))

        # Prefill: the model's own forward over the prompt fills a cache we then copy.
        positions = prompt_positions(prompt_mask)
        logits, cache = shared_prefill(model, prompt_ids, prompt_mask)
        logits = logits.float()                  # the decode steps' logits are fp32 (index_copy_ below)
        total = prompt_len + max_new_tokens
        # Under autocast the prefill's cache is bf16; the decode loop keeps it (and attends) in fp32.
        cache_dtype = torch.float32 if torch.is_autocast_enabled(prompt_ids.device.type) else None
        keys, values = [], []
        for entry in cache.layers:
            k = entry.keys.new_zeros(num_rows, kv_heads, total, head_dim, dtype=cache_dtype or entry.keys.dtype)
            v = entry.values.new_zeros(num_rows, kv_heads, total, head_dim, dtype=cache_dtype or entry.values.dtype)
            k[:, :, :prompt_len], v[:, :, :prompt_len] = entry.keys, entry.values
            keys.append(k)
            values.append(v)
        # Additive attention bias per cache slot: -inf on left padding, 0 on prompt and generated tokens.
        attend = torch.cat([prompt_mask.bool(), prompt_mask.new_ones(num_rows, max_new_tokens, dtype=torch.bool)], 1)
        bias = torch.zeros(attend.shape, dtype=keys[0].dtype, device=attend.device).masked_fill(~attend, float("-inf"))
        bias = bias[:, None, None]                                                  # [N, 1, 1, total]
        dims = (heads, kv_heads, head_dim, eps)
        position = positions[:, -1] + 1                                             # [N]
        table = torch.arange(int(position.max()) + max_new_tokens + 1, device=prompt_ids.device)
        cos_table, sin_table = body.rotary_emb(keys[0], table[None])                # [1, P, D]
        cos_table, sin_table = cos_table[0], sin_table[0]

        stream = TokenStream(num_rows, prompt_ids.device, max_new_tokens=max_new_tokens,
                             min_new_tokens=min_new_tokens, temperature=temperature, generator=generator,
                             greedy=greedy, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        live = torch.arange(num_rows, device=prompt_ids.device)    # the rows the layers still run
        for step in range(max_new_tokens):
            token, done = stream.push(logits)
            if done:
                break
            ended = int(stream.finished[live].sum())
            if ended * COMPACT_AT >= len(live):
                # Drop the ended rows from the cache: the layers then run only the rows still writing.
                keep = (~stream.finished[live]).nonzero()[:, 0]
                live, position, bias = live[keep], position[keep], bias[keep]
                keys, values = [k[keep] for k in keys], [v[keep] for v in values]
            slot = prompt_len + step
            cos, sin = cos_table[position][:, None, None], sin_table[position][:, None, None]   # [n, 1, 1, D]
            part = next_logits(model, layers, head, token[live], keys, values, slot, cos, sin,
                               bias[..., : slot + 1], dims)
            # Ended rows keep their last logits, in place: TokenStream never reads them (it pads those rows).
            logits = part if len(live) == num_rows else logits.index_copy_(0, live, part)
            position = position + 1
        return stream.rollout(prompt_ids, prompt_mask)
