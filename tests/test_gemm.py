"""Linear layers through oneDNN compute x W^T + b and its gradients, and step aside where they do not apply."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from grpo.engine import gemm


@pytest.fixture(autouse=True)
def onednn_on(monkeypatch):
    """Every test starts with the switch at its default (on), whatever the environment says."""
    monkeypatch.delenv("GRPO_ONEDNN", raising=False)
    gemm.available.cache_clear()
    yield
    gemm.available.cache_clear()


def test_onednn_is_there_on_this_build():
    """The x86-64 CPU wheel this project installs carries oneDNN's linear op (without it every test below
    would only exercise torch's own F.linear)."""
    assert gemm.available()


def small_case():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    bias = torch.tensor([0.5, 0.0, -1.0], requires_grad=True)
    return x, weight, bias


def test_linear_and_its_gradients_by_hand():
    """y = x W^T + b = [[1.5, 2, 2], [3.5, 4, 6]]; with dy = 1: dx = dy W = [[2, 2], [2, 2]],
    dW = dy^T x = [[4, 6]] * 3, db = [2, 2, 2]."""
    x, weight, bias = small_case()
    y = gemm.OneDnnLinear.apply(x, weight, bias)
    assert torch.equal(y, torch.tensor([[1.5, 2.0, 2.0], [3.5, 4.0, 6.0]]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([[2.0, 2.0], [2.0, 2.0]]))
    assert torch.equal(weight.grad, torch.tensor([[4.0, 6.0]] * 3))
    assert torch.equal(bias.grad, torch.tensor([2.0, 2.0, 2.0]))


@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_matches_torch_on_a_batch_of_sequences(with_bias):
    """A [B, T, K] input, as the learner's layers see it, against F.linear: values and all gradients."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 48, generator=generator)           # 150 rows: run as 160
    weight, bias = torch.randn(80, 48, generator=generator), torch.randn(80, generator=generator)
    dy = torch.randn(3, 50, 80, generator=generator)
    results = []
    for function in (lambda *a: gemm.OneDnnLinear.apply(*a), F.linear):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        y = function(leaves[0], leaves[1], leaves[2] if with_bias else None)
        y.backward(dy)
        results.append([y, leaves[0].grad, leaves[1].grad] + ([leaves[2].grad] if with_bias else []))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)


def test_packed_weight_gives_the_unpacked_result(monkeypatch):
    monkeypatch.setattr(gemm, "MIN_WEIGHT_ELEMENTS", 0)
    generator = torch.Generator().manual_seed(1)
    x, weight, bias = torch.randn(64, 1, 32, generator=generator), torch.randn(96, 32, generator=generator), \
        torch.randn(96, generator=generator)
    packed = gemm.pack(weight)
    assert packed.layout == torch._mkldnn
    torch.testing.assert_close(gemm.linear(x, packed, bias), F.linear(x, weight, bias), atol=1e-5, rtol=1e-5)


def test_other_dtypes_and_autocast_keep_torch_linear(monkeypatch):
    """bf16 tensors and fp32 ones under autocast go to F.linear unchanged (bit for bit), and pack leaves
    their weights as they are (with no size threshold: it is the dtype that decides)."""
    monkeypatch.setattr(gemm, "MIN_WEIGHT_ELEMENTS", 0)
    assert gemm.pack(torch.randn(8, 16)).layout == torch._mkldnn      # an fp32 weight would be packed
    generator = torch.Generator().manual_seed(2)
    x, weight = torch.randn(5, 16, generator=generator), torch.randn(8, 16, generator=generator)
    assert torch.equal(gemm.linear(x.bfloat16(), weight.bfloat16()), F.linear(x.bfloat16(), weight.bfloat16()))
    assert gemm.pack(weight.bfloat16()).layout == torch.strided
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gemm.pack(weight) is weight
        ours = gemm.linear(x, weight)
        assert ours.dtype == torch.bfloat16
        assert torch.equal(ours, F.linear(x, weight))


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setattr(gemm, "MIN_WEIGHT_ELEMENTS", 0)
    weight = torch.randn(4, 3)
    assert gemm.pack(weight).layout == torch._mkldnn
    monkeypatch.setenv("GRPO_ONEDNN", "0")
    gemm.available.cache_clear()
    assert not gemm.available()
    assert gemm.pack(weight) is weight


def test_install_patches_each_linear_once_and_a_copy_uses_its_own_weights(monkeypatch):
    monkeypatch.setattr(gemm, "MIN_WEIGHT_ELEMENTS", 0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2, bias=False))
    assert gemm.install(model) == 2
    assert model[0].forward.__func__ is gemm.linear_forward
    assert gemm.install(model) == 0                       # already patched: left alone
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin[0].weight.mul_(2.0)
    x = torch.randn(4, 6)
    expected = F.linear(F.linear(x, twin[0].weight, twin[0].bias).relu(), twin[2].weight)
    torch.testing.assert_close(twin(x), expected, atol=1e-5, rtol=1e-5)
    # the original is untouched by the copy's change, and its gradient flows through the patched layers
    model(x).sum().backward()
    assert model[0].weight.grad is not None and twin[0].weight.grad is None


def test_a_trainable_bias_alone_gets_its_gradient(monkeypatch):
    """A frozen weight with a trainable bias still takes the differentiable path: db = sum of dy over rows."""
    monkeypatch.setattr(gemm, "MIN_WEIGHT_ELEMENTS", 0)
    layer = torch.nn.Linear(3, 2)
    layer.weight.requires_grad_(False)
    gemm.install(layer)
    layer(torch.ones(4, 3)).sum().backward()
    assert torch.equal(layer.bias.grad, torch.tensor([4.0, 4.0]))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_decode_loop_and_learner_through_onednn_match_the_plain_model(monkeypatch, family):
    """With every layer through oneDNN (threshold 0): the lean decode loop's greedy tokens equal the plain
    model's own KV-cache decode, sampled entropies agree, and a forward/backward of the installed model
    gives the plain one's logits and gradients (Qwen2's q/k/v biases included)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from grpo.engine.fast_sampler import StaticCacheSampler
    from grpo.engine.sampler import KVCacheSampler

    monkeypatch.setattr(gemm, "MIN_WEIGHT_ELEMENTS", 0)
    sizes = dict(vocab_size=21, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    plain = (LlamaForCausalLM(LlamaConfig(**sizes)) if family == "llama" else Qwen2ForCausalLM(Qwen2Config(**sizes))).eval()
    if family == "qwen2":
        with torch.no_grad():
            for layer in plain.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    installed = copy.deepcopy(plain)
    assert gemm.install(installed) == 2 * 7 + 1
    ids = torch.tensor([[0, 0, 1, 9, 10], [1, 12, 13, 18, 14], [0, 0, 0, 1, 9]])
    mask = (ids != 0).long()
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, temperature=1.0, eos_token_id=2, pad_token_id=0)
    slow = KVCacheSampler().generate_from(plain, ids, mask, generator=None, greedy=True, **kwargs)
    fast = StaticCacheSampler().generate_from(installed, ids, mask, generator=None, greedy=True, **kwargs)
    assert torch.equal(slow.completion_ids, fast.completion_ids)
    torch.testing.assert_close(slow.entropy, fast.entropy, atol=1e-4, rtol=1e-4)
    full = torch.cat([ids, slow.completion_ids], 1)
    attention = torch.cat([mask, torch.ones_like(slow.completion_ids)], 1)
    logits = [model(input_ids=full, attention_mask=attention).logits for model in (plain, installed)]
    torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=1e-4)
    for logit in logits:
        logit.log_softmax(-1)[..., 3].sum().backward()
    for mine, theirs in zip(installed.parameters(), plain.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-4, rtol=1e-4)


def test_only_weights_of_a_megabyte_or_more_go_through_onednn():
    """A 512 x 512 weight (2**18 elements) is packed; a 128 x 1024 one (the tiny model's largest) is not,
    and its linear is torch's own, bit for bit."""
    generator = torch.Generator().manual_seed(3)
    assert gemm.pack(torch.randn(512, 512, generator=generator)).layout == torch._mkldnn
    small = torch.randn(1024, 128, generator=generator)
    assert gemm.pack(small) is small
    x = torch.randn(64, 128, generator=generator)
    assert torch.equal(gemm.linear(x, small), F.linear(x, small))


def test_row_buckets_by_hand():
    """Up to 128 rows as they are; above, multiples of 2**(bit_length - 4): 129 -> 144 (step 16),
    2496 -> 2560 (step 256), 4096 stays (step 512), 4097 -> 4608."""
    assert [gemm.bucket(n) for n in (1, 64, 128, 129, 144, 2496, 2560, 4096, 4097)] == \
        [1, 64, 128, 144, 144, 2560, 2560, 4096, 4608]


def test_padded_rows_leave_the_real_rows_alone(monkeypatch):
    """200 rows run as 208 (zero rows appended, their outputs dropped): same values as F.linear, in x's shape."""
    monkeypatch.setattr(gemm, "MIN_WEIGHT_ELEMENTS", 0)
    generator = torch.Generator().manual_seed(4)
    x, weight = torch.randn(8, 25, 32, generator=generator), torch.randn(40, 32, generator=generator)
    y = gemm.linear(x, weight)
    assert y.shape == (8, 25, 40) and y.is_contiguous()
    torch.testing.assert_close(y, F.linear(x, weight), atol=1e-5, rtol=1e-5)
