"""The probes in a real run: the prompt pool and its ledger (prompts.jsonl, resume), counterfactual
gradients against hand-computed ratios, the rollout store, and their bad inputs."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors import safe_open

from conftest import MIXED, cli_args
from grpo.algorithm.step import build_run, grpo_step
from grpo.commands.cli import main
from grpo.run.runner import train
from grpo.setup.tasks import Arithmetic, PromptPool
from test_trainer import QUIET, read_metrics, warm_cache, without_time


# ---------------------------------------------------------------- the prompt pool

def test_pool_is_fixed_across_seeds_disjoint_from_eval_and_visited_in_epochs():
    task = Arithmetic("1-3")
    pool, other_seed = PromptPool(task, 30, seed=0), PromptPool(task, 30, seed=1)
    assert [e.index for e in pool.examples] == [e.index for e in other_seed.examples]     # the same data set
    assert len({e.index for e in pool.examples}) == 30
    assert not {e.prompt for e in pool.examples} & {e.prompt for e in task.eval_examples()}
    # Epochs: positions 0-29 visit every example once, so do 30-59, in another order.
    first, second = pool.take(0, 30), pool.take(30, 30)
    assert sorted(e.index for e in first) == sorted(e.index for e in second) == sorted(e.index for e in pool.examples)
    assert [e.index for e in first] != [e.index for e in second]
    assert [e.index for e in pool.take(25, 10)] == [e.index for e in first[25:] + second[:5]]
    assert [e.index for e in other_seed.take(0, 30)] != [e.index for e in first]           # seeds shuffle apart


def test_a_pool_larger_than_the_task_is_refused():
    from grpo import GrpoError

    with pytest.raises(GrpoError, match="--prompt-pool 60"):
        PromptPool(Arithmetic("1"), 60, seed=0)                 # 1-digit sums: 100, 50 of them held out


def test_pool_run_writes_the_ledger_and_resumes_it(make_cfg, tmp_path):
    """Pool of 4 with 4 prompts a step: every prompt is revisited every step from step 2 on. A run
    resumed at step 2 writes the same metrics and prompts.jsonl as one that never stopped."""
    cfg = make_cfg(tmp_path, **MIXED, steps=4, prompt_pool=4, save_every=2, eval_every=2, out_dir=str(tmp_path / "full"))
    warm_cache(cfg)
    train(cfg, **QUIET)
    rows = [json.loads(line) for line in (tmp_path / "full" / "prompts.jsonl").read_text().splitlines()]
    assert [r["visit"] for r in rows] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert len({r["index"] for r in rows}) == 4
    records = read_metrics(tmp_path / "full")
    assert "ledger/revisit_frac" in records[1] and records[1]["ledger/revisit_frac"] == 0.0
    for step in (2, 3, 4):
        record, now = records[step], [r for r in rows if r["step"] == step]
        assert record["ledger/revisit_frac"] == 1.0
        constant = sum(r["solve_rate"] in (0.0, 1.0) for r in now) / 4
        assert record["ledger/zero_var_measured"] == pytest.approx(constant)
        previous = {r["index"]: r["solve_rate"] for r in rows if r["step"] == step - 1}
        # the unbiased predictor with the same G: was the prompt's group constant at its previous visit?
        predicted = sum(previous[r["index"]] in (0.0, 1.0) for r in now) / 4
        assert record["ledger/zero_var_predicted"] == pytest.approx(predicted, abs=1e-6)

    short = dataclasses.replace(cfg, steps=2, out_dir=str(tmp_path / "resumed"))
    train(short, **QUIET)
    train(dataclasses.replace(short, steps=4), **QUIET)      # resumes from the step-2 checkpoint
    assert [without_time(r) for r in read_metrics(tmp_path / "resumed")] == [without_time(r) for r in records]
    assert (tmp_path / "resumed" / "prompts.jsonl").read_text() == (tmp_path / "full" / "prompts.jsonl").read_text()


# ---------------------------------------------------------------- counterfactual gradients

def test_counterfactual_ratios_by_hand(make_cfg, tmp_path):
    """G = 2 and a 0/1 reward: every group with signal is {0, 1}, whose unbiased std is sqrt(1/2). So
    grpo's A = +-0.5 / (sqrt(1/2) + 1e-4) and dr_grpo's A = +-0.5: the same direction, a norm ratio of
    sqrt(1/2) + 1e-4 = 0.70721. An alternative equal to the run gives cos 1 and ratio 1."""
    cfg = make_cfg(tmp_path, **MIXED, group_size=2, prompts_per_step=8, reward_weights={"correct": 1.0, "format": 0.0},
                   counterfactual_every=1, counterfactuals="advantage=dr_grpo,adv_eps=0.0001,aggregation=token_mean")
    warm_cache(cfg)
    metrics = grpo_step(*build_run(cfg, **QUIET), 1).metrics
    assert metrics["adv/abs_mean"] > 0, "precondition: some group has signal"
    assert metrics["cf/advantage=dr_grpo/cos"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["cf/advantage=dr_grpo/norm_ratio"] == pytest.approx(math.sqrt(0.5) + 1e-4, rel=1e-4)
    assert metrics["cf/adv_eps=0.0001/cos"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["cf/adv_eps=0.0001/norm_ratio"] == pytest.approx(1.0, abs=1e-6)
    # token_mean weighs tokens, not completions: another direction when lengths differ
    assert metrics["cf/aggregation=token_mean/cos"] < 1 - 1e-4


def test_counterfactuals_run_only_every_k_steps_and_change_nothing(make_cfg, tmp_path):
    """With two mini-batches, so the probe runs between the step's two updates."""
    plain = make_cfg(tmp_path, **MIXED, steps=3, mini_batches=2, out_dir=str(tmp_path / "plain"))
    probed = dataclasses.replace(plain, counterfactual_every=2, counterfactuals="objective=gspo",
                                 out_dir=str(tmp_path / "probed"))
    warm_cache(plain)
    train(plain, **QUIET)
    train(probed, **QUIET)
    a, b = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "probed")
    assert [sorted(k for k in r if k.startswith("cf/")) for r in b] == \
        [[], [], ["cf/objective=gspo/cos", "cf/objective=gspo/norm_ratio"], []]
    # the probe reads the weights and draws no random numbers: the run itself is unchanged
    strip = lambda r: {k: v for k, v in without_time(r).items() if not k.startswith("cf/")}   # noqa: E731
    assert [strip(r) for r in a] == [strip(r) for r in b]


@pytest.mark.parametrize(("mini_batches", "inner_epochs"), [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_counterfactuals_are_taken_where_the_last_update_starts(make_cfg, tmp_path, monkeypatch,
                                                                mini_batches, inner_epochs):
    """The probe sees the weights the step's last optimizer update starts from, and pi_old's log-probs
    (none with one update: there the ratio is 1, and objective=gpg would be refused)."""
    import grpo.algorithm.step

    updates = mini_batches * inner_epochs
    cfg = make_cfg(tmp_path, **MIXED, mini_batches=mini_batches, inner_epochs=inner_epochs,
                   counterfactual_every=1,
                   counterfactuals="aggregation=token_mean" + (",objective=gpg" if updates > 1 else ""))
    warm_cache(cfg)
    c, s = build_run(cfg, **QUIET)
    flat = lambda: torch.cat([p.detach().flatten() for p in s.policy.parameters()]).clone()   # noqa: E731
    before_updates, probed = [], []
    s.optimizer.register_step_pre_hook(lambda *_: before_updates.append(flat()))
    real = grpo.algorithm.step.counterfactual_metrics

    def spy(*args):
        probed.append((flat(), args[-1]))
        return real(*args)

    monkeypatch.setattr(grpo.algorithm.step, "counterfactual_metrics", spy)
    metrics = grpo_step(c, s, 1).metrics
    assert len(before_updates) == updates and len(probed) == 1
    weights, old_logp = probed[0]
    assert torch.equal(weights, before_updates[-1])
    assert (old_logp is None) == (updates == 1)
    if updates > 1:     # the point has moved from pi_old: gpg, no ratio and no clip, parts from clip there
        assert not torch.equal(weights, before_updates[0])
        assert metrics["cf/objective=gpg/cos"] < 1 - 1e-6
    assert metrics["cf/aggregation=token_mean/cos"] < 1 - 1e-4


# ---------------------------------------------------------------- the rollout store

def test_store_rollouts_writes_each_step(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, **MIXED, steps=2, store_rollouts=True)
    warm_cache(cfg)
    train(cfg, **QUIET)
    files = sorted((tmp_path / "run" / "rollouts").iterdir())
    assert [f.name for f in files] == ["step_000001_rank0.safetensors", "step_000002_rank0.safetensors"]
    with safe_open(str(files[0]), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["step"] == 1 and meta["group_size"] == cfg.group_size
    N = cfg.num_completions
    assert tensors["completion_ids"].shape[0] == N and tensors["advantages"].shape == (N,)
    assert {"reward/correct", "reward/format", "logp", "loss_mask", "prompt_index"} <= set(tensors)
    # the stored advantages are the group-normalised stored rewards
    rewards = (tensors["reward/correct"] + 0.1 * tensors["reward/format"]).view(-1, cfg.group_size)
    from grpo.formulas.advantages import compute_advantages
    torch.testing.assert_close(tensors["advantages"], compute_advantages(rewards, "grpo").flatten())


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize(("flags", "needle"), [
    (["--counterfactuals", "foo=bar", "--counterfactual-every", "1"], "foo"),
    (["--counterfactuals", "advantage", "--counterfactual-every", "1"], "field=value"),
    (["--counterfactual-every", "2"], "--counterfactuals"),
    (["--counterfactuals", "advantage=nope", "--counterfactual-every", "1"], "nope"),
    (["--counterfactuals", "objective=gspo", "--counterfactual-every", "1"], "ratio 1"),
    (["--kl-beta", "0", "--counterfactuals", "kl_estimator=k1", "--counterfactual-every", "1"], "--kl-beta 0"),
    (["--kl-placement", "reward", "--counterfactuals", "kl_beta=0.1", "--counterfactual-every", "1"],
     "--kl-placement reward"),
    (["--prompt-pool", "-1"], "--prompt-pool"),
    (["--digits", "0-3"], "--digits"),
])
def test_bad_probe_flags_are_one_line(make_cfg, tmp_path, capsys, flags, needle):
    code = main(["train", *cli_args(make_cfg(tmp_path)), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("grpo: error: ") and needle in err[0], err
