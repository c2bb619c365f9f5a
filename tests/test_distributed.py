"""Data parallelism: 2 gloo processes take the same optimizer step, and log the same metrics, as one
process on the same batch, for every advantage estimator; evaluation is shared and gives the same
numbers; a rank whose warm start differs is overwritten by rank 0's weights."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from grpo.formulas.advantages import ADVANTAGES

WORKER = textwrap.dedent('''
    import dataclasses, sys
    import torch
    import grpo.setup.rewards as rewards
    import grpo.algorithm.step as trainer
    from grpo.base import distributed as dist
    from grpo.formulas.advantages import ADVANTAGES
    from grpo.setup.config import TrainConfig
    from grpo.engine.sampler import KVCacheSampler, Rollout, Sampler, encode_prompts

    dist.init_from_env(torch.device("cpu"))
    rank, world = dist.rank(), dist.world_size()
    warm_started = trainer.warm_started_model

    def differing_warm_start(*args, **kwargs):
        """Rank 1's warm start is off (as a per-node cache could be): the broadcast must fix it."""
        model = warm_started(*args, **kwargs)
        if rank == 1:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.5)
        return model

    trainer.warm_started_model = differing_warm_start
    results = {}
    for estimator in ADVANTAGES:
        cfg = TrainConfig(model="tiny", prompts_per_step=4, group_size=4, max_new_tokens=12, warmstart_steps=0,
                          kl_beta=0.04, lr=1e-2, inner_epochs=2, advantage=estimator, eval_prompts=200,
                          eval_samples=4, wandb_mode="disabled", threads=1, device="cpu")
        c, s = trainer.build_run(cfg, log=lambda *a: None)
        # One fixed batch of 4 prompts x 4 completions with rewards that differ between groups (so
        # batch_std's batch statistics matter), built identically in every process; each rank takes
        # its share of the prompts (and their completions), as the trainer's sampling would.
        examples = c.task.sample(torch.Generator().manual_seed(0), 4)
        ids, mask = encode_prompts(c.tokenizer, [e.prompt for e in examples for _ in range(4)])
        full = KVCacheSampler().generate_from(s.policy.eval(), ids, mask, max_new_tokens=12, temperature=1.0,
                                              generator=torch.Generator().manual_seed(1), eos_token_id=2,
                                              pad_token_id=0)
        share = 4 // world
        rows = slice(rank * share * 4, (rank + 1) * share * 4)

        class FixedSampler(Sampler):
            def generate(self, prompt_ids, prompt_mask, **kwargs):
                return Rollout(*(getattr(full, f.name)[rows] for f in dataclasses.fields(Rollout)))

        c.sampler = FixedSampler()
        # SGD: a parameter's change is then -lr * gradient, so comparing weights compares gradients
        # (AdamW's early steps are ~lr * sign(g), which turns float noise near g = 0 into +-lr).
        s.optimizer = torch.optim.SGD(s.policy.parameters(), lr=cfg.lr)
        c.task.sample = lambda generator, n: examples[rank * share:(rank + 1) * share]
        scores = iter([1.0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 1][rows])   # this rank's completions
        real = rewards.REWARDS["correct"]
        rewards.REWARDS["correct"] = lambda response, example: next(scores)
        metrics = trainer.grpo_step(c, s, 1).metrics
        rewards.REWARDS["correct"] = real            # evaluation below judges with the real reward
        results[estimator] = {"params": [p.detach().clone() for p in s.policy.parameters()], "metrics": metrics}
    c.sampler = KVCacheSampler()
    results["eval"] = trainer.evaluate_policy(c, s, 5)
    if rank == 0:
        torch.save(results, sys.argv[1])
    dist.shutdown()
''')


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("gloo")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)

    def run(world: int) -> dict:
        out = tmp_path / f"world{world}.pt"
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
                               "--master_port", str(29500 + world), str(script), str(out)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return torch.load(out, weights_only=False)

    return run(1), run(2)


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(1.0, abs(a))


@pytest.mark.parametrize("estimator", list(ADVANTAGES))
def test_two_gloo_ranks_take_the_single_process_step(runs, estimator):
    single, double = runs[0][estimator], runs[1][estimator]
    for a, b in zip(single["params"], double["params"]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    logged = {k for k in single["metrics"] if not k.startswith("time/")}
    assert logged == {k for k in double["metrics"] if not k.startswith("time/")}
    differ = [k for k in sorted(logged) if not close(single["metrics"][k], double["metrics"][k])]
    assert not differ, [(k, single["metrics"][k], double["metrics"][k]) for k in differ]
    assert single["metrics"]["adv/abs_mean"] > 0 and single["metrics"]["len/max"] > 0


def test_batch_std_uses_the_whole_batch_across_ranks(runs):
    """Per-rank statistics would differ here: the two ranks' shares have different reward spreads."""
    assert runs[0]["batch_std"]["metrics"]["adv/std"] == pytest.approx(runs[1]["batch_std"]["metrics"]["adv/std"],
                                                                       rel=1e-6)


def test_evaluation_is_shared_by_the_ranks_and_gives_the_same_numbers(runs):
    assert runs[0]["eval"] == runs[1]["eval"]
