"""A character-level tokenizer built in code, as a real `PreTrainedTokenizerFast`.

Every task gets a tokenizer from this one builder, so the trainer's code path is the same one a real
Hugging Face tokenizer takes. Ids 0-7 are the special and tag tokens, then one id per character, in
the order given. The arithmetic vocabulary (ids 0-20) matches the benchmark workload of ../shared/bench.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
ARITHMETIC_CHARS = list("0123456789+= ")


def char_tokenizer(chars: list[str]) -> PreTrainedTokenizerFast:
    """Tokenizer with ids: specials (0-3), tags (4-7), then one id per character."""
    return build_tokenizer(SPECIAL_TOKENS + TAG_TOKENS + list(chars))


def build_tokenizer(vocab_list: list[str]) -> PreTrainedTokenizerFast:
    """Tokenizer whose id i is vocab_list[i]; single characters are split one token each, and every
    multi-character entry (`<eos>`, `<think>`, ...) is matched whole.

    Prompts are left-padded (batched generation appends on the right). `<bos>` is written by the
    tasks' prompt text, not by a post-processor, so what is scored is exactly what the text says.
    """
    if len(set(vocab_list)) != len(vocab_list):
        raise ValueError("tokenizer vocabulary has duplicate entries")
    vocab = {token: i for i, token in enumerate(vocab_list)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([t for t in vocab_list if len(t) > 1])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        padding_side="left",
    )
    tokenizer.is_grpo_builtin = True   # prompts are raw task text, not a chat template (tasks.render_prompt)
    return tokenizer
