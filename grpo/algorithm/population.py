"""A population: S seeds of one config trained as S independent runs in one process (--population S).

Each seed is a run of its own: its own `TrainState` (weights, AdamW, random streams, ledger, counters) and
its own `Components` for what depends on the seed (the config, with its seed and run directory; the prompt
pool's epoch order; the counterfactual alternatives, whose selections are seeded by it; the step timer).
What does not depend on the RL seed is built once and shared: the task, the tokenizer, the frozen reference
(a copy of the warm start, which --warmstart-seed seeds, not --seed), the sampler (it draws from whichever
state steps: grpo/algorithm/collect.py), the device and the warm start's evaluation store. So seed k of
a population stepped seed by seed computes what its single run computes, line for line; batched, the same
to float rounding at its first step (a stacked matmul rounds differently), and statistically after it.

With --population-batching on (auto: on CUDA) and a model the batched computations run (a Llama-family
preset in fp32: `batching_refusal`), the seeds' model calls meet in an `Exchange` (grpo/algorithm/batching.py)
and run as one computation over their stacked weights; otherwise each seed's step runs in turn.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time

from grpo.algorithm.batching import BATCHED, Exchange
from grpo import GrpoError
from grpo.algorithm.state import Components, TrainState
from grpo.base.device import resolve_device
from grpo.algorithm.step import StepResult, build_run, grpo_step, starting_state
from grpo.setup.alternatives import alternative_configs
from grpo.setup.config import TrainConfig
from grpo.setup.presets import MODEL_PRESETS, is_preset
from grpo.setup.tasks import PromptPool

# Every Components field is one or the other (tests/test_population.py checks it, so a new field is placed).
SHARED_FIELDS = ("task", "tokenizer", "reference", "sampler", "device", "lean", "eval_store")
OWN_FIELDS = ("cfg", "pool", "alternatives", "timer", "population")   # seed-dependent: built for each member
SEED_FIELDS = ("seed", "out_dir")      # the only fields in which a population's configs differ


def build_population(configs: list[TrainConfig], log=print) -> list[tuple[Components, TrainState]]:
    """(components, starting state) of each config, in order: the first as `build_run` builds it, the rest
    sharing its seed-independent parts (SHARED_FIELDS) and starting from a copy of its warm start.
    ValueError when the configs differ in more than SEED_FIELDS."""
    first = configs[0].to_dict()
    for cfg in configs[1:]:
        differ = sorted(k for k, v in cfg.to_dict().items() if v != first[k] and k not in SEED_FIELDS)
        if differ:
            raise ValueError(f"a population's runs may differ only in {SEED_FIELDS}, not in {differ}")
    c, s = build_run(configs[0], log=log)
    warm_start = copy.deepcopy(s.policy)          # before any step changes the first seed's weights
    members = [(c, s)]
    for cfg in configs[1:]:
        own = dataclasses.replace(
            c, cfg=cfg, pool=PromptPool(c.task, cfg.prompt_pool, cfg.seed) if cfg.prompt_pool else None,
            alternatives=tuple(alternative_configs(cfg)), timer=None)      # timer None: a fresh one
        members.append((own, starting_state(cfg, copy.deepcopy(warm_start), own.device)))
    refusal = batching_refusal(configs[0]) if len(members) > 1 else "one seed"
    if refusal is not None and configs[0].population_batching == "on" and len(members) > 1:
        raise GrpoError(f"--population-batching on cannot batch this population: {refusal}")
    if refusal is None:
        exchange = Exchange(dict(BATCHED))
        members = [(dataclasses.replace(c, population=exchange.seat()), s) for c, s in members]
    return members


def batching_refusal(cfg: TrainConfig) -> str | None:
    """Why a population of `cfg` runs each seed's model calls in turn (None: they run batched)."""
    if cfg.population_batching == "off":
        return "--population-batching off"
    if cfg.population_batching == "auto" and resolve_device(cfg.device).type == "cpu":
        return "on a CPU the batched compute measured slower than the seeds in turn (docs/population.md)"
    if not is_preset(cfg.model) or MODEL_PRESETS[cfg.model].get("model_type", "llama") not in ("llama", "qwen2"):
        return f"--model {cfg.model} is not a Llama-family preset (the batched forward is written for those)"
    if cfg.compute_dtype != "fp32" or cfg.rollout_dtype not in (None, "fp32"):
        return "the batched forward runs in fp32 (--dtype and --rollout-dtype fp32)"
    if cfg.sampler not in ("auto", "static"):
        return f"the batched decode is the static sampler's, not --sampler {cfg.sampler}"
    return None


def step_population(members: list[tuple[Components, TrainState]], step: int) -> list[tuple[StepResult | Exception, float]]:
    """Step `step` of each member, in order: (its StepResult, or the exception that stopped it, and the
    seconds it took). A diverged seed fails alone; the others go on; KeyboardInterrupt stops them all.
    Members with a seat on an exchange step together (their model calls batched): each is given the
    seconds of the whole batched step."""
    seat = members[0][0].population if members else None
    if seat is not None:
        tick = time.perf_counter()
        results = seat.exchange.run([functools.partial(grpo_step, c, s, step) for c, s in members])
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Exception):   # SystemExit and the like stop all
                raise r
        seconds = time.perf_counter() - tick
        return [(r, seconds) for r in results]
    out = []
    for c, s in members:
        tick = time.perf_counter()
        try:
            result = grpo_step(c, s, step)
        except Exception as err:                 # reported per seed by the runner
            result = err
        out.append((result, time.perf_counter() - tick))
    return out
