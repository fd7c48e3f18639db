"""Data parallel training for the trainers: which share of a batch this process trains on,
the DDP wrapper, and the mean of a value over processes.

Under ``torchrun`` (``sleep.py --date D --gpus N``; :mod:`models.together`) every process
runs the same trainer on the same inputs. Each draws the same *global* batch (rows,
crops, masks and noise are functions of the step), keeps its own slice of it, and DDP
averages the gradients, so with slices of equal size a step of N processes is the step of
one process on the whole batch, up to the order of floating-point sums. Only rank 0
writes a checkpoint.

In a single process (no process group) :func:`current` is world 1 and every helper
returns its input: a trainer reads the same either way.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes that train together.

    Attributes:
        rank: 0 writes checkpoints and keeps the night's results.
        world: how many processes train together (1 without torchrun).
    """

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def split(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """This process's contiguous slice of ``x`` along ``dim`` (all of it in one process).

        Slices differ in size by at most one row when the batch does not divide evenly;
        :meth:`scale` weighs each slice's mean loss by its size.
        """
        if not self.distributed:
            return x
        if x.shape[dim] < self.world:
            raise ValueError(f"a batch of {x.shape[dim]} rows cannot be shared by {self.world} processes")
        return torch.tensor_split(x, self.world, dim=dim)[self.rank]

    def sizes(self, rows: int) -> list[int]:
        """How many of ``rows`` each process's slice holds (:meth:`split`'s rule)."""
        return [len(part) for part in torch.tensor_split(torch.arange(rows), self.world)]

    def scale(self, rows: int) -> float:
        """The factor that makes this slice's mean loss, once DDP averages the gradients
        over the processes, the mean over all ``rows`` of the batch (1 in one process)."""
        if not self.distributed:
            return 1.0
        return self.sizes(rows)[self.rank] * self.world / rows

    def offset(self, rows: int) -> int:
        """Where this process's slice starts in the whole batch of ``rows``."""
        return sum(self.sizes(rows)[:self.rank]) if self.distributed else 0

    def wrap(self, module: nn.Module, *, find_unused: bool = False) -> nn.Module:
        """``module`` under DistributedDataParallel when training together, else itself.

        Its parameters must already be on the device; DDP copies rank 0's weights to the
        others once, here. ``find_unused``: some parameters may get no gradient in a step
        (a small model whose loss skips a part); it costs a graph walk per step.
        """
        if not self.distributed:
            return module
        device = next(module.parameters()).device
        return nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a (detached) tensor over the processes; the value itself in one."""
        return self.sum(value) / self.world if self.distributed else value

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of a (detached) tensor over the processes: statistics of the whole batch
        that a loss divides by, such as its variance."""
        if not self.distributed:
            return value
        total = value.detach().clone()
        torch.distributed.all_reduce(total)
        return total

    def any(self, mask: torch.Tensor) -> torch.Tensor:
        """Element-wise: true on some process (a neuron fired in some slice of the batch)."""
        if not self.distributed:
            return mask
        flags = mask.to(torch.uint8)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        return flags.bool()

    def min(self, value: torch.Tensor) -> torch.Tensor:
        """The least of a value over the processes."""
        if not self.distributed:
            return value
        least = value.detach().clone()
        torch.distributed.all_reduce(least, op=torch.distributed.ReduceOp.MIN)
        return least

    def sync_gradients(self, module: nn.Module) -> None:
        """Average the gradients of a small module that trains outside DDP (a distillation
        predictor beside the model), after ``backward``."""
        if not self.distributed:
            return
        for p in module.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world

    def gather(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """Every process's slice ``x`` of a batch of ``rows``, concatenated in rank order
        along dim 0, with gradients flowing back to each process's own slice (contrastive
        losses compare a slice with the whole batch). Unequal slices are padded for the
        collective and cut back after it."""
        if not self.distributed:
            return x
        from torch.distributed.nn.functional import all_gather

        sizes = self.sizes(rows)
        padded = F.pad(x, (0, 0) * (x.ndim - 1) + (0, max(sizes) - x.shape[0]))
        return torch.cat([part[:n] for part, n in zip(all_gather(padded), sizes)], dim=0)


class Objective(nn.Module):
    """A model's loss function run as a module's ``forward``.

    DDP averages the gradients of what its module's ``forward`` computed; a model whose
    loss is a method or a function of it (the reconstructors' ``loss``, the decoder's
    ``diffusion_loss``) is wrapped in this first.
    """

    def __init__(self, model: nn.Module, loss: Callable[..., torch.Tensor]):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, *args, **kwargs):
        return self.loss(self.model, *args, **kwargs)


_together: ContextVar[Ranks | None] = ContextVar("together", default=None)


@contextlib.contextmanager
def training_together(ranks: Ranks):
    """Within this block :func:`current` is ``ranks`` (:mod:`models.together` opens it around
    the one trainer call every process makes together)."""
    token = _together.set(ranks)
    try:
        yield
    finally:
        _together.reset(token)


def current() -> Ranks:
    """The processes the running trainer shares its batches with: the process group inside
    :func:`training_together`, else a world of one. A trainer rank 0 calls on its own (a
    small model of a stage) must not wait for processes that are not calling it."""
    return _together.get() or Ranks()


def group_ranks() -> Ranks:
    """This process's place in the process group (a world of one without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Ranks(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return Ranks()
