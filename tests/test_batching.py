"""grpo/algorithm/batching.py: a population's step threads meet at their model calls, one computation per kind
serves every seed waiting there, a seed that stops early or fails does not hold the others up."""

from __future__ import annotations

import collections

import pytest

from conftest import MIXED, SMALL_CONFIG
from grpo.algorithm import batching
from grpo.algorithm.batching import Exchange


def recording_exchange(log: list):
    """An exchange whose 'double' kind records each group of calls it runs (in the order it gets them) and
    doubles their values."""
    def double(calls):
        log.append([x for (x,) in calls])
        return [2 * x for (x,) in calls]
    return Exchange({"double": double})


def test_every_seed_waiting_is_served_by_one_computation_in_seat_order():
    """Three seeds, two calls each: two rounds of one computation over all three, whose calls come in the
    seats' order whichever thread arrived first (the jobs run in reverse seat order here)."""
    log = []
    exchange = recording_exchange(log)
    seats = [exchange.seat() for _ in range(3)]
    assert [seat.index for seat in seats] == [0, 1, 2]

    def job(i):
        return lambda: [exchange.call("double", 10 * i + k, seat=seats[i].index) for k in range(2)]

    assert exchange.run([job(i) for i in (2, 1, 0)]) == [[40, 42], [20, 22], [0, 2]]
    assert log == [[0, 10, 20], [1, 11, 21]]


def test_a_seed_that_stops_early_or_fails_does_not_hold_the_others_up():
    log = []
    exchange = recording_exchange(log)

    def short():
        return exchange.call("double", 1)

    def failing():
        exchange.call("double", 2)
        raise ValueError("diverged")

    def long():
        return [exchange.call("double", x) for x in (3, 4, 5)]

    short_result, error, long_result = exchange.run([short, failing, long])
    assert short_result == 2 and isinstance(error, ValueError) and long_result == [6, 8, 10]
    assert sorted(log[0]) == [1, 2, 3] and log[1:] == [[4], [5]]


def test_an_error_in_a_computation_reaches_every_seed_of_its_group():
    def broken(calls):
        raise RuntimeError("kernel failed")

    exchange = Exchange({"broken": broken})
    results = exchange.run([lambda: exchange.call("broken", 0)] * 2)
    assert all(isinstance(r, RuntimeError) for r in results)


def test_a_populations_model_calls_meet_in_one_round_per_call(tmp_path, monkeypatch):
    """Three seeds of a batched population: every model call of a step is one round of all three (2 steps:
    2 rollouts, 2 reference and 2 learner forwards, 2 backwards)."""
    from grpo.run.runner import train
    from grpo.setup.config import TrainConfig

    rounds = collections.Counter()
    for kind, run in list(batching.BATCHED.items()):
        def counted(calls, run=run, kind=kind):
            rounds[kind, len(calls)] += 1
            return run(calls)
        monkeypatch.setitem(batching.BATCHED, kind, counted)
    cfg = TrainConfig(**{**SMALL_CONFIG, **MIXED, "steps": 2, "population": 3, "population_batching": "on",
                         "out_dir": str(tmp_path)})
    train(cfg, log=lambda *_: None)
    assert rounds == {("generate", 3): 2, ("frozen", 3): 2, ("logp", 3): 2, ("backward", 3): 2}


@pytest.mark.parametrize("change, reason", [
    (dict(population_batching="off"), "off"),
    (dict(population_batching="auto", device="cpu"), "CPU"),
    (dict(sampler="hf"), "static"),
    (dict(model="small", dtype="bf16"), "fp32"),
])
def test_batching_is_refused_in_one_line_where_it_does_not_run(change, reason):
    from grpo.algorithm.population import batching_refusal
    from grpo.setup.config import TrainConfig

    on = {**SMALL_CONFIG, "population": 2, "population_batching": "on"}
    assert batching_refusal(TrainConfig(**on)) is None
    assert reason in batching_refusal(TrainConfig(**{**on, **change}))


def test_the_shared_reference_runs_every_seeds_rows_in_one_forward_to_float_tolerance(tmp_path):
    """frozen_batched over 3 seeds' rollouts (different rows and widths) with one model equals each seed's
    frozen_logp alone to float rounding (the rows share wider micro-batches)."""
    import torch

    from grpo.algorithm.step import build_run
    from grpo.algorithm.update import frozen_logp_alone
    from grpo.setup.config import TrainConfig

    c, s = build_run(TrainConfig(**{**SMALL_CONFIG, **MIXED, "out_dir": str(tmp_path)}), log=lambda *_: None)
    generator = torch.Generator().manual_seed(0)
    rollouts = []
    for rows, width in ((4, 3), (6, 5), (2, 4)):
        ids = torch.randint(3, 20, (rows, 3), generator=generator)
        rollouts.append(c.sampler.generate_from(s.policy, ids, torch.ones_like(ids), max_new_tokens=width,
                                                temperature=1.0, generator=generator, eos_token_id=2, pad_token_id=0))
    rollouts[0].prompt_mask[0, 0] = 0       # a left-padded prompt
    together = batching.frozen_batched([(c, c.reference, r) for r in rollouts])
    for r, out in zip(rollouts, together):
        with torch.no_grad():
            alone = frozen_logp_alone(c, c.reference, r)
        assert out.shape == alone.shape
        torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-5)


def test_on_is_refused_in_one_line_where_batching_cannot_run(tmp_path):
    from grpo import GrpoError
    from grpo.algorithm.population import build_population
    from grpo.setup.config import TrainConfig

    cfg = TrainConfig(**{**SMALL_CONFIG, **MIXED, "population": 2, "population_batching": "on", "sampler": "hf",
                         "out_dir": str(tmp_path)})
    with pytest.raises(GrpoError, match="cannot batch this population: .*--sampler hf"):
        build_population(cfg.members(), log=lambda *_: None)


def test_pi_old_over_stacked_weights_a_micro_batch_at_a_time_equals_each_seeds_own(tmp_path):
    """frozen_batched with each seed's own weights (pi_old) runs the seeds' micro-batches side by side: each
    seed's log-probs equal its frozen_logp alone to float rounding (rows in 3 micro-batches of at most 4)."""
    import copy

    import torch

    from grpo.algorithm.step import build_run
    from grpo.algorithm.update import frozen_logp_alone
    from grpo.setup.config import TrainConfig

    c, s = build_run(TrainConfig(**{**SMALL_CONFIG, **MIXED, "micro_batch_size": 4, "out_dir": str(tmp_path)}),
                     log=lambda *_: None)
    generator = torch.Generator().manual_seed(0)
    models = [s.policy, copy.deepcopy(s.policy)]
    with torch.no_grad():
        for p in models[1].parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=generator))
    calls = []
    for model, rows in zip(models, (10, 7)):
        ids = torch.randint(3, 20, (rows, 3), generator=generator)
        rollout = c.sampler.generate_from(model, ids, torch.ones_like(ids), max_new_tokens=5, temperature=1.0,
                                          generator=generator, eos_token_id=2, pad_token_id=0)
        calls.append((c, model, rollout))
    for (_, model, rollout), out in zip(calls, batching.frozen_batched(calls)):
        with torch.no_grad():
            torch.testing.assert_close(out, frozen_logp_alone(c, model, rollout), atol=1e-5, rtol=1e-5)
