"""Data parallelism over torch.distributed (torchrun): gloo on CPU, nccl on GPU.

Each rank samples its share of the step's prompts. Rewards are gathered, so advantages (batch_std's
batch statistics included) are computed on the whole step's [P, G] matrix. Loss normalisers
(sequences, tokens) are summed over ranks, so each rank's loss is its share of the global loss and
summing the ranks' gradients (all-reduce SUM) gives exactly the single-process gradient of the whole
batch. Every rank then takes the same optimizer step. Every metric is the global value: per-row
quantities are gathered, token-weighted sums and their weights are summed over ranks. Rank 0's
weights are broadcast once after the model is built. Only rank 0 writes files and wandb.
Without torchrun (WORLD_SIZE unset) everything here is a no-op.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


_comm_device = torch.device("cpu")     # where collectives run: nccl only reduces CUDA tensors


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each rank takes the GPU of its LOCAL_RANK (not every rank on GPU 0)."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


def launched_world_size() -> int:
    """The number of ranks torchrun launched (WORLD_SIZE; 1 without torchrun), before any process group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: torch.device) -> None:
    """Join the process group torchrun describes in the environment, once."""
    global _comm_device
    if launched_world_size() > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        _comm_device = device


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()            # without it, a fast rank's teardown races the others' last collective
        dist.destroy_process_group()


def sum_across(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.to(_comm_device, copy=True)
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def max_across(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.to(_comm_device, copy=True)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def cat_across(value: torch.Tensor) -> torch.Tensor:
    """Every rank's `value` (same shape on each) concatenated along dim 0 in rank order, on every rank."""
    if not dist.is_initialized():
        return value
    local = value.to(_comm_device).contiguous()
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(value.device)


def rank_rows(num_rows: int) -> slice:
    """This rank's rows of a dim-0 concatenation made by `cat_across` of num_rows // world_size() each."""
    share = num_rows // world_size()
    return slice(rank() * share, (rank() + 1) * share)


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Make every rank hold rank 0's weights (warm starts cached per node need not be bit-identical)."""
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            staged = tensor.detach().to(_comm_device, copy=True)
            dist.broadcast(staged, src=0)
            tensor.copy_(staged.to(tensor.device))


def any_across(flag: bool) -> bool:
    """True on every rank when it is true on any (so all ranks stop together, none left waiting)."""
    return bool(sum_across(torch.tensor(float(flag))) > 0)


def sum_gradients(model: torch.nn.Module) -> None:
    """Sum gradients over ranks (each rank's loss already carries the global normaliser)."""
    if not dist.is_initialized():
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
