"""Rule rewards: pure functions of (completion text, example) -> float, in a registry, and DAPO's
length shaping, a function of completion lengths.

The text a reward sees is `example.completion_prefix + completion`, with `<eos>`/`<pad>` removed:
the response as the model wrote it, never the prompt.
"""

from __future__ import annotations

import re
from typing import Callable

import torch

from grpo.setup.tasks import Example

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


_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def extract_answer(response: str) -> str | None:
    """The answer a response gives, read tolerantly: the content of the first <answer>...</answer>; else of
    the last \\boxed{...}; else the last number in the text (a pretrained model's prose, "7 + 6 equals
    13"); None if there is none of these."""
    tagged = _ANSWER.search(response)
    if tagged:
        return tagged.group(1).strip()
    boxed = _BOXED.findall(response)
    if boxed:
        return boxed[-1].strip()
    numbers = _NUMBER.findall(response)
    return numbers[-1] if numbers else None


def _as_number(text: str) -> float | None:
    """The number `text` is ("1,352", "68.0", "-3", "78." all parse), or None."""
    text = text.strip().rstrip(".")
    if _NUMBER.fullmatch(text) is None:
        return None
    return float(text.replace(",", ""))


def answers_match(given: str, expected: str) -> bool:
    """Equal as numbers when both are numbers ("68.0" == "68", "1,352" == "1352"), else as stripped text."""
    a, b = _as_number(given), _as_number(expected)
    return a == b if a is not None and b is not None else given.strip() == expected.strip()


def correct_extracted_reward(response: str, example: Example) -> float:
    """1 if the answer extract_answer reads (answer tag, else \\boxed{}, else the last number) matches the
    example's answer (answers_match), else 0. For pretrained models, whose first completions are prose."""
    given = extract_answer(response)
    return float(given is not None and answers_match(given, example.answer))


def format_partial_reward(response: str, example: Example) -> float:
    """Partial credit for the format, a fifth for each of five checks: <think>, </think>, <answer> and
    </answer> each appear exactly once, and the first answer tag holds a parsable answer (a number when the
    example's answer is one, else any non-blank text). Order is not checked: `format` is the strict reward."""
    checks = [response.count(tag) == 1 for tag in _TAGS]
    match = _ANSWER.search(response)
    content = match.group(1) if match else ""
    parsable = _as_number(content) is not None if _as_number(example.answer) is not None else bool(content.strip())
    return (sum(checks) + parsable) / 5


def format_if_correct_reward(response: str, example: Example) -> float:
    """format_partial's credit paid only alongside a correct answer (correct_extracted 1), else 0: the tag
    format as a bonus a wrong answer cannot collect. Ungated, well-formed tags around any number earned
    format_partial's full credit for certain, and a SmolLM2 run learned that instead of the sums."""
    return format_partial_reward(response, example) if correct_extracted_reward(response, example) else 0.0


REWARDS: dict[str, Callable[[str, Example], float]] = {
    "correct": correct_reward,
    "format": format_reward,
    "correct_extracted": correct_extracted_reward,
    "format_partial": format_partial_reward,
    "format_if_correct": format_if_correct_reward,
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
