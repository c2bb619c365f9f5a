"""TrainState: everything a step changes, so that a state can be saved, restored, copied, and stepped beside
another on one set of components (grpo/algorithm/state.py)."""

from __future__ import annotations

import copy

import torch

from conftest import MIXED
from grpo.algorithm.state import RandomStreams
from grpo.algorithm.step import build_run, grpo_step

QUIET = dict(log=lambda *_: None)


def without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def weights(state) -> list[torch.Tensor]:
    return [p.detach().clone() for p in state.policy.parameters()]


def test_a_state_dict_restores_the_step_it_was_taken_before(make_cfg, tmp_path):
    """state_dict after step 2, step 3, load_state_dict, step 3 again: the same metrics and weights. The
    prompt pool's ledger and the counters are part of the state (a pool run exercises both)."""
    c, s = build_run(make_cfg(tmp_path, **MIXED, prompt_pool=8, inner_epochs=2, mini_batches=2), **QUIET)
    for step in (1, 2):
        grpo_step(c, s, step)
    saved = copy.deepcopy(s.state_dict())      # the state_dict's tensors are the live ones
    first = grpo_step(c, s, 3).metrics
    first_weights, first_counts = weights(s), (s.samples, s.tokens, dict(s.ledger))
    s.load_state_dict(saved)
    again = grpo_step(c, s, 3).metrics
    assert without_time(again) == without_time(first)
    assert all(torch.equal(a, b) for a, b in zip(weights(s), first_weights))
    assert (s.samples, s.tokens, dict(s.ledger)) == first_counts


def test_two_states_step_side_by_side_as_each_would_alone(make_cfg, tmp_path):
    """Two states (other random streams) on one set of components, stepped in turn, end where each ends
    stepped alone: no part of a step's state hides in the components (the sampler draws from the stepping
    state's weights, the timer is reset per step)."""
    c, s = build_run(make_cfg(tmp_path, **MIXED), **QUIET)
    other = s.copy()
    other.rng = RandomStreams.seeded(77, c.device)
    alone_a, alone_b = s.copy(), other.copy()
    side_a, side_b = [], []
    for step in (1, 2, 3):
        side_a.append(without_time(grpo_step(c, s, step).metrics))
        side_b.append(without_time(grpo_step(c, other, step).metrics))
    solo_a = [without_time(grpo_step(c, alone_a, step).metrics) for step in (1, 2, 3)]
    solo_b = [without_time(grpo_step(c, alone_b, step).metrics) for step in (1, 2, 3)]
    assert side_a == solo_a and side_b == solo_b
    assert side_a != side_b                           # the two states really differ
    assert all(torch.equal(a, b) for a, b in zip(weights(s), weights(alone_a)))


def test_a_copy_is_independent(make_cfg, tmp_path):
    c, s = build_run(make_cfg(tmp_path, **MIXED), **QUIET)
    before, rng_before = weights(s), s.rng.state_dict()
    branch = s.copy()
    grpo_step(c, branch, 1)
    assert all(torch.equal(a, b) for a, b in zip(weights(s), before))
    assert all(torch.equal(s.rng.state_dict()[k], rng_before[k]) for k in rng_before)
    assert s.samples == 0 and branch.samples > 0
    assert any(not torch.equal(a, b) for a, b in zip(weights(branch), before))
