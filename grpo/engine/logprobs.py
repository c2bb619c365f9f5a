"""Per-token log-probs of completions under a causal LM, with the causal shift done right.

The logits at position t score the token at t + 1, so completion token j (at sequence position
L + j) is scored by the logits at L + j - 1: the last prompt position scores the first completion
token, and the last position's logits score nothing. (The seed gathered without this shift.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from grpo.engine.lean_layers import head_logp
from grpo.engine.sampler import cache_argument, prompt_positions, shared_prefill


def sequence_inputs(prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(input_ids, attention_mask, position_ids) [B, L + T] for prompt + completion.

    Padding after EOS keeps attention 1: it sits after every real token, so under the causal mask it
    can change nothing that is scored, and its own positions are masked out of the loss.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask.long(), torch.ones_like(completion_ids)], dim=1)
    return input_ids, attention_mask, prompt_positions(attention_mask)


def shares_prefixes(model) -> bool:
    """Whether a forward may run a group's shared prompt once (it needs the KV cache, which gradient
    checkpointing turns off)."""
    name = "is_activation_checkpointing"        # transformers >= 5.2x; the old name warns there
    return not getattr(model, name if hasattr(type(model), name) else "is_gradient_checkpointing", False)


# A group's prompt runs once (in a forward of its own) only where that saves at least this share of the
# positions a plain forward runs: below it, the extra calls (a prefill per distinct prompt, the cache copy)
# cost more than the saved positions. See `worth_sharing`.
SHARE_MIN_SAVING = 0.25


def worth_sharing(rollout, group_size: int) -> bool:
    """Whether `completion_logits` should run each group's prompt once: the share of positions saved,
    (G - 1) / G x L / (L + T) for prompts padded to L and completions of T, is at least SHARE_MIN_SAVING.
    A function of the step's shapes alone, never of which rows share a micro-batch, so every
    micro-batch of a step takes the same path."""
    prompt_width, completion_width = rollout.prompt_ids.shape[1], rollout.completion_ids.shape[1]
    saved = (group_size - 1) / group_size * prompt_width / (prompt_width + completion_width)
    return saved >= SHARE_MIN_SAVING


def completion_logits(model, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                      share_prompts: bool = True, states: bool = False) -> Tensor:
    """The logits [B, T, V] that score each completion token: those of positions L-1 .. L+T-2.
    states=True: the final hidden states [B, T, H] of those positions instead (the model's body alone
    runs; its logits are lm_head of them, for the Llama-family models `lean_layers.head_logp` serves).

    The prompts run first, each distinct prompt once (`shared_prefill`: a group's G completions share
    one), and the completions run on top of the copied KV cache: the values of one forward
    over every full row, to float rounding, and its gradients (the copies' gradients add up in the shared
    prefix), for G times less prompt work. The last completion token is never fed in: its logits score nothing.
    """
    num_rows, num_completion = completion_ids.shape
    net = model.model if states else model

    def output(out) -> Tensor:
        return out.last_hidden_state if states else out.logits

    # In two parts, each prompt in a forward of its own: the same computation whichever rows share a
    # micro-batch, so micro-batching changes no log-prob (token selections such as kl_cov's depend on that).
    # share_prompts=False (the trainer asks `worth_sharing`) runs one plain forward over every full row.
    if share_prompts and shares_prefixes(model):
        first, cache = shared_prefill(model, prompt_ids, prompt_mask, one_at_a_time=True, states=states)
        if num_completion == 1:
            return first[:, None]
        attention_mask = torch.cat([prompt_mask.long(), prompt_mask.new_ones(num_rows, num_completion - 1)], 1)
        position_ids = prompt_positions(attention_mask)[:, prompt_ids.shape[1]:]
        rest = output(net(input_ids=completion_ids[:, :-1], attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=True, **{cache_argument(net): cache}))
        return torch.cat([first[:, None], rest], dim=1)
    input_ids, attention_mask, position_ids = sequence_inputs(prompt_ids, prompt_mask, completion_ids)
    # The last T + 1 positions without the final one: positions L-1 .. L+T-2 (the head runs on those alone).
    # No KV cache: nothing decodes after this forward.
    keep = {} if states else {"logits_to_keep": num_completion + 1}
    out = net(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **keep)
    return output(out)[:, -num_completion - 1:-1]


def completion_logp(model, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                    temperature: float, *, eos_token_id: int | None = None, min_new_tokens: int = 0,
                    with_entropy: bool = False, share_prompts: bool = True,
                    lean_head: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """log pi(completion token j | prompt, tokens < j) [B, T], in fp32, under the distribution the
    sampler drew from: at the sampling temperature, with EOS banned at positions j < min_new_tokens
    (exactly as `sampler.TokenStream` bans it), so the ratio compares like with like.

    with_entropy: also the entropy of that distribution at each position [B, T], differentiable (it
    materialises a [B, T, V] log-softmax, so it is only computed when asked for).
    lean_head (Llama-family models, without entropy): the head and the log-softmax run a chunk of
    positions at a time and never hold the [B, T, V] logits (`lean_layers.head_logp`).
    """
    if lean_head and not with_entropy:
        hidden = completion_logits(model, prompt_ids, prompt_mask, completion_ids, share_prompts, states=True)
        return head_logp(hidden, model.lm_head.weight, completion_ids, temperature,
                         ban_token=eos_token_id if min_new_tokens > 0 else None, ban_positions=min_new_tokens)
    logits = completion_logits(model, prompt_ids, prompt_mask, completion_ids, share_prompts).float()
    if temperature != 1.0:
        logits = logits / temperature
    if min_new_tokens > 0:     # out of place: the logits may be the model's output, needed by autograd
        banned = torch.zeros(logits.shape[1:], dtype=torch.bool, device=logits.device)
        banned[:min_new_tokens, eos_token_id] = True
        logits = logits.masked_fill(banned, float("-inf"))
    # gather - logsumexp avoids materialising a second [B, T, V] log-softmax tensor.
    chosen = logits.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    logp = chosen - torch.logsumexp(logits, dim=-1)
    if not with_entropy:
        return logp
    log_probs = torch.log_softmax(logits, dim=-1)
    # -sum p log p, with 0 log 0 = 0 where a token is banned (p = 0, log p = -inf).
    entropy = -(log_probs.exp() * log_probs.masked_fill(torch.isinf(log_probs), 0.0)).sum(-1)
    return logp, entropy
