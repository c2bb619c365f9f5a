"""Policy models: `transformers` Llama models built from a preset (sizes in grpo/setup/presets.py), or a local HF checkpoint.

Nothing is downloaded: presets are random-init models built in code, a directory is loaded with
`local_files_only=True`, and a GGUF file (or a model a package ships as one) is converted once into a
cached directory (grpo.engine.pretrained). The presets match the benchmark workloads (untied lm_head, sdpa attention,
256 positions); the vocabulary size comes from the task's tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel,
                          Qwen2Config, Qwen2ForCausalLM)

from grpo import GrpoError
from grpo.base.paths import cache_root
from grpo.engine.pretrained import PACKAGED, gguf_model_dir, is_gguf
from grpo.setup.presets import MODEL_PRESETS, is_preset

ARCHITECTURES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def preset_config(model: str, vocab_size: int):
    sizes = dict(MODEL_PRESETS[model])
    config_class, _ = ARCHITECTURES[sizes.pop("model_type", "llama")]
    return config_class(
        vocab_size=vocab_size, max_position_embeddings=256, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation="sdpa", **sizes,
    )


def build_model(model: str, vocab_size: int, seed: int) -> PreTrainedModel:
    """A randomly initialised preset model (same seed => same weights), in fp32."""
    if not is_preset(model):
        raise GrpoError(f"unknown model preset {model!r}; choose from {sorted(MODEL_PRESETS)} or a local directory")
    config = preset_config(model, vocab_size)
    _, model_class = ARCHITECTURES[config.model_type]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(config)


def check_model_dir(model: str, log=print) -> Path:
    """The local Hugging Face directory of --model: a directory as given, or a GGUF model (a packaged one
    such as smollm2-135m, or a .gguf file) converted once into the cache (grpo.engine.pretrained)."""
    if is_gguf(model):
        return gguf_model_dir(model, cache_root(), log=log)
    path = Path(model)
    if not path.is_dir():
        raise GrpoError(f"--model {model!r} is neither a preset ({', '.join(MODEL_PRESETS)}), a packaged model "
                        f"({', '.join(PACKAGED)}), a .gguf file nor an existing directory")
    if not (path / "config.json").is_file():
        raise GrpoError(f"model directory {model!r} has no config.json (not a Hugging Face checkpoint)")
    return path


def load_tokenizer(model: str):
    """The tokenizer of a local checkpoint, left-padding, with a pad token (EOS when it has none)."""
    path = check_model_dir(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise GrpoError(f"cannot load the tokenizer of {model!r}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_pretrained(model: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The model of a local Hugging Face checkpoint directory; remote code stays off."""
    path = check_model_dir(model)
    try:
        return AutoModelForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=False, dtype=dtype)
    except (OSError, ValueError) as err:
        raise GrpoError(f"cannot load model directory {model!r}: {str(err).splitlines()[0]}") from None
