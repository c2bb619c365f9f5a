"""Wall-clock time per stage of a step, as a context manager: `with timer("rollout"): ...`.

On a GPU, kernels run asynchronously: without draining the queue the clock would charge a stage's
work to whichever later stage first waits for it. The timer synchronises the device before reading
the clock at both ends of a stage (a no-op on the CPU). With `ranges` on, each stage is also a
torch.profiler range named `STAGE_PREFIX + stage` (`grpo bench --kernel-profile` splits kernel time by stage).
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext

import torch

STAGE_PREFIX = "stage/"


class StageTimer:
    """Seconds per named stage; a stage entered several times in a step accumulates."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.on_enter = lambda stage: None      # the progress bar shows the stage a step is in
        self.ranges = False                     # True: each stage is a torch.profiler range too

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, stage: str):
        self.on_enter(stage)
        self._sync()
        start = time.perf_counter()
        try:
            with torch.profiler.record_function(STAGE_PREFIX + stage) if self.ranges else nullcontext():
                yield
        finally:
            self._sync()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    def reset(self) -> None:
        self.seconds = {}
