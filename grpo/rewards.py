"""Rule rewards: pure functions of (completion text, example) -> float, in a registry, and DAPO's
length shaping, a function of completion lengths.

The text a reward sees is `example.completion_prefix + completion`, with `<eos>`/`<pad>` removed:
the response as the model wrote it, never the prompt.
"""

from __future__ import annotations

import re
from typing import Callable

import torch

from grpo.tasks import Example

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_WELL_FORMED = re.compile(r"<think>(?:(?!<think>|</think>|<answer>|</answer>).)*</think>"
                          r"<answer>(?:(?!<think>|</think>|<answer>|</answer>).)*</answer>", re.DOTALL)


def correct_reward(response: str, example: Example) -> float:
    """1 if the text inside the first <answer>...</answer> equals the answer (spaces stripped), else 0."""
    match = _ANSWER.search(response)
    return float(match is not None and match.group(1).strip() == example.answer)


def format_reward(response: str, example: Example) -> float:
    """1 if the response is exactly <think>...</think><answer>...</answer> (no stray tags), else 0."""
    return float(_WELL_FORMED.fullmatch(response.strip()) is not None)


REWARDS: dict[str, Callable[[str, Example], float]] = {
    "correct": correct_reward,
    "format": format_reward,
}


def response_text(completion: str, example: Example) -> str:
    """What a reward scores: the opened prefix plus the completion, without EOS or padding."""
    return example.completion_prefix + completion.replace("<eos>", "").replace("<pad>", "")


def score(responses: list[str], examples: list[Example], weights: dict[str, float]) -> dict[str, list[float]]:
    """Each weighted reward function's values, one per response (weights not yet applied)."""
    return {name: [REWARDS[name](text, ex) for text, ex in zip(responses, examples)] for name in weights}


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, penalty: float) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), scaled to reach -penalty at max_len:
    0 for |o| <= max_len - buffer, then linear down to -penalty at |o| = max_len (lengths in tokens,
    EOS included; a truncated completion has length max_len). Any shape."""
    start = max_len - buffer
    return -penalty * ((lengths.float() - start) / buffer).clamp(min=0.0, max=1.0)
