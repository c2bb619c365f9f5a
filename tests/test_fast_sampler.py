"""The hand-written decode loop computes what the model's own forward computes."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from grpo.engine.fast_sampler import StaticCacheSampler, supports
from grpo.engine.sampler import KVCacheSampler

SMALL = dict(vocab_size=21, hidden_size=64, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=128,
             pad_token_id=0, bos_token_id=1, eos_token_id=2)


def llama(kv_heads: int):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(num_attention_heads=4, num_key_value_heads=kv_heads, **SMALL)).eval()


def qwen2():
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(num_attention_heads=4, num_key_value_heads=2, **SMALL)).eval()
    with torch.no_grad():                     # non-zero q/k/v biases, so a dropped bias would show
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


def left_padded_prompts():
    # Rows of different lengths: 2, 5 and 7 real tokens, left-padded with 0.
    ids = torch.tensor([[0, 0, 0, 0, 0, 1, 9], [0, 0, 1, 9, 10, 18, 11], [1, 12, 13, 18, 14, 15, 19]])
    return ids, (ids != 0).long()


@pytest.mark.parametrize("build", [lambda: llama(4), lambda: llama(2), qwen2], ids=["llama", "llama_gqa", "qwen2"])
def test_fast_decode_matches_the_model_forward(build):
    model = build()
    assert supports(model)
    ids, mask = left_padded_prompts()
    kwargs = dict(max_new_tokens=16, min_new_tokens=16, temperature=0.7, eos_token_id=2, pad_token_id=0)
    slow = KVCacheSampler().generate_from(model, ids, mask, generator=None, greedy=True, **kwargs)
    fast = StaticCacheSampler().generate_from(model, ids, mask, generator=None, greedy=True, **kwargs)
    assert torch.equal(slow.completion_ids, fast.completion_ids)
    torch.testing.assert_close(slow.entropy, fast.entropy, atol=1e-4, rtol=1e-4)   # same distributions
    sampled = [s.generate_from(model, ids, mask, generator=torch.Generator().manual_seed(3), **kwargs)
               for s in (KVCacheSampler(), StaticCacheSampler())]
    torch.testing.assert_close(sampled[0].entropy[:, 0], sampled[1].entropy[:, 0])


def test_fast_decode_stops_rows_at_eos_like_the_reference():
    model = llama(4)
    ids, mask = left_padded_prompts()
    kwargs = dict(max_new_tokens=40, temperature=1.0, eos_token_id=2, pad_token_id=0)
    slow = KVCacheSampler().generate_from(model, ids, mask, generator=torch.Generator().manual_seed(5), **kwargs)
    fast = StaticCacheSampler().generate_from(model, ids, mask, generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(slow.completion_mask, fast.completion_mask)
    assert torch.equal(slow.truncated, fast.truncated)


def test_dropping_ended_rows_changes_no_row(monkeypatch):
    """Rows that hit EOS leave the decode batch: with COMPACT_AT = 10**9 as soon as one has ended, with
    COMPACT_AT = 1 never (that needs every row ended, and the loop stops first). The rows still writing get
    the same tokens, log-probs and entropies either way."""
    import grpo.engine.fast_sampler as fast_sampler

    model = llama(2)
    ids = torch.tensor([[0, 1, 9], [1, 9, 10], [1, 12, 13], [0, 1, 14]] * 3)
    mask = (ids != 0).long()
    kwargs = dict(max_new_tokens=40, temperature=1.5, eos_token_id=2, pad_token_id=0)
    rows_run, runs = [], []
    layers_run = fast_sampler.next_logits
    monkeypatch.setattr(fast_sampler, "next_logits", lambda model, layers, head, token, *rest:
                        rows_run.append(len(token)) or layers_run(model, layers, head, token, *rest))
    for compact_at in (1, 10**9):
        monkeypatch.setattr(fast_sampler, "COMPACT_AT", compact_at)
        rows_run.clear()
        runs.append((StaticCacheSampler().generate_from(model, ids, mask, generator=torch.Generator().manual_seed(1),
                                                        **kwargs), list(rows_run)))
    (kept, kept_rows), (dropped, dropped_rows) = runs
    lengths = kept.completion_mask.sum(-1)
    assert lengths.min() < lengths.max()                     # precondition: rows end at different steps
    assert set(kept_rows) == {12} and min(dropped_rows) < 12  # the second loop did drop rows
    assert torch.equal(kept.completion_ids, dropped.completion_ids)
    torch.testing.assert_close(kept.logp, dropped.logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(kept.entropy, dropped.entropy, atol=1e-5, rtol=0)
    assert bool((dropped.entropy[dropped.completion_mask == 0] == 0).all())


def test_weights_cast_once_under_autocast_give_what_autocast_gives_per_token(monkeypatch):
    """Under bf16 autocast the decode loop casts its matmul weights once; autocast would cast the same fp32
    weights at every op to the same bf16 values, so the rollout is identical either way."""
    import grpo.engine.fast_sampler as fast_sampler

    model = llama(2)
    ids = torch.tensor([[0, 1, 9], [1, 9, 10], [1, 12, 13], [0, 1, 14]])
    kwargs = dict(max_new_tokens=12, temperature=1.0, eos_token_id=2, pad_token_id=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast_sampler._matmul_dtype(torch.device("cpu")) == torch.bfloat16     # the weights are cast once
    runs = []
    for cast_once in (True, False):
        if not cast_once:
            monkeypatch.setattr(fast_sampler, "_matmul_dtype", lambda device: None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            runs.append(StaticCacheSampler().generate_from(model, ids, (ids != 0).long(),
                                                           generator=torch.Generator().manual_seed(3), **kwargs))
    once, per_op = runs
    assert fast_sampler._matmul_dtype(torch.device("cpu")) is None          # outside autocast: fp32
    assert torch.equal(once.completion_ids, per_op.completion_ids)
    assert torch.equal(once.logp, per_op.logp) and torch.equal(once.entropy, per_op.entropy)


def test_supports_refuses_sliding_window_attention_of_either_family():
    """Qwen2 turns a sliding window on with use_sliding_window; Mistral with a non-null sliding_window."""
    from transformers import MistralConfig, MistralForCausalLM

    def mistral(window):
        torch.manual_seed(0)
        return MistralForCausalLM(MistralConfig(num_attention_heads=4, num_key_value_heads=2, sliding_window=window,
                                                **SMALL))

    assert not supports(mistral(16))
    assert supports(mistral(None))
    qwen = qwen2()
    assert supports(qwen)                       # Qwen2Config carries sliding_window too, but it is off
    qwen.config.use_sliding_window = True
    assert not supports(qwen)


def test_stage_timer_synchronises_cuda_before_reading_the_clock(monkeypatch):
    """On a GPU the clock must not stop before the queued kernels finish: sync, read, ..., sync, read."""
    import time

    from grpo.base.timing import StageTimer

    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    clock = iter([10.0, 12.5])
    monkeypatch.setattr(time, "perf_counter", lambda: events.append("clock") or next(clock))
    timer = StageTimer(torch.device("cuda"))
    with timer("rollout"):
        events.append("work")
    assert events == ["sync", "clock", "work", "sync", "clock"]
    assert timer.seconds == {"rollout": 2.5}
    cpu = StageTimer(torch.device("cpu"))
    events.clear()
    monkeypatch.setattr(time, "perf_counter", iter([1.0, 2.0, 3.0, 3.5]).__next__)
    with cpu("train"):
        pass
    with cpu("train"):                          # a stage entered twice accumulates
        pass
    assert events == [] and cpu.seconds == {"train": 1.5}
