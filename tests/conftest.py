"""Shared test setup: an isolated warm-start cache, wandb off, and a factory for small configs.

Everything here runs offline on CPU. The warm-start cache lives in a session temp dir, so tests never
read or write ~/.cache/grpo-lab, and a warm start computed once is reused by every test that asks for
the same (task, model, warm-start) settings.
"""

from __future__ import annotations

import os

import dataclasses

import pytest
import torch

from grpo.formulas.losses import LossSettings
from grpo.setup.config import TrainConfig
from grpo.setup.config import config_flags as cli_args  # noqa: F401  (the tests' `grpo train` flags of a config)

# Small enough that a full run of a few steps takes about a second on one CPU core. One thread:
# on a shared 2-core machine, two spinning OpenMP threads per process slow everything down.
SMALL_CONFIG = dict(
    task="arithmetic", model="tiny", steps=3, prompts_per_step=4, group_size=4, max_new_tokens=12,
    warmstart_steps=2, warmstart_batch_size=16, eval_every=100, eval_prompts=8, eval_samples=4,
    save_every=100, log_samples_every=100, wandb_mode="disabled", quiet=True, threads=1,
)

# The seed toy with a 10-step warm start: groups come out mixed (some right, some wrong), so
# advantages, clipping and KL are not trivially zero. Use as make_cfg(tmp_path, **MIXED, ...).
MIXED = dict(task="seed_tokens", model="seed", warmstart_steps=10, warmstart_batch_size=16)

# The loss settings the hand-computed loss and objective tests start from: plain PPO-clip at eps 0.2 with
# no KL and no entropy term, one sequence-mean aggregation (the run's defaults are TrainConfig's, not these).
PLAIN_LOSS = LossSettings(
    objective="clip", aggregation="seq_mean_token_mean", clip_eps_low=0.2, clip_eps_high=0.2, dual_clip=None,
    delta=None, sapo_tau_pos=1.0, sapo_tau_neg=1.05, kl_cov_ratio=0.002, kl_cov_coef=1.0, clip_cov_ratio=0.0002,
    clip_cov_lb=1.0, clip_cov_ub=5.0, kl_beta=0.0, kl_estimator="k3", entropy_coef=0.0, top_entropy_quantile=1.0)


def settings(**changes) -> LossSettings:
    """PLAIN_LOSS with the named fields changed, e.g. settings(kl_beta=0.1, aggregation="token_mean")."""
    return dataclasses.replace(PLAIN_LOSS, **changes)


_ENV = {"WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"}


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory):
    """GRPO_CACHE in a session temp dir, wandb disabled, tokenizers single-threaded; restored after."""
    values = {"GRPO_CACHE": str(tmp_path_factory.mktemp("grpo_cache")), **_ENV}
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    yield values
    for key, old in saved.items():
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """`build_run` calls torch.set_num_threads(cfg.threads); keep that from leaking between tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_cfg():
    """make_cfg(tmp_path, **overrides) -> a small TrainConfig whose out_dir is tmp_path / "run"."""

    def make(tmp_path, **overrides) -> TrainConfig:
        values = {**SMALL_CONFIG, "out_dir": str(tmp_path / "run"), **overrides}
        return TrainConfig(**values)

    return make


def one_error_line(err: str) -> str:
    """The single `grpo: error: ...` line of a refused command's stderr (asserts there is nothing else)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("grpo: error: ") and "Traceback" not in err, err
    return lines[0]
