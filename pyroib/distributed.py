"""Data-parallel training across processes with torch.distributed, as ``torchrun`` launches it.

``torchrun --nproc-per-node K -m pyroib train ...`` starts K processes that share one run directory. Every process
builds the same model from the same seed (and takes rank 0's weights to be sure), draws the same permutation of the
training set each epoch, and trains on its own disjoint slice of every global batch of K × ``--batch-size`` points;
the data plate keeps the full N, so each process's loss is N / B times its local sum and the average of the K
gradients is the gradient of one process on the concatenated batch. Gradients are averaged by one all-reduce per
step (gloo on the CPU, NCCL on CUDA). Rank 0 alone writes the run (config, metrics, checkpoints); the logged means
are over all K slices. Batch-level estimators (TC, marginal KL, MMD) see each process's local batch, or with
``--batch-terms global`` the global one (:func:`gathered`). Critics (FactorVAE, AAE, BIB-AE) start from rank 0's
weights and average their gradients too, so they stay identical across processes. One process without torchrun is
the plain training loop.

A process that dies leaves the others in a collective that fails (gloo: "connection reset by peer"; NCCL: a
timeout); every collective here turns that into :class:`ProcessLost`, which the training loop words with the epoch and
the checkpoint that stays valid.

Pyro keeps its handler stack per process, so nothing here touches Pyro: the programs are traced in each process as
usual (``nn.DataParallel`` would share one handler stack between threads).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import functools
import os
import re
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


class ProcessLost(RuntimeError):
    """A collective failed: another training process died, was killed or lost its connection."""


# what gloo and NCCL say when the other side of a collective is gone
_LOST = re.compile(r"gloo|nccl|connection|peer|socket|timed out|timeout|closed", re.IGNORECASE)
# set while one process works alone inside a data-parallel job (rank 0 evaluating a sweep's run): collectives that
# read current() then see one process
_ALONE = contextvars.ContextVar("pyroib_alone", default=False)


@contextlib.contextmanager
def alone():
    """Within this block, :func:`current` reports one process, so code that synchronises through it (critics,
    codebooks, global batch terms) runs no collective: for work one process does while the others do something else."""
    token = _ALONE.set(True)
    try:
        yield
    finally:
        _ALONE.reset(token)


def _collective(function):
    @functools.wraps(function)
    def guarded(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (ProcessLost, torch.OutOfMemoryError):
            raise
        except RuntimeError as error:  # torch.distributed.DistError and the backends' own RuntimeErrors
            import torch.distributed as dist

            if not isinstance(error, dist.DistError) and not _LOST.search(str(error)):
                raise  # a mistake of ours (a CPU tensor handed to NCCL, say), not a lost process
            # the backend's first sentence, without the source location gloo puts in front
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            reason = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0]
            raise ProcessLost(f"another training process stopped or lost contact ({reason[:200]})") from error

    return guarded


def current() -> Processes:
    """This process's place in the process group already joined (by :func:`join`); one process when there is
    none. For code that runs inside a training step, e.g. the objectives' critics."""
    import torch.distributed as dist

    if _ALONE.get() or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return Processes()
    return Processes(dist.get_rank(), dist.get_world_size())


def join(device: torch.device, timeout: datetime.timedelta | None = None) -> tuple[Processes, torch.device]:
    """The process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, ...),
    joined if need be; one process otherwise. On CUDA each process takes the GPU of its local rank. ``timeout``:
    how long a collective waits for the other processes (torch's default: 30 minutes for gloo, 10 for NCCL)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(), device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return Processes(dist.get_rank(), dist.get_world_size(), started), device


def leave(processes: Processes) -> None:
    if processes.started_here:
        import torch.distributed as dist

        dist.destroy_process_group()


@_collective
def barrier(processes: Processes) -> None:
    if processes.parallel:
        import torch.distributed as dist

        dist.barrier()


@_collective
def broadcast_weights(processes: Processes, modules) -> None:
    """Every process starts from rank 0's weights and buffers."""
    if not processes.parallel:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, 0)


@_collective
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


@_collective
def total(processes: Processes, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sums over the processes of each value, of any shape, in float64 (one all-reduce). Every process must pass
    the same keys with the same shapes."""
    if not processes.parallel or not values:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    # NCCL reduces CUDA tensors only: the values' device where any is on one
    on = [v.device for v in values.values() if isinstance(v, torch.Tensor) and v.device.type != "cpu"]
    tensors = [torch.as_tensor(values[k], dtype=torch.float64, device=on[0] if on else None) for k in keys]
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    sizes = [t.numel() for t in tensors]
    return {k: part.view_as(t) for k, t, part in zip(keys, tensors, flat.split(sizes))}


@_collective
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


@_collective
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
    processes = current()
    if not processes.parallel:
        return tensor
    parts = _rows_of_each_process(tensor.detach())
    parts[processes.rank] = processes.world * tensor - (processes.world - 1) * tensor.detach()
    return torch.cat(parts)


@_collective
def every_process_rows(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``'s rows from every process, in rank order, without a graph (the tensor itself in one process).
    Every process must pass the same shape."""
    if not current().parallel:
        return tensor
    return torch.cat(_rows_of_each_process(tensor.detach()))


def _rows_of_each_process(tensor: torch.Tensor) -> list[torch.Tensor]:
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return parts


__all__ = [
    "ProcessLost",
    "Processes",
    "alone",
    "current",
    "every_process_rows",
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
