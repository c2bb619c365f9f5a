"""A local Hugging Face checkpoint directory: its own tokenizer, a chat-template prompt, tags as text."""

from __future__ import annotations

import json
import string

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from grpo.algorithm.step import build_run
from grpo.commands.cli import main
from grpo.setup.tasks import SYSTEM_PROMPT, Arithmetic, render_prompt
from grpo.setup.tokenizer import SPECIAL_TOKENS, build_tokenizer

CHAT_TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}[assistant] {% endif %}")


def save_text_model(path):
    """A tiny Llama with a printable-ASCII character tokenizer whose tags are NOT single tokens."""
    tokenizer = build_tokenizer(SPECIAL_TOKENS + list(string.printable[:95]))
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return tokenizer


def test_prompt_uses_the_chat_template_with_the_system_instruction(tmp_path):
    save_text_model(tmp_path / "m")
    from grpo.engine.models import load_tokenizer

    tokenizer = load_tokenizer(str(tmp_path / "m"))
    example = Arithmetic().eval_examples()[0]
    text = render_prompt(example, tokenizer)
    assert text == f"[system] {SYSTEM_PROMPT}\n[user] {example.question}\n[assistant] "
    assert "<think>" in text and tokenizer.convert_tokens_to_ids("<think>") == tokenizer.unk_token_id


def test_grpo_train_runs_on_a_local_checkpoint(tmp_path, capsys):
    save_text_model(tmp_path / "m")
    out = tmp_path / "run"
    code = main(["train", "--model", str(tmp_path / "m"), "--out-dir", str(out), "--steps", "2",
                 "--warmstart-steps", "2", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "6",
                 "--eval-prompts", "2", "--eval-samples", "2", "--wandb-mode", "disabled", "--quiet"])
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2]


def test_bf16_and_checkpointing_paths_train(make_cfg, tmp_path):
    from conftest import MIXED      # mixed groups: non-zero advantages, so the step moves the weights

    cfg = make_cfg(tmp_path, dtype="bf16", gradient_checkpointing=True, kl_beta=0.04, **MIXED)
    c, s = build_run(cfg, log=lambda *_: None)
    assert next(s.policy.parameters()).dtype == torch.float32            # fp32 master weights
    # The reference never trains: it is stored in bf16 (half the memory), the policy's weights rounded.
    assert {p.dtype for p in c.reference.parameters()} == {torch.bfloat16}
    for p, r in zip(s.policy.parameters(), c.reference.parameters()):
        assert torch.equal(p.detach().to(torch.bfloat16), r)
    assert not any(p.requires_grad for p in c.reference.parameters())
    before = [p.detach().clone() for p in s.policy.parameters()]
    from grpo.algorithm.step import grpo_step

    metrics = grpo_step(c, s, 1).metrics
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    # Before the first update the two differ only by bf16 rounding of the weights: a tiny KL.
    assert 0.0 <= metrics["kl/k3"] < 1e-3
    assert any(not torch.equal(a, b) for a, b in zip(before, s.policy.parameters()))


def test_fp32_reference_is_an_exact_copy(make_cfg, tmp_path):
    c, s = build_run(make_cfg(tmp_path, kl_beta=0.04), log=lambda *_: None)
    assert {p.dtype for p in c.reference.parameters()} == {torch.float32}
    assert all(torch.equal(p, r) for p, r in zip(s.policy.parameters(), c.reference.parameters()))


def test_qwen2_preset_has_the_half_billion_parameter_shape():
    from grpo.engine.models import preset_config

    config = preset_config("qwen2_0.5b", vocab_size=21)
    assert config.model_type == "qwen2"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size) == (896, 24, 14, 2, 4864)


def test_tied_embedding_checkpoints_round_trip_on_cpu(tmp_path):
    """Real small checkpoints (Qwen2-0.5B, Llama-3.2) tie lm_head to the embedding: saving must cope."""
    from grpo.run.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=21, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    optimizer = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path, 1, model, optimizer, [{}], {})
    fresh = LlamaForCausalLM(config)
    load_checkpoint(path, fresh, torch.optim.AdamW(fresh.parameters()), "cpu")
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()


def test_warm_start_key_changes_when_the_checkpoint_files_change(tmp_path):
    from grpo.setup.config import TrainConfig
    from grpo.engine.warmstart import warmstart_key

    save_text_model(tmp_path / "m")
    cfg = TrainConfig(model=str(tmp_path / "m"))
    before = warmstart_key(cfg, 100)
    with open(tmp_path / "m" / "config.json", "a") as f:
        f.write("\n")                                   # new files at the same path
    assert warmstart_key(cfg, 100) != before
