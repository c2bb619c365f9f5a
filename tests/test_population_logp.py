"""The population's log-probs (grpo/engine/population_logp.py): S seeds' completions under S models as one
forward over stacked weights give each seed the values and the gradients of its own single computation
(`logprobs.completion_logp`), whatever the seeds' row counts, prompt and completion widths and left padding;
and the shared reference's one forward over all seeds' rows gives each seed its own values."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from grpo.engine.logprobs import completion_logp
from grpo.engine.models import build_model
from grpo.engine.population_logp import attention_mask, population_logp

VOCAB, EOS = 21, 2
# A Qwen2 shape with GQA (4 query heads on 2 key/value heads) and q/k/v biases.
QWEN2 = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, max_position_embeddings=64,
             num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=EOS,
             tie_word_embeddings=False, attn_implementation="sdpa")
# Per seed: rows, prompt width, completion width (seed 1 has the most rows, seed 2 the widest of both).
SHAPES = [(3, 4, 5), (5, 3, 3), (2, 6, 7)]
TOL = dict(rtol=1e-5, atol=1e-5)


def llama(seed: int):
    return build_model("tiny", VOCAB, seed)


def qwen2(seed: int):
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN2))
    with torch.no_grad():               # the init zeroes biases: make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.5)
    return model


def seed_rows(num_seeds: int, generator: torch.Generator):
    """Per seed: prompt ids [B_s, L_s] left-padded (mask 0, token 0; some rows padded, groups of 2 rows share a
    prompt so the single path's shared prefill runs), prompt masks, completion ids [B_s, T_s]."""
    prompt_ids, prompt_masks, completion_ids = [], [], []
    for rows, width, length in SHAPES[:num_seeds]:
        prompts = torch.randint(3, VOCAB, (rows, width), generator=generator)
        prompts[1::2] = prompts[0::2][:rows // 2]
        mask = torch.ones(rows, width, dtype=torch.long)
        for row in range(rows):
            pad = max(int(torch.randint(0, width - 1, (), generator=generator)), row == 0)   # row 0 always padded
            mask[row, :pad], prompts[row, :pad] = 0, 0
        prompt_ids.append(prompts)
        prompt_masks.append(mask)
        completion_ids.append(torch.randint(0, VOCAB, (rows, length), generator=generator))
    return prompt_ids, prompt_masks, completion_ids


CASES = [dict(temperature=1.0), dict(temperature=0.7, eos_token_id=EOS, min_new_tokens=2),
         dict(temperature=0.7, eos_token_id=EOS, min_new_tokens=2, with_entropy=True)]


@pytest.mark.parametrize("build", [llama, qwen2], ids=["llama", "qwen2"])
@pytest.mark.parametrize("num_seeds", [1, 2, 3])
@pytest.mark.parametrize("case", CASES, ids=["plain", "temperature_ban", "entropy"])
def test_each_seed_gets_its_own_values_and_gradients(build, num_seeds, case):
    generator = torch.Generator().manual_seed(num_seeds)
    models = [build(seed) for seed in range(num_seeds)]
    singles = copy.deepcopy(models)
    prompt_ids, prompt_masks, completion_ids = seed_rows(num_seeds, generator)
    # A random weight per token, so every position's gradient counts (and entropy's, with its own weights).
    weights = [torch.randn(c.shape, generator=generator) for c in completion_ids]
    entropy_weights = [torch.randn(c.shape, generator=generator) for c in completion_ids]

    def loss(out, s: int) -> torch.Tensor:
        if case.get("with_entropy"):
            logp, entropy = out
            return (logp * weights[s]).sum() + (entropy * entropy_weights[s]).sum()
        return (out * weights[s]).sum()

    population = population_logp(models, prompt_ids, prompt_masks, completion_ids, **case)
    sum(loss(out, s) for s, out in enumerate(population)).backward()
    for s, model in enumerate(singles):
        single = completion_logp(model, prompt_ids[s], prompt_masks[s], completion_ids[s], **case)
        loss(single, s).backward()
        for got, want in zip(population[s] if case.get("with_entropy") else [population[s]],
                             single if case.get("with_entropy") else [single]):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, **TOL)
        if case.get("min_new_tokens"):           # the ban holds: an EOS at position 0 or 1 has log-prob -inf
            banned = completion_ids[s][:, :2] == EOS
            assert torch.isinf((population[s][0] if case.get("with_entropy") else population[s])[:, :2][banned]).all()
        for (name, got), want in zip(models[s].named_parameters(), singles[s].parameters()):
            assert torch.isfinite(got.grad).all(), name
            # Relative to the tensor's largest entry: entries near 0 (Qwen2's key biases, whose gradient mostly
            # cancels) differ by fp32 rounding (~1e-5 of the largest) between the two op orders.
            scale = want.grad.abs().max().clamp(min=1e-6)
            torch.testing.assert_close(got.grad / scale, want.grad / scale, rtol=0.0, atol=5e-5,
                                       msg=lambda m: f"{name}: {m}")


def test_the_mask_hides_padding_keys_and_never_leaves_a_query_without_a_key():
    """One row, positions (pad, real, real): the padding query sees itself alone (no real key is at or before it;
    an all-False row would be a softmax over nothing, NaN on some SDPA backends: torch 2.13's CPU kernels give 0);
    each real query sees the real keys at or before it and never the padding key."""
    mask = attention_mask(torch.tensor([[False, True, True]]))
    expected = torch.tensor([[True, False, False],
                             [False, True, False],
                             [False, True, True]])
    assert mask.shape == (1, 1, 3, 3)
    assert torch.equal(mask[0, 0], expected)
