"""Tasks: prompts with known answers, a held-out split, and demonstrations for the warm start.

A task is an entry in TASKS. It owns its tokenizer (built in code) and yields `Example`s. Rewards
never look at the prompt, only at the completion (the seed notebook's reward scanned the prompt,
whose in-context example already contains an answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from grpo import GrpoError
from grpo.tokenizer import ARITHMETIC_CHARS, SPECIAL_TOKENS, TAG_TOKENS, build_tokenizer, char_tokenizer

TaskName = Literal["arithmetic", "seed_tokens", "reasoning_gym"]


SYSTEM_PROMPT = ("Think about the problem inside <think> </think>, then write only the final answer inside "
                 "<answer> </answer>, like <think>reasoning</think><answer>42</answer>.")


@dataclass(frozen=True)
class Example:
    prompt: str                 # the text a built-in (character) tokenizer model sees, `<bos>` included
    answer: str                 # the reference answer, compared with the text inside <answer></answer>
    completion_prefix: str = ""  # response text the prompt already opened (seed: "<think>")
    question: str = ""          # the problem in words, for a real model's chat template


def render_prompt(example: Example, tokenizer: PreTrainedTokenizerBase) -> str:
    """The prompt text for this tokenizer: the raw task text for the built-in character tokenizers; for
    a real Hugging Face tokenizer, the question in its chat template (when it has one) after a system
    instruction that asks for <think>...</think><answer>...</answer>. The tags are then plain text."""
    if getattr(tokenizer, "is_grpo_builtin", False):
        return example.prompt
    if not example.question:
        raise GrpoError("this task has no text form for a real tokenizer; use --task arithmetic or a preset model")
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": example.question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token or ""
    return f"{bos}{SYSTEM_PROMPT}\nQuestion: {example.question}\nAnswer: "


class Task(Protocol):
    name: str
    tokenizer: PreTrainedTokenizerBase

    def sample(self, generator: torch.Generator, n: int) -> list[Example]:
        """n training examples drawn uniformly (with replacement) from the training split."""

    def eval_examples(self) -> list[Example]:
        """The fixed held-out split, never drawn for training."""

    def demonstration(self, example: Example) -> str:
        """A correct, well-formed completion (ending in `<eos>`) for the supervised warm start."""


def _split(num_items: int, num_eval: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed))
    return order[num_eval:], order[:num_eval]


class SplitTask:
    """Examples by index, with a fixed held-out split: subclasses set the indices and `_example`."""

    train_index: torch.Tensor
    eval_index: torch.Tensor

    def _example(self, index: int) -> Example:
        raise NotImplementedError

    def sample(self, generator: torch.Generator, n: int) -> list[Example]:
        picks = torch.randint(len(self.train_index), (n,), generator=generator)
        return [self._example(int(self.train_index[i])) for i in picks]

    def eval_examples(self) -> list[Example]:
        return [self._example(int(i)) for i in self.eval_index]


class Arithmetic(SplitTask):
    """`a+b=` with two-digit a, b; the completion is `<think>scratchpad</think><answer>a+b</answer>`.

    The demonstrations' scratchpad adds digit by digit and writes the carry only when there is one
    ("7+5=12 4+8+1=13" for 47+85, "2+4=6 1+3=4" for 12+34), so completions vary in length and a
    model can produce right and wrong answers of different lengths (the Dr. GRPO length-bias claim).
    """

    name = "arithmetic"
    num_eval = 500
    warmstart_steps = 150     # greedy held-out accuracy ~29% after it: room for RL

    def __init__(self) -> None:
        self.tokenizer = char_tokenizer(ARITHMETIC_CHARS)
        self.pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
        self.train_index, self.eval_index = _split(len(self.pairs), self.num_eval, seed=1234)

    def _example(self, index: int) -> Example:
        a, b = self.pairs[index]
        return Example(prompt=f"<bos>{a}+{b}=", answer=str(a + b), question=f"What is {a}+{b}?")

    def demonstration(self, example: Example) -> str:
        a, b = (int(x) for x in example.prompt.removeprefix("<bos>").rstrip("=").split("+"))
        # Built-in tokenizers end a completion with the literal "<eos>" token; others get their own EOS.
        units = a % 10 + b % 10
        carry = units // 10
        tens = f"{a // 10}+{b // 10}+1={a // 10 + b // 10 + 1}" if carry else f"{a // 10}+{b // 10}={a // 10 + b // 10}"
        return f"<think>{a % 10}+{b % 10}={units} {tens}</think><answer>{a + b}</answer><eos>"


SEED_LETTERS = list("abcdefghijklmnopqrstuvwx")   # 24 plain tokens: ids 4-24 and 29-31


class SeedTokens(SplitTask):
    """The seed notebook's toy, without its bugs.

    Vocabulary of 32 ids with `<think>`, `</think>`, `<answer>`, `</answer>` at 25-28 as in the seed.
    A question is 10 tokens drawn from the 21 letters at ids 4-24; its 1-token label is the largest
    letter. The prompt is `<bos>`, the seed's fixed in-context example, the question, then `<think>`.
    Each prompt gets its own G completions, and the reward reads only the completion.
    """

    name = "seed_tokens"
    warmstart_steps = 15      # greedy held-out accuracy ~50% after it (the task is easy)
    question_len = 10
    in_context = "<think>bcd</think><answer>g</answer>"
    num_eval = 256

    def __init__(self) -> None:
        vocab = SPECIAL_TOKENS + SEED_LETTERS[:21] + TAG_TOKENS + SEED_LETTERS[21:]
        self.tokenizer = build_tokenizer(vocab)
        self.letters = SEED_LETTERS[:21]
        questions = torch.randint(len(self.letters), (4096, self.question_len),
                                  generator=torch.Generator().manual_seed(1234))
        self.questions = ["".join(self.letters[i] for i in row) for row in questions.tolist()]
        self.train_index, self.eval_index = _split(len(self.questions), self.num_eval, seed=1234)

    def _example(self, index: int) -> Example:
        question = self.questions[index]
        return Example(prompt=f"<bos>{self.in_context}{question}<think>", answer=max(question),
                       completion_prefix="<think>")

    def demonstration(self, example: Example) -> str:
        question = example.prompt[-self.question_len - len("<think>"):-len("<think>")]
        top3 = "".join(sorted(question, reverse=True)[:3])
        return f"{top3}</think><answer>{example.answer}</answer><eos>"


class ReasoningGym(SplitTask):
    """A procedural dataset of the reasoning-gym package (the `reasoning-gym` extra), for real models:
    questions go through the model's chat template, and `correct` compares the text in <answer> with
    the dataset's reference answer. No demonstrations are written, so the warm start is off by default.
    """

    name = "reasoning_gym"
    warmstart_steps = 0
    size = 5000
    num_eval = 500

    def __init__(self, dataset: str = "basic_arithmetic") -> None:
        try:
            import reasoning_gym
        except ImportError:
            raise GrpoError("--task reasoning_gym needs the extra: pip install 'grpo-lab[reasoning-gym]'") from None
        try:
            self.data = reasoning_gym.create_dataset(dataset, size=self.size, seed=1234)
        except Exception as err:     # the package raises its own error types for unknown names
            raise GrpoError(f"reasoning-gym has no dataset {dataset!r} ({err})") from None
        self.tokenizer = None        # a real model's tokenizer is used
        self.train_index, self.eval_index = _split(self.size, self.num_eval, seed=1234)

    def _example(self, index: int) -> Example:
        entry = self.data[index]
        return Example(prompt="", answer=str(entry["answer"]).strip(), question=entry["question"])

    def demonstration(self, example: Example) -> str:
        return f"<think></think><answer>{example.answer}</answer><eos>"


TASKS: dict[str, Callable[[], Task]] = {
    "arithmetic": Arithmetic,
    "seed_tokens": SeedTokens,
    "reasoning_gym": ReasoningGym,
}


# The config fields a task takes, as {the task's keyword: config field}. Everything that changes a
# task's data must be listed here: the task's identity (the warm-start cache key) is built from it.
TASK_OPTIONS: dict[str, dict[str, str]] = {
    "reasoning_gym": {"dataset": "rg_dataset"},
}


def task_options(cfg) -> dict:
    """The keyword arguments `cfg` gives its task."""
    return {keyword: getattr(cfg, name) for keyword, name in TASK_OPTIONS.get(cfg.task, {}).items()}


def task_identity(cfg) -> dict:
    """The task's name and every option that changes its data."""
    return {"task": cfg.task, **task_options(cfg)}


def make_task(cfg) -> Task:
    """The task `cfg` names, built with its options."""
    return TASKS[cfg.task](**task_options(cfg))
