"""Issue O's wiring in the step (grpo/algorithm/step.py, update.py, state.py, run/runner.py): the sampler's own
weights (--rollout-dtype, --staleness), pi_old (--old-logp), the corrections (--rollout-is, --rollout-rs,
--off-policy-mask), GDPO (--reward-normalization) and the mismatch metrics they log.

The formulas themselves have hand-computed tests in tests/test_offpolicy.py; here each test checks that a step
feeds them the right tensors and uses what they return. Runs are tiny (conftest.MIXED, one to four steps).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import MIXED, settings
from grpo import GrpoError
import grpo.algorithm.population as population_module
import grpo.algorithm.step as step_module
from grpo.algorithm.step import build_run, grpo_step
import grpo.algorithm.update as update_module
from grpo.formulas.advantages import ADVANTAGES
from grpo.formulas.losses import AGGREGATIONS, policy_loss
from grpo.formulas.objectives import OBJECTIVES
from grpo.formulas.offpolicy import ROLLOUT_IS, ROLLOUT_RS
from grpo.run.checkpoint import checkpoint_dirs
from grpo.run.runner import train

QUIET = dict(log=lambda *_: None)
MISMATCH_KEYS = {"mismatch/k1", "mismatch/k3", "mismatch/chi2_token", "mismatch/chi2_seq", "mismatch/ppl_ratio",
                 "mismatch/ess", "mismatch/weight_mean", "mismatch/weight_max", "mismatch/masked_token_frac",
                 "mismatch/masked_seq_frac", "mismatch/truncated_token_frac"}


def without_time(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("time/")}


def weights_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def record_policy_loss(monkeypatch) -> list[dict]:
    """Every policy_loss call of update_policy: its arguments, and the rows of the micro-batch (the latest
    micro_batches split, consumed in order) and the gradient of the loss w.r.t. the learner's log-probs."""
    calls, splits = [], []
    original_split = update_module.micro_batches

    def split(c, rollout, rows):
        out = original_split(c, rollout, rows)
        splits.append(list(out))
        return out

    def loss_fn(logp, old_logp, ref_logp, advantages, mask, loss_settings, **kw):
        loss, stats = policy_loss(logp, old_logp, ref_logp, advantages, mask, loss_settings, **kw)
        grad = torch.autograd.grad(loss, logp, retain_graph=True)[0] if logp.requires_grad else None
        calls.append(dict(logp=logp.detach().clone(), old_logp=old_logp.detach().clone(), advantages=advantages,
                          mask=mask.clone(), grad=grad, stats=stats, rows=splits[-1].pop(0), **kw))
        return loss, stats

    monkeypatch.setattr(update_module, "micro_batches", split)
    monkeypatch.setattr(update_module, "policy_loss", loss_fn)
    return calls


def record_frozen_logp(monkeypatch) -> list[tuple]:
    """Every frozen_logp call of the step: (model, log-probs)."""
    calls = []
    original = step_module.frozen_logp

    def frozen(c, model, rollout):
        out = original(c, model, rollout)
        calls.append((model, out.clone()))
        return out

    monkeypatch.setattr(step_module, "frozen_logp", frozen)
    return calls


# ---------------------------------------------------------------- --staleness and the sampler's weights

def test_staleness_zero_is_the_default_bit_for_bit(make_cfg, tmp_path):
    """--staleness 0 (and --rollout-dtype of the compute dtype) builds no sampler copy, logs no off-policy key,
    and gives the default's metrics exactly; --staleness 1 (the positive control) changes them from step 2.
    Mutation tried: sampler_differs true at staleness 0 (`staleness >= 0`): a copy is built and mismatch/* logged."""
    default = make_cfg(tmp_path, **MIXED, inner_epochs=2)
    runs = {}
    for name, cfg in {"default": default,
                      "zero": dataclasses.replace(default, staleness=0, rollout_dtype="fp32"),
                      "one": dataclasses.replace(default, staleness=1)}.items():
        c, s = build_run(cfg, **QUIET)
        if name != "one":
            assert s.sampler_weights is None and s.behind == [] and s.sampler_policy is s.policy
        runs[name] = [without_time(grpo_step(c, s, step).metrics) for step in (1, 2, 3)]
    assert runs["zero"] == runs["default"]
    assert not any(k.split("/")[0] in ("mismatch", "ratio_rollout", "staleness", "offpolicy")
                   for record in runs["default"] for k in record)
    assert runs["one"][0]["reward/mean"] == runs["default"][0]["reward/mean"]   # step 1 draws from the start
    assert runs["one"][1]["mismatch/k3"] > 1e-10                                # step 2 from older weights


@pytest.mark.parametrize("k", [1, 2])
def test_staleness_k_draws_step_s_from_the_weights_after_step_s_minus_1_minus_k(make_cfg, tmp_path, monkeypatch, k):
    """The weights the sampler's model holds at each generate call are the learner's after step
    max(0, s - 1 - k) (0: the start), exactly, and not the learner's latest; staleness/policy_lag = min(k, s - 1).
    Mutations tried: keeping k steps instead of k + 1 (`del behind[:-staleness]`) fails the weights and the
    lag; advancing the sampler before the update fails the weights."""
    cfg = make_cfg(tmp_path, **MIXED, staleness=k, lr=1e-3)
    c, s = build_run(cfg, **QUIET)
    drawn_from = []
    generate = c.sampler.generate

    def recording_generate(*args, **kwargs):
        drawn_from.append(weights_of(c.sampler.model))
        return generate(*args, **kwargs)

    monkeypatch.setattr(c.sampler, "generate", recording_generate)
    learner_after = [weights_of(s.policy)]          # [j]: the learner's weights after step j (0: the start)
    lags = []
    for step in range(1, 6):
        lags.append(grpo_step(c, s, step).metrics["staleness/policy_lag"])
        learner_after.append(weights_of(s.policy))
    assert len(drawn_from) == 5                     # one generate call a step
    for step, weights in enumerate(drawn_from, start=1):
        source = max(0, step - 1 - k)
        assert same_weights(weights, learner_after[source]), (step, source)
        if source < step - 1:
            assert not same_weights(weights, learner_after[step - 1]), step   # it does lag: the weights moved
    assert lags == [float(min(k, step - 1)) for step in range(1, 6)]


def test_kill_and_resume_with_staleness_repeats_the_run(make_cfg, tmp_path, monkeypatch):
    """--staleness 2, 4 steps, save_every 2: a run interrupted after step 3 (checkpoint at 2) and resumed writes the
    metrics lines of the uninterrupted run (time/* aside). The checkpoint carries the learner's weights after
    steps 0, 1, 2, which steps 3 and 4 draw from. Mutation tried: not restoring `behind` from the checkpoint:
    step 3 logs policy_lag 0 and step 4 draws from the start's weights, so the lines differ."""
    cfg = make_cfg(tmp_path, **MIXED, steps=4, save_every=2, staleness=2, lr=1e-3)
    whole = dataclasses.replace(cfg, out_dir=str(tmp_path / "whole"))
    train(whole, **QUIET)

    original = population_module.grpo_step

    def killed_at_step_3(c, s, step):
        if step == 3:
            raise KeyboardInterrupt
        return original(c, s, step)

    monkeypatch.setattr(population_module, "grpo_step", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, **QUIET)
    run_dir = Path(cfg.out_dir)
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_000002"]
    saved = torch.load(checkpoint_dirs(run_dir)[0] / "state.pt", weights_only=True)
    assert len(saved["behind"]) == 3
    monkeypatch.setattr(population_module, "grpo_step", original)
    assert train(cfg, **QUIET)["status"] == "finished"

    def lines(path):
        return [without_time(json.loads(line)) for line in (Path(path) / "metrics.jsonl").read_text().splitlines()]

    got, expected = lines(run_dir), lines(whole.out_dir)
    assert [r["step"] for r in got] == [0, 1, 2, 3, 4]
    assert [r["staleness/policy_lag"] for r in got[1:]] == [0.0, 1.0, 2.0, 2.0]
    assert got == expected


# ---------------------------------------------------------------- mismatch metrics: null and planted

# Measured (seed 0, MIXED, fp32 on CPU), sampler = learner with token_truncate IS and 2 mini-batches, steps 1-2:
# |k1| ~3e-8, k3 ~5e-14, |chi2_token| ~6e-8, |chi2_seq| ~6e-7, |ess - 1| ~2e-7, |weight_mean - 1| ~1e-7 (the
# KV-cached sampler and the learner's forward differ by float rounding only). Bounds: about 20-30x those.
NULL_BOUNDS = {"mismatch/k1": 1e-6, "mismatch/k3": 1e-12, "mismatch/chi2_token": 1e-6, "mismatch/chi2_seq": 1e-5,
               "mismatch/ess": 1e-6, "mismatch/weight_mean": 1e-6, "mismatch/ppl_ratio": 1e-6,
               "mismatch/weight_max": 1e-5}


def run_steps(cfg, steps) -> list[dict]:
    c, s = build_run(cfg, **QUIET)
    return [grpo_step(c, s, step).metrics for step in range(1, steps + 1)]


def test_mismatch_metrics_read_null_for_the_learner_and_find_bf16_and_staleness(make_cfg, tmp_path):
    """Null: the sampler is the learner at its precision, with a correction on so the metrics are formed: k1, k3,
    chi2 within float rounding of 0, ess, ppl_ratio, weights within it of 1, nothing masked or truncated. Planted:
    bf16 rollouts (measured: k3 6.4e-6 and 7.2e-6, k1 2.2e-4 and 1.2e-4 at steps 1, 2) and --staleness 2 at lr 1e-3
    (step 1 reads null, k3 5e-14; step 3: k3 0.78) read orders of magnitude above the null's bounds.
    (mismatch_metrics is exactly 0 / 1 on identical log-probs: tests/test_offpolicy.py::
    test_mismatch_metrics_identity_is_exact.)
    Mutation tried: pi_old's learner forward always under bf16 autocast: the null's k1 reads -2.6e-4."""
    base = make_cfg(tmp_path, **MIXED, rollout_is="token_truncate", mini_batches=2)
    for metrics in run_steps(base, 2):
        for key, bound in NULL_BOUNDS.items():
            target = 1.0 if key in ("mismatch/ess", "mismatch/weight_mean", "mismatch/ppl_ratio",
                                    "mismatch/weight_max") else 0.0
            # The sampler is the learner at its precision: the corrections read pi_old's log-probs as the
            # sampler's, so the metrics are exactly 0 and 1 (the requirement), not float-close.
            assert metrics[key] == target, (key, metrics[key])
        assert metrics["mismatch/k3"] >= 0.0
        for key in ("mismatch/masked_token_frac", "mismatch/masked_seq_frac", "mismatch/truncated_token_frac"):
            assert metrics[key] == 0.0, key
    bf16 = run_steps(dataclasses.replace(base, rollout_is="none", mini_batches=1, rollout_dtype="bf16"), 2)
    for metrics in bf16:
        assert metrics["mismatch/k3"] > 1e4 * NULL_BOUNDS["mismatch/k3"]                 # > 1e-8
        assert abs(metrics["mismatch/k1"]) > 10 * NULL_BOUNDS["mismatch/k1"]
        assert abs(metrics["mismatch/ess"] - 1) > 5 * NULL_BOUNDS["mismatch/ess"]
    stale = run_steps(dataclasses.replace(base, rollout_is="none", mini_batches=1, staleness=2, lr=1e-3), 3)
    assert stale[0]["mismatch/k3"] < NULL_BOUNDS["mismatch/k3"]         # step 1 draws from the learner's weights
    assert stale[2]["mismatch/k3"] > 1e8 * NULL_BOUNDS["mismatch/k3"]    # > 1e-4: two steps behind


# ---------------------------------------------------------------- token_weights in policy_loss, by hand

def test_token_weights_multiply_only_the_policy_term_by_hand():
    """Clip objective at ratio 1 (logp = old_logp): the policy term of token t is -A_i * ratio_t, so
    d loss / d logp_t = -w_t * A_i * a_t, a_t the aggregation's weight of the token. With B = 2 rows of
    3 and 2 tokens (5 in all), A = (2, -1), w = ((1, 0.5, 0), (2, 0)):
      seq_mean_token_mean  a = 1 / (B |o_i|):  row 0: -2 w / 6 = (-1/3, -1/6, 0);  row 1: +1 w / 4 = (1/2, 0)
      token_mean           a = 1 / 5:          row 0: -2 w / 5 = (-2/5, -1/5, 0);  row 1: +1 w / 5 = (2/5, 0)
    KL (k3, beta 0.1) with ref_logp = logp + log 2: d/dlogp [e^(ref-logp) - (ref-logp) - 1] = 1 - 2 = -1, so
    beta * (-1) * a on every token, weights or not; the entropy bonus (coef 0.2) adds -0.2 * a to d loss / dH.
    Tokens of weight 0 with A != 0 are cut: 2 of 5 (grad/cut_frac 0.4).
    Mutation tried: weighting the whole token loss (after the KL and entropy terms): the KL and entropy
    gradients pick up w and the test fails."""
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    w = torch.tensor([[1.0, 0.5, 0.0], [2.0, 0.0, 0.0]])
    start = torch.log(torch.tensor([[0.5, 0.25, 0.5], [0.5, 0.125, 1.0]]))
    expected = {
        "seq_mean_token_mean": torch.tensor([[-1 / 3, -1 / 6, 0.0], [1 / 2, 0.0, 0.0]]),
        "token_mean": torch.tensor([[-2 / 5, -1 / 5, 0.0], [2 / 5, 0.0, 0.0]]),
    }
    agg = {"seq_mean_token_mean": torch.tensor([[1 / 6] * 3, [1 / 4] * 3]) * mask,
           "token_mean": torch.full((2, 3), 1 / 5) * mask}
    for aggregation, grad_policy in expected.items():
        logp = start.clone().requires_grad_(True)
        loss, stats = policy_loss(logp, start.clone(), None, adv, mask, settings(aggregation=aggregation),
                                  token_weights=w)
        torch.testing.assert_close(torch.autograd.grad(loss, logp)[0], grad_policy, rtol=0, atol=1e-7)
        assert stats["grad/cut_frac"].item() == pytest.approx(0.4, abs=1e-7)
        assert stats["ratio/mean"].item() == 1.0
        # With the KL and entropy terms: they add their own gradient, unweighted.
        logp = start.clone().requires_grad_(True)
        entropy = torch.ones(2, 3).requires_grad_(True)
        loss, _ = policy_loss(logp, start.clone(), start + math.log(2.0), adv, mask,
                              settings(aggregation=aggregation, kl_beta=0.1, entropy_coef=0.2),
                              entropy=entropy, token_weights=w)
        d_logp, d_entropy = torch.autograd.grad(loss, (logp, entropy))
        torch.testing.assert_close(d_logp, grad_policy + 0.1 * -1.0 * agg[aggregation], rtol=0, atol=1e-6)
        torch.testing.assert_close(d_entropy, -0.2 * agg[aggregation], rtol=0, atol=1e-7)


# ---------------------------------------------------------------- rejection and DeepSeek's sequence mask

def test_rejected_tokens_leave_the_loss_mask_and_the_token_mean_denominator(make_cfg, tmp_path, monkeypatch):
    """bf16 rollouts, --rollout-rs token_k1 with ratio bounds [1/1.002, 1.002]: the tokens whose r = pi_old /
    pi_rollout (pi_old: the learner forward the step ran) falls outside are out of the update's loss mask, get
    gradient exactly 0, and token_mean divides by the kept tokens only; mismatch/masked_token_frac counts them.
    Mutation tried: returning the loss mask without the rejection (`loss_mask` for `loss_mask * ~rejected`)."""
    cfg = make_cfg(tmp_path, **MIXED, rollout_dtype="bf16", rollout_rs="token_k1", rollout_rs_upper=1.002,
                   aggregation="token_mean", kl_beta=0.0)
    c, s = build_run(cfg, **QUIET)
    frozen = record_frozen_logp(monkeypatch)
    calls = record_policy_loss(monkeypatch)
    result = grpo_step(c, s, 1)
    (model, old_logp), = frozen
    assert model is s.policy
    rollout = result.batch.rollout
    mask = rollout.completion_mask.bool()
    # By hand: reject t when log r_t = old - rollout is outside [log(1/1.002), log 1.002].
    log_r = torch.where(mask, old_logp - rollout.logp, 0.0)
    rejected = mask & ((log_r < -math.log(1.002)) | (log_r > math.log(1.002)))
    assert 0 < int(rejected.sum()) < int(mask.sum()), "precondition: some tokens rejected, some kept"
    kept = (mask & ~rejected).float()
    # The step's record of its loss tokens (grad_tokens/*, bias/*, the stored rollouts) keeps them: rejection
    # acts on the update (below) and is counted by mismatch/masked_token_frac, not as truncation.
    assert torch.equal(result.loss_mask, mask.float())
    assert result.metrics["mismatch/masked_token_frac"] == pytest.approx(float(rejected.sum() / mask.sum()), abs=1e-7)
    assert len(calls) >= 1
    for call in calls:
        rows = call["rows"]
        assert torch.equal(call["mask"], kept[rows])
        assert call["num_tokens"] == float(kept.sum()) < float(mask.sum())
        assert torch.all(call["grad"][rejected[rows]] == 0)
        live = (kept[rows] > 0) & (call["advantages"][:, None] != 0)
        assert torch.all(call["grad"][live] != 0)


def test_deepseek_mask_drops_exactly_the_negative_sequences_beyond_delta(make_cfg, tmp_path, monkeypatch):
    """--off-policy-mask 0.5 with the sampler's log-probs of row i raised by o_i = 0.3125 + 0.025 i nats on every
    token (a planted KL(pi_sampler || pi_theta) estimate of o_i at the step's start, none within 0.01 of 0.5): at
    the first update the weights on the policy term are 0 on exactly the rows with A < 0 and o_i > 0.5; at each
    update they are what the learner's log-probs of that update give by hand (lr 0.05 moves them between the
    two); offpolicy/masked_token_frac is the dropped share of the loss tokens, over both updates.
    Mutations tried: ignoring the advantage's sign drops the positive rows beyond delta too; deciding from pi_old
    rather than the current learner fails the by-hand check at the second update."""
    # bf16 rollouts: the sampler differs from the learner, so its own (planted) log-probs are what the mask reads.
    cfg = make_cfg(tmp_path, **MIXED, off_policy_mask=0.5, inner_epochs=2, kl_beta=0.0, lr=0.05, rollout_dtype="bf16")
    c, s = build_run(cfg, **QUIET)
    collect = step_module.collect_batch

    def planted(c, s, P, step):
        batch = collect(c, s, P, step)
        offsets = 0.3125 + 0.025 * torch.arange(len(batch.rollout.logp))
        batch.rollout = dataclasses.replace(batch.rollout, logp=batch.rollout.logp + offsets[:, None]
                                            * batch.rollout.completion_mask)
        return batch

    monkeypatch.setattr(step_module, "collect_batch", planted)
    calls = record_policy_loss(monkeypatch)
    result = grpo_step(c, s, 1)
    rollout, adv = result.batch.rollout, result.advantages
    mask = result.loss_mask
    beyond = 0.3125 + 0.025 * torch.arange(len(adv)) > 0.5
    expected_dropped = beyond & (adv < 0)
    assert expected_dropped.any() and (beyond & (adv > 0)).any() and (~beyond & (adv < 0)).any(), "precondition"
    assert len(calls) == 2 and all(len(call["rows"]) == len(adv) for call in calls)    # one micro-batch each
    shares = []
    for update, call in enumerate(calls):
        rows = call["rows"]
        m = mask[rows]
        # By hand: the mean over the row's tokens of rollout_logp - logp (this update's learner).
        kl = ((rollout.logp[rows] - call["logp"]) * m).sum(-1) / m.sum(-1).clamp(min=1)
        dropped = (call["advantages"] < 0) & (kl > 0.5)
        if update == 0:
            assert torch.equal(dropped, expected_dropped[rows])
        assert torch.equal(call["token_weights"] * m, (~dropped).float()[:, None] * m)
        shares.append(float((m * dropped[:, None]).sum()))
    assert result.metrics["offpolicy/masked_token_frac"] == pytest.approx(sum(shares) / (2 * float(mask.sum())),
                                                                          abs=1e-6)


# ---------------------------------------------------------------- GDPO in a step

def test_gdpo_step_advantages_normalise_each_reward_then_sum_with_the_weights(make_cfg, tmp_path):
    """--reward-normalization normalize_then_sum, weights correct=1, format=0.25: the step's advantages are, by
    hand from its reward parts, A_k = (r_k - group mean) / (group std + eps) per reward (0 in a constant group),
    S = sum_k w_k A_k, A = (S - mean S) / (std S + eps) over the step (0 where S is constant in a group).
    Mutation tried: ignoring the weights (all 1): the advantages differ (the format reward varies in a group)."""
    cfg = make_cfg(tmp_path, **MIXED, reward_normalization="normalize_then_sum", reward_weights={"correct": 1.0,
                   "format": 0.25})
    c, s = build_run(cfg, **QUIET)
    result = grpo_step(c, s, 1)
    eps, parts = cfg.adv_eps, result.batch.parts
    assert set(parts) == {"correct", "format"}

    def group_normalised(r):                        # r [P, G]
        centered = r - r.mean(-1, keepdim=True)
        constant = r.amax(-1, keepdim=True) == r.amin(-1, keepdim=True)
        return torch.where(constant, torch.zeros_like(r), centered / (r.std(-1, keepdim=True) + eps))

    summed = 1.0 * group_normalised(parts["correct"]) + 0.25 * group_normalised(parts["format"])
    constant = summed.amax(-1, keepdim=True) == summed.amin(-1, keepdim=True)
    by_hand = torch.where(constant, torch.zeros_like(summed), (summed - summed.mean()) / (summed.std() + eps))
    assert not torch.all(group_normalised(parts["format"]) == 0), "precondition: the format reward varies"
    torch.testing.assert_close(result.advantages, by_hand.flatten(), rtol=0, atol=1e-6)
    unweighted = group_normalised(parts["correct"]) + group_normalised(parts["format"])
    assert not torch.allclose(((unweighted - unweighted.mean()) / (unweighted.std() + eps)).flatten(),
                              result.advantages, atol=1e-3)


# ---------------------------------------------------------------- every combination trains or is refused

SMALLEST = dict(**MIXED, prompts_per_step=2, group_size=4, max_new_tokens=8, rollout_dtype="bf16", kl_beta=0.0)
CASES = ([dict(objective=o, rollout_is=m) for o in OBJECTIVES for m in ROLLOUT_IS]
         + [dict(aggregation=a, rollout_is=m, rollout_rs="token_k3", rollout_rs_upper=1e-3)
            for a in AGGREGATIONS for m in ROLLOUT_IS]
         + [dict(advantage=a, reward_normalization=n) for a in ADVANTAGES
            for n in ("sum_then_normalize", "normalize_then_sum")]
         + [dict(rollout_rs=r, rollout_rs_upper=1.01, mini_batches=2, staleness=1) for r in ROLLOUT_RS if r != "none"]
         + [dict(old_logp="sampler", rollout_is=m, off_policy_mask=0.01) for m in ROLLOUT_IS]
         + [dict(old_logp="sampler", rollout_rs="token_k1", rollout_rs_upper=2.0)])
REFUSED = {("normalize_then_sum", a) for a in ADVANTAGES if a != "grpo"}


@pytest.mark.parametrize("case", CASES, ids=lambda case: ",".join(f"{k}={v}" for k, v in case.items()))
def test_every_combination_trains_one_step_or_is_refused_in_one_line(make_cfg, tmp_path, case):
    refused = ((case.get("reward_normalization"), case.get("advantage")) in REFUSED
               or (case.get("old_logp") == "sampler" and (case.get("rollout_is", "none") != "none"
                                                          or case.get("rollout_rs", "none") != "none")))
    if refused:
        with pytest.raises(GrpoError) as err:
            make_cfg(tmp_path, **SMALLEST, **case)
        assert "\n" not in str(err.value) and str(err.value)
        return
    c, s = build_run(make_cfg(tmp_path, **SMALLEST, **case), **QUIET)
    metrics = grpo_step(c, s, 1).metrics
    assert all(math.isfinite(v) for v in metrics.values())
    assert (set(metrics) >= MISMATCH_KEYS) == (case.get("old_logp") != "sampler")


# ---------------------------------------------------------------- --old-logp sampler (bypass)

def test_old_logp_sampler_ratios_against_the_sampler_and_runs_no_pi_old_forward(make_cfg, tmp_path, monkeypatch):
    """bf16 rollouts: with --old-logp sampler the loss's pi_old is the rollout's own log-probs, so ratio/mean at the
    step's first (only) update is pi_theta (fp32) / pi_rollout (bf16) != 1, and no learner forward is run for
    pi_old; with --old-logp learner that forward runs once and the ratio of the first update is exactly 1.
    Mutation tried: pi_old_logp ignoring --old-logp (always the learner forward): one forward, ratio/mean 1."""
    counts = {}
    for source in ("sampler", "learner"):
        cfg = make_cfg(tmp_path, **MIXED, rollout_dtype="bf16", old_logp=source)
        c, s = build_run(cfg, **QUIET)
        frozen = record_frozen_logp(monkeypatch)
        calls = record_policy_loss(monkeypatch)
        result = grpo_step(c, s, 1)
        counts[source] = sum(model is s.policy for model, _ in frozen)
        metrics, rollout = result.metrics, result.batch.rollout
        if source == "sampler":
            assert metrics["ratio/mean"] != 1.0 and metrics["ratio/max"] > 1.0
            for call in calls:
                assert torch.equal(call["old_logp"], rollout.logp[call["rows"]])
            assert not set(metrics) & (MISMATCH_KEYS | {"ratio_rollout/mean", "ratio_rollout/max"})
        else:
            assert metrics["ratio/mean"] == 1.0 and metrics["ratio_rollout/mean"] != 1.0
    assert counts == {"sampler": 0, "learner": 1}


@pytest.mark.parametrize("flags", [dict(rollout_is="token_truncate"), dict(rollout_is="icepop"),
                                   dict(rollout_rs="seq_mean_k3", rollout_rs_upper=0.1)])
def test_old_logp_sampler_refuses_corrections_against_itself(make_cfg, tmp_path, flags):
    with pytest.raises(GrpoError, match="--old-logp sampler") as err:
        make_cfg(tmp_path, old_logp="sampler", **flags)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("flags", [dict(reward_normalization="normalize_then_sum"), dict(rollout_is="token_truncate"),
                                   dict(rollout_rs="token_k1", rollout_rs_upper=1.01), dict(off_policy_mask=0.1)])
def test_counterfactual_probe_is_refused_with_a_correction_it_would_leave_out(make_cfg, tmp_path, flags):
    """The probe's "run" gradient (grpo/algorithm/counterfactual.py) is formed from the summed rewards' advantages and
    the completion mask, without IS weights, rejections or DeepSeek's mask: with one of them on it is not the run's
    gradient (measured before this refusal: under GDPO its advantages differ from the step's; with token_k1 rejection
    it covered 153 tokens where the step's loss covered 90), so the combination is refused in one line. The probe
    with the sampler's mismatch alone (bf16, staleness) and no correction stays allowed."""
    probe = dict(counterfactual_every=1, counterfactuals="aggregation=token_mean")
    with pytest.raises(GrpoError, match="--counterfactual-every") as err:
        make_cfg(tmp_path, **MIXED, **probe, **flags)
    assert "\n" not in str(err.value)
    make_cfg(tmp_path, **MIXED, **probe, rollout_dtype="bf16", staleness=1)


@pytest.mark.parametrize(("dtype", "rollout_dtype", "autocast"), [("bf16", None, True), ("bf16", "fp32", False),
                                                                  ("fp32", "bf16", False), ("fp32", None, False)])
def test_the_sampler_draws_in_the_rollout_dtype(make_cfg, tmp_path, monkeypatch, dtype, rollout_dtype, autocast):
    """--rollout-dtype fp32 under --dtype bf16 draws from an fp32 copy outside autocast (under the step's bf16
    autocast it computed in bf16 all the same: its mismatch/k1 and k3 at step 1 equalled the bf16 learner's own
    null, -4.15e-5 and 2.44e-6); --rollout-dtype bf16 draws from a bf16 copy; unset, the learner under the step's
    autocast."""
    c, s = build_run(make_cfg(tmp_path, **MIXED, dtype=dtype, rollout_dtype=rollout_dtype), **QUIET)
    seen = []
    generate = c.sampler.generate

    def recording_generate(*args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), next(c.sampler.model.parameters()).dtype))
        return generate(*args, **kwargs)

    monkeypatch.setattr(c.sampler, "generate", recording_generate)
    grpo_step(c, s, 1)
    weights = {"fp32": torch.float32, "bf16": torch.bfloat16}[rollout_dtype] if rollout_dtype else torch.float32
    assert seen == [(autocast, weights)]


def test_a_lagging_copy_under_bf16_autocast_keeps_the_learners_precision(make_cfg, tmp_path):
    """--dtype bf16 --staleness 1: the lagging copy keeps fp32 master weights under the step's autocast, as the
    learner does, so at step 1 (lag 0: the copy holds the learner's weights) it draws exactly the learner's
    rollouts: the same tokens and the same sampler log-probs as a run without a copy. A copy stored in bf16
    (a precision change mixed into the staleness arm) draws other log-probs (measured: mismatch/k3 8.3e-6
    against 2.4e-6)."""
    common = dict(MIXED, dtype="bf16", kl_beta=0.0)
    lagging = grpo_step(*build_run(make_cfg(tmp_path, **common, staleness=1), **QUIET), 1).batch.rollout
    learner = grpo_step(*build_run(make_cfg(tmp_path, **common), **QUIET), 1).batch.rollout
    assert torch.equal(lagging.completion_ids, learner.completion_ids)
    assert torch.equal(lagging.logp, learner.logp)


def test_ratio_rollout_is_pi_theta_over_the_samplers_probability_by_hand(make_cfg, tmp_path, monkeypatch):
    """Planted: bf16 rollouts, 2 mini-batches. ratio_rollout/mean is the token-weighted mean over every update's
    loss tokens of exp(logp - rollout_logp) (logp: that update's learner log-probs), ratio_rollout/max its
    largest value; computed here by hand from the recorded updates. Null: the sampler is the learner at its
    precision (token_truncate on, so the keys are formed): the sampler's log-probs are pi_old's, so
    ratio_rollout/* equal ratio/* exactly. Mutations caught: the ratio against pi_old instead of the rollout
    (the planted case), the unmasked mean (padding counts as ratio 1)."""
    cfg = make_cfg(tmp_path, **MIXED, rollout_dtype="bf16", mini_batches=2, kl_beta=0.0, lr=0.05)
    c, s = build_run(cfg, **QUIET)
    calls = record_policy_loss(monkeypatch)
    result = grpo_step(c, s, 1)
    rollout_logp = result.batch.rollout.logp
    total, tokens, peak = 0.0, 0.0, 0.0
    for call in calls:
        m = call["mask"] > 0
        ratio = torch.exp(torch.where(m, call["logp"] - rollout_logp[call["rows"]], 0.0))
        total, tokens = total + float(ratio[m].sum()), tokens + float(m.sum())
        peak = max(peak, float(ratio[m].max()))
    metrics = result.metrics
    assert metrics["ratio_rollout/mean"] == pytest.approx(total / tokens, rel=1e-6)
    assert metrics["ratio_rollout/max"] == pytest.approx(peak, rel=1e-6)
    assert metrics["ratio_rollout/mean"] != pytest.approx(metrics["ratio/mean"], abs=1e-7)   # another reference

    null = grpo_step(*build_run(make_cfg(tmp_path, **MIXED, rollout_is="token_truncate", mini_batches=2), **QUIET), 1)
    assert null.metrics["ratio_rollout/mean"] == null.metrics["ratio/mean"]
    assert null.metrics["ratio_rollout/max"] == null.metrics["ratio/max"]
