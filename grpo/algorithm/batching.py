"""A population's model calls batched across its seeds: each seed's step runs as it does alone, in a thread of
its own, and meets the others' steps at its model calls, where one computation serves them all.

The step (grpo/algorithm/step.py) is written for one run. In a population (--population S) each seed's
`grpo_step` runs in its own thread; where it calls a model (the rollout decode, the frozen log-probs of the
reference and of pi_old, the learner's log-probs and their backward) it hands the call to the `Exchange`
through its `Seat` (`Components.population`) and waits. When every seed still stepping waits there, the
last to arrive runs the calls, grouped by kind, as one computation over the seeds' stacked weights
(grpo/engine/stacked.py and the population decode and log-prob modules) and hands each seed its slice.
The model-free stages (rewards, advantages, losses, metrics, probes) stay each seed's own code.

Only one seed's thread runs at a time (the `turn` lock): the threads are a way to suspend a step at a
model call, not parallelism (on a few cores, concurrent torch threads slow each other down); a
computation stacks its calls in seat order, whichever thread arrived first. The kinds of call:

    generate   policy, prompts, the seed's sampling generator -> Rollout      (inference mode)
    frozen     model, rollout -> log-probs [N, T], no gradient                (reference: one shared model)
    logp       learner, rollout rows -> log-probs (and entropy) with a graph   (grad mode)
    backward   a seed's loss: one backward over every seed's losses

A seed's gradient reaches only its own parameters (the seeds share none), so one backward of the
losses gives each the gradient its own backward would; its optimizer step, clipping included, stays
its own (grpo/algorithm/update.py).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from grpo.algorithm.update import frozen_logp_alone, micro_batches, model_logp, padded_to
from grpo.engine.population_decode import generate_population
from grpo.engine.population_logp import population_logp
from grpo.engine.sampler import concat_rollouts


@dataclass
class Call:
    kind: str
    args: tuple
    seat: int
    result: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Exchange:
    """Where a population's step threads meet (module docstring). `run(jobs)` runs one job per seed (each
    a seed's whole step) and returns each one's result or the exception that stopped it."""

    def __init__(self, executors: dict[str, Callable[[list[tuple]], list]]) -> None:
        self.executors = executors       # kind -> run a list of calls' args, return their results in order
        self.turn = threading.Lock()
        self.lock = threading.Lock()     # guards waiting and live
        self.waiting: list[Call] = []
        self.live = 0
        self.seats = 0                   # seats handed out
        self.inboxes: list[queue.SimpleQueue] = []    # the long-lived step threads' (`workers`)

    def seat(self) -> Seat:
        """A new seat; seats are numbered in the order they are made, and a computation stacks its calls
        in that order (so a population's stacks do not depend on which thread arrived first)."""
        self.seats += 1
        return Seat(self, self.seats - 1)

    def call(self, kind: str, *args, seat: int = 0):
        """Hand one model call over and wait for its result (called from a seed's thread, holding the turn)."""
        call = Call(kind, args, seat)
        with self.lock:
            self.waiting.append(call)
            ready = len(self.waiting) == self.live
        if ready:
            self._flush()
        else:
            self.turn.release()
            call.done.wait()
            self.turn.acquire()
        if call.error is not None:
            raise call.error
        return call.result

    def _flush(self) -> None:
        """Run every waiting call, a kind at a time (the caller holds the turn)."""
        with self.lock:
            calls, self.waiting = sorted(self.waiting, key=lambda c: c.seat), []
        for kind in dict.fromkeys(c.kind for c in calls):
            group = [c for c in calls if c.kind == kind]
            try:
                results = self.executors[kind]([c.args for c in group])
                for c, r in zip(group, results, strict=True):
                    c.result = r
            except BaseException as err:         # every seed of the group gets the error
                for c in group:
                    c.error = err
        for c in calls:
            c.done.set()

    def _leave(self) -> None:
        """A seed's step ended: the others may now all be waiting (the caller holds the turn)."""
        with self.lock:
            self.live -= 1
            ready = bool(self.waiting) and len(self.waiting) == self.live
        if ready:
            self._flush()

    def run(self, jobs: list[Callable[[], Any]]) -> list[Any]:
        """Each job in a thread of its own, one running at a time; the results (or exceptions) in order.
        The threads are kept from one call to the next (`workers`): a new thread would start a new OpenMP
        team at its first parallel op, every step."""
        results: list[Any] = [None] * len(jobs)
        done = threading.Semaphore(0)

        def job(i: int) -> None:
            with self.turn:
                try:
                    results[i] = jobs[i]()
                except BaseException as err:     # reported per seed by the caller (who re-raises a non-Exception)
                    results[i] = err
                finally:
                    self._leave()
            done.release()

        self.live = len(jobs)
        for i in range(len(jobs)):
            self.workers(len(jobs))[i].put(functools.partial(job, i))
        for _ in jobs:
            done.acquire()
        return results

    def workers(self, count: int) -> list[queue.SimpleQueue]:
        """The inboxes of `count` long-lived daemon threads, each running the callables it is sent."""
        if not self.inboxes:
            _one_malloc_arena()
        while len(self.inboxes) < count:
            inbox: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(inbox,), name=f"seed-step-{len(self.inboxes)}", daemon=True).start()
            self.inboxes.append(inbox)
        return self.inboxes


M_ARENA_MAX = -8      # glibc's mallopt parameter number (malloc.h)


def _one_malloc_arena() -> None:
    """Stop glibc making new malloc arenas (mallopt(M_ARENA_MAX, 1)) before the step threads start, so they
    share the arenas that exist (the main one, and any torch's worker threads made earlier) instead of one new
    arena each: the step threads never allocate at once (the `turn` lock), so arenas of their own buy no
    concurrency and each keeps its freed activations mapped. W1 at S = 5 batched, A/B in fresh processes, two
    rounds: 2283 / 2302 MiB with it, 4565 / 3386 MiB without, no slower (docs/population.md). Process-wide and for good, CUDA
    runs included (not measured there). A no-op without glibc's mallopt."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1)
    except (OSError, AttributeError):
        pass


def _serve(inbox: queue.SimpleQueue) -> None:
    """A worker thread's loop: run what arrives, forever (a daemon: it ends with the process)."""
    while True:
        inbox.get()()


@dataclass
class Seat:
    """One seed's handle on the exchange (`Components.population`); `index` orders its calls in a stack."""
    exchange: Exchange
    index: int = 0

    def generate(self, sampler, policy, prompt_ids, prompt_mask, generator, **options):
        return self.exchange.call("generate", sampler, policy, prompt_ids, prompt_mask, generator, options,
                                  seat=self.index)

    def frozen_logp(self, c, model, rollout) -> torch.Tensor:
        return self.exchange.call("frozen", c, model, rollout, seat=self.index)

    def logp(self, c, model, rollout, rows, with_entropy: bool):
        return self.exchange.call("logp", c, model, rollout, rows, with_entropy, seat=self.index)

    def backward(self, loss: torch.Tensor) -> None:
        self.exchange.call("backward", loss, seat=self.index)


# The executors: each takes the waiting calls' args of one kind and returns their results in order.

def generate_each(calls: list[tuple]) -> list:
    """(sampler, policy, prompt_ids, prompt_mask, generator, options) -> Rollout, one seed at a time."""
    return [sampler.generate_from(policy, ids, mask, generator=generator, **options)
            for sampler, policy, ids, mask, generator, options in calls]


def generate_stacked(calls: list[tuple]) -> list:
    """`generate_each` as one decode over the seeds' stacked weights (grpo/engine/population_decode.py): each
    seed draws from its own generator, so its tokens are its single run's wherever its logits are."""
    options = calls[0][5]
    return generate_population([policy for _, policy, *_ in calls], [ids for _, _, ids, *_ in calls],
                               [mask for _, _, _, mask, *_ in calls], generators=[g for *_, g, _ in calls], **options)


def frozen_each(calls: list[tuple]) -> list:
    """(c, model, rollout) -> log-probs [N, T] without gradient, one seed at a time."""
    with torch.no_grad():
        return [frozen_logp_alone(c, model, rollout) for c, model, rollout in calls]


def logp_each(calls: list[tuple]) -> list:
    """(c, model, rollout, rows, with_entropy) -> the learner's log-probs (and entropy) with a graph."""
    with torch.enable_grad():
        return [model_logp(c, model, rollout, rows, with_entropy) for c, model, rollout, rows, with_entropy in calls]


def backward_all(calls: list[tuple]) -> list:
    """(loss,): one backward over every seed's loss."""
    torch.autograd.backward([loss for (loss,) in calls])
    return [None] * len(calls)


def stacked_logp(calls: list[tuple]) -> list:
    """(c, model, rollout, rows, with_entropy) -> `model_logp`'s values, as one forward over the seeds' stacked
    weights (grpo/engine/population_logp.py), each seed run to its rows' longest completion."""
    c, with_entropy = calls[0][0], calls[0][4]
    widths = [max(1, int(rollout.completion_mask[rows].sum(-1).max())) for _, _, rollout, rows, _ in calls]
    outs = population_logp(
        [model for _, model, _, _, _ in calls], [rollout.prompt_ids[rows] for _, _, rollout, rows, _ in calls],
        [rollout.prompt_mask[rows] for _, _, rollout, rows, _ in calls],
        [rollout.completion_ids[rows, :w] for (_, _, rollout, rows, _), w in zip(calls, widths)],
        temperature=c.cfg.temperature, eos_token_id=c.tokenizer.eos_token_id, min_new_tokens=c.cfg.min_new_tokens,
        with_entropy=with_entropy)
    return [padded_to(rollout.completion_ids.shape[1], out) for (_, _, rollout, _, _), out in zip(calls, outs)]


def logp_stacked(calls: list[tuple]) -> list:
    """`logp_each` as one forward over the seeds' stacked weights (a graph to every seed's parameters)."""
    with torch.enable_grad():
        return stacked_logp(calls)


def frozen_stacked(calls: list[tuple]) -> list:
    """`frozen_each` over the seeds' stacked weights, a micro-batch at a time: each seed's micro-batches (as
    its own `frozen_logp` cuts them) side by side, so memory stays S micro-batches'."""
    outs = [torch.zeros(rollout.completion_ids.shape, device=rollout.completion_ids.device) for _, _, rollout in calls]
    pieces = [micro_batches(c, rollout, torch.arange(rollout.completion_ids.shape[0], device=rollout.completion_ids.device))
              for c, _, rollout in calls]
    with torch.no_grad():
        for j in range(max(len(p) for p in pieces)):
            due = [i for i, p in enumerate(pieces) if j < len(p)]
            values = stacked_logp([(*calls[i], pieces[i][j], False) for i in due])
            for i, value in zip(due, values):
                outs[i][pieces[i][j]] = value
    return outs


def frozen_batched(calls: list[tuple]) -> list:
    """`frozen_each` as one computation: the shared reference over every seed's rows, in micro-batches of
    S times the run's (what the S seeds' micro-batches hold side by side)."""
    models = [model for _, model, _ in calls]
    if not all(model is models[0] for model in models):       # pi_old: each seed's own weights
        return frozen_stacked(calls)
    c, rollouts = calls[0][0], [rollout for _, _, rollout in calls]
    wide = dataclasses.replace(c, cfg=dataclasses.replace(c.cfg, micro_batch_size=len(calls) * c.cfg.micro_batch))
    with torch.no_grad():
        out = frozen_logp_alone(wide, models[0], concat_rollouts(rollouts, c.tokenizer.pad_token_id))
    parts = out.split([r.completion_ids.shape[0] for r in rollouts])
    return [part[:, :r.completion_ids.shape[1]] for part, r in zip(parts, rollouts)]


EACH = {"generate": generate_each, "frozen": frozen_each, "logp": logp_each, "backward": backward_all}
BATCHED = {**EACH, "generate": generate_stacked, "frozen": frozen_batched}
