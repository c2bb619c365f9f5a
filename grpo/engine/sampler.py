"""Batched, KV-cached sampling of G completions per prompt, and the interface every sampler implements.

A sampler is a class registered under its --sampler name (grpo/setup/sampler_registry.py):

    @register_sampler("mine")
    class MySampler(Sampler):
        def generate_from(self, model, prompt_ids, prompt_mask, *, max_new_tokens, temperature, generator,
                          eos_token_id, pad_token_id, min_new_tokens=0, greedy=False) -> Rollout: ...

in a file of its own, imported before the config is built (a built-in one, in grpo/, is also declared in
sampler_registry.BUILTIN_SAMPLERS and imported by grpo/algorithm/step.py). `step.make_sampler` builds it as
`cls(cfg)` with the run's TrainConfig. What it implements:
- The weights it draws from. `sync_weights(policy)` gives it the weights of the run's state to draw from
  (`TrainState.sampler_policy`: the learner itself, or the state's own copy: bf16 with --rollout-dtype,
  lagging with --staleness): once when the run is built, after every optimizer step
  (`update.optimizer_step`), and before a rollout when that copy was rewritten in place or another state
  steps on the same sampler (`collect.generate`). The in-process samplers here keep a reference to the
  module (no copy, no cost); a sampler in another process or on other hardware would copy the weights.
- `generate(prompt_ids, prompt_mask, *, max_new_tokens, temperature, generator, eos_token_id,
  pad_token_id, min_new_tokens) -> Rollout`: one completion per row (prompts repeated G times for a group)
  from the synced weights. Rollout.logp must hold the sampler's own log-prob of each drawn token under the
  distribution it drew from: temperature applied, EOS banned before min_new_tokens, 0 on padding. The
  step reads them as the sampler's (pi_old's when the sampler is the learner: on-policy token selections,
  the KL-in-reward penalty, the stored rollouts; the off-policy corrections against the learner's pi_old
  otherwise); `logprobs.completion_logp` applies the same processing, so the ratio compares like with like.
  Draw the tokens through `TokenStream`, which owns that processing and takes one uniform per row and
  position from `generator` (the random stream then does not depend on when rows end).
- `generate_from(model, ...)` decodes with an explicit model (greedy: argmax tokens, log-probs still
  tempered). `Sampler.generate` is `generate_from(synced model)`; evaluation calls `generate_from` with the
  learner itself, so it scores the learner's current weights even when a sampler's synced ones lag.

`KVCacheSampler` ("hf") implements it on a `transformers` causal LM; fast_sampler.StaticCacheSampler
("static") is a lean loop for Llama-family models. Both run under `torch.inference_mode()`: rollouts never
build an autograd graph.

Completion mask convention: 1 for every generated token up to and including the first EOS; 0 for
the padding written after it. A row without EOS after max_new_tokens is `truncated`.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache

from grpo import GrpoError
from grpo.setup.sampler_registry import register_sampler


@dataclass
class Rollout:
    prompt_ids: Tensor        # [N, L] left-padded prompt token ids
    prompt_mask: Tensor       # [N, L] 1 for prompt tokens, 0 for left padding
    completion_ids: Tensor    # [N, T] sampled ids, pad after EOS
    completion_mask: Tensor   # [N, T] float, 1 up to and including the first EOS
    truncated: Tensor         # [N] bool, no EOS within max_new_tokens
    entropy: Tensor           # [N, T] entropy of the sampling distribution at each position
    logp: Tensor              # [N, T] log-prob of each drawn token under the sampling distribution (0 on padding)


class Sampler:
    """The base of every registered sampler (the module docstring says what one implements). This one
    draws from the module it was last synced to, by reference."""

    name: str    # the --sampler name, set by @register_sampler

    def __init__(self, cfg=None) -> None:
        self.model = None

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Draw from `policy`'s weights from now on (called at build and after every optimizer step)."""
        self.model = policy

    def generate(self, prompt_ids: Tensor, prompt_mask: Tensor, *, max_new_tokens: int, temperature: float,
                 generator: torch.Generator | None, eos_token_id: int, pad_token_id: int,
                 min_new_tokens: int = 0) -> Rollout:
        """Sample one completion per row of prompt_ids from the synced weights."""
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}.generate before sync_weights: it has no weights to draw from")
        return self.generate_from(self.model, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens,
                                  temperature=temperature, generator=generator, eos_token_id=eos_token_id,
                                  pad_token_id=pad_token_id, min_new_tokens=min_new_tokens)

    def generate_from(self, model, prompt_ids: Tensor, prompt_mask: Tensor, *, max_new_tokens: int,
                      temperature: float, generator: torch.Generator | None, eos_token_id: int,
                      pad_token_id: int, min_new_tokens: int = 0, greedy: bool = False) -> Rollout:
        """Sample (or with greedy, pick) one completion per row of prompt_ids from `model`."""
        raise NotImplementedError


def prompt_positions(prompt_mask: Tensor) -> Tensor:
    """Position ids [N, L] that start at 0 on each row's first real token (left padding gets 0)."""
    return (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)


def cache_argument(model) -> str:
    """The keyword the model's forward takes its KV cache under: `cache` from transformers 5.24 on,
    `past_key_values` before. A wrong name would vanish into **kwargs and leave the cache empty."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def prefill(model, prompt_ids: Tensor, prompt_mask: Tensor, positions: Tensor,
            states: bool = False) -> tuple[Tensor, DynamicCache]:
    """Run the prompt through the model once: (last-position logits [N, V], the filled KV cache).
    states=True: the last position's final hidden state [N, H] instead of its logits (the model's body
    alone runs, for a head applied outside it).

    Raises GrpoError when the cache does not hold the prompt afterwards: decoding from it would
    silently attend to nothing, and on-policy training would hide it (the ratio is still 1).
    """
    cache = DynamicCache()
    net = model.model if states else model
    out = net(input_ids=prompt_ids, attention_mask=prompt_mask.long(), position_ids=positions, use_cache=True,
              **({} if states else {"logits_to_keep": 1}), **{cache_argument(net): cache})
    last = (out.last_hidden_state if states else out.logits)[:, -1]
    if cache.get_seq_length() != prompt_ids.shape[1]:
        raise GrpoError(f"the KV cache holds {cache.get_seq_length()} positions after a prefill of "
                        f"{prompt_ids.shape[1]}: this transformers version ignores the cache argument "
                        f"{cache_argument(net)!r} of {type(net).__name__}")
    return last, cache


def shared_prefill(model, prompt_ids: Tensor, prompt_mask: Tensor, one_at_a_time: bool = False,
                   states: bool = False) -> tuple[Tensor, DynamicCache]:
    """`prefill`, running each distinct prompt row once: a group's G copies of a prompt share one prefill,
    whose cache rows are then copied out to every row (differentiably, when gradients are on: the shared
    rows' gradients add up, as if each copy had run). Same logits and cache as `prefill` on all rows,
    to float rounding, at 1/G of its cost.

    one_at_a_time: each distinct prompt in a forward of its own, so its values do not depend on which
    other prompts share the batch (a matmul's last bit can depend on its row count): micro-batches of
    any composition then give the same log-probs, bit for bit. states: as in `prefill`."""
    keyed = torch.cat([prompt_ids, prompt_mask.long()], dim=1)
    distinct, inverse = torch.unique(keyed, dim=0, return_inverse=True)
    if distinct.shape[0] == keyed.shape[0] and not one_at_a_time:
        return prefill(model, prompt_ids, prompt_mask, prompt_positions(prompt_mask), states)
    width = prompt_ids.shape[1]
    ids, mask = distinct[:, :width], distinct[:, width:]
    if not one_at_a_time:
        logits, cache = prefill(model, ids, mask, prompt_positions(mask), states)
    else:
        parts = [prefill(model, ids[i:i + 1], mask[i:i + 1], prompt_positions(mask[i:i + 1]), states)
                 for i in range(len(ids))]
        logits, cache = torch.cat([p[0] for p in parts]), parts[0][1]
        for layer, *others in zip(cache.layers, *(p[1].layers for p in parts[1:])):
            layer.keys = torch.cat([layer.keys] + [o.keys for o in others])
            layer.values = torch.cat([layer.values] + [o.values for o in others])
    cache.batch_select_indices(inverse)
    return logits[inverse], cache


# Vocabulary entries per block of the two-level inverse CDF (`inverse_cdf_draw`).
CDF_BLOCK = 256


def inverse_cdf_draw(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row [N] drawn from `probs` [N, V]: the first index whose cumulative probability
    exceeds a uniform draw scaled to the row's total. One uniform per row instead of torch.multinomial's
    one exponential per vocabulary entry (19 ms vs 0.5 ms a token for 16 rows of a 49k vocabulary on 2
    cores). In float64, so a token of probability ~1e-8 keeps its share (a float32 sum would round it
    away). A token of probability 0 is never drawn: its cumulative value equals its predecessor's.

    In two levels, the same draw without a cumsum over the whole vocabulary (8 ms of a 49k one for
    16 rows): the sums of blocks of CDF_BLOCK entries find the block, a cumsum inside it the token.
    Where the two sums round apart and the draw lands past the block's last token with any
    probability (u within ~1e-16 of a block's end), the draw is made again from the full cumsum."""
    rows, vocab = probs.shape
    blocks = -(-vocab // CDF_BLOCK)
    padded = F.pad(probs, (0, blocks * CDF_BLOCK - vocab)) if vocab % CDF_BLOCK else probs
    padded = padded.view(rows, blocks, CDF_BLOCK)
    block_cdf = padded.sum(-1, dtype=torch.float64).cumsum(-1)                     # [N, blocks]
    if not bool(torch.isfinite(block_cdf[:, -1]).all()):
        raise GrpoError("non-finite sampling probabilities: the policy's logits hold NaN or inf")
    u = torch.rand(rows, 1, generator=generator, device=probs.device, dtype=torch.float64) * block_cdf[:, -1:]
    block = torch.searchsorted(block_cdf, u, right=True).clamp(max=blocks - 1)    # [N, 1]
    before = torch.where(block > 0, block_cdf.gather(-1, (block - 1).clamp(min=0)), 0.0)
    inside = padded.gather(1, block[..., None].expand(rows, 1, CDF_BLOCK))[:, 0].double().cumsum(-1) + before
    token = (block * CDF_BLOCK + torch.searchsorted(inside, u, right=True)).clamp(max=vocab - 1)
    if bool((probs.gather(-1, token) > 0).all()):
        return token.squeeze(-1)
    return full_inverse_cdf(probs, u)


def full_inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """`inverse_cdf_draw` for given uniforms u [N, 1] (already scaled to each row's total), from the
    cumsum over the whole vocabulary."""
    cdf = probs.double().cumsum(-1)
    token = torch.searchsorted(cdf, u, right=True).clamp(max=probs.shape[-1] - 1)
    # u can round up to the total (p ~ 1e-7): then take the last token that has any probability.
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(-1, keepdim=True)
    return torch.where(probs.gather(-1, token) > 0, token, last).squeeze(-1)


def sample_next(logits: Tensor, temperature: float, generator: torch.Generator | None,
                greedy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(next token ids [N], entropy [N], log-prob of the chosen ids [N]) from last-position logits
    [N, V] at the given temperature. Greedy picks the argmax; its log-prob is still the tempered one.
    Five passes over [N, V] (log-softmax, exp, the entropy's product and sum, the draw's block sums):
    this runs at every decoded token."""
    scaled = logits.float()
    if temperature != 1.0:
        scaled = scaled / temperature
    log_probs = torch.log_softmax(scaled, dim=-1)
    probs = log_probs.exp()
    # -sum p log p, with 0 log 0 = 0 for banned tokens (log p = -inf clamped to a finite number; NaN stays).
    entropy = -(probs * log_probs.clamp(min=torch.finfo(log_probs.dtype).min)).sum(-1)
    token = logits.argmax(-1) if greedy else inverse_cdf_draw(probs, generator)
    logp = log_probs.gather(-1, token[:, None]).squeeze(-1)
    return token, entropy, logp


@register_sampler("hf")
class KVCacheSampler(Sampler):
    """Token-by-token decoding with the model's own KV cache, stopping when every row hit EOS."""

    @torch.inference_mode()
    def generate_from(self, model, prompt_ids: Tensor, prompt_mask: Tensor, *, max_new_tokens: int,
                      temperature: float, generator: torch.Generator | None, eos_token_id: int,
                      pad_token_id: int, min_new_tokens: int = 0, greedy: bool = False) -> Rollout:
        num_rows, device = prompt_ids.shape[0], prompt_ids.device
        attention = prompt_mask.long()
        positions = prompt_positions(prompt_mask)
        logits, cache = shared_prefill(model, prompt_ids, prompt_mask)
        cache_kwarg = {cache_argument(model): cache}
        next_position = positions[:, -1:] + 1
        stream = TokenStream(num_rows, device, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                             temperature=temperature, generator=generator, greedy=greedy,
                             eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        while True:
            token, done = stream.push(logits)
            if done:
                return stream.rollout(prompt_ids, prompt_mask)
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            logits = model(input_ids=token[:, None], attention_mask=attention, position_ids=next_position,
                           use_cache=True, **cache_kwarg).logits[:, -1]
            next_position = next_position + 1


class TokenStream:
    """What every sampler does with each new position's logits: forbid EOS before min_new_tokens,
    sample, write padding (log-prob 0, entropy 0) after a row's EOS, and say when all rows are done.
    A row's logits after its EOS are never read (a sampler may pass anything there), but every row
    still takes its uniform draw, so the random stream does not depend on when rows end."""

    def __init__(self, num_rows: int, device, *, max_new_tokens: int, min_new_tokens: int, temperature: float,
                 generator: torch.Generator | None, greedy: bool, eos_token_id: int, pad_token_id: int) -> None:
        self.max_new_tokens, self.min_new_tokens = max_new_tokens, min_new_tokens
        self.temperature, self.generator, self.greedy = temperature, generator, greedy
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.tokens: list[Tensor] = []
        self.entropies: list[Tensor] = []
        self.logps: list[Tensor] = []
        self.finished = torch.zeros(num_rows, dtype=torch.bool, device=device)

    def push(self, logits: Tensor) -> tuple[Tensor, bool]:
        """Sample the next token of every row from logits [N, V]; (tokens [N], whether to stop)."""
        if len(self.tokens) < self.min_new_tokens:
            logits[:, self.eos_token_id] = float("-inf")
        token, entropy, logp = sample_next(logits, self.temperature, self.generator, self.greedy)
        token = torch.where(self.finished, torch.full_like(token, self.pad_token_id), token)
        self.tokens.append(token)
        self.entropies.append(torch.where(self.finished, torch.zeros_like(entropy), entropy))
        self.logps.append(torch.where(self.finished, torch.zeros_like(logp), logp))
        self.finished = self.finished | (token == self.eos_token_id)
        return token, len(self.tokens) == self.max_new_tokens or bool(self.finished.all())

    def rollout(self, prompt_ids: Tensor, prompt_mask: Tensor) -> Rollout:
        completion_ids = torch.stack(self.tokens, dim=1)
        return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask(completion_ids, self.eos_token_id),
                       truncated=~self.finished, entropy=torch.stack(self.entropies, dim=1),
                       logp=torch.stack(self.logps, dim=1))


def select_rows(rollout: Rollout, rows) -> Rollout:
    """The rollout of the given rows (an index tensor, list or slice)."""
    return Rollout(*(getattr(rollout, f.name)[rows] for f in dataclasses.fields(Rollout)))


def concat_rollouts(rollouts: list[Rollout], pad_token_id: int) -> Rollout:
    """One rollout from several (rows stacked in order): prompts left-padded, completions right-padded to
    the widest; padding is masked (prompt mask 0, completion mask 0, entropy and log-prob 0)."""
    prompt_len = max(r.prompt_ids.shape[1] for r in rollouts)
    completion_len = max(r.completion_ids.shape[1] for r in rollouts)

    def pad(x: Tensor, width: int, value, left: bool) -> Tensor:
        extra = width - x.shape[1]
        return F.pad(x, (extra, 0) if left else (0, extra), value=value)

    return Rollout(
        prompt_ids=torch.cat([pad(r.prompt_ids, prompt_len, pad_token_id, True) for r in rollouts]),
        prompt_mask=torch.cat([pad(r.prompt_mask, prompt_len, 0, True) for r in rollouts]),
        completion_ids=torch.cat([pad(r.completion_ids, completion_len, pad_token_id, False) for r in rollouts]),
        completion_mask=torch.cat([pad(r.completion_mask, completion_len, 0.0, False) for r in rollouts]),
        truncated=torch.cat([r.truncated for r in rollouts]),
        entropy=torch.cat([pad(r.entropy, completion_len, 0.0, False) for r in rollouts]),
        logp=torch.cat([pad(r.logp, completion_len, 0.0, False) for r in rollouts]))


def completion_mask(completion_ids: Tensor, eos_token_id: int) -> Tensor:
    """Float mask [N, T]: 1 up to and including the first EOS of each row, 0 after it."""
    is_eos = (completion_ids == eos_token_id).long()
    eos_before = is_eos.cumsum(-1) - is_eos          # EOS tokens strictly before each position
    return (eos_before == 0).float()


def encode_prompts(tokenizer, prompts: list[str], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """(prompt_ids, prompt_mask) [N, L], left-padded; the prompt text carries its own `<bos>`."""
    enc = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def decode_completions(tokenizer, completion_ids: Tensor, completion_mask: Tensor) -> list[str]:
    """Completion texts up to (not including) EOS, special tags kept (rewards parse them)."""
    rows = []
    for ids, length in zip(completion_ids.tolist(), completion_mask.sum(-1).long().tolist()):
        ids = ids[:length]
        rows.append(ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids)
    return tokenizer.batch_decode(rows, skip_special_tokens=False)
