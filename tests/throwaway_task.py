"""A task added in one file, nothing in grpo/ edited: tests/test_task_registry.py imports it and trains on it.

`echo`: the prompt is a number of `width` digits (its own option, `--task-option width=N`), the answer is
that number. Importing this module registers it.
"""

from __future__ import annotations

import torch

from grpo.setup.tasks import Example, TaskOption, register_task
from grpo.setup.tokenizer import ARITHMETIC_CHARS, char_tokenizer


def parse_width(text: str) -> int:
    """The option's text -> digits per number, 1 to 6 (a ValueError names the range)."""
    width = int(text)
    if not 1 <= width <= 6:
        raise ValueError(f"width must be 1-6, got {width}")
    return width


@register_task("echo")
class Echo:
    options = (TaskOption("width", default=2, help="digits per number", parse=parse_width),)
    warmstart_steps = 0
    num_eval = 8

    def __init__(self, width: int) -> None:
        self.tokenizer = char_tokenizer(ARITHMETIC_CHARS)
        self.low, self.count = 10 ** (width - 1), 9 * 10 ** (width - 1)
        order = torch.randperm(self.count, generator=torch.Generator().manual_seed(0)).tolist()
        self.eval_index, self.train_index = order[:self.num_eval], order[self.num_eval:]

    def _example(self, index: int) -> Example:
        number = str(self.low + index)
        return Example(prompt=f"<bos>{number}=", answer=number, question=f"Repeat {number}.", index=index)

    def sample(self, generator: torch.Generator, n: int) -> list[Example]:
        picks = torch.randint(len(self.train_index), (n,), generator=generator).tolist()
        return [self._example(self.train_index[i]) for i in picks]

    def eval_examples(self) -> list[Example]:
        return [self._example(i) for i in self.eval_index]

    def demonstration(self, example: Example) -> str:
        return f"<think></think><answer>{example.answer}</answer><eos>"
