"""The population decode (grpo/engine/population_decode.py) gives each seed the rollout its single decode
(`StaticCacheSampler.generate_from`) gives: the same tokens, masks and truncation (random models, no
near-ties at these seeds), log-probs and entropies to float rounding, and the same number of draws from
each seed's generator."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from grpo import GrpoError
from grpo.engine.fast_sampler import StaticCacheSampler
from grpo.engine.population_decode import generate_population
from grpo.engine.stacked import linear, stack_weights

SIZES = dict(vocab_size=21, hidden_size=32, intermediate_size=48, num_hidden_layers=2, max_position_embeddings=128,
             pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation="sdpa")
EOS, PAD = 2, 0


def llama(seed: int):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(num_attention_heads=4, num_key_value_heads=4, **SIZES)).eval()


def qwen2(seed: int):
    """Qwen2's shape: GQA (4 query heads on 2 kv heads) and q/k/v biases, made non-zero so a dropped bias shows."""
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(num_attention_heads=4, num_key_value_heads=2, **SIZES)).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


def prompts(seeds: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per seed a different batch: seed s has s + 2 rows of width 4 + 2 s, left-padded by 0 to lengths from 1
    to the width, and its first two rows are one prompt (a group's copies share a prefill)."""
    ids, masks = [], []
    for s in range(seeds):
        rows, width = s + 2, 4 + 2 * s
        batch = torch.randint(3, 21, (rows, width), generator=torch.Generator().manual_seed(100 + s))
        batch[1] = batch[0]
        lengths = [width, width] + [1 + (r * 3) % width for r in range(2, rows)]
        mask = torch.stack([torch.arange(width) >= width - n for n in lengths]).long()
        ids.append(batch * mask)
        masks.append(mask)
    return ids, masks


def single_and_population(models, ids, masks, **kwargs):
    """(the single decodes, the population decode, the generators after each), generators seeded 7 + s."""
    single_generators = [torch.Generator().manual_seed(7 + s) for s in range(len(models))]
    population_generators = [torch.Generator().manual_seed(7 + s) for s in range(len(models))]
    singles = [StaticCacheSampler().generate_from(m, i, k, generator=g, eos_token_id=EOS, pad_token_id=PAD, **kwargs)
               for m, i, k, g in zip(models, ids, masks, single_generators)]
    population = generate_population(models, ids, masks, generators=population_generators, eos_token_id=EOS,
                                     pad_token_id=PAD, **kwargs)
    return singles, population, single_generators, population_generators


def assert_same(singles, population, single_generators, population_generators) -> None:
    assert len(population) == len(singles)
    for alone, mine, g_alone, g_mine in zip(singles, population, single_generators, population_generators):
        for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "truncated"):
            assert torch.equal(getattr(alone, name), getattr(mine, name)), name
        torch.testing.assert_close(mine.logp, alone.logp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.entropy, alone.entropy, atol=1e-5, rtol=1e-5)
        assert torch.equal(g_alone.get_state(), g_mine.get_state())      # the same number of draws


@pytest.mark.parametrize("seeds", [1, 2, 3])
@pytest.mark.parametrize("greedy", [False, True], ids=["sampled", "greedy"])
def test_each_seed_gets_its_single_decode(seeds, greedy):
    models = [llama(s) for s in range(seeds)]
    ids, masks = prompts(seeds)
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, temperature=0.8, greedy=greedy)
    assert_same(*single_and_population(models, ids, masks, **kwargs))


def test_qwen2_shape_with_gqa_and_biases():
    models = [qwen2(s) for s in range(2)]
    ids, masks = prompts(2)
    for greedy in (False, True):
        kwargs = dict(max_new_tokens=10, min_new_tokens=10, temperature=1.0, greedy=greedy)
        assert_same(*single_and_population(models, ids, masks, **kwargs))


def test_seeds_that_end_at_different_steps_stop_drawing_where_their_single_runs_stop():
    # Temperature 1.5 on 21 tokens: each row ends (EOS) within a few dozen tokens. min_new_tokens 3 bans EOS
    # at the first three positions (with it missing, EOS at position 0-2 would change the tokens).
    models = [llama(s) for s in range(3)]
    ids, masks = prompts(3)
    kwargs = dict(max_new_tokens=60, min_new_tokens=3, temperature=1.5)
    singles, *rest = single_and_population(models, ids, masks, **kwargs)
    widths = [r.completion_ids.shape[1] for r in singles]
    # What this test is for: some seed stops before max_new_tokens, at a step another seed runs past.
    assert min(widths) < 60 and len(set(widths)) > 1, widths
    assert all((r.completion_ids[:, :3] != EOS).all() for r in singles)
    assert_same(singles, *rest)


def test_refuses_autocast_in_one_line():
    ids, masks = prompts(1)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(GrpoError) as error:
        generate_population([llama(0)], ids, masks, generators=[None], max_new_tokens=2, temperature=1.0,
                            eos_token_id=EOS, pad_token_id=PAD)
    assert "\n" not in str(error.value) and "autocast" in str(error.value)


def test_in_major_stack_holds_the_same_weights_laid_out_for_the_batched_matmul():
    models = [qwen2(s) for s in range(2)]
    plain, in_major = stack_weights(models), stack_weights(models, in_major=True)
    for name in ("qkv", "o", "gate_up", "down"):
        a, b = getattr(plain.layers[1], name), getattr(in_major.layers[1], name)
        assert torch.equal(a, b) and b.transpose(1, 2).is_contiguous() and not b.is_contiguous()
    assert torch.equal(plain.head, in_major.head) and in_major.embed.is_contiguous()
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(linear(x, in_major.layers[0].qkv, in_major.layers[0].qkv_bias),
                               linear(x, plain.layers[0].qkv, plain.layers[0].qkv_bias))
    # Still differentiable: a loss on seed 1's output reaches seed 1's own q_proj, not seed 0's.
    stacked = stack_weights(models, in_major=True)
    linear(x, stacked.layers[0].qkv)[1].sum().backward()
    seed0_grad = models[0].model.layers[0].self_attn.q_proj.weight.grad
    assert seed0_grad is None or not seed0_grad.any()
    assert models[1].model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
