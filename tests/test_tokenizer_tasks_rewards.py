"""Tests for grpo/setup/tokenizer.py, grpo/setup/tasks.py and grpo/setup/rewards.py: ids by hand, splits, demonstrations,
and a table of hand-written completions with the rewards they must get."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from grpo.engine.sampler import completion_mask, decode_completions, encode_prompts
from grpo.setup.config import PRETRAINED_DEFAULTS
from grpo.setup.rewards import (REWARDS, answers_match, correct_extracted_reward, correct_reward, extract_answer,
                          format_if_correct_reward, format_partial_reward, format_reward, response_text, score)
from grpo.setup.tasks import TASKS, Arithmetic, Example, PromptPool, SeedTokens

# ---------------------------------------------------------------- tokenizers

ARITHMETIC_VOCAB = (["<pad>", "<bos>", "<eos>", "<unk>", "<think>", "</think>", "<answer>", "</answer>"]
                    + list("0123456789") + ["+", "=", " "])


@pytest.fixture(scope="module")
def arithmetic():
    return Arithmetic("2")


@pytest.fixture(scope="module")
def seed_tokens():
    return SeedTokens()


def test_arithmetic_vocabulary_ids_are_fixed(arithmetic):
    tok = arithmetic.tokenizer
    assert len(tok) == 21
    for i, token in enumerate(ARITHMETIC_VOCAB):
        assert tok.convert_tokens_to_ids(token) == i, token
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_tokens_to_ids("0") == 8 and tok.convert_tokens_to_ids("9") == 17
    assert tok.padding_side == "left"


def test_arithmetic_prompt_is_one_token_per_character(arithmetic):
    ids = arithmetic.tokenizer("<bos>12+34=", add_special_tokens=False)["input_ids"]
    # <bos>=1, '1'=8+1, '2'=8+2, '+'=18, '3'=8+3, '4'=8+4, '='=19: 7 tokens, no BOS added twice
    assert ids == [1, 9, 10, 18, 11, 12, 19]


def test_arithmetic_completion_tokens_and_round_trip(arithmetic):
    text = "<think>2+4=6 1+3=4</think><answer>46</answer><eos>"
    ids = arithmetic.tokenizer(text, add_special_tokens=False)["input_ids"]
    # <think>, '2' '+' '4' '=' '6' ' ' '1' '+' '3' '=' '4', </think>, <answer>, '4' '6', </answer>, <eos>
    assert ids == [4, 10, 18, 12, 19, 14, 20, 9, 18, 11, 19, 12, 5, 6, 12, 14, 7, 2]
    assert arithmetic.tokenizer.decode(ids, skip_special_tokens=False) == text


def test_unknown_character_maps_to_unk(arithmetic):
    assert arithmetic.tokenizer("1x2", add_special_tokens=False)["input_ids"] == [9, 3, 10]


def test_seed_tokens_vocabulary(seed_tokens):
    tok = seed_tokens.tokenizer
    assert len(tok) == 32
    # specials 0-3, letters a..u at 4-24, the four tags at 25-28 (as in the seed), v w x at 29-31
    assert [tok.convert_tokens_to_ids(t) for t in ["<pad>", "<bos>", "<eos>", "<unk>"]] == [0, 1, 2, 3]
    assert [tok.convert_tokens_to_ids(t) for t in ["<think>", "</think>", "<answer>", "</answer>"]] == [25, 26, 27, 28]
    assert tok.convert_tokens_to_ids("a") == 4 and tok.convert_tokens_to_ids("u") == 24
    assert [tok.convert_tokens_to_ids(t) for t in "vwx"] == [29, 30, 31]


def test_seed_tokens_prompt_shape(seed_tokens):
    example = seed_tokens.sample(torch.Generator().manual_seed(0), 1)[0]
    ids = seed_tokens.tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    # <bos> + in-context "<think>bcd</think><answer>g</answer>" (<think> b c d </think> <answer> g </answer>:
    # 8 tokens) + 10 question letters + <think>  =  1 + 8 + 10 + 1 = 20 tokens
    assert len(ids) == 20
    assert ids[0] == 1 and ids[-1] == 25
    question = example.prompt[-len("<think>") - 10:-len("<think>")]
    assert all(c in "abcdefghijklmnopqrstu" for c in question)
    assert example.answer == max(question)
    assert example.completion_prefix == "<think>"


# ---------------------------------------------------------------- tasks: splits and demonstrations

def test_seed_tokens_eval_split_is_disjoint_from_training_draws(seed_tokens):
    eval_prompts = {e.prompt for e in seed_tokens.eval_examples()}
    assert len(eval_prompts) == seed_tokens.num_eval
    drawn = {e.prompt for e in seed_tokens.sample(torch.Generator().manual_seed(3), 20_000)}
    assert not drawn & eval_prompts
    assert set(seed_tokens.train_index.tolist()).isdisjoint(seed_tokens.eval_index.tolist())


@pytest.mark.parametrize(("digits", "operands"), [("1-3", "2"), ("2", "2"), ("1-2", "2-3")])
def test_arithmetic_eval_split_is_disjoint_from_training_draws(digits, operands):
    task = Arithmetic(digits, operands)
    held_out = {e.prompt for e in task.eval_examples()}
    drawn = task.sample(torch.Generator().manual_seed(3), 20_000)
    assert not {e.prompt for e in drawn} & held_out
    # every level is drawn about equally often, and the eval set holds every level
    levels = {e.difficulty for e in task.eval_examples()}
    assert {e.difficulty for e in drawn} == levels == set(task.labels)
    counts = [sum(e.difficulty == level for e in drawn) for level in task.labels]
    assert max(counts) - min(counts) < 0.1 * len(drawn) / len(counts)


def operand_multiset(example: Example) -> tuple[int, ...]:
    """The problem's canonical form, read from its prompt text: "<bos>5+3=" -> (3, 5)."""
    return tuple(sorted(int(x) for x in example.prompt.removeprefix("<bos>").rstrip("=").split("+")))


ARITHMETIC_OPTIONS = [("1-3", "2"), ("1", "2"), ("2", "2"), ("3", "2"), ("1-2", "2-3"), ("1", "3"), ("1", "4"),
                      ("4-6", "3")]


@pytest.mark.parametrize(("digits", "operands"), ARITHMETIC_OPTIONS)
def test_no_training_problem_is_a_held_out_one_reordered(digits, operands):
    """A sum is the same problem in any operand order: no training draw, and no --prompt-pool problem,
    is a held-out problem with its operands permuted (old code: 3+5 held out, 5+3 trained on)."""
    task = Arithmetic(digits, operands)
    held_out = [operand_multiset(e) for e in task.eval_examples()]
    assert len(set(held_out)) == len(held_out)                          # no held-out problem twice either
    drawn = task.sample(torch.Generator().manual_seed(3), 20_000)
    assert not {operand_multiset(e) for e in drawn} & set(held_out)
    pool = PromptPool(task, 20, seed=0).examples
    assert not {operand_multiset(e) for e in pool} & set(held_out)
    assert len({operand_multiset(e) for e in pool}) == 20               # 20 distinct problems, not orderings


def test_one_digit_pairs_split_by_canonical_form():
    """--digits 1: 55 pairs up to order (C(10 + 1, 2)), 27 of them held out, so training has the other 28,
    and a prompt pool of 29 distinct problems cannot be filled."""
    task = Arithmetic("1")
    assert len(task.eval_examples()) == 27
    trained = {operand_multiset(e) for e in task.sample(torch.Generator().manual_seed(0), 5_000)}
    assert len(trained) == 28
    assert len(PromptPool(task, 28, seed=0).examples) == 28
    from grpo import GrpoError

    with pytest.raises(GrpoError, match="exceeds the 28 distinct"):
        PromptPool(task, 29, seed=0)


def test_arithmetic_levels_by_hand():
    """--digits 1-3: 1-digit numbers are 0-9 (100 sums, 55 up to order, 27 of those held out), 2-digit
    10-99, 3-digit 100-999."""
    task = Arithmetic("1-3")
    assert task.labels == ["d1", "d2", "d3"]
    assert task.sizes == [10 * 10, 90 * 90, 900 * 900]
    assert [len(h) for h in task.held_out] == [27, 200, 200]           # 600 // 3 = 200, capped at 55 // 2
    first = task.eval_examples()[:3]                                    # round-robin over the levels
    assert [e.difficulty for e in first] == ["d1", "d2", "d3"]
    example = task._example(1, 0)                                       # level d2, problem 0: 10 + 10
    assert (example.prompt, example.answer, example.index, example.difficulty) == ("<bos>10+10=", "20", 100, "d2")
    three = Arithmetic("2", "3")._example(0, 90 * 90 + 2)   # base-90 digits of 8102, lowest first: 2, 0, 1
    assert three.prompt == "<bos>12+10+11=" and three.answer == "33"
    assert Arithmetic("1-2", "2-3").labels == ["d1x2", "d2x2", "d1x3", "d2x3"]


@pytest.mark.parametrize("bad", [("0-2", "2"), ("2", "1"), ("x", "2"), ("3-1", "2")])
def test_arithmetic_bad_ranges_are_input_errors(bad):
    from grpo import GrpoError

    with pytest.raises(GrpoError):
        Arithmetic(*bad)


def test_sampling_is_reproducible_and_seed_dependent(arithmetic):
    first = arithmetic.sample(torch.Generator().manual_seed(5), 16)
    again = arithmetic.sample(torch.Generator().manual_seed(5), 16)
    other = arithmetic.sample(torch.Generator().manual_seed(6), 16)
    assert first == again
    assert first != other


@pytest.mark.parametrize(("a", "b", "demo"), [
    (12, 34, "<think>2+4=6 1+3=4</think><answer>46</answer><eos>"),          # no carry
    (47, 85, "<think>7+5=12 4+8+1=13</think><answer>132</answer><eos>"),     # carry written out
    (99, 99, "<think>9+9=18 9+9+1=19</think><answer>198</answer><eos>"),
    (10, 10, "<think>0+0=0 1+1=2</think><answer>20</answer><eos>"),
])
def test_arithmetic_demonstration_by_hand(arithmetic, a, b, demo):
    example = Example(prompt=f"<bos>{a}+{b}=", answer=str(a + b))
    assert arithmetic.demonstration(example) == demo


@pytest.mark.parametrize(("index", "think"), [
    (0, "7+5=12 4+8+1=13 5+7=12 8+4+1=13"),             # even, index // 2 = 0: a check, in reverse order
    (1, "47+85 7+5=12 4+8+1=13 5+7=12 8+4+1=13"),       # odd, 0: restated and checked
    (3, "47+85 7+5=12 4+8+1=13"),                       # odd, index // 2 = 1: restated only
    (2, "7+5=12 4+8+1=13"),                             # even, 1: the bare columns
])
def test_the_scratchpad_length_is_free(arithmetic, index, think):
    """Same problem, four demonstrations from 15 to 37 scratchpad characters: the length is the policy's choice."""
    example = Example(prompt="<bos>47+85=", answer="132", index=index)
    assert arithmetic.demonstration(example) == f"<think>{think}</think><answer>132</answer><eos>"


def test_three_operand_columns_carry_two_digits():
    # 99+99+99 = 297: units 9+9+9 = 27 (carry 2), tens 9+9+9+2 = 29
    example = Example(prompt="<bos>99+99+99=", answer="297")
    assert Arithmetic("2", "3").demonstration(example) == "<think>9+9+9=27 9+9+9+2=29</think><answer>297</answer><eos>"


def test_seed_tokens_demonstration_by_hand(seed_tokens):
    example = Example(prompt=f"<bos>{SeedTokens.in_context}abcdefghiu<think>", answer="u", completion_prefix="<think>")
    # top three letters of "abcdefghiu" in descending order: u, i, h
    assert seed_tokens.demonstration(example) == "uih</think><answer>u</answer><eos>"


@pytest.mark.parametrize("name", ["arithmetic", "seed_tokens"])
def test_every_demonstration_scores_correct_and_well_formed(name):
    """Through the same path as a rollout: tokenize, mask at EOS, decode, add the prefix, score."""
    task = TASKS[name]()
    examples = task.eval_examples() + task.sample(torch.Generator().manual_seed(0), 300)
    demos = [task.demonstration(e) for e in examples]
    ids, _ = encode_prompts(task.tokenizer, demos)
    # encode_prompts left-pads; move each row's padding to the right, as a sampled completion has it
    rows = [row[row != task.tokenizer.pad_token_id] for row in ids]
    completion_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=task.tokenizer.pad_token_id)
    texts = decode_completions(task.tokenizer, completion_ids, completion_mask(completion_ids, task.tokenizer.eos_token_id))
    responses = [response_text(text, e) for text, e in zip(texts, examples)]
    scores = score(responses, examples, {"correct": 1.0, "format": 0.1})
    assert scores["correct"] == [1.0] * len(examples)
    assert scores["format"] == [1.0] * len(examples)


# ---------------------------------------------------------------- rewards

ADD = Example(prompt="<bos>12+34=", answer="46")


@pytest.mark.parametrize(("response", "correct", "well_formed"), [
    ("<think>2+4=6 1+3=4</think><answer>46</answer>", 1.0, 1.0),          # right answer
    ("<think>2+4=6 1+3=4</think><answer>47</answer>", 0.0, 1.0),          # wrong answer, good format
    ("<think>2+4=6 1+3=4</think>46", 0.0, 0.0),                           # answer tags missing
    ("<answer>46</answer>", 1.0, 0.0),                                    # think block missing
    ("<think>a</think><think>b</think><answer>46</answer>", 1.0, 0.0),    # stray second think block
    ("<think>a</think><answer>46</answer></answer>", 1.0, 0.0),           # stray closing tag
    ("<think>a<answer></think><answer>46</answer>", 0.0, 0.0),            # tag inside think: answer is "</think><answer>46"
    ("<think>a</think><answer> 46 </answer>", 1.0, 1.0),                  # spaces around are stripped
    ("<think>a</think><answer>4 6</answer>", 0.0, 1.0),                   # a space inside is not
    ("<think>a</think><answer><answer>46</answer></answer>", 0.0, 0.0),   # nested: first match is "<answer>46"
    ("<think>a</think><answer></answer>", 0.0, 1.0),                      # empty answer
    ("<think>a</think><answer>46", 0.0, 0.0),                             # unclosed answer
    ("x<think>a</think><answer>46</answer>", 1.0, 0.0),                   # text before the think block
    (" <think>a</think><answer>46</answer> ", 1.0, 1.0),                  # outer whitespace is stripped
    ("<think>a</think><answer>46</answer><answer>47</answer>", 1.0, 0.0),  # the first answer counts
    ("<think>a</think><answer>47</answer><answer>46</answer>", 0.0, 0.0),
    ("", 0.0, 0.0),
])
def test_reward_table(response, correct, well_formed):
    assert correct_reward(response, ADD) == correct
    assert format_reward(response, ADD) == well_formed
    assert REWARDS["correct"] is correct_reward and REWARDS["format"] is format_reward


def test_seed_task_prefix_is_added_before_scoring():
    example = Example(prompt=f"<bos>{SeedTokens.in_context}abcdefghiu<think>", answer="u", completion_prefix="<think>")
    completion = "uih</think><answer>u</answer><eos><pad><pad>"
    response = response_text(completion, example)
    assert response == "<think>uih</think><answer>u</answer>"
    assert correct_reward(response, example) == 1.0
    assert format_reward(response, example) == 1.0
    # without the prefix the completion alone is not well formed (its <think> sits in the prompt)
    assert format_reward(completion.replace("<eos>", "").replace("<pad>", ""), example) == 0.0


def test_reward_never_reads_the_prompt():
    # The prompt's in-context example holds "<answer>g</answer>"; a completion without an answer earns
    # nothing even when g is the right answer (the seed scanned the prompt and paid for it).
    example = Example(prompt=f"<bos>{SeedTokens.in_context}abcdefgaaa<think>", answer="g", completion_prefix="<think>")
    response = response_text("gfe</think><eos>", example)
    assert correct_reward(response, example) == 0.0


def test_score_returns_one_list_per_weighted_reward():
    examples = [ADD, ADD]
    responses = ["<think>a</think><answer>46</answer>", "<answer>47</answer>"]
    assert score(responses, examples, {"correct": 1.0, "format": 0.1}) == {"correct": [1.0, 0.0], "format": [1.0, 0.0]}
    assert score(responses, examples, {"format": 2.0}) == {"format": [1.0, 0.0]}


# ---------------------------------------------------------------- rewards for pretrained models

FIXTURES = Path(__file__).parent / "fixtures" / "smollm2_completions.json"


def test_tolerant_extractor_reads_answer_tag_then_boxed_then_last_number():
    assert extract_answer("7+6 <answer> 13 </answer> then 99") == "13"          # the tag wins over numbers
    assert extract_answer("<answer>1</answer><answer>2</answer>") == "1"        # the first tag
    assert extract_answer(r"\boxed{12} or rather \boxed{13}, not 7") == "13"     # the last box
    assert extract_answer("so 7 + 6 equals 13.") == "13"                         # the last number, no period
    assert extract_answer("a total of 1,352 apples and -4") == "-4"
    assert extract_answer("it is 2.50 now") == "2.50"
    assert extract_answer("no digits here") is None


def test_answers_match_as_numbers_else_as_text():
    assert answers_match("1,352", "1352") and answers_match("68.0", "68") and answers_match("78.", "78")
    assert not answers_match("1,35", "135")                 # not a thousands separator: text, and unequal
    assert answers_match(" cat ", "cat") and not answers_match("Cat", "cat")


@pytest.mark.parametrize(("response", "answer", "expected"), [
    ("<think>4+2=6</think><answer>68</answer>", "68", 5 / 5),
    ("<think>4+2=6</think><answer>sixty-eight</answer>", "68", 4 / 5),   # all tags, answer not a number
    ("<think>4+2=6<answer>68</answer>", "68", 4 / 5),                     # </think> missing
    ("<answer>68</answer><answer>5</answer>", "68", 1 / 5),               # answer tags twice: only parsable
    ("</answer>68<answer></think><think>", "68", 4 / 5),                  # each tag once, order not checked;
                                                                          # no <answer>...</answer> pair
    ("<answer> </answer>", "cat", 2 / 5),                                 # text answer: blank is not parsable
    ("<answer>dog</answer>", "cat", 3 / 5),
    ("The answer is 68.", "68", 0.0),
])
def test_format_partial_credit_by_hand(response, answer, expected):
    assert format_partial_reward(response, Example(prompt="", answer=answer)) == pytest.approx(expected, abs=1e-12)


def test_rewards_on_real_smollm2_completions():
    """SmolLM2-135M-Instruct's own first completions (prose, no tags; tests/fixtures): the strict rewards
    give nothing, the tolerant extractor reads the last number, and two of eight are right. Read by hand:
    "...(5 + 7 = 12)..." -> 12 = 12; "...7 + 6 equals 13 and back to itself." -> 13 = 13; the others end on
    329, 329, 12 (for 13), 42, 102 and 436."""
    rows = json.loads(FIXTURES.read_text())["completions"]
    examples = [Example(prompt="", answer=row["answer"], question=row["question"]) for row in rows]
    score = {name: [REWARDS[name](row["completion"], ex) for row, ex in zip(rows, examples)] for name in REWARDS}
    assert score["correct_extracted"] == [1, 0, 0, 1, 0, 0, 0, 0]
    assert score["correct"] == score["format"] == score["format_partial"] == [0] * 8


@pytest.mark.parametrize(("response", "expected"), [
    ("<think>60+40=100, 8+7=15</think><answer>115</answer>", 5 / 5),   # right: format_partial's whole credit
    ("<think>8+7=15<answer>115</answer>", 4 / 5),                       # right, </think> missing
    ("68 + 47 = 115", 0.0),                                             # right in prose: no tag, none parsable
    ("<think>67</think><answer>48</answer>", 0.0),                      # wrong: well formed, paid nothing
    ("<think>115</think><answer>48</answer>", 0.0),                     # wrong: the answer tag is what counts
])
def test_format_if_correct_pays_format_partial_only_on_a_right_answer(response, expected):
    assert format_if_correct_reward(response, HACKED) == pytest.approx(expected, abs=1e-12)


# The SmolLM2 run that found the format hack: for 68+47 it answered `<think>67</think><answer>48</answer>`.
HACKED = Example(prompt="", answer="115", question="What is 68+47?")


def weighted(response: str, example: Example, weights: dict[str, float]) -> float:
    """The total reward the trainer gives: sum over weights of weight * reward (grpo/algorithm/metrics.py's reward/mean)."""
    return sum(weight * REWARDS[name](response, example) for name, weight in weights.items())


def test_the_format_hack_earns_nothing_under_the_pretrained_defaults():
    """By hand, with the defaults correct_extracted 1, format_if_correct 0.5, format_partial 0:
    hack (wrong 48, all four tags once, a number inside): 1*0 + 0.5*0 + 0*1 = 0;
    right in prose ("68 + 47 = 115", last number 115): 1*1 + 0.5*0 + 0*0 = 1;
    right and tagged: 1*1 + 0.5*1 + 0*1 = 1.5, the maximum (the sum of the weights, each reward <= 1).
    The old recommendation, format_partial at 0.5 ungated, paid the hack 0.5 for certain."""
    weights = PRETRAINED_DEFAULTS["reward_weights"]
    hack, prose, tagged = ("<think>67</think><answer>48</answer>", "68 + 47 = 115",
                           "<think>8+7=15, 6+4+1=11</think><answer>115</answer>")
    assert weighted(hack, HACKED, weights) == 0.0
    assert weighted(prose, HACKED, weights) == 1.0
    assert weighted(tagged, HACKED, weights) == 1.5 == sum(weights.values())
    assert weighted(hack, HACKED, {"correct_extracted": 1.0, "format_partial": 0.5}) == 0.5     # the old hack


def test_under_the_pretrained_defaults_only_a_right_answer_earns_and_the_maximum_needs_one():
    """2000 responses assembled at random (seed 0): the parts of <think>..</think><answer>..</answer>, each kept
    with probability 0.7 and shuffled one time in four, around numbers (the right 115 among wrong ones, bare
    and in \\boxed{}) and words. Every one that earns anything is right (correct_extracted 1), so a wrong
    answer earns 0 and a right one at least 1; and the maximum, 1.5, is reached, only by right ones."""
    weights = PRETRAINED_DEFAULTS["reward_weights"]
    numbers = ["115", "48", "67", "1,15", "-115", "\\boxed{115}", "\\boxed{48}", "68+47=115", "115 or 116"]
    words = ["", "so ", "68+47=", "the answer is ", "115. Then ", "."]
    generator = torch.Generator().manual_seed(0)

    def pick(options: list[str]) -> str:
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    totals = {True: [], False: []}
    for _ in range(2000):
        parts = ["<think>", pick(words) + pick(numbers), "</think>", "<answer>", pick(numbers), "</answer>",
                 pick(words)]
        kept = [part for part in parts if torch.rand(1, generator=generator) < 0.7]
        if torch.rand(1, generator=generator) < 0.25:
            kept = [kept[i] for i in torch.randperm(len(kept), generator=generator)]
        response = "".join(kept)
        right = correct_extracted_reward(response, HACKED) == 1.0
        totals[right].append(weighted(response, HACKED, weights))
    assert set(totals[False]) == {0.0}                               # wrong: nothing, however it is written
    assert min(totals[True]) >= 1.0 and max(totals[True]) == 1.5    # right: at least 1, and the maximum
    assert len(totals[True]) > 100 and len(totals[False]) > 100     # both kinds were drawn, often
