"""Data-parallel training across processes with torch.distributed, as ``torchrun`` launches it.

``torchrun --nproc-per-node K -m pyroib train ...`` starts K processes that share one run directory. Every process
builds the same model from the same seed (and takes rank 0's weights to be sure), draws the same permutation of the
training set each epoch, and trains on its own disjoint slice of every global batch of K × ``--batch-size`` points;
the data plate keeps the full N, so each process's loss is N / B times its local sum and the average of the K
gradients is the gradient of one process on the concatenated batch. Gradients are averaged by one all-reduce per
step (gloo on the CPU, NCCL on CUDA). Rank 0 alone writes the run (config, metrics, checkpoints); the logged means
are over all K slices. Batch-level estimators (TC, marginal KL, MMD) see each process's local batch. One process
without torchrun is the plain training loop.

Pyro keeps its handler stack per process, so nothing here touches Pyro: the programs are traced in each process as
usual (``nn.DataParallel`` would share one handler stack between threads).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    started_here: bool = False  # whether train() initialised the process group (and so ends it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


def join(device: torch.device) -> tuple[Processes, torch.device]:
    """The process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, ...),
    joined if need be; one process otherwise. On CUDA each process takes the GPU of its local rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(), device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), started), device


def leave(processes: Processes) -> None:
    if processes.started_here:
        import torch.distributed as dist

        dist.destroy_process_group()


def barrier(processes: Processes) -> None:
    if processes.parallel:
        import torch.distributed as dist

        dist.barrier()


def broadcast_weights(processes: Processes, modules) -> None:
    """Every process starts from rank 0's weights and buffers."""
    if not processes.parallel:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, 0)


def average_gradients(processes: Processes, parameters) -> None:
    """Replace each gradient by its mean over the processes: one all-reduce of all gradients flattened together."""
    if not processes.parallel:
        return
    import torch.distributed as dist

    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= processes.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def total(processes: Processes, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sums over the processes of each value (one all-reduce)."""
    if not processes.parallel or not values:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    stacked = torch.stack([torch.as_tensor(values[k], dtype=torch.float64).reshape(()) for k in keys])
    dist.all_reduce(stacked)
    return dict(zip(keys, stacked.unbind()))


def any_process(processes: Processes, flag: torch.Tensor) -> torch.Tensor:
    """True where any process's flag is true."""
    if not processes.parallel:
        return flag
    import torch.distributed as dist

    value = flag.to(torch.int64).reshape(1).clone()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value[0].bool()


# whether batch-level information terms read the global batch (every process's points) or the local one; set by the
# training loop for the run's --batch-terms, read by pyroib.objectives.aggregate
_GLOBAL_BATCH = contextvars.ContextVar("pyroib_global_batch", default=False)


@contextlib.contextmanager
def global_batch_terms(active: bool):
    token = _GLOBAL_BATCH.set(bool(active))
    try:
        yield
    finally:
        _GLOBAL_BATCH.reset(token)


def gathered(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """``tensor``'s rows from every process, in rank order, when global batch terms are on; the tensor itself
    otherwise.

    The other processes' rows arrive without a graph; this process's rows carry K times their gradient (their value
    unchanged). Every process computes the same term of the global batch, so after the gradients are averaged each
    parameter gets Σ_r ∂T/∂rows_r, the gradient of one process on the concatenated batch. No collective runs in the
    backward pass: two differentiable all-gathers in one graph were found to pair their backward collectives
    differently across processes and return wrong gradients (found while testing this function)."""
    if tensor is None or not _GLOBAL_BATCH.get():
        return tensor
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    world, rank = dist.get_world_size(), dist.get_rank()
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[rank] = world * tensor - (world - 1) * tensor.detach()
    return torch.cat(parts)


__all__ = [
    "Processes",
    "gathered",
    "global_batch_terms",
    "any_process",
    "average_gradients",
    "barrier",
    "broadcast_weights",
    "join",
    "leave",
    "total",
]
