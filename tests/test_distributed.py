"""Data parallelism: 2 gloo processes take the same optimizer step as one process on the same batch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

WORKER = textwrap.dedent('''
    import sys
    import torch
    from grpo import distributed as dist
    from grpo.config import TrainConfig
    from grpo.sampler import KVCacheSampler, Rollout, encode_prompts
    from grpo.trainer import build_trainer, grpo_step

    cfg = TrainConfig(model="tiny", prompts_per_step=4, group_size=4, max_new_tokens=12, warmstart_steps=0,
                      kl_beta=0.04, lr=1e-2, wandb_mode="disabled", threads=1, device="cpu")
    dist.init_from_env(torch.device("cpu"))
    t = build_trainer(cfg, log=lambda *a: None)
    rank, world = dist.rank(), dist.world_size()

    # One fixed batch of 4 prompts x 4 completions, built identically in every process; each rank
    # takes its share of the prompts (and their completions), as the trainer's sampling would.
    examples = t.task.sample(torch.Generator().manual_seed(0), 4)
    ids, mask = encode_prompts(t.tokenizer, [e.prompt for e in examples for _ in range(4)])
    full = KVCacheSampler().generate(t.policy.eval(), ids, mask, max_new_tokens=12, temperature=1.0,
                                     generator=torch.Generator().manual_seed(1), eos_token_id=2, pad_token_id=0)
    share = 4 // world
    rows = slice(rank * share * 4, (rank + 1) * share * 4)

    class FixedSampler:
        def generate(self, model, prompt_ids, prompt_mask, **kwargs):
            return Rollout(*(getattr(full, f)[rows] for f in
                             ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "truncated", "entropy")))

    t.sampler = FixedSampler()
    t.task.sample = lambda generator, n: examples[rank * share:(rank + 1) * share]
    metrics, _ = grpo_step(t, 1)
    if rank == 0:
        torch.save({"params": [p.detach() for p in t.policy.parameters()], "metrics": metrics}, sys.argv[1])
    dist.shutdown()
''')


def run(tmp_path, world: int):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / f"world{world}.pt"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
                    "--master_port", str(29500 + world), str(script), str(out)],
                   check=True, capture_output=True, timeout=300)
    return torch.load(out, weights_only=False)


def test_two_gloo_ranks_take_the_single_process_step(tmp_path):
    single, double = run(tmp_path, 1), run(tmp_path, 2)
    for a, b in zip(single["params"], double["params"]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for key in ("loss", "grad_norm", "reward/mean", "kl/k3", "adv/abs_mean"):
        assert abs(single["metrics"][key] - double["metrics"][key]) <= 1e-5 * max(1.0, abs(single["metrics"][key])), key
