"""The lean MLP and RMSNorm forwards give the modules' values and gradients and keep less for the backward;
under bf16 autocast they (and the cast-once attention projections) give what autocast gives."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from grpo.engine import gemm
from grpo.engine.lean_layers import _RMSNorm, _SwiGLU, cast_weight, install_lean_layers

SMALL = dict(vocab_size=21, hidden_size=32, intermediate_size=48, num_hidden_layers=2, max_position_embeddings=64,
             num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def test_swiglu_by_hand_on_one_unit():
    """H = I = 1: y = w_d * silu(w_g x) * (w_u x). x = 1, w_g = 2, w_u = 3, w_d = 0.5, dy = 1:
    g = 2, s = sigmoid(2), u = 3, y = 0.5 * 2s * 3 = 3s; dy/dw_d = 2s * 3 = 6s;
    dp = 0.5; du = dp * 2s = s; dg = dp * u * s (1 + 2 (1 - s)) = 1.5 s (3 - 2s);
    dx = dg * 2 + du * 3; dw_g = dg * x; dw_u = du * x."""
    x, wg, wu, wd = (torch.tensor([[v]], dtype=torch.float64, requires_grad=True) for v in (1.0, 2.0, 3.0, 0.5))
    y = _SwiGLU.apply(x, wg, wu, wd)
    y.sum().backward()
    s = 1 / (1 + math.exp(-2.0))
    dg = 1.5 * s * (3 - 2 * s)
    assert y.item() == pytest.approx(3 * s, rel=1e-12)
    assert wd.grad.item() == pytest.approx(6 * s, rel=1e-12)
    assert wu.grad.item() == pytest.approx(s, rel=1e-12)
    assert wg.grad.item() == pytest.approx(dg, rel=1e-12)
    assert x.grad.item() == pytest.approx(2 * dg + 3 * s, rel=1e-12)


def test_rms_norm_by_hand():
    """x = (3, 4), eps = 0, w = (1, 2): mean x^2 = 12.5, r = 1/sqrt(12.5), y = (3r, 8r).
    With dy = (1, 0): dh = (1, 0), h = (3r, 4r), mean(dh h) = 1.5r, dx = r ((1, 0) - 1.5r (3r, 4r)),
    dw = dy h = (3r, 0)."""
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    y = _RMSNorm.apply(x, w, 0.0)
    (y * torch.tensor([[1.0, 0.0]], dtype=torch.float64)).sum().backward()
    r = 1 / math.sqrt(12.5)
    assert y.tolist()[0] == pytest.approx([3 * r, 8 * r], rel=1e-12)
    assert x.grad.tolist()[0] == pytest.approx([r * (1 - 4.5 * r * r), r * (0 - 6 * r * r)], rel=1e-12)
    assert w.grad.tolist() == pytest.approx([3 * r, 0.0], abs=1e-12)


BUILDS = [lambda: LlamaForCausalLM(LlamaConfig(**SMALL)),
          lambda: LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=True)),
          lambda: Qwen2ForCausalLM(Qwen2Config(**SMALL))]
# Per model: 2 layers x (MLP, 2 norms, the bias-free projections: Llama's 4, Qwen2's o_proj alone) + the final norm.
LEAN_MODULES = [2 * (3 + 4) + 1, 2 * (3 + 4) + 1, 2 * (3 + 1) + 1]


@pytest.mark.parametrize("onednn", [False, True], ids=["torch_mm", "onednn"])
@pytest.mark.parametrize("build,modules", list(zip(BUILDS, LEAN_MODULES)), ids=["llama", "llama_tied", "qwen2"])
def test_a_lean_model_gives_the_models_values_and_gradients(build, modules, onednn, monkeypatch):
    """Also with every lean matmul through oneDNN (its size threshold at 0), against the plain model's torch.mm."""
    if onednn:
        monkeypatch.setattr(gemm, "MIN_WEIGHT_ELEMENTS", 0)
    torch.manual_seed(0)
    plain = build().train()
    lean = copy.deepcopy(plain)
    assert install_lean_layers(lean) == modules
    ids = torch.randint(3, 21, (3, 9))
    weights = torch.randn(3, 9, 21)
    grads = []
    for model in (plain, lean):
        loss = (weights * model(input_ids=ids).logits.log_softmax(-1)).sum()
        grads.append((loss.detach(), torch.autograd.grad(loss, list(model.parameters()))))
    (loss_plain, grads_plain), (loss_lean, grads_lean) = grads
    torch.testing.assert_close(loss_lean, loss_plain, atol=1e-4, rtol=1e-6)
    for a, b in zip(grads_lean, grads_plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("build", BUILDS, ids=["llama", "llama_tied", "qwen2"])
def test_under_bf16_autocast_a_lean_model_gives_what_autocast_gives(build):
    """Same loss and gradients as the plain model under autocast, to bf16 rounding (~0.4% a value):
    each parameter's gradient within 3% of its norm; fp32 would agree to 1e-5, so a lean layer left
    out of autocast would pass too, hence the second check: the lean MLP's output is bf16."""
    torch.manual_seed(0)
    plain = build().train()
    lean = copy.deepcopy(plain)
    install_lean_layers(lean)
    ids = torch.randint(3, 21, (3, 9))
    weights = torch.randn(3, 9, 21)
    grads = []
    for model in (plain, lean):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits
        loss = (weights * logits.float().log_softmax(-1)).sum()
        grads.append((loss.detach(), torch.autograd.grad(loss, list(model.parameters()))))
    (loss_plain, grads_plain), (loss_lean, grads_lean) = grads
    torch.testing.assert_close(loss_lean, loss_plain, atol=0, rtol=1e-2)
    for a, b in zip(grads_lean, grads_plain):
        assert a.dtype == torch.float32
        assert float((a - b).norm()) <= 0.03 * float(b.norm()) + 1e-6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lean.model.layers[0].mlp(torch.randn(2, 32)).dtype == torch.bfloat16
        assert lean.model.layers[0].self_attn.o_proj(torch.randn(2, 32)).dtype == torch.bfloat16


def test_a_weight_is_cast_once_per_value():
    """The bf16 copy is reused while the weight is unchanged, remade after an in-place update (an
    optimizer step), and one made in inference mode (a rollout) still serves autograd afterwards."""
    weight = torch.nn.Parameter(torch.tensor([[1.0, 2.0]]))
    with torch.inference_mode():
        first = cast_weight(weight, torch.bfloat16)
    assert first.dtype == torch.bfloat16 and not first.is_inference()
    assert cast_weight(weight, torch.bfloat16) is first
    assert cast_weight(weight, None) is weight and cast_weight(weight, torch.float32) is weight
    with torch.no_grad():
        weight.add_(1.0)
    second = cast_weight(weight, torch.bfloat16)
    assert second is not first and second.tolist() == [[2.0, 3.0]]


def test_the_lean_mlp_keeps_two_intermediate_tensors_not_four():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMALL)).train()
    mlp = model.model.layers[0].mlp
    x = torch.randn(5, 32, requires_grad=True)

    def kept(forward) -> int:
        """Elements of the tensors autograd keeps for the backward of forward(x), weights and x excluded."""
        saved = {}

        def pack(t):
            saved[t.data_ptr()] = t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            forward(x)
        inputs = {p.data_ptr() for p in mlp.parameters()} | {x.data_ptr()}
        return sum(n for ptr, n in saved.items() if ptr not in inputs)

    plain = kept(mlp.forward)
    install_lean_layers(model)
    assert plain == 4 * 5 * 48            # g, silu(g), u and their product
    assert kept(mlp.forward) == 2 * 5 * 48  # g and u


def test_a_copy_of_a_lean_model_runs_on_its_own_weights():
    """The trainer's reference is a deepcopy of the lean policy: its forwards must be bound to the copy."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMALL)).eval()
    install_lean_layers(model)
    reference = copy.deepcopy(model)
    ids = torch.randint(3, 21, (2, 6))
    with torch.no_grad():
        before = reference(input_ids=ids).logits
        for p in model.parameters():
            p.add_(0.1)
        torch.testing.assert_close(reference(input_ids=ids).logits, before, atol=0, rtol=0)
        assert (model(input_ids=ids).logits - before).abs().max() > 1e-2


def test_head_logp_by_hand():
    """H = 1, V = 2: h = 1, W = (0, ln 3): logits (0, ln 3), softmax (1/4, 3/4); target 1 gives
    logp = ln(3/4), d logp / d logits = (-1/4, 1/4), so dW = (-1/4, 1/4) h and dh = (1/4) ln 3."""
    from grpo.engine.lean_layers import head_logp

    hidden = torch.ones(1, 1, 1, dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([[0.0], [math.log(3)]], dtype=torch.float64, requires_grad=True)
    logp = head_logp(hidden, weight, torch.tensor([[1]]), 1.0)
    logp.sum().backward()
    assert logp.item() == pytest.approx(math.log(0.75), rel=1e-12)
    assert weight.grad[:, 0].tolist() == pytest.approx([-0.25, 0.25], rel=1e-12)
    assert hidden.grad.item() == pytest.approx(math.log(3) / 4, rel=1e-12)


@pytest.mark.parametrize("onednn", [False, True], ids=["torch_mm", "onednn"])
def test_head_logp_equals_the_full_log_softmax_across_chunks(monkeypatch, onednn):
    """Chunks of 3 positions over 2 x 5 (a partial last chunk), temperature 0.7, token 4 banned on the
    first 2 positions: values and gradients of the plain [B, T, V] computation (also with the head's
    matmuls through oneDNN)."""
    import grpo.engine.lean_layers as lean_layers

    if onednn:
        monkeypatch.setattr(gemm, "MIN_WEIGHT_ELEMENTS", 0)
    monkeypatch.setattr(lean_layers, "HEAD_CHUNK", 3)
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5))
    targets[:, :2] = torch.where(targets[:, :2] == 4, 5, targets[:, :2])     # a banned token is never drawn
    upstream = torch.randn(2, 5)
    logits = (hidden @ weight.t()) / 0.7
    banned = torch.zeros(5, 11, dtype=torch.bool)
    banned[:2, 4] = True
    plain = logits.masked_fill(banned, float("-inf")).log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    expected = torch.autograd.grad((upstream * plain).sum(), [hidden, weight])
    lean = lean_layers.head_logp(hidden, weight, targets, 0.7, ban_token=4, ban_positions=2)
    got = torch.autograd.grad((upstream * lean).sum(), [hidden, weight])
    torch.testing.assert_close(lean, plain, atol=1e-6, rtol=1e-6)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_head_logp_under_bf16_autocast_runs_its_matmuls_in_bf16(monkeypatch):
    """Under autocast the head's matmul is bf16 (as the plain path's lm_head there) and the softmax fp32:
    the log-probs equal the full log-softmax of bf16-rounded logits, computed here by hand, to fp32
    rounding, and differ from fp32 logits' by more; gradients to bf16 rounding, in the inputs' dtypes.
    Chunks of 3 over 10 positions (the bf16 path keeps each chunk's logits for the backward)."""
    import grpo.engine.lean_layers as lean_layers
    from grpo.engine.lean_layers import head_logp

    monkeypatch.setattr(lean_layers, "HEAD_CHUNK", 3)
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5))
    bf16_logits = (hidden.detach().bfloat16() @ weight.detach().bfloat16().t()).float()
    expected = bf16_logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    fp32 = (hidden @ weight.t()).log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head_logp(hidden, weight, targets, 1.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - fp32.detach()).abs().max() > 1e-3
    grads = torch.autograd.grad(got.sum(), [hidden, weight])
    for g, want in zip(grads, torch.autograd.grad(fp32.sum(), [hidden, weight])):
        assert g.dtype == torch.float32
        assert float((g - want).norm()) <= 0.03 * float(want.norm())


@pytest.mark.parametrize("share_prompts", [True, False])
def test_completion_logp_through_the_lean_head_equals_the_models_logits(share_prompts):
    from grpo.engine.logprobs import completion_logp

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=True)).train()    # SmolLM2 ties its head
    prompt_ids = torch.tensor([[0, 1, 9, 10], [0, 1, 9, 10], [1, 12, 13, 14], [1, 12, 13, 14]])
    completions = torch.randint(3, 21, (4, 6))
    kwargs = dict(temperature=0.8, eos_token_id=2, min_new_tokens=3, share_prompts=share_prompts)
    results = []
    for lean_head in (False, True):
        logp = completion_logp(model, prompt_ids, (prompt_ids != 0).long(), completions, lean_head=lean_head, **kwargs)
        results.append((logp.detach(), torch.autograd.grad(logp.sum(), list(model.parameters()))))
    (plain, plain_grads), (lean, lean_grads) = results
    torch.testing.assert_close(lean, plain, atol=1e-5, rtol=0)
    for a, b in zip(lean_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def lean_and_plain_steps(make_cfg, tmp_path, monkeypatch, **overrides):
    """One GRPO step (micro-batches of 4, kl_beta > 0, EOS ban for 2 tokens) by the plain trainer and
    by the lean one (forced on for the seed preset): [(c.lean, metrics, weights after)] for each."""
    import grpo.algorithm.step as trainer
    from conftest import MIXED

    cfg = make_cfg(tmp_path, **MIXED, kl_beta=0.04, micro_batch_size=4, min_new_tokens=2, temperature=0.9,
                   **overrides)
    results = []
    for threshold in (10**12, 0):
        monkeypatch.setattr(trainer, "LARGE_MODEL_PARAMS", threshold)
        c, s = trainer.build_run(cfg, log=lambda *_: None)
        metrics = trainer.grpo_step(c, s, 1).metrics
        results.append((c.lean, metrics, [p.detach().clone() for p in s.policy.parameters()]))
    return cfg, results


def test_a_lean_trainer_takes_the_plain_trainers_step(make_cfg, tmp_path, monkeypatch):
    """The trainer turns the lean layers and head on for large models; its step gives the plain step's
    loss, KL, gradient norm and updated weights to float rounding."""
    cfg, results = lean_and_plain_steps(make_cfg, tmp_path, monkeypatch)
    (plain_lean, plain, plain_weights), (lean_lean, lean, lean_weights) = results
    assert not plain_lean and lean_lean
    assert plain["adv/abs_mean"] > 0                      # precondition: the step has a gradient
    for key in ("loss", "kl/k3", "grad_norm", "ratio/mean"):
        assert lean[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-7), key
    # AdamW's first step moves a weight by ~lr x g / |g|: where g is ~0, rounding may flip its sign, so
    # weights agree to 2 lr, and almost all far closer.
    close = 0
    for a, b in zip(lean_weights, plain_weights):
        torch.testing.assert_close(a, b, atol=2 * cfg.lr, rtol=0)
        close += int(((a - b).abs() <= 1e-7).sum())
    assert close >= 0.999 * sum(a.numel() for a in lean_weights)


def test_a_lean_bf16_trainer_takes_the_plain_bf16_step(make_cfg, tmp_path, monkeypatch):
    """--dtype bf16: the lean layers, cast-once projections and chunked head run under autocast too, and
    the step matches the plain bf16 step to bf16 rounding (the same rollout: sampling does not go
    through the lean modules; loss and gradient norm within 2%, the KL, bf16 noise at step 1, within
    1e-3). The weights stay fp32 masters."""
    cfg, results = lean_and_plain_steps(make_cfg, tmp_path, monkeypatch, dtype="bf16")
    (plain_lean, plain, plain_weights), (lean_lean, lean, lean_weights) = results
    assert not plain_lean and lean_lean
    assert plain["adv/abs_mean"] > 0
    assert lean["reward/mean"] == plain["reward/mean"]
    for key in ("loss", "grad_norm"):
        assert lean[key] == pytest.approx(plain[key], rel=2e-2), key
    assert lean["kl/k3"] == pytest.approx(plain["kl/k3"], abs=1e-3)
    for a, b in zip(lean_weights, plain_weights):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=2 * cfg.lr, rtol=0)
