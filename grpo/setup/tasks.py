"""Tasks: prompts with known answers, a held-out split, and demonstrations for the warm start.

A task is a class registered under its name with `@register_task("name")`, which puts it in TASKS (the
names --task accepts). It owns its tokenizer (built in code) and yields `Example`s. Rewards never look at
the prompt, only at the completion (the seed notebook's reward scanned the prompt, whose in-context
example already contains an answer).

A new task is one file: a class with the `Task` methods, a `warmstart_steps`, and its options declared on
the class as `options = (TaskOption(name, default, help, parse), ...)`; `make_task(cfg)` passes each one
to the class as a keyword argument. The user sets one with `grpo train --task <name> --task-option
NAME=VALUE` (repeatable; `TrainConfig(task_option={NAME: "VALUE"})`): the config checks, when it is built,
that the task is registered and that every NAME is one of its options whose `parse` accepts the VALUE
(else one `grpo: error:` line naming it). An option not given takes its declared default. Its module must
be imported before the config is built (the built-in tasks are this module's; a test imports its own).
A task whose text is for a real model's tokenizer sets `needs_real_model = True` (a preset --model is refused).
The options the built-in tasks had before the registry keep their own flags and config.json keys
(--digits, --operands, --rg-dataset): their TaskOption names that TrainConfig field, which holds their
default and --help. Everything that changes a task's data must be an option: the task's identity (the
warm-start cache key) is built from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from grpo import GrpoError
from grpo.setup.tokenizer import ARITHMETIC_CHARS, SPECIAL_TOKENS, TAG_TOKENS, build_tokenizer, char_tokenizer

SYSTEM_PROMPT = ("Think about the problem inside <think> </think>, then write only the final answer inside "
                 "<answer> </answer>, like <think>reasoning</think><answer>42</answer>.")


@dataclass(frozen=True)
class Example:
    prompt: str                 # the text a built-in (character) tokenizer model sees, `<bos>` included
    answer: str                 # the reference answer, compared with the text inside <answer></answer>
    completion_prefix: str = ""  # response text the prompt already opened (seed: "<think>")
    question: str = ""          # the problem in words, for a real model's chat template
    difficulty: str = ""        # the example's difficulty level ("d2"), "" when the task has none
    index: int = -1             # the problem's number within its task (stable across runs)
    identity: str = ""          # the problem up to what leaves it the same problem (arithmetic: sorted
                                # operands, "3+5" for 5+3); "" when each index is its own problem


# One-shot prompting (--worked-example): a solved problem shown before the real one, in the tag format.
WORKED_QUESTION = "What is 38+47?"
WORKED_ANSWER = "<think>8+7=15, write 5 carry 1. 3+4+1=8. So 38+47=85.</think><answer>85</answer>"


def render_prompt(example: Example, tokenizer: PreTrainedTokenizerBase, worked_example: bool = False) -> str:
    """The prompt text for this tokenizer: the raw task text for the built-in character tokenizers; for
    a real Hugging Face tokenizer, the question in its chat template (when it has one) after a system
    instruction that asks for <think>...</think><answer>...</answer>. The tags are then plain text.
    worked_example: a solved question and its tagged answer come first, as an earlier user/assistant turn."""
    if getattr(tokenizer, "is_grpo_builtin", False):
        return example.prompt
    if not example.question:
        raise GrpoError("this task has no text form for a real tokenizer; use --task arithmetic or a preset model")
    shots = [(WORKED_QUESTION, WORKED_ANSWER)] if worked_example else []
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        for question, answer in shots:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": example.question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token or ""
    solved = "".join(f"Question: {question}\nAnswer: {answer}\n" for question, answer in shots)
    return f"{bos}{SYSTEM_PROMPT}\n{solved}Question: {example.question}\nAnswer: "


@dataclass(frozen=True)
class TaskOption:
    """An option a task declares: a keyword argument of its class, set by --task-option NAME=VALUE."""

    name: str                                 # the class's keyword argument, and NAME in --task-option
    default: object = None                    # the value when it is not given (JSON: the warm-start key holds it)
    help: str = ""                            # one line: what it changes (errors about the task's options list it)
    parse: Callable[[str], object] = str      # VALUE's text -> the value; a ValueError or GrpoError rejects it
    field: str = ""                           # instead of --task-option, the TrainConfig field that holds it, with
                                              # its flag, default and --help (the options built-in tasks had before)


TASKS: dict[str, type] = {}


def register_task(name: str):
    """Class decorator: TASKS[name] = the class, whose `name` becomes `name` (the --task value)."""

    def register(cls: type) -> type:
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered, by {TASKS[name].__qualname__}")
        names = [option.name for option in cls.options]
        if len(set(names)) != len(names):
            raise ValueError(f"task {name!r} declares an option twice: {names}")
        cls.name = name
        TASKS[name] = cls
        return cls

    return register


class Task(Protocol):
    name: str                             # its registry key, set by register_task
    tokenizer: PreTrainedTokenizerBase    # None: the task is text for a real model's tokenizer
    options: tuple[TaskOption, ...]       # the keyword arguments the class takes (class attribute)
    warmstart_steps: int                  # a preset model's default --warmstart-steps (class attribute)

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


def parse_range(text: str, name: str) -> list[int]:
    """'2' -> [2], '1-4' -> [1, 2, 3, 4]; a malformed or empty range is a GrpoError naming the flag."""
    try:
        low, _, high = text.partition("-")
        values = list(range(int(low), int(high or low) + 1))
    except ValueError:
        values = []
    if not values:
        raise GrpoError(f"{name} takes a number or a range like 1-4, got {text!r}")
    return values


@register_task("arithmetic")
class Arithmetic:
    """Sums of `operands` numbers of `digits` digits each, over a mixture of difficulty levels.

    --digits 1-3 mixes 1-, 2- and 3-digit sums in equal shares (1-digit numbers are 0-9, d-digit ones
    10^(d-1) .. 10^d - 1); each example carries its level's label ("d2"; "d2x3" when the operand count
    varies too). A level's problems are numbered 0 .. count^operands - 1, and an example's `index` is
    unique across levels (the per-prompt ledger keys on it).

    A problem's identity is its canonical form, the sorted multiset of its operands (`canonical`): 3+5
    and 5+3 are one problem, since the sum commutes. Each level holds out its own eval problems, distinct
    canonical forms (half of a level's forms when it has fewer than twice its share: 27 of the 55 one-digit
    pairs), and training never draws any ordering of one. Defaults (--digits 1-3): 27 + 200 + 200 = 427.

    The completion is `<think>scratchpad</think><answer>sum</answer>`. The scratchpad adds column by
    column from the units, writing a carry only when there is one ("7+5=12 4+8+1=13" for 47+85). Its
    length is free: a demonstration may restate the problem first ("47+85") and may check the sum by
    adding the columns again in reverse operand order, each by a coin of the example's index, so the
    warm-started policy writes anything from the bare columns to about twice as many tokens for the
    same answer, and the correctness reward is blind to which.
    """

    options = (TaskOption("digits", field="digits"), TaskOption("operands", field="operands"))
    num_eval = 600            # held-out problems, spread evenly over the levels
    # Greedy held-out accuracy after it (defaults, 1 thread, 2026-12-06): .79 (d1 .78, d2 .86, d3 .73) with
    # --warmstart-seed 0, .45 (.78, .64, .22) with 1: partial, room for RL, and far apart by warm-start seed.
    warmstart_steps = 300

    def __init__(self, digits: str = "2", operands: str = "2") -> None:
        self.tokenizer = char_tokenizer(ARITHMETIC_CHARS)
        self.levels = [(d, k) for k in parse_range(operands, "--operands") for d in parse_range(digits, "--digits")]
        if any(d < 1 or d > 6 for d, _ in self.levels) or any(k < 2 or k > 4 for _, k in self.levels):
            raise GrpoError(f"--digits must lie in 1-6 and --operands in 2-4, got {digits!r} and {operands!r}")
        several_counts = len({k for _, k in self.levels}) > 1
        self.labels = [f"d{d}x{k}" if several_counts else f"d{d}" for d, k in self.levels]
        self.sizes = [self._count(d) ** k for d, k in self.levels]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        generator = torch.Generator().manual_seed(1234)
        per_level = self.num_eval // len(self.levels)
        self.held_out = [self._distinct(level, min(per_level, self._forms(level) // 2), generator)
                         for level in range(len(self.levels))]
        self._held_out_forms = [{self.canonical(level, n) for n in held} for level, held in enumerate(self.held_out)]
        # Round-robin over the levels, so the first n eval prompts cover every level alike.
        self._eval = [self._example(level, held[i]) for i in range(max(map(len, self.held_out)))
                      for level, held in enumerate(self.held_out) if i < len(held)]

    @staticmethod
    def _count(digits: int) -> int:
        return 10 if digits == 1 else 9 * 10 ** (digits - 1)

    def _forms(self, level: int) -> int:
        """Canonical forms of a level: multisets of `operands` numbers out of `count`, C(count + k - 1, k)."""
        digits, operands = self.levels[level]
        return math.comb(self._count(digits) + operands - 1, operands)

    def canonical(self, level: int, number: int) -> tuple[int, ...]:
        """The problem's identity: its operands sorted (a sum is the same problem in any order)."""
        return tuple(sorted(self.operands_of(level, number)))

    def _distinct(self, level: int, n: int, generator) -> list[int]:
        """n problem numbers of `level` with distinct canonical forms, drawn with generator (from a
        permutation when the level is small), each in the order it was drawn."""
        size, chosen = self.sizes[level], {}
        numbers = iter(torch.randperm(size, generator=generator).tolist()) if size <= 100_000 else None
        while len(chosen) < n:
            number = next(numbers) if numbers is not None else int(torch.randint(size, (), generator=generator))
            chosen.setdefault(self.canonical(level, number), number)
        return list(chosen.values())

    def operands_of(self, level: int, number: int) -> list[int]:
        digits, count = self.levels[level]
        base, low = self._count(digits), 0 if digits == 1 else 10 ** (digits - 1)
        return [low + number // base ** i % base for i in range(count)]

    def _example(self, level: int, number: int) -> Example:
        terms = self.operands_of(level, number)
        text = "+".join(map(str, terms))
        return Example(prompt=f"<bos>{text}=", answer=str(sum(terms)), question=f"What is {text}?",
                       difficulty=self.labels[level], index=self.offsets[level] + number,
                       identity="+".join(map(str, sorted(terms))))

    def sample(self, generator: torch.Generator, n: int) -> list[Example]:
        """n training problems: a level uniformly, then a problem of it whose canonical form (any
        ordering of its operands) is not held out."""
        out = []
        for _ in range(n):
            level = int(torch.randint(len(self.levels), (), generator=generator))
            number = int(torch.randint(self.sizes[level], (), generator=generator))
            while self.canonical(level, number) in self._held_out_forms[level]:   # redraw within the level
                number = int(torch.randint(self.sizes[level], (), generator=generator))
            out.append(self._example(level, number))
        return out

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def demonstration(self, example: Example) -> str:
        terms = [int(x) for x in example.prompt.removeprefix("<bos>").rstrip("=").split("+")]
        columns = column_sums(terms)
        # The optional parts are coins of the example's index, so a problem always gets the same demo:
        # a restatement for odd indices, a check for a third of them (an unnumbered example gets neither).
        restate = example.index >= 0 and example.index % 2 == 1
        check = example.index >= 0 and (example.index // 2) % 3 == 0
        parts = ["+".join(map(str, terms))] if restate else []
        parts += columns + (column_sums(terms[::-1]) if check else [])
        # Built-in tokenizers end a completion with the literal "<eos>" token; others get their own EOS.
        return f"<think>{' '.join(parts)}</think><answer>{sum(terms)}</answer><eos>"


def parse_share(text: str) -> float:
    """'0.25' -> 0.25: a share in [0, 1); ValueError otherwise."""
    share = float(text)
    if not 0 <= share < 1:
        raise ValueError(f"a share must lie in [0, 1), got {text}")
    return share


@register_task("arithmetic_rambling")
class ArithmeticRambling(Arithmetic):
    """Arithmetic whose warm start also shows wrong answers that ramble: room for Dr. GRPO's length bias.

    A share `rambling` of the demonstrations (a coin of the example's index) writes the column sums 1, 2
    or 3 times (a second coin) and then a wrong answer, the sum plus 1; the rest are Arithmetic's. So the
    warm-started policy's wrong completions vary in length (bare columns to three passes, a free length
    the reward is blind to) and are longer than its right ones on average: the length is correlated with
    correctness within a prompt, which the 1/|o| bias needs to move any length (paper-claims.md R3's
    corollary). With Arithmetic's demonstrations alone the wrong completions are the model's slips, of the
    right answer's length. A task of its own, not an Arithmetic option: an option would change the
    identity (the warm-start cache key) of every arithmetic config.
    """

    options = Arithmetic.options + (TaskOption(
        "rambling", 0.25, "share of demonstrations that repeat the column sums 1-3 times and answer wrong",
        parse_share),)

    def __init__(self, digits: str = "2", operands: str = "2", rambling: float = 0.25) -> None:
        super().__init__(digits, operands)
        self.rambling = rambling

    def demonstration(self, example: Example) -> str:
        # Knuth's multiplicative hash spreads the index over [0, 1): a coin independent of index % 6,
        # which sets Arithmetic's restatement and check.
        coin = (example.index * 2654435761) % 2 ** 32 / 2 ** 32
        if example.index < 0 or coin >= self.rambling:
            return super().demonstration(example)
        terms = [int(x) for x in example.prompt.removeprefix("<bos>").rstrip("=").split("+")]
        passes = 1 + example.index % 3
        return f"<think>{' '.join(column_sums(terms) * passes)}</think><answer>{sum(terms) + 1}</answer><eos>"


def column_sums(terms: list[int]) -> list[str]:
    """The column additions from the units up: "7+5=12", then "4+8+1=13" (the carry only when there is one)."""
    steps, carry = [], 0
    for column in range(max(len(str(t)) for t in terms)):
        digits = [t // 10 ** column % 10 for t in terms if t >= 10 ** column or column == 0]
        total = sum(digits) + carry
        steps.append("+".join(map(str, digits + ([carry] if carry else []))) + f"={total}")
        carry = total // 10
    return steps


SEED_LETTERS = list("abcdefghijklmnopqrstuvwx")   # 24 plain tokens: ids 4-24 and 29-31


@register_task("seed_tokens")
class SeedTokens(SplitTask):
    """The seed notebook's toy, without its bugs.

    Vocabulary of 32 ids with `<think>`, `</think>`, `<answer>`, `</answer>` at 25-28 as in the seed.
    A question is 10 tokens drawn from the 21 letters at ids 4-24; its 1-token label is the largest
    letter. The prompt is `<bos>`, the seed's fixed in-context example, the question, then `<think>`.
    Each prompt gets its own G completions, and the reward reads only the completion.
    """

    options = ()
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
                       completion_prefix="<think>", index=index)

    def demonstration(self, example: Example) -> str:
        question = example.prompt[-self.question_len - len("<think>"):-len("<think>")]
        top3 = "".join(sorted(question, reverse=True)[:3])
        return f"{top3}</think><answer>{example.answer}</answer><eos>"


@register_task("reasoning_gym")
class ReasoningGym(SplitTask):
    """A procedural dataset of the reasoning-gym package (the `reasoning-gym` extra), for real models:
    questions go through the model's chat template, and `correct` compares the text in <answer> with
    the dataset's reference answer. No demonstrations are written, so the warm start is off by default.
    """

    options = (TaskOption("dataset", field="rg_dataset"),)
    needs_real_model = True   # text for a real tokenizer: a preset --model is refused when the config is built
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
        return Example(prompt="", answer=str(entry["answer"]).strip(), question=entry["question"], index=index)

    def demonstration(self, example: Example) -> str:
        return f"<think></think><answer>{example.answer}</answer><eos>"


def check_task(task: str, task_option: dict[str, str]) -> None:
    """A GrpoError, one line, unless `task` is registered and each --task-option NAME=VALUE in `task_option`
    is one of its options (not one with its own flag) whose parse accepts VALUE."""
    if task not in TASKS:
        raise GrpoError(f"--task {task!r} is not a registered task; choose from {', '.join(sorted(TASKS))}")
    options = {option.name: option for option in TASKS[task].options}
    takes = [f"{o.name} ({o.help}, default {o.default!r})" for o in options.values() if not o.field]
    for name, text in task_option.items():
        option = options.get(name)
        if option is not None and option.field:
            raise GrpoError(f"--task-option {name}: task {task} takes it as --{option.field.replace('_', '-')}")
        if option is None:
            owners = sorted(t for t, cls in TASKS.items() if any(o.name == name and not o.field for o in cls.options))
            raise GrpoError(f"--task-option {name}: task {task} has no such option"
                            + (f" ({name} is an option of task {', '.join(owners)})" if owners else "")
                            + (f"; it takes {'; '.join(takes)}" if takes else "; it takes none"))
        try:
            option.parse(text)
        except (ValueError, GrpoError) as err:
            raise GrpoError(f"--task-option {name}={text}: not a valid value for task {task} ({err})") from None


def task_options(cfg) -> dict:
    """The keyword arguments `cfg` gives its task: each option's config field, its --task-option value
    parsed, or its declared default."""
    values = {}
    for option in TASKS[cfg.task].options:
        if option.field:
            values[option.name] = getattr(cfg, option.field)
        elif option.name in cfg.task_option:
            values[option.name] = option.parse(cfg.task_option[option.name])
        else:
            values[option.name] = option.default
    return values


def task_identity(cfg) -> dict:
    """The task's name and every option that changes its data: an option with its own field at the top
    level (as before the registry, so the warm-start keys of those configs stay the same), the
    --task-option ones under "task_option" (only for a task that declares some)."""
    options = task_options(cfg)
    own = {o.name for o in TASKS[cfg.task].options if not o.field}
    identity = {"task": cfg.task, **{k: v for k, v in options.items() if k not in own}}
    if own:
        identity["task_option"] = {k: v for k, v in options.items() if k in own}
    return identity


def make_task(cfg) -> Task:
    """The task `cfg` names, built with its options."""
    return TASKS[cfg.task](**task_options(cfg))


class PromptPool:
    """--prompt-pool N: N fixed training problems, visited in epochs, as a data set like GSM8K is.

    The pool is the same for every seed and arm (drawn once with a fixed generator, distinct problems:
    no two share an `identity`).
    Epoch e visits it in the order of a permutation drawn from (seed, e); the prompts of a step are the
    next ones in that sequence, so the stream is a function of (seed, step) alone: arms pair, and a
    resumed run continues where it stopped without any state of its own.
    """

    def __init__(self, task: Task, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(4321)
        chosen: dict[object, Example] = {}
        for _ in range(100 * size):                    # a task smaller than the pool ends the search
            for example in task.sample(generator, 1):
                # Distinct problems: 3+5 and 5+3 are one (identity), else one per index.
                chosen.setdefault(example.identity or (example.index, example.prompt, example.question), example)
            if len(chosen) == size:
                break
        if len(chosen) < size:
            raise GrpoError(f"--prompt-pool {size} exceeds the {len(chosen)} distinct training problems found")
        self.examples, self.seed = list(chosen.values()), seed
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders = {epoch: torch.randperm(len(self.examples), generator=generator).tolist()}
        return self._orders[epoch]

    def take(self, start: int, n: int) -> list[Example]:
        """The examples at positions start .. start + n - 1 of the epoch sequence."""
        size, out = len(self.examples), []
        for position in range(start, start + n):
            out.append(self.examples[self._order(position // size)[position % size]])
        return out

    def sample(self, generator: torch.Generator, n: int) -> list[Example]:
        """n examples drawn uniformly from the pool (for dynamic sampling's extra rounds)."""
        return [self.examples[int(i)] for i in torch.randint(len(self.examples), (n,), generator=generator)]
