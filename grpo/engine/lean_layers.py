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
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor

from grpo.engine import gemm


def _rows(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs matmuls in here, or None without autocast."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def cast_to(t: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    """`t` in `dtype` (a copy each call); as it is for dtype None, and None for t None (a missing bias)."""
    return t if t is None or dtype is None else t.to(dtype)


# id(weight) -> (a weak reference to it, its version counter when cast, the cast copy); an entry goes
# when its weight does.
_CASTS: dict[int, tuple[weakref.ref, int, Tensor]] = {}


def cast_weight(weight: Tensor, dtype: torch.dtype | None) -> Tensor:
    """`weight` in `dtype`, cast once per value of the weight: the copy is reused until the weight
    changes in place (an optimizer step bumps its version counter). Autocast instead casts every
    weight again at each forward, i.e. per micro-batch: for SmolLM2, 538 MB read and 269 MB written."""
    if dtype is None or weight.dtype == dtype:
        return weight
    ref, version, copy = _CASTS.get(id(weight), (None, None, None))
    if ref is None or ref() is not weight:
        ref = weakref.ref(weight)
        weakref.finalize(weight, _CASTS.pop, id(weight), None)
    elif version == weight._version and copy.dtype == dtype:
        return copy
    with torch.inference_mode(False):      # made during a rollout, the copy still serves the learner
        copy = weight.detach().to(dtype)
    _CASTS[id(weight)] = (ref, weight._version, copy)
    return copy


def _wide(t: Tensor) -> Tensor:
    """`t` in at least fp32 (bf16/fp16 upcast; fp32 and fp64 as they are)."""
    return t.float() if t.element_size() < 4 else t


class _SwiGLU(torch.autograd.Function):
    """Under autocast the MLP runs in autocast's dtype, as the module's own forward does there (its
    matmuls cast, silu and the product follow their inputs): x and the weights are cast once in the
    forward and kept so for the backward; the gradients go back in the inputs' own dtypes."""

    @staticmethod
    def forward(ctx, x: Tensor, gate_weight: Tensor, up_weight: Tensor, down_weight: Tensor) -> Tensor:
        ctx.dtypes = x.dtype, gate_weight.dtype
        dtype = autocast_dtype(x.device)
        x = cast_to(x, dtype)
        gate_weight, up_weight, down_weight = (cast_weight(w, dtype) for w in (gate_weight, up_weight, down_weight))
        g, u = gemm.linear(x, gate_weight), gemm.linear(x, up_weight)
        ctx.save_for_backward(x, g, u, gate_weight, up_weight, down_weight)
        return gemm.linear(F.silu(g) * u, down_weight)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, g, u, gate_weight, up_weight, down_weight = ctx.saved_tensors
        x_dtype, weight_dtype = ctx.dtypes
        dy = dy.to(g.dtype)
        s = torch.sigmoid(g)
        silu = g * s
        dp = gemm.linear(dy, down_weight.t())                        # dy W_down [..., I]
        d_down = _rows(dy).t() @ _rows(silu * u)
        du = dp * silu
        dg = dp * u * s * (1 + g * (1 - s))
        dx = gemm.linear(dg, gate_weight.t()) + gemm.linear(du, up_weight.t())
        d_gate, d_up = _rows(dg).t() @ _rows(x), _rows(du).t() @ _rows(x)
        return dx.to(x_dtype), d_gate.to(weight_dtype), d_up.to(weight_dtype), d_down.to(weight_dtype)


class _CastLinear(torch.autograd.Function):
    """x W^T under autocast, as nn.Linear (no bias) runs there, with W cast once per weight update
    (`cast_weight`) instead of at every forward; W's gradient goes back in W's dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, dtype: torch.dtype) -> Tensor:
        ctx.dtypes = x.dtype, weight.dtype
        x, weight = x.to(dtype), cast_weight(weight, dtype)
        ctx.save_for_backward(x, weight)
        return x @ weight.t()

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight = ctx.saved_tensors
        x_dtype, weight_dtype = ctx.dtypes
        dy = dy.to(x.dtype)
        return (dy @ weight).to(x_dtype), (_rows(dy).t() @ _rows(x)).to(weight_dtype), None


class _RMSNorm(torch.autograd.Function):
    """Statistics in fp32 and the weight applied in the input's dtype, as the models' own RMSNorm
    (a bf16 input, e.g. the bf16 reference's, is normalised in fp32); the backward runs in fp32."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        x32 = _wide(x)
        r = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, r, weight)
        return weight * (x32 * r).to(x.dtype)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, r, weight = ctx.saved_tensors
        h = _wide(x) * r
        dy = _wide(dy)
        dh = dy * _wide(weight)
        dx = r * (dh - h * (dh * h).mean(-1, keepdim=True))
        return dx.to(x.dtype), _rows(dy * h).sum(0).to(weight.dtype), None


# Positions per chunk of the lean head: SmolLM2's 49k-token head makes a chunk's logits 50 MB.
HEAD_CHUNK = 256


def _chunk_logits(raw: Tensor, temperature: float, banned: Tensor, ban_token: int) -> Tensor:
    """Tempered logits [n, V] (at least fp32) of a chunk of positions from their matmul h W^T, with
    `ban_token` at -inf on the `banned` rows."""
    logits = _wide(raw) / temperature
    if ban_token >= 0:
        logits[banned, ban_token] = float("-inf")
    return logits


class _HeadLogp(torch.autograd.Function):
    """log softmax(h W^T / T)[target] per position, HEAD_CHUNK positions at a time; keeps h and the
    logsumexp, and recomputes each chunk's logits in the backward:
        d logp / d logits = (onehot(target) - softmax) / T,  dh = d_logits W,  dW = d_logits^T h.
    Under autocast the matmuls run in its dtype (h and W cast once, kept so for the backward), the
    softmax and the log-probs in fp32, as the plain path's `.float()` logits. There the chunks' bf16
    h W^T are kept instead of recomputed (half the size of fp32 logits: SmolLM2, 50 MB for 4 x 128
    positions) and dW is one matmul over all positions, added to W's fp32 gradient once."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, banned: Tensor, ban_token: int,
                temperature: float) -> Tensor:
        ctx.dtypes = hidden.dtype, weight.dtype
        dtype = autocast_dtype(hidden.device)
        hidden, weight = cast_to(hidden, dtype), cast_weight(weight, dtype)
        wide = torch.promote_types(hidden.dtype, torch.float32)
        logp, lse = torch.empty_like(targets, dtype=wide), torch.empty_like(targets, dtype=wide)
        low = hidden.element_size() < 4 and any(ctx.needs_input_grad[:2])
        raws = hidden.new_empty(len(targets), weight.shape[0]) if low else None
        for start in range(0, len(targets), HEAD_CHUNK):
            rows = slice(start, start + HEAD_CHUNK)
            raw = gemm.linear(hidden[rows], weight)
            if low:
                raws[rows] = raw
            logits = _chunk_logits(raw, temperature, banned[rows], ban_token)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            logp[rows] = logits.gather(-1, targets[rows, None])[:, 0] - lse[rows]
        ctx.save_for_backward(hidden, weight, targets, banned, lse, raws)
        ctx.ban_token, ctx.temperature = ban_token, temperature
        return logp

    @staticmethod
    def backward(ctx, grad: Tensor):
        hidden, weight, targets, banned, lse, raws = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        grad = _wide(grad)
        grad_hidden = torch.empty_like(hidden)
        # fp32: dW accumulates chunk by chunk; bf16: the chunks' d_logits are kept for one matmul.
        d_all = None if raws is None else torch.empty_like(raws)
        grad_weight = torch.zeros(weight.shape, dtype=weight_dtype, device=weight.device) if raws is None else None
        for start in range(0, len(targets), HEAD_CHUNK):
            rows = slice(start, start + HEAD_CHUNK)
            raw = gemm.linear(hidden[rows], weight) if raws is None else raws[rows]
            logits = _chunk_logits(raw, ctx.temperature, banned[rows], ctx.ban_token)
            d_logits = torch.exp(logits.sub_(lse[rows, None])).mul_(-grad[rows, None])       # -g softmax
            d_logits.scatter_add_(-1, targets[rows, None], grad[rows, None]).div_(ctx.temperature)
            d_logits = d_logits.to(hidden.dtype)
            grad_hidden[rows] = d_logits @ weight           # a 49k-long reduction: faster in torch.mm than oneDNN
            if d_all is None:
                grad_weight.addmm_(d_logits.t(), hidden[rows])
            else:
                d_all[rows] = d_logits
        if d_all is not None:
            grad_weight = (d_all.t() @ hidden).to(weight_dtype)
        return grad_hidden.to(hidden_dtype), grad_weight, None, None, None, None


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


def _linear_forward(self, x: Tensor) -> Tensor:
    dtype = autocast_dtype(x.device)
    return gemm.linear_forward(self, x) if dtype is None else _CastLinear.apply(x, self.weight, dtype)


def _norm_forward(self, x: Tensor) -> Tensor:
    return _RMSNorm.apply(x, self.weight, self.variance_epsilon)


def install_lean_layers(model) -> int:
    """Give every decoder layer's MLP and both norms (and the final norm) of a Llama-family model the
    lean forwards above, and its bias-free attention projections the cast-once linear; returns how
    many modules changed. Call it only on models that `fast_sampler.supports` (SiLU MLP without bias):
    the backward assumes it. They run in fp32, or under autocast in its dtype as the modules they
    replace do."""
    changed = 0
    body = model.model
    for layer in body.layers:
        layer.mlp.forward = types.MethodType(_mlp_forward, layer.mlp)
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.forward = types.MethodType(_norm_forward, norm)
        changed += 3
        attn = layer.self_attn
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
            if linear.bias is None:
                linear.forward = types.MethodType(_linear_forward, linear)
                changed += 1
    body.norm.forward = types.MethodType(_norm_forward, body.norm)
    return changed + 1
