"""Training forwards that keep less for the backward: the SwiGLU MLP and RMSNorm of Llama-family models.

Autograd keeps every intermediate an op needs for its gradient. In a Llama MLP, down(silu(g) * u) with
g = gate(x), u = up(x), that is g, silu(g), u and their product: four tensors of the intermediate size
per token per layer (SmolLM2-135M: 4 x 1536 floats, about half of what a layer keeps). `_SwiGLU` keeps
g and u and recomputes silu(g) and the product in the backward (elementwise, no matmul). Its RMSNorm,
w * x * r with r = 1 / sqrt(mean(x^2) + eps), keeps x, x * r and w * x * r; `_RMSNorm` keeps x and r.

Gradients (hand-derived, with s = sigmoid(g), p = g s u, dp = dy W_down):
    dW_down = dy^T p,   du = dp g s,   dg = dp u s (1 + g (1 - s)),
    dx = dg W_gate + du W_up,   dW_gate = dg^T x,   dW_up = du^T x;
    RMSNorm (h = x r):  dw = sum over tokens of dy h,   dx = r (dy w - h mean(dy w h)).
Values equal the model's own modules to float rounding (tests compare values and gradients).

`head_logp` does the same for the vocabulary head: the log-prob of each completion token without the
[B, T, V] logits and their gradient's temporaries (SmolLM2: 100 MB each per micro-batch of 4 x 128).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import Tensor


def _rows(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, gate_weight: Tensor, up_weight: Tensor, down_weight: Tensor) -> Tensor:
        g, u = F.linear(x, gate_weight), F.linear(x, up_weight)
        ctx.save_for_backward(x, g, u, gate_weight, up_weight, down_weight)
        return F.linear(F.silu(g) * u, down_weight)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, g, u, gate_weight, up_weight, down_weight = ctx.saved_tensors
        s = torch.sigmoid(g)
        silu = g * s
        dp = dy @ down_weight                                        # [..., I]
        d_down = _rows(dy).t() @ _rows(silu * u)
        du = dp * silu
        dg = dp * u * s * (1 + g * (1 - s))
        dx = dg @ gate_weight + du @ up_weight
        return dx, _rows(dg).t() @ _rows(x), _rows(du).t() @ _rows(x), d_down


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, r, weight)
        return weight * (x * r)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, r, weight = ctx.saved_tensors
        h = x * r
        dh = dy * weight
        dx = r * (dh - h * (dh * h).mean(-1, keepdim=True))
        return dx, _rows(dy * h).sum(0), None


# Positions per chunk of the lean head: SmolLM2's 49k-token head makes a chunk's logits 50 MB.
HEAD_CHUNK = 256


def _chunk_logits(hidden: Tensor, weight: Tensor, temperature: float, banned: Tensor, ban_token: int) -> Tensor:
    """Tempered logits [n, V] of a chunk of positions, with `ban_token` at -inf on the `banned` rows."""
    logits = (hidden @ weight.t()) / temperature
    if ban_token >= 0:
        logits[banned, ban_token] = float("-inf")
    return logits


class _HeadLogp(torch.autograd.Function):
    """log softmax(h W^T / T)[target] per position, HEAD_CHUNK positions at a time; keeps h and the
    logsumexp, and recomputes each chunk's logits in the backward:
        d logp / d logits = (onehot(target) - softmax) / T,  dh = d_logits W,  dW = d_logits^T h."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, banned: Tensor, ban_token: int,
                temperature: float) -> Tensor:
        logp, lse = torch.empty_like(targets, dtype=hidden.dtype), torch.empty_like(targets, dtype=hidden.dtype)
        for start in range(0, len(targets), HEAD_CHUNK):
            rows = slice(start, start + HEAD_CHUNK)
            logits = _chunk_logits(hidden[rows], weight, temperature, banned[rows], ban_token)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            logp[rows] = logits.gather(-1, targets[rows, None])[:, 0] - lse[rows]
        ctx.save_for_backward(hidden, weight, targets, banned, lse)
        ctx.ban_token, ctx.temperature = ban_token, temperature
        return logp

    @staticmethod
    def backward(ctx, grad: Tensor):
        hidden, weight, targets, banned, lse = ctx.saved_tensors
        grad_hidden, grad_weight = torch.empty_like(hidden), torch.zeros_like(weight)
        for start in range(0, len(targets), HEAD_CHUNK):
            rows = slice(start, start + HEAD_CHUNK)
            logits = _chunk_logits(hidden[rows], weight, ctx.temperature, banned[rows], ctx.ban_token)
            d_logits = torch.exp(logits.sub_(lse[rows, None])).mul_(-grad[rows, None])       # -g softmax
            d_logits.scatter_add_(-1, targets[rows, None], grad[rows, None]).div_(ctx.temperature)
            grad_hidden[rows] = d_logits @ weight
            grad_weight.addmm_(d_logits.t(), hidden[rows])
        return grad_hidden, grad_weight, None, None, None, None


def head_logp(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, *,
              ban_token: int | None = None, ban_positions: int = 0) -> Tensor:
    """log pi(target) [B, T] from final hidden states [B, T, H] and a bias-free head `weight` [V, H], at
    `temperature`, with `ban_token` at -inf on positions t < ban_positions (EOS before min_new_tokens,
    as the sampler draws): what log_softmax(lm_head(hidden) / T).gather(target) gives, without ever
    holding the [B, T, V] logits (for a 49k vocabulary, 100 MB per 4 x 128 positions, and as much
    again for each of their gradient's temporaries)."""
    num_rows, num_positions = targets.shape
    banned = (torch.arange(num_positions, device=targets.device) < ban_positions).repeat(num_rows)
    logp = _HeadLogp.apply(hidden.reshape(num_rows * num_positions, -1), weight, targets.reshape(-1),
                           banned, -1 if ban_token is None else ban_token, temperature)
    return logp.view(num_rows, num_positions)


def _mlp_forward(self, x: Tensor) -> Tensor:
    return _SwiGLU.apply(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)


def _norm_forward(self, x: Tensor) -> Tensor:
    return _RMSNorm.apply(x, self.weight, self.variance_epsilon)


def install_lean_layers(model) -> int:
    """Give every decoder layer's MLP and both norms (and the final norm) of a Llama-family fp32 model
    the lean forwards above; returns how many modules changed. Call it only on models that
    `fast_sampler.supports` (SiLU MLP without bias) and that run in fp32: the backward assumes both."""
    changed = 0
    body = model.model
    for layer in body.layers:
        layer.mlp.forward = types.MethodType(_mlp_forward, layer.mlp)
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.forward = types.MethodType(_norm_forward, norm)
        changed += 3
    body.norm.forward = types.MethodType(_norm_forward, body.norm)
    return changed + 1
