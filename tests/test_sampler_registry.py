"""The sampler registry (grpo/setup/sampler_registry.py) and the interface (grpo/engine/sampler.py): a sampler of one's own is
one file (tests/throwaway_sampler.py) that a run takes by name; the trainer syncs it after every optimizer step;
evaluation decodes with the learner, whatever the sampler was synced to; an unknown --sampler is one line."""

from __future__ import annotations

import copy
import importlib
import json
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import cli_args, one_error_line
from grpo import GrpoError
from grpo.algorithm.step import build_run, evaluate_policy, make_sampler
from grpo.commands.cli import main
from grpo.engine.fast_sampler import StaticCacheSampler
from grpo.engine.models import build_model
from grpo.engine.sampler import KVCacheSampler
from grpo.run.checkpoint import checkpoint_dirs
from grpo.run.runner import train
from grpo.setup.config import TrainConfig
from grpo.setup.sampler_registry import SAMPLERS


@pytest.fixture
def throwaway():
    """tests/throwaway_sampler.py, imported afresh (its decorator registers it); unregistered after."""
    sys.modules.pop("throwaway_sampler", None)
    module = importlib.import_module("throwaway_sampler")
    yield module
    SAMPLERS.pop(module.NAME, None)
    sys.modules.pop("throwaway_sampler", None)


def test_a_sampler_of_ones_own_trains_and_is_synced_after_every_optimizer_step(throwaway, make_cfg, tmp_path):
    """2 steps x 2 inner epochs = 4 optimizer steps: synced once at build, then after each of the 4, and each
    step's rollout drawn from the learner as of that step. (Weight decay moves the weights at every optimizer
    step, even one whose groups all have zero advantage.)"""
    cfg = make_cfg(tmp_path, steps=2, inner_epochs=2, weight_decay=0.1, sampler=throwaway.NAME)
    train(cfg, log=lambda *_: None)
    steps = [json.loads(line)["step"] for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]
    (sampler,) = throwaway.FullForwardSampler.built
    kinds = [event[0] for event in sampler.events]
    assert kinds == ["sync", "generate", "sync", "sync", "generate", "sync", "sync"]
    syncs = [event for event in sampler.events if event[0] == "sync"]
    learner = syncs[0][1]
    # One module throughout, the one that trains (the frozen reference has no gradients), by reference.
    assert all(event[1] is learner for event in sampler.events)
    assert all(p.requires_grad for p in learner.parameters())
    # Each sync after the first follows an optimizer step: the weights it hands over moved since the last one.
    for before, after in zip(syncs, syncs[1:]):
        assert any(not torch.equal(before[2][k], after[2][k]) for k in after[2])
    # The last sync holds the learner's final weights, as the step-2 checkpoint saved them.
    saved = load_file(checkpoint_dirs(cfg.run_dir)[-1] / "model.safetensors")
    assert saved and all(torch.equal(syncs[-1][2][k], v) for k, v in saved.items())


def test_the_throwaway_sampler_decodes_as_the_hf_one(throwaway):
    """Its full-forward loop picks the KV-cached sampler's greedy tokens, with the same log-probs to float rounding."""
    model = build_model("tiny", vocab_size=21, seed=0).eval()
    prompt_ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])
    prompt_mask = (prompt_ids != 0).long()
    kwargs = dict(max_new_tokens=8, temperature=0.7, generator=None, greedy=True, eos_token_id=2, pad_token_id=0,
                  min_new_tokens=2)
    ours = throwaway.FullForwardSampler().generate_from(model, prompt_ids, prompt_mask, **kwargs)
    hf = KVCacheSampler().generate_from(model, prompt_ids, prompt_mask, **kwargs)
    assert torch.equal(ours.completion_ids, hf.completion_ids)
    torch.testing.assert_close(ours.logp, hf.logp, atol=1e-5, rtol=0)


def test_a_registered_name_is_a_sampler_only_while_registered(throwaway):
    assert TrainConfig(sampler=throwaway.NAME).sampler == throwaway.NAME
    SAMPLERS.pop(throwaway.NAME)
    with pytest.raises(GrpoError, match="unknown --sampler 'full_forward'; choose from auto, hf, static$"):
        TrainConfig(sampler=throwaway.NAME)


def test_an_unknown_sampler_is_one_line_listing_the_names(make_cfg, tmp_path, capsys):
    code = main(["train", *cli_args(make_cfg(tmp_path)), "--sampler", "vllm"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert line == "grpo: error: unknown --sampler 'vllm'; choose from auto, hf, static"
    assert not (tmp_path / "run").exists()          # rejected before anything is written


def tiny_gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=21, n_positions=32, n_embd=16, n_layer=1, n_head=2))


def test_auto_resolves_by_model_and_the_sampler_holds_the_policy_itself():
    llama = build_model("tiny", vocab_size=21, seed=0)
    for model, expected in [(llama, StaticCacheSampler), (tiny_gpt2(), KVCacheSampler)]:
        sampler = make_sampler(TrainConfig(sampler="auto"), model)
        assert type(sampler) is expected and sampler.model is model       # synced by reference, no copy
    assert type(make_sampler(TrainConfig(sampler="hf"), llama)) is KVCacheSampler


def test_the_static_sampler_refuses_a_model_it_does_not_run():
    with pytest.raises(GrpoError, match="--sampler static runs Llama-family models .* not this gpt2: use --sampler hf"):
        make_sampler(TrainConfig(sampler="static"), tiny_gpt2())


def test_evaluation_decodes_with_the_learner_not_the_synced_weights(make_cfg, tmp_path, monkeypatch):
    """A sampler synced to stale weights (a copy) still evaluates the learner: every decode gets the learner."""
    c, s = build_run(make_cfg(tmp_path, warmstart_steps=0), log=lambda *_: None)
    c.sampler.sync_weights(copy.deepcopy(s.policy))
    decoded_with = []
    decode = c.sampler.generate_from

    def recorded(model, *args, **kwargs):
        decoded_with.append(model)
        return decode(model, *args, **kwargs)

    monkeypatch.setattr(c.sampler, "generate_from", recorded)
    evaluate_policy(c, s, 1)
    assert decoded_with and all(model is s.policy for model in decoded_with)
