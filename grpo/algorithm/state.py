"""What a GRPO step reads and what it changes, kept apart.

`Components` are the parts of a run a step uses but whose values it never changes: the config, the task,
the tokenizer, the frozen reference, the sampler, the device, the prompt pool and the parsed counterfactual
alternatives (a step points the sampler at its state's weights and resets the timer: neither carries
anything from one step to the next). `TrainState` is everything a step changes and a checkpoint must carry
to resume exactly: the learner's weights and optimizer, every random stream, the prompt ledger, the
counters and the sampler's own lagging weights.

So two states can step side by side on one set of components (bench/paired.py's A/B, the tests'
clones), a resume loads a state, and a copy is `state.copy()`. The sampler draws from
`state.sampler_policy`: the learner itself unless a run keeps other weights for sampling (a copy that
lags the learner, a lower-precision copy).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from grpo.base.timing import StageTimer
from grpo.engine.sampler import Sampler
from grpo.setup.config import TrainConfig
from grpo.setup.tasks import PromptPool, Task

# The run's random streams, each its own generator, so that arms differing in inner epochs or
# mini-batches (which shuffle more often) still draw the same prompts for the same seed: the report's
# pairing by seed relies on it.
# Each stream's seed is the rank's seed plus its offset:
#   prompt:   prompt draws (the first round of each step)
#   sample:   token sampling (on the run's device)
#   shuffle:  mini-batch shuffles
#   resample: dynamic sampling's extra rounds, so the first round stays paired across arms
STREAM_OFFSETS = {"prompt": 0, "sample": 1, "shuffle": 2, "resample": 3}
STREAMS = tuple(STREAM_OFFSETS)


@dataclass
class RandomStreams:
    prompt: torch.Generator
    shuffle: torch.Generator
    sample: torch.Generator
    resample: torch.Generator

    @classmethod
    def seeded(cls, seed: int, device: torch.device) -> RandomStreams:
        """Stream k seeded with seed + its offset; the sampling stream lives on the run's device."""
        return cls(**{name: torch.Generator(device=device if name == "sample" else "cpu").manual_seed(seed + offset)
                      for name, offset in STREAM_OFFSETS.items()})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).get_state().cpu() for name in STREAMS}

    def load_state_dict(self, states: dict[str, torch.Tensor]) -> None:
        for name in STREAMS:
            getattr(self, name).set_state(states[name].cpu())


@dataclass
class TrainState:
    """Everything a step changes (module docstring). The ledger maps a prompt index to (its solve rate
    at its last visit, visits so far); samples and tokens count the completions generated on all ranks."""
    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    rng: RandomStreams
    ledger: dict[int, tuple[float, int]] = field(default_factory=dict)
    samples: int = 0
    tokens: int = 0
    elapsed: float = 0.0        # seconds spent in steps (evaluation excluded)
    sampler_weights: torch.nn.Module | None = None   # the weights rollouts are drawn from; None: the learner's
    # With --staleness k: the learner's weights after each of the last (at most) k + 1 steps, oldest first;
    # the sampler draws from the oldest (`advance_sampler`).
    behind: list[dict[str, torch.Tensor]] = field(default_factory=list)

    @property
    def sampler_policy(self) -> torch.nn.Module:
        return self.policy if self.sampler_weights is None else self.sampler_weights

    def progress(self) -> dict:
        """What a checkpoint keeps beside the weights, the optimizer and the random streams: samples, tokens,
        elapsed seconds, the ledger and, with --staleness, the lagging weights the sampler draws from."""
        out = {"samples": self.samples, "tokens": self.tokens, "elapsed": self.elapsed, "ledger": self.ledger}
        if self.behind:
            out["behind"] = list(self.behind)
        return out

    def load_progress(self, state: dict, rng: dict[str, torch.Tensor]) -> None:
        """The inverse of `progress` (and of the random streams' state_dict): the rest of a resumed state, once
        the weights and the optimizer are loaded; the sampler's own weights are then reloaded from their source."""
        self.rng.load_state_dict(rng)
        self.samples, self.tokens, self.elapsed = int(state["samples"]), int(state["tokens"]), float(state["elapsed"])
        self.ledger = {int(k): (float(rate), int(visits)) for k, (rate, visits) in state.get("ledger", {}).items()}
        if "behind" in state:
            self.behind = list(state["behind"])
        self.resync_sampler()

    def state_dict(self) -> dict:
        """Weights, optimizer state, random streams and counters (tensors shared with the live state:
        copy them before changing either)."""
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": self.rng.state_dict(), **self.progress()}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_progress(state, state["rng"])

    def copy(self) -> TrainState:
        """An independent state: the policy and its optimizer are copied together, so the copied optimizer's
        state belongs to the copied parameters."""
        policy, optimizer, rng, ledger, sampler_weights, behind = copy.deepcopy(
            (self.policy, self.optimizer, self.rng, self.ledger, self.sampler_weights, self.behind))
        return dataclasses.replace(self, policy=policy, optimizer=optimizer, rng=rng, ledger=ledger,
                                   sampler_weights=sampler_weights, behind=behind)

    def learner_snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the learner's weights now (an entry of `behind`)."""
        return {k: v.detach().clone() for k, v in self.policy.state_dict().items()}

    @property
    def policy_lag(self) -> int:
        """Steps the sampler's weights are behind the learner's (0 when it draws from the learner)."""
        return max(len(self.behind) - 1, 0)

    def advance_sampler(self, staleness: int) -> None:
        """After a step: the sampler's own weights (if any) take the learner's of `staleness` steps ago, or
        its current ones at 0 (a lower-precision copy), as an asynchronous pipeline's weight sync would."""
        if self.sampler_weights is None:
            return
        if staleness:
            self.behind.append(self.learner_snapshot())
            del self.behind[:-(staleness + 1)]
        self.resync_sampler()

    def resync_sampler(self) -> None:
        """Load the sampler's weights from their source: the oldest kept learner weights, else the learner's."""
        if self.sampler_weights is not None:
            with torch.no_grad():
                self.sampler_weights.load_state_dict(self.behind[0] if self.behind else self.policy.state_dict())


@dataclass
class Components:
    """The parts of a run a step reads but never changes (module docstring). `alternatives` are the
    counterfactual probe's (name, config) pairs, parsed once per run; `lean` marks a large Llama-family
    policy (lean layers, chunked head); `eval_store` is where step 0's evaluation of the cached warm start
    is kept; `timer` is the instrument that times a step's phases (reset by every step)."""
    cfg: TrainConfig
    task: Task
    tokenizer: PreTrainedTokenizerBase
    reference: torch.nn.Module | None
    sampler: Sampler
    device: torch.device
    pool: PromptPool | None = None      # with --prompt-pool, else None (fresh draws)
    alternatives: tuple[tuple[str, TrainConfig], ...] = ()
    lean: bool = False
    eval_store: Path | None = None
    timer: StageTimer = None
    population: object | None = None    # a batched population's seat (grpo/algorithm/batching.py); None alone

    def __post_init__(self) -> None:
        if self.timer is None:
            self.timer = StageTimer(self.device)

    def autocast(self):
        """bf16 autocast for forward passes when the run computes in bf16 (`compute_dtype`: --dtype, or its
        default for the model and hardware); log-probs and the loss stay fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.compute_dtype == "bf16")
