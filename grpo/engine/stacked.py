"""S Llama-family models of one shape as one: their weights stacked on a leading seed dimension [S, ...],
and the layers' ops written over it, so that one op runs every seed's rows (a population, --population S).

Measured on W1's learner shapes (S = 5, 64 rows x 39 tokens, 2 threads): `torch.func.vmap` over
`functional_call` of the transformers model cannot take an attention mask (its mask code branches on the
mask's values, which vmap refuses), and without one its forward and backward took 0.64-0.86 s against
0.54 s for the five models in a loop (SDPA has no batching rule: vmap falls back to a loop of its own). So
the population's forward is written here over stacked weights, with `torch.matmul`'s batched matmuls.

`stack_weights` stacks with `torch.stack`, which is differentiable: a loss on the stacked forward's
outputs sends each seed's gradient to that seed's own parameters (they share nothing), so each seed keeps
its own module, optimizer and checkpoint. Activations are [S, rows, ..., features] throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class StackedLayer:
    norm1: Tensor                 # [S, H]
    qkv: Tensor                   # [S, (heads + 2 kv_heads) D, H]: q, k, v projections fused
    qkv_bias: Tensor | None       # [S, (heads + 2 kv_heads) D] (Qwen2) or None
    o: Tensor                     # [S, H, heads D]
    norm2: Tensor                 # [S, H]
    gate_up: Tensor               # [S, 2 I, H]: gate and up projections fused
    down: Tensor                  # [S, H, I]


@dataclass
class StackedWeights:
    embed: Tensor                 # [S, V, H]
    layers: list[StackedLayer]
    norm: Tensor                  # [S, H]
    head: Tensor                  # [S, V, H]
    head_bias: Tensor | None      # [S, V] or None

    @property
    def size(self) -> int:
        return self.embed.shape[0]


def stack_weights(models: list, in_major: bool = False) -> StackedWeights:
    """The weights of `models` (Llama-family `transformers` models of one config) stacked [S, ...]. Under
    grad mode the stack is differentiable (gradients reach each model's parameters); call it under
    `torch.no_grad()` or inference mode for a frozen copy.

    in_major: each matmul weight [S, out, in] is the transposed view of a contiguous [S, in, out] tensor
    (same shapes and values), which `linear`'s batched matmul reads fastest for a few rows per seed: W1's
    and W2's decode shapes (S = 5, 64 rows, 1 thread) took 10-40% less time than from [S, out, in] rows."""
    def stack(get, matrix: bool = False) -> Tensor | None:
        tensors = [get(m) for m in models]
        if tensors[0] is None:
            return None
        return torch.stack([t.t() for t in tensors]).transpose(1, 2) if matrix and in_major else torch.stack(tensors)

    def cat(get_all) -> Tensor | None:
        parts = [get_all(m) for m in models]
        if parts[0][0] is None:
            return None
        if parts[0][0].dim() == 2 and in_major:
            return torch.stack([torch.cat(p).t() for p in parts]).transpose(1, 2)
        return torch.stack([torch.cat(p) for p in parts])

    layers = []
    for i in range(len(models[0].model.layers)):
        def layer(m, i=i):
            return m.model.layers[i]
        layers.append(StackedLayer(
            norm1=stack(lambda m: layer(m).input_layernorm.weight),
            qkv=cat(lambda m: [getattr(layer(m).self_attn, f"{p}_proj").weight for p in "qkv"]),
            qkv_bias=cat(lambda m: [getattr(layer(m).self_attn, f"{p}_proj").bias for p in "qkv"]),
            o=stack(lambda m: layer(m).self_attn.o_proj.weight, matrix=True),
            norm2=stack(lambda m: layer(m).post_attention_layernorm.weight),
            gate_up=cat(lambda m: [layer(m).mlp.gate_proj.weight, layer(m).mlp.up_proj.weight]),
            down=stack(lambda m: layer(m).mlp.down_proj.weight, matrix=True)))
    return StackedWeights(embed=stack(lambda m: m.model.embed_tokens.weight), layers=layers,
                          norm=stack(lambda m: m.model.norm.weight),
                          head=stack(lambda m: m.lm_head.weight, matrix=True),
                          head_bias=stack(lambda m: m.lm_head.bias))


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Each seed's x W^T (+ b): x [S, ..., in], weight [S, out, in], bias [S, out] -> [S, ..., out]."""
    shape = x.shape
    out = torch.matmul(x.reshape(shape[0], -1, shape[-1]), weight.transpose(1, 2))
    if bias is not None:
        out = out + bias[:, None]
    return out.reshape(*shape[:-1], weight.shape[1])


def embed(weight: Tensor, ids: Tensor, padding_idx: int | None = None) -> Tensor:
    """Each seed's embedding of its ids: weight [S, V, H], ids [S, ...] -> [S, ..., H]. As `nn.Embedding`,
    the `padding_idx` row gets no gradient (the models' embeddings name their pad token so)."""
    seeds, vocab, hidden = weight.shape
    offset = torch.arange(seeds, device=ids.device).view(seeds, *([1] * (ids.dim() - 1))) * vocab
    out = weight.reshape(seeds * vocab, hidden)[ids + offset]
    return out if padding_idx is None else torch.where((ids == padding_idx)[..., None], out.detach(), out)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """The models' RMSNorm (fp32 statistics, weight applied in the input dtype): x [S, ..., H], weight [S, H]."""
    normed = x.float()
    normed = normed * torch.rsqrt(normed.pow(2).mean(-1, keepdim=True) + eps)
    return weight.view(weight.shape[0], *([1] * (x.dim() - 2)), -1) * normed.to(x.dtype)
