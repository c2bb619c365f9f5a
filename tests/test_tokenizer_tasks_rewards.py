"""Tests for grpo/tokenizer.py, grpo/tasks.py and grpo/rewards.py: ids by hand, splits, demonstrations,
and a table of hand-written completions with the rewards they must get."""

from __future__ import annotations

import pytest
import torch

from grpo.rewards import REWARDS, correct_reward, format_reward, response_text, score
from grpo.sampler import completion_mask, decode_completions, encode_prompts
from grpo.tasks import TASKS, Arithmetic, Example, SeedTokens

# ---------------------------------------------------------------- tokenizers

ARITHMETIC_VOCAB = (["<pad>", "<bos>", "<eos>", "<unk>", "<think>", "</think>", "<answer>", "</answer>"]
                    + list("0123456789") + ["+", "=", " "])


@pytest.fixture(scope="module")
def arithmetic():
    return Arithmetic()


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

@pytest.mark.parametrize("name", ["arithmetic", "seed_tokens"])
def test_eval_split_is_disjoint_from_training_draws(name):
    task = TASKS[name]()
    eval_prompts = {e.prompt for e in task.eval_examples()}
    assert len(eval_prompts) == task.num_eval
    drawn = {e.prompt for e in task.sample(torch.Generator().manual_seed(3), 20_000)}
    assert not drawn & eval_prompts
    assert set(task.train_index.tolist()).isdisjoint(task.eval_index.tolist())


def test_arithmetic_split_covers_all_pairs(arithmetic):
    # two-digit a and b: 90 * 90 = 8100 pairs, 500 of them held out
    assert len(arithmetic.train_index) + len(arithmetic.eval_index) == 8100
    assert len(set(arithmetic.train_index.tolist()) | set(arithmetic.eval_index.tolist())) == 8100


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
