"""fp32 matmuls of linear layers on the CPU through oneDNN instead of the BLAS behind torch.mm.

torch's CPU wheel sends an fp32 `F.linear` / `torch.mm` to MKL's sgemm; its oneDNN build (the one
inductor uses) has a linear op of its own, `mkldnn::_linear_pointwise`, that takes the weight either
as it is or packed once into oneDNN's blocked layout. On the 2-core AMD EPYC this project is timed
on (torch 2.13.0+cpu, 2 threads), x W^T for the steps' shapes (one run each, best of 5):
    learner, 2496 rows:  K 512 -> N 1536  23.3 -> 17.4 ms;  K 2048 -> N 512  33.0 -> 26.0 ms;
                         K 128 -> N 384    3.4 ->  2.4 ms;  K 512 -> N 128    2.2 ->  1.7 ms;
    decode, 64 rows, W2's 8 layers' weights in turn (not in cache): 44-70 -> 22 ms a token.
The gradient of the input, dy W, gains too when it is asked as dy (W^T)^T (K 512 -> N 1536: 33 -> 20 ms);
the weight's, dy^T x, is slower there (the long reduction), so it stays with torch.mm.

Everything falls back to torch's own ops where oneDNN's op is missing (a build without it), the tensor
is not an fp32 CPU tensor, autocast is on, or `GRPO_ONEDNN=0` is set.
"""

from __future__ import annotations

import functools
import os
import types

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.cache
def available() -> bool:
    """Whether oneDNN's linear op exists here and agrees with F.linear (checked once, on a small case)."""
    if os.environ.get("GRPO_ONEDNN", "1") == "0" or not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        x, weight = torch.randn(3, 8, generator=generator), torch.randn(5, 8, generator=generator)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        return all(torch.allclose(torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""), x @ weight.t(),
                                  atol=1e-5) for w in (weight, packed))
    except (AttributeError, RuntimeError):
        return False


def applies(t: Tensor) -> bool:
    """Whether matmuls on `t` (an input or weight) go through oneDNN: fp32 on the CPU, outside autocast
    (under it, F.linear casts to autocast's dtype)."""
    return (t.dtype == torch.float32 and t.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
            and available())


# Weights below this many elements (1 MB in fp32) stay with torch's matmuls: for the 1M-parameter model
# (weights of 16k-131k elements) oneDNN's per-call cost ate its gain. With oneDNN on every layer, the
# demo's steps (`TrainConfig` defaults, 8 prompts, 2 threads) ran 18% slower (median of 16 steps, each
# run from the same state both ways); W1's fixed-shape steps 2-6% faster. The 33.6M model on the same
# config (weights of 262k-2.1M elements): 20% faster (8 steps so paired; rollout 3.30 -> 1.93 s).
MIN_WEIGHT_ELEMENTS = 1 << 18


def worth(weight: Tensor) -> bool:
    """Whether a linear layer with this weight [N, K] runs through oneDNN. Callers ask it before `applies(x)`:
    for a small model's weights the size alone says no, and the decode loop asks at every matmul."""
    return weight.numel() >= MIN_WEIGHT_ELEMENTS and applies(weight)


def pack(weight: Tensor) -> Tensor:
    """`weight` [N, K] in oneDNN's blocked layout, for many `linear` calls before it changes (a rollout's
    tokens); as it is where oneDNN is not used. The packed copy is opaque: only `linear` reads it."""
    if not worth(weight):
        return weight
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def bucket(rows: int) -> int:
    """`rows` rounded up to one of a few sizes: oneDNN builds a kernel for each new shape (~2 ms for
    2.4k x 128 x 512, as long as the matmul itself), and a learner's row count (sequences x their longest
    completion) changes from step to step. Up to 128 rows (a decode batch) stay as they are; above, a
    multiple of 1/16 to 1/8 of the size (2496 -> 2560): at most 8 sizes an octave, at most 1/8 more rows."""
    if rows <= 128:
        return rows
    step = 1 << (rows.bit_length() - 4)
    return -(-rows // step) * step


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """oneDNN's x W^T + b, on x's rows padded with zeros to `bucket` rows (the padding's outputs dropped)."""
    rows = x.reshape(-1, x.shape[-1])
    count = rows.shape[0]
    padded = bucket(count)
    if padded != count:
        rows = F.pad(rows, (0, 0, 0, padded - count))
    y = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")[:count]
    return y.view(*x.shape[:-1], y.shape[-1])


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x W^T + b for x [..., K] and W [N, K] (packed or not), through oneDNN where it applies. No autograd:
    for inference (the rollout, the reference); the learner's linear layers use `OneDnnLinear` below."""
    if weight.layout == torch._mkldnn or (worth(weight) and applies(x)):
        return _onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class OneDnnLinear(torch.autograd.Function):
    """x W^T (+ b) with its gradients: y and dx = dy W through oneDNN, dW = dy^T x and db through torch."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight = ctx.saved_tensors
        dy = dy.contiguous()
        dx = _onednn_linear(dy, weight.t(), None) if ctx.needs_input_grad[0] else None
        rows = dy.reshape(-1, dy.shape[-1])
        d_weight = rows.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        d_bias = rows.sum(0) if ctx.needs_input_grad[2] else None
        return dx, d_weight, d_bias


def linear_forward(self, x: Tensor) -> Tensor:
    """An nn.Linear's forward through oneDNN where it applies, differentiable (`OneDnnLinear`) when a
    gradient is wanted; torch's F.linear elsewhere."""
    if not (worth(self.weight) and applies(x)):
        return F.linear(x, self.weight, self.bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, self.weight, self.bias)):
        return OneDnnLinear.apply(x, self.weight, self.bias)
    return _onednn_linear(x, self.weight, self.bias)


def install(model) -> int:
    """Give every nn.Linear of `model` whose forward is still nn.Linear's own `linear_forward`; returns
    how many changed. A deepcopy of the model (the reference) keeps them, bound to its own modules; its
    state_dict is unchanged, but the model itself no longer pickles whole (`torch.save(model)`)."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and "forward" not in vars(module):
            module.forward = types.MethodType(linear_forward, module)
            changed += 1
    return changed
