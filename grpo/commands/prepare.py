"""What a sweep (experiments/sweep.py) does before it launches its `grpo train` runs: convert each GGUF model
once, train each missing warm start once on all cores, import the runner's modules once before the runs are
forked, and name the code's git commit. experiments/ reaches grpo only through grpo.setup (configs) and
grpo.commands (this module, the CLI); tests/test_imports.py holds it to that.
"""

from __future__ import annotations

import os

from grpo.engine.models import check_model_dir
from grpo.engine.pretrained import is_gguf
from grpo.run.store import git_commit

__all__ = ["check_model_dir", "git_commit", "gguf_models", "preload", "prebuild_warm_starts"]


def gguf_models(configs) -> list[str]:
    """The distinct GGUF --model paths of `configs`, sorted (each converts once, with check_model_dir)."""
    return sorted({cfg.model for cfg in configs if is_gguf(cfg.model)})


def preload() -> None:
    """Import what every run imports, once, before the runs are forked (imports run no tensor ops)."""
    import grpo.run.runner  # noqa: F401

    if os.environ.get("WANDB_MODE") != "disabled":
        try:
            import wandb  # noqa: F401
        except ImportError:
            pass


def prebuild_warm_starts(configs, log=print) -> None:
    """Train each distinct warm start that `configs` need and the cache lacks, here, on all cores.

    Otherwise the first run to start trains it on its 1/parallel share of the cores while every run with
    the same warm start waits on the cache lock (300 supervised steps of the default task: 147 s on one
    thread). Only CPU runs of built-in presets: a GPU run or a local model trains its own.
    """
    import torch

    from grpo.base.device import resolve_device
    from grpo.engine.warmstart import warm_started_model, warmstart_entry
    from grpo.setup.presets import is_preset
    from grpo.setup.tasks import make_task

    wanted = {}
    for cfg in configs:
        if resolve_device(cfg.device).type != "cpu" or not is_preset(cfg.model) or cfg.num_warmstart_steps == 0:
            continue
        task = make_task(cfg)
        entry = warmstart_entry(cfg, task.tokenizer)
        if not (entry / "model.safetensors").exists():
            wanted.setdefault(entry, (cfg, task))
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        for cfg, task in wanted.values():
            warm_started_model(cfg, task, task.tokenizer, torch.device("cpu"), log=log)
    finally:
        torch.set_num_threads(threads)
