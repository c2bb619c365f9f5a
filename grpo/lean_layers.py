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
