"""Tests for grpo/engine/logprobs.py (the causal shift, padding) and grpo/engine/sampler.py (masks, KV-cached decoding).

The reference implementations here run the model on each row's unpadded prefix alone, without a
cache, so they share nothing with the batched, left-padded, cached code under test.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import settings
from grpo import GrpoError
from grpo.engine.fast_sampler import StaticCacheSampler
from grpo.engine.logprobs import completion_logp
from grpo.engine.models import build_model
from grpo.engine.sampler import KVCacheSampler, completion_mask, inverse_cdf_draw, sample_next
from grpo.formulas.losses import policy_loss

VOCAB = 21
PAD, EOS = 0, 2


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", VOCAB, seed=0).eval()


def left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) [N, L] with each row right-aligned, pad id 0 on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


# Prompts of lengths 3, 7 and 5 (arithmetic ids: <bos>=1, digits 8-17, '+'=18, '='=19).
PROMPTS = [[1, 9, 19], [1, 9, 10, 18, 11, 12, 19], [1, 17, 18, 8, 19]]
# Completions of T = 5; row 1 ends at EOS (id 2) in position 2, rows 0 and 2 have no EOS.
COMPLETIONS = [[4, 12, 13, 5, 6], [4, 14, EOS, 7, 7], [15, 16, 20, 9, 3]]


@torch.no_grad()
def reference_logp(model, prompts, completions, temperature: float, shift: int = 1) -> torch.Tensor:
    """log pi(c_j | prompt, c_<j) by running the model on the unpadded prefix alone.

    shift=1 is the right causal shift (the last logits of the prefix score the next token); shift=0
    scores c_j with the logits at its own position, the seed's off-by-one.
    """
    out = torch.zeros(len(prompts), len(completions[0]))
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        for j, token in enumerate(completion):
            prefix = torch.tensor([prompt + completion[:j + 1 - shift]])
            logits = model(input_ids=prefix).logits[0, -1].float() / temperature
            out[i, j] = torch.log_softmax(logits, -1)[token]
    return out


def test_completion_logp_matches_unpadded_prefix_forward(model):
    prompt_ids, prompt_mask = left_pad(PROMPTS)
    completion_ids = torch.tensor(COMPLETIONS)
    with torch.no_grad():
        logp = completion_logp(model, prompt_ids, prompt_mask, completion_ids, temperature=0.7)
    expected = reference_logp(model, PROMPTS, COMPLETIONS, temperature=0.7)
    assert logp.shape == (3, 5) and logp.dtype == torch.float32
    torch.testing.assert_close(logp, expected, atol=1e-4, rtol=0)


def test_reference_discriminates_a_wrong_shift(model):
    """Scoring c_j with the logits at its own position (no shift) is far from the right answer."""
    prompt_ids, prompt_mask = left_pad(PROMPTS)
    with torch.no_grad():
        logp = completion_logp(model, prompt_ids, prompt_mask, torch.tensor(COMPLETIONS), temperature=0.7)
    unshifted = reference_logp(model, PROMPTS, COMPLETIONS, temperature=0.7, shift=0)
    assert (logp - unshifted).abs().max() > 1e-2


def test_completion_logp_is_invariant_to_left_padding_width_and_pad_ids(model):
    prompt_ids, prompt_mask = left_pad(PROMPTS)
    completion_ids = torch.tensor(COMPLETIONS)
    wider_ids = torch.cat([torch.full((3, 4), 13), prompt_ids], dim=1)   # 4 more pad slots, junk ids in them
    wider_mask = torch.cat([torch.zeros(3, 4, dtype=torch.long), prompt_mask], dim=1)
    with torch.no_grad():
        narrow = completion_logp(model, prompt_ids, prompt_mask, completion_ids, temperature=1.0)
        wide = completion_logp(model, wider_ids, wider_mask, completion_ids, temperature=1.0)
    torch.testing.assert_close(wide, narrow, atol=1e-5, rtol=0)


def test_a_group_shares_its_prompt_and_gets_the_values_and_gradients_of_full_rows():
    """G = 3 copies of each prompt: the prompt runs once per group, the completions on its copied cache.
    Values and gradients equal those of each row run alone, unpadded, as one plain forward."""
    model = build_model("tiny", VOCAB, seed=1).train()
    prompts = [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    completions = COMPLETIONS + [[5, 6, 7, 8, 9], [9, 8, 7, 6, 5], [4, 4, 4, 4, 4]]
    prompt_ids, prompt_mask = left_pad(prompts)
    logp = completion_logp(model, prompt_ids, prompt_mask, torch.tensor(completions), temperature=0.7)
    weights = torch.linspace(-1.0, 1.0, logp.numel()).view_as(logp)      # a loss that weighs every token
    shared = torch.autograd.grad((weights * logp).sum(), list(model.parameters()))
    rows = []
    for prompt, completion in zip(prompts, completions):
        logits = model(input_ids=torch.tensor([prompt + completion[:-1]])).logits[0, len(prompt) - 1:] / 0.7
        rows.append(torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(completion)[:, None])[:, 0])
    plain = torch.stack(rows)
    alone = torch.autograd.grad((weights * plain).sum(), list(model.parameters()))
    torch.testing.assert_close(logp, plain, atol=1e-5, rtol=0)
    for a, b in zip(shared, alone):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_shared_prompt_is_run_once_per_group(model):
    seen = []
    hook = model.model.embed_tokens.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    prompt_ids, prompt_mask = left_pad([PROMPTS[0]] * 3 + [PROMPTS[2]] * 3)
    try:
        with torch.no_grad():
            completion_logp(model, prompt_ids, prompt_mask, torch.tensor(COMPLETIONS * 2), temperature=1.0)
    finally:
        hook.remove()
    # each of the 2 distinct prompts (width 5) in a forward of its own, then 6 rows of T - 1 = 4 tokens
    assert seen == [(1, 5), (1, 5), (6, 4)]


@pytest.mark.parametrize("prompt_width, completion_width, group_size, shared", [
    (7, 32, 8, False),      # W1: 7/8 x 7/39 = 0.157 of the positions saved
    (150, 128, 4, True),    # a chat prompt: 3/4 x 150/278 = 0.405
    (10, 10, 2, True),      # 1/2 x 1/2 = 0.25, the threshold itself
    (10, 11, 2, False),     # 1/2 x 10/21 = 0.238
    (500, 10, 1, False),    # G = 1 shares nothing
])
def test_a_prompt_is_shared_where_it_saves_a_quarter_of_the_positions(prompt_width, completion_width, group_size,
                                                                      shared):
    from types import SimpleNamespace

    from grpo.engine.logprobs import worth_sharing

    rollout = SimpleNamespace(prompt_ids=torch.zeros(4, prompt_width), completion_ids=torch.zeros(4, completion_width))
    assert worth_sharing(rollout, group_size) is shared


def test_the_plain_path_gives_the_shared_paths_log_probs(model):
    prompt_ids, prompt_mask = left_pad([PROMPTS[0]] * 3)
    with torch.no_grad():
        shared = completion_logp(model, prompt_ids, prompt_mask, torch.tensor(COMPLETIONS), temperature=0.7)
        plain = completion_logp(model, prompt_ids, prompt_mask, torch.tensor(COMPLETIONS), temperature=0.7,
                                share_prompts=False)
    torch.testing.assert_close(plain, shared, atol=1e-5, rtol=0)


@pytest.mark.parametrize("share_prompts", [False, True])
def test_micro_batches_give_the_full_batchs_log_probs_bit_for_bit(model, share_prompts):
    """Rows 0-3 have 2 columns of left padding, rows 4-7 none: as a micro-batch of their own, rows 4-7 run
    without any padding (transformers may then drop the mask for a causal kernel), and still get the
    bits the whole batch gives them; token selections such as kl_cov's rely on that."""
    g = torch.Generator().manual_seed(0)
    ids, mask = torch.zeros(8, 7, dtype=torch.long), torch.zeros(8, 7, dtype=torch.long)
    ids[:4, 2:], mask[:4, 2:] = torch.randint(3, 20, (4, 5), generator=g), 1
    ids[4:], mask[4:] = torch.randint(3, 20, (4, 7), generator=g), 1
    completions = torch.randint(3, 20, (8, 30), generator=g)
    with torch.no_grad():
        whole = completion_logp(model, ids, mask, completions, 1.0, share_prompts=share_prompts)
        parts = [completion_logp(model, ids[r], mask[r], completions[r], 1.0, share_prompts=share_prompts)
                 for r in (slice(0, 4), slice(4, 8))]
    assert torch.equal(torch.cat(parts), whole)


def _loss_and_grads(model, reference, completion_ids, advantages):
    prompt_ids, prompt_mask = left_pad(PROMPTS)
    mask = completion_mask(completion_ids, EOS)
    model.zero_grad(set_to_none=True)
    logp = completion_logp(model, prompt_ids, prompt_mask, completion_ids, temperature=1.0)
    with torch.no_grad():
        ref_logp = completion_logp(reference, prompt_ids, prompt_mask, completion_ids, temperature=1.0)
    # old_logp shifted by a constant so the ratio is not 1 and the clip is active on some tokens
    loss, _ = policy_loss(logp, logp.detach() + 0.3, ref_logp, advantages, mask,
                          settings(kl_beta=0.04, aggregation="seq_mean_token_mean"))
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    return loss.detach(), grads


@pytest.mark.parametrize("after_eos", [[9, 9], [PAD, PAD], [EOS, 17]])
def test_tokens_after_eos_change_neither_loss_nor_gradients(after_eos):
    model = build_model("tiny", VOCAB, seed=0).train()
    reference = build_model("tiny", VOCAB, seed=1).eval()
    advantages = torch.tensor([1.0, -0.5, 2.0])
    base = torch.tensor(COMPLETIONS)
    changed = base.clone()
    changed[1, 3:] = torch.tensor(after_eos)          # row 1: EOS at position 2, positions 3-4 are padding
    loss_a, grads_a = _loss_and_grads(model, reference, base, advantages)
    loss_b, grads_b = _loss_and_grads(model, reference, changed, advantages)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-6, rtol=0)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, atol=1e-6, rtol=1e-5)


def test_tokens_before_eos_do_change_the_loss():
    """The counterpart that shows the test above can fail: position 1 of row 1 is scored."""
    model = build_model("tiny", VOCAB, seed=0).train()
    reference = build_model("tiny", VOCAB, seed=1).eval()
    advantages = torch.tensor([1.0, -0.5, 2.0])
    base = torch.tensor(COMPLETIONS)
    changed = base.clone()
    changed[1, 1] = 9
    loss_a, grads_a = _loss_and_grads(model, reference, base, advantages)
    loss_b, grads_b = _loss_and_grads(model, reference, changed, advantages)
    # The ratio term is exp(-0.3) * A whatever logp is, so the loss moves only through the KL term
    # (beta = 0.04, a small change); the gradient moves through every scored token.
    assert (loss_a - loss_b).abs() > 1e-5
    assert max((ga - gb).abs().max() for ga, gb in zip(grads_a, grads_b)) > 1e-4


# ---------------------------------------------------------------- completion mask

@pytest.mark.parametrize(("ids", "expected"), [
    ([5, 6, EOS, 7, 7], [1, 1, 1, 0, 0]),      # EOS in the middle: EOS itself counts
    ([EOS, 5, 6, 7, 7], [1, 0, 0, 0, 0]),      # EOS first: a completion of one token
    ([5, 6, 7, 8, 9], [1, 1, 1, 1, 1]),        # no EOS: every token counts (truncated)
    ([5, 6, 7, 8, EOS], [1, 1, 1, 1, 1]),      # EOS last
    ([5, EOS, EOS, 6, EOS], [1, 1, 0, 0, 0]),  # only the first EOS ends the completion
    ([PAD, EOS, 5, 5, 5], [1, 1, 0, 0, 0]),    # a pad id before EOS is a token like any other
])
def test_completion_mask_by_hand(ids, expected):
    mask = completion_mask(torch.tensor([ids]), EOS)
    assert mask.dtype == torch.float32
    assert mask.tolist() == [[float(v) for v in expected]]


def test_completion_mask_is_row_wise():
    ids = torch.tensor([[5, EOS, 7], [EOS, 5, 7], [5, 6, 7]])
    assert completion_mask(ids, EOS).tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1]]


# ---------------------------------------------------------------- KV-cached generation

@torch.no_grad()
def greedy_no_cache(model, prompt: list[int], max_new_tokens: int, eos: int) -> list[int]:
    """Greedy decoding that re-runs the whole unpadded sequence every step; pads after EOS."""
    sequence, out = list(prompt), []
    for _ in range(max_new_tokens):
        if eos in out:
            out.append(PAD)
            continue
        token = int(model(input_ids=torch.tensor([sequence])).logits[0, -1].argmax())
        out.append(token)
        sequence.append(token)
    return out


def _generate(model, prompts, eos, max_new_tokens=10, **kwargs):
    prompt_ids, prompt_mask = left_pad(prompts)
    kwargs = {"temperature": 1.0, "generator": None, "greedy": True, **kwargs}
    return KVCacheSampler().generate_from(model, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens,
                                          eos_token_id=eos, pad_token_id=PAD, **kwargs)


def test_greedy_kv_cache_equals_full_recompute_without_eos(model):
    rollout = _generate(model, PROMPTS, eos=-1)    # an id that never occurs: every row runs 10 tokens
    expected = [greedy_no_cache(model, p, 10, eos=-1) for p in PROMPTS]
    assert rollout.completion_ids.tolist() == expected
    assert rollout.truncated.tolist() == [True, True, True]
    assert rollout.completion_mask.tolist() == [[1.0] * 10] * 3
    assert rollout.entropy.shape == (3, 10)


def test_greedy_kv_cache_equals_full_recompute_with_eos(model):
    free_run = [greedy_no_cache(model, p, 10, eos=-1) for p in PROMPTS]
    # Call row 0's 4th greedy token "EOS": row 0 stops there; the others stop wherever that id
    # first occurs in their own free run, or run to the end (truncated).
    eos = free_run[0][3]
    expected = [greedy_no_cache(model, p, 10, eos=eos) for p in PROMPTS]
    rollout = _generate(model, PROMPTS, eos=eos)
    width = rollout.completion_ids.shape[1]
    # The sampler may stop early when every row is done; what it returns must match the reference.
    assert rollout.completion_ids.tolist() == [row[:width] for row in expected]
    assert all(all(t == PAD for t in row[width:]) for row in expected)
    lengths = [row.index(eos) + 1 if eos in row else 10 for row in expected]
    assert rollout.completion_mask.sum(-1).tolist() == [float(n) for n in lengths]
    assert lengths[0] <= 4
    assert rollout.truncated.tolist() == [eos not in row for row in expected]


def test_generation_stops_when_every_row_has_ended(model):
    # The same prompt three times, with its first greedy token called EOS: all rows end at step 1.
    eos = greedy_no_cache(model, PROMPTS[0], 1, eos=-1)[0]
    rollout = _generate(model, [PROMPTS[0]] * 3, eos=eos)
    assert rollout.completion_ids.tolist() == [[eos]] * 3
    assert rollout.completion_mask.tolist() == [[1.0]] * 3
    assert rollout.truncated.tolist() == [False, False, False]


def test_min_new_tokens_suppresses_eos(model):
    free_run = greedy_no_cache(model, PROMPTS[1], 10, eos=-1)
    eos = free_run[0]                   # greedy would end at once
    rollout = _generate(model, [PROMPTS[1]], eos=eos, min_new_tokens=3)
    assert eos not in rollout.completion_ids[0, :3].tolist()
    assert rollout.completion_mask.sum() >= 4


def test_sampling_with_the_same_seed_is_reproducible(model):
    def sample(seed):
        return _generate(model, PROMPTS, eos=EOS, greedy=False, temperature=1.3,
                         generator=torch.Generator().manual_seed(seed)).completion_ids

    first, again, other = sample(11), sample(11), sample(12)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_sampling_does_not_touch_the_global_rng(model):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    _generate(model, PROMPTS, eos=EOS, greedy=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------- sample_next

@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_entropy_of_uniform_logits_is_log_vocab(temperature):
    _, entropy, _ = sample_next(torch.zeros(2, VOCAB), temperature, None, greedy=True)
    torch.testing.assert_close(entropy, torch.full((2,), math.log(VOCAB)))


def test_entropy_of_a_banned_token_is_finite():
    # one token at -inf (EOS suppressed): the other 20 are uniform, entropy log 20, not NaN
    logits = torch.zeros(1, VOCAB)
    logits[0, EOS] = float("-inf")
    token, entropy, _ = sample_next(logits, 1.0, torch.Generator().manual_seed(0), greedy=False)
    torch.testing.assert_close(entropy, torch.tensor([math.log(20)]))
    assert token.item() != EOS


def test_inverse_cdf_draws_follow_the_probabilities_and_never_a_zero():
    """40,000 draws from (0, .1, .6, 0, .3, 0): each frequency within 4 standard errors (sd of a share p
    from n draws: sqrt(p (1 - p) / n) <= 0.0025), and the three zero-probability tokens never."""
    probs = torch.tensor([[0.0, 0.1, 0.6, 0.0, 0.3, 0.0]]).expand(40_000, 6)
    tokens = inverse_cdf_draw(probs, torch.Generator().manual_seed(3))
    counts = torch.bincount(tokens, minlength=6).float() / 40_000
    assert counts[[0, 3, 5]].sum() == 0
    for p, share in zip([0.1, 0.6, 0.3], counts[[1, 2, 4]].tolist()):
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / 40_000)


@pytest.mark.parametrize("block", [4, 256])
def test_the_two_level_draw_is_the_full_cumsums_draw(monkeypatch, block):
    """Blocks of 4 over 11 tokens (the last block padded) and one block of 256: 20,000 rows of random
    probabilities (a third of them 0) give the token that the cumsum over the whole row gives for the
    same uniform (scaled to the row's total, as the draw scales it)."""
    import grpo.engine.sampler as sampler

    monkeypatch.setattr(sampler, "CDF_BLOCK", block)
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(20_000, 11, generator=gen) * (torch.rand(20_000, 11, generator=gen) > 0.33)
    probs[:, 0] += 1e-3                                     # every row has some probability
    probs = probs / probs.sum(-1, keepdim=True)
    tokens = inverse_cdf_draw(probs, torch.Generator().manual_seed(5))
    u = torch.rand(20_000, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = sampler.full_inverse_cdf(probs, u * probs.double().sum(-1, keepdim=True))
    assert torch.equal(tokens, expected)
    assert bool((probs.gather(-1, tokens[:, None]) > 0).all())


def test_a_draw_at_the_rows_total_takes_its_last_token_with_probability():
    """u rounded up to the total (past every cumulative value): the last token with p > 0, not a zero."""
    from grpo.engine.sampler import full_inverse_cdf

    probs = torch.tensor([[0.25, 0.75, 0.0, 0.0]])
    assert full_inverse_cdf(probs, torch.tensor([[1.0]], dtype=torch.float64)).tolist() == [1]
    assert full_inverse_cdf(probs, torch.tensor([[0.2]], dtype=torch.float64)).tolist() == [0]


def test_sample_next_by_hand():
    """Logits (0, ln 3) at T = 1: p = (1/4, 3/4); greedy takes token 1 with log-prob ln 3/4, entropy
    -(1/4 ln 1/4 + 3/4 ln 3/4). At T = 1/2 the logits double: p = (1/10, 9/10), log-prob ln 9/10."""
    logits = torch.tensor([[0.0, math.log(3)]])
    token, entropy, logp = sample_next(logits, 1.0, None, greedy=True)
    assert token.tolist() == [1]
    assert logp.item() == pytest.approx(math.log(0.75), rel=1e-6)
    assert entropy.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), rel=1e-6)
    _, _, logp = sample_next(logits, 0.5, None, greedy=True)
    assert logp.item() == pytest.approx(math.log(0.9), rel=1e-6)


def test_sample_next_greedy_is_argmax_and_temperature_sharpens():
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    token, entropy_t1, _ = sample_next(logits, 1.0, None, greedy=True)
    assert token.tolist() == [1]
    _, entropy_cold, _ = sample_next(logits, 0.25, None, greedy=True)
    _, entropy_hot, _ = sample_next(logits, 4.0, None, greedy=True)
    assert entropy_cold < entropy_t1 < entropy_hot < math.log(3)


# ---------------------------------------------------------------- the cache argument and the sampler's log-probs

# What the installed transformers calls the cache (`cache` from 5.24 on, `past_key_values` before).
INSTALLED_CACHE_NAME = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters \
    else "past_key_values"


class PastKeyValuesLlama(LlamaForCausalLM):
    """A model with the forward of transformers < 5.24, which took the KV cache as `past_key_values`
    and let any other keyword (such as `cache=`) vanish into **kwargs."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=None, logits_to_keep=0, **ignored):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=use_cache, logits_to_keep=logits_to_keep,
                               **{INSTALLED_CACHE_NAME: past_key_values})


class CachelessLlama(LlamaForCausalLM):
    """A model whose forward takes no cache under any name the samplers know."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, use_cache=None,
                logits_to_keep=0, **ignored):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False, logits_to_keep=logits_to_keep)


def _same_weights(model_class, model):
    other = model_class(model.config).eval()
    other.load_state_dict(model.state_dict())
    return other


@pytest.mark.parametrize("sampler", [KVCacheSampler, StaticCacheSampler], ids=["kv_cache", "static_cache"])
@pytest.mark.parametrize("model_class", [LlamaForCausalLM, PastKeyValuesLlama], ids=["cache_kwarg", "past_key_values"])
def test_greedy_decoding_equals_full_recompute_whatever_the_cache_keyword(model, sampler, model_class):
    """Both samplers, token for token against a no-cache recompute, on a model of today's transformers
    and one with the older `past_key_values` forward (a cache passed under the wrong name is lost)."""
    model = _same_weights(model_class, model)
    prompt_ids, prompt_mask = left_pad(PROMPTS)
    rollout = sampler().generate_from(model, prompt_ids, prompt_mask, max_new_tokens=10, temperature=1.0,
                                      generator=None, greedy=True, eos_token_id=-1, pad_token_id=PAD)
    assert rollout.completion_ids.tolist() == [greedy_no_cache(model, p, 10, eos=-1) for p in PROMPTS]


@pytest.mark.parametrize("sampler", [KVCacheSampler, StaticCacheSampler], ids=["kv_cache", "static_cache"])
def test_a_cache_the_model_ignores_is_a_clear_error(model, sampler):
    model = _same_weights(CachelessLlama, model)
    prompt_ids, prompt_mask = left_pad(PROMPTS)
    with pytest.raises(GrpoError, match="KV cache holds 0 positions after a prefill of 7"):
        sampler().generate_from(model, prompt_ids, prompt_mask, max_new_tokens=4, temperature=1.0, generator=None,
                                greedy=True, eos_token_id=EOS, pad_token_id=PAD)


@pytest.mark.parametrize("sampler", [KVCacheSampler, StaticCacheSampler], ids=["kv_cache", "static_cache"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("min_new_tokens", [0, 4])
@pytest.mark.parametrize("greedy", [False, True])
def test_sampler_logp_equals_the_learners_logp(model, sampler, temperature, min_new_tokens, greedy):
    """pi_old as the sampler drew from it (temperature, EOS banned before min_new_tokens) is what
    completion_logp scores, on every completion token; padding after EOS carries log-prob 0."""
    prompt_ids, prompt_mask = left_pad(PROMPTS * 4)
    rollout = sampler().generate_from(model, prompt_ids, prompt_mask, max_new_tokens=12, temperature=temperature,
                                      generator=torch.Generator().manual_seed(7), greedy=greedy, eos_token_id=EOS,
                                      pad_token_id=PAD, min_new_tokens=min_new_tokens)
    with torch.no_grad():
        learner = completion_logp(model, prompt_ids, prompt_mask, rollout.completion_ids, temperature,
                                  eos_token_id=EOS, min_new_tokens=min_new_tokens)
    mask = rollout.completion_mask
    assert (mask == 0).any() or greedy, "precondition: some row ends early, so padding is exercised"
    torch.testing.assert_close(rollout.logp * mask, learner * mask, atol=1e-5, rtol=0)
    assert torch.equal(rollout.logp * (1 - mask), torch.zeros_like(mask))
    if min_new_tokens:
        assert not (rollout.completion_ids[:, :min_new_tokens] == EOS).any()
