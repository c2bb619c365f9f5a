"""The model presets: sizes of the random-init models grpo/engine/models.py builds in code (--model tiny, small, seed,
qwen2_0.5b). Plain data, so the config can check --model without importing the model code."""

from __future__ import annotations

MODEL_PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=512),
    "small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                  intermediate_size=2048),
    # The seed notebook's toy Llama (its vocabulary of 32 comes from the seed_tokens task).
    "seed": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=512),
    # The shape of Qwen2-0.5B (GQA, q/k/v biases), random init: for GPU benchmarks, nothing downloaded.
    "qwen2_0.5b": dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, intermediate_size=4864, rope_theta=1_000_000.0),
}


def is_preset(model: str) -> bool:
    return model in MODEL_PRESETS
