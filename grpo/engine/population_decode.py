"""The rollout decode of S seeds (a population, --population S) as one computation over their stacked weights.

`generate_population(models, ...)` returns, for each seed s, the Rollout that
`StaticCacheSampler().generate_from(models[s], prompt_ids[s], ...)` returns with generators[s]: the same
tokens wherever logits are not at a near-tie, log-probs and entropies to float rounding. Each seed keeps
its own `TokenStream`, fed that seed's slice of the logits, so each seed draws one uniform per row and
position from its own generator, exactly as its single run does, and stops drawing when its single run
would stop.

- Prefill: each model's own (`shared_prefill`, as the single sampler runs it); its keys and values are
  copied into one cache [S N, kv_heads, slots, D]. (For W1's 7-token prompts the prefill is a small part of
  the rollout; bench/population_decode.py prints its share.)
- Decode: every new token is one pass through the stacked layers (grpo/engine/stacked.py: batched matmuls
  over [S, ...] weights, attention over the S N rows of the cache).
- Seeds with fewer rows or narrower prompts are padded to the widest: prompts are left-padded (the extra
  slots masked out of attention), padded rows decode zeros and are sliced off; they never reach a stream.
- Departures from the single loop: no compaction of ended rows (the rows of every seed run until the last
  seed stops), and the matmuls are torch's batched ones rather than oneDNN's packed ones, so a seed's
  logits differ from its single run's in the last bits. fp32 only: under autocast it refuses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from grpo import GrpoError
from grpo.engine.fast_sampler import _rotate_half, supports
from grpo.engine.sampler import Rollout, TokenStream, prompt_positions, shared_prefill
from grpo.engine.stacked import StackedWeights, embed, linear, rms_norm, stack_weights


def check_models(models: list) -> None:
    """Refuse (one line) what the population decode does not run: models of different shapes, models the
    static sampler does not run, an attention output bias (Llama's attention_bias), weights other than fp32."""
    config = models[0].config
    shape_keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "intermediate_size", "rms_norm_eps", "rope_theta", "head_dim")
    for model in models:
        if not supports(model):
            raise GrpoError(f"the population decode runs Llama-family models, not this {model.config.model_type}")
        if any(getattr(model.config, k, None) != getattr(config, k, None) for k in shape_keys):
            raise GrpoError("the population decode needs every seed's model in one shape")
        if model.model.layers[0].self_attn.o_proj.bias is not None:
            raise GrpoError("the population decode does not run an attention output bias (attention_bias)")
        if model.lm_head.weight.dtype != torch.float32:
            raise GrpoError(f"the population decode runs fp32 weights, not {model.lm_head.weight.dtype}")


def next_logits(weights: StackedWeights, token: Tensor, keys: list[Tensor], values: list[Tensor], slot: int,
                cos: Tensor, sin: Tensor, slot_bias: Tensor, dims: tuple[int, int, int, float]) -> Tensor:
    """Run each seed's tokens [S, N] at cache slot `slot` through its layers and head; their K/V go into the
    caches [S N, kv_heads, slots, D]; logits [S, N, V]. cos, sin [S N, 1, 1, D]; slot_bias [S N, 1, 1, slot + 1]."""
    heads, kv_heads, head_dim, eps = dims
    seeds, num_rows = token.shape
    rows, group, scale = seeds * num_rows, heads // kv_heads, head_dim ** -0.5
    x = embed(weights.embed, token)                                                   # [S, N, H]
    for i, layer in enumerate(weights.layers):
        qkv = linear(rms_norm(x, layer.norm1, eps), layer.qkv, layer.qkv_bias)
        q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
        # Query heads grouped under their kv head: [S N, kv_heads, group, D] (one query position).
        q = q.reshape(rows, kv_heads, group, head_dim)
        k = k.reshape(rows, kv_heads, 1, head_dim)
        q = (q * cos + _rotate_half(q) * sin) * scale
        keys[i][:, :, slot] = (k * cos + _rotate_half(k) * sin)[:, :, 0]
        values[i][:, :, slot] = v.reshape(rows, kv_heads, head_dim)
        scores = torch.matmul(q, keys[i][:, :, : slot + 1].transpose(-1, -2)) + slot_bias
        attn = torch.matmul(scores.softmax(-1), values[i][:, :, : slot + 1])          # [S N, kv, group, D]
        x = x + linear(attn.reshape(seeds, num_rows, heads * head_dim), layer.o)
        gate, up = linear(rms_norm(x, layer.norm2, eps), layer.gate_up).chunk(2, dim=-1)
        x = x + linear(F.silu(gate) * up, layer.down)
    return linear(rms_norm(x, weights.norm, eps), weights.head, weights.head_bias).float()


def _prefill(models: list, prompt_ids: list[Tensor], prompt_masks: list[Tensor], total: int, dims) -> tuple:
    """Each seed's prefill, copied into the common shape: (logits [S, N, V], keys and values per layer
    [S N, kv_heads, total, D], attention bias [S N, 1, 1, total], next positions [S N]), L the widest prompt.
    Seed s's prompt sits in slots L - L_s .. L - 1 of its first N_s rows."""
    heads, kv_heads, head_dim, _ = dims
    seeds, num_rows = len(models), max(ids.shape[0] for ids in prompt_ids)
    width = max(ids.shape[1] for ids in prompt_ids)
    device, vocab = prompt_ids[0].device, models[0].config.vocab_size
    logits = torch.zeros(seeds, num_rows, vocab, device=device)
    cache_shape = (seeds * num_rows, kv_heads, total, head_dim)
    keys = [torch.zeros(cache_shape, device=device) for _ in models[0].model.layers]
    values = [torch.zeros(cache_shape, device=device) for _ in models[0].model.layers]
    # Padded rows attend to every slot (zeros: finite, and never read); a seed's rows to their prompt
    # tokens and every generated slot.
    attend = torch.ones(seeds, num_rows, total, dtype=torch.bool, device=device)
    position = torch.zeros(seeds, num_rows, dtype=torch.long, device=device)
    for s, (model, ids, mask) in enumerate(zip(models, prompt_ids, prompt_masks)):
        rows, first = ids.shape[0], width - ids.shape[1]
        seed_logits, cache = shared_prefill(model, ids, mask)
        logits[s, :rows] = seed_logits.float()
        for i, entry in enumerate(cache.layers):
            block = slice(s * num_rows, s * num_rows + rows)
            keys[i][block, :, first:width], values[i][block, :, first:width] = entry.keys, entry.values
        attend[s, :rows, :width] = F.pad(mask.bool(), (first, 0), value=False)
        position[s, :rows] = prompt_positions(mask)[:, -1] + 1
    bias = torch.zeros(attend.shape, device=device).masked_fill(~attend, float("-inf"))
    return logits, keys, values, bias.view(seeds * num_rows, 1, 1, total), position.view(-1)


@torch.inference_mode()
def generate_population(models: list, prompt_ids: list[Tensor], prompt_masks: list[Tensor], *,
                        generators: list[torch.Generator | None], max_new_tokens: int, temperature: float,
                        eos_token_id: int, pad_token_id: int, min_new_tokens: int = 0,
                        greedy: bool = False) -> list[Rollout]:
    """One Rollout per seed: seed s's completions of prompt_ids[s] [N_s, L_s] (left-padded, prompt_masks[s])
    from models[s], drawn from generators[s], as `StaticCacheSampler.generate_from` draws them (module
    docstring). Seeds may differ in N_s and L_s."""
    if not len(models) == len(prompt_ids) == len(prompt_masks) == len(generators):
        raise GrpoError("generate_population takes one model, prompt batch, mask and generator per seed")
    device = prompt_ids[0].device
    if torch.is_autocast_enabled(device.type):
        raise GrpoError("the population decode runs fp32 only, not under autocast (--dtype bf16): use --population 1")
    check_models(models)
    config, body = models[0].config, models[0].model
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dims = (heads, kv_heads, head_dim, config.rms_norm_eps)
    seeds, num_rows = len(models), max(ids.shape[0] for ids in prompt_ids)
    width = max(ids.shape[1] for ids in prompt_ids)
    total = width + max_new_tokens

    weights = stack_weights(models, in_major=True)
    logits, keys, values, bias, position = _prefill(models, prompt_ids, prompt_masks, total, dims)
    table = torch.arange(int(position.max()) + max_new_tokens + 1, device=device)
    cos_table, sin_table = body.rotary_emb(keys[0], table[None])                      # [1, P, D]
    cos_table, sin_table = cos_table[0], sin_table[0]

    streams = [TokenStream(ids.shape[0], device, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                           temperature=temperature, generator=generator, greedy=greedy,
                           eos_token_id=eos_token_id, pad_token_id=pad_token_id)
               for ids, generator in zip(prompt_ids, generators)]
    drawing = [True] * seeds                     # the seeds whose single run would still push a position
    token = torch.full((seeds, num_rows), pad_token_id, dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        for s, stream in enumerate(streams):
            if drawing[s]:
                rows = prompt_ids[s].shape[0]
                # A view on seed s's rows: push bans EOS in place, as on the single run's logits.
                token[s, :rows], done = stream.push(logits[s, :rows])
                drawing[s] = not done
        if not any(drawing):
            break
        slot = width + step
        cos, sin = cos_table[position][:, None, None], sin_table[position][:, None, None]   # [S N, 1, 1, D]
        logits = next_logits(weights, token, keys, values, slot, cos, sin, bias[..., : slot + 1], dims)
        position = position + 1
    return [stream.rollout(ids, mask) for stream, ids, mask in zip(streams, prompt_ids, prompt_masks)]
