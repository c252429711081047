"""The ranks of one run: the one module through which the engine and the methods reach other
processes of a ``torchrun`` launch (design guide, section 8). Methods never call
``torch.distributed`` themselves.

On a single process every helper is an identity (``gather_rows(t) is t``, ``all_reduce`` returns its
input, ``is_main()`` is True), so one code path runs everywhere. Under ``torchrun`` the process
group is started by :func:`init` (``nccl`` with one GPU per rank where CUDA is available, ``gloo`` on
CPUs) before MMEngine's Runner is built; the Runner then finds it initialised and keeps it.

Conventions a method follows under DDP (README, "One node with several GPUs"). Rank r holds rows
r, r + N, r + 2N, ... of the global batch (the harness's sampler), and DDP averages the ranks'
gradients, so:

* a loss averaged over the batch's *rows* needs nothing; one averaged over a count that differs
  between ranks (known entries) divides by :func:`batch_normaliser`; one that *sums* over the batch
  is multiplied by :func:`sum_scale`; a non-linear function of a batch mean takes
  :func:`batch_mean`; a loss coupling the batch's rows (pairs, partners, top-k) is computed on
  :func:`global_batch` (or selects on :func:`gather_batch` of detached values);
* per-sample state indexed by ``batch.index`` is written with every rank's rows (:func:`set_rows`);
* epoch passes (``ctx.iterate_train()``) give each rank a contiguous share of the training rows, so
  rows gathered in rank order are the single-process order, and whole-set statistics are gathered or
  summed (:func:`all_reduce`);
* BatchNorm layers become :class:`SyncBatchNorm` (the engine converts them): training batches are
  normalised with the global batch's statistics, as in one process, and the running statistics
  are identical on every rank.

:func:`state_digests` fingerprints a module's state; the engine compares the ranks' digests after
every epoch and logs any tensor that differs, so a method that breaks these rules is caught.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from benchmark.core.process_group import (
    _comm_device,
    _dist,
    is_distributed,
    rank,
    world_size,
)


def _one_or_all(tensors):
    """A lone tensor as itself, several as a tuple (the gathers take and give back either)."""
    tensors = tuple(tensors)
    return tensors[0] if len(tensors) == 1 else tensors



def gather_rows(*tensors: Tensor) -> Tensor | tuple[Tensor, ...]:
    """Every rank's rows (dim 0) concatenated in rank order, on the input's device; ranks may hold
    different numbers of rows. Several tensors are gathered alike and returned as a tuple. An
    identity in a single process. No gradient flows through the gathered rows."""
    if not is_distributed():
        return _one_or_all(tensors)
    return _one_or_all(_gather_one(t) for t in tensors)



def gather_batch(*tensors: Tensor) -> Tensor | tuple[Tensor, ...]:
    """The global training batch of this iteration, rows in the single-process order: every rank
    holds the same number of rows, dealt round robin by the sampler (row j of rank r is row
    ``j * world + r`` of the global batch), so the gathered rows are interleaved back. An identity
    in a single process. No gradient flows through the gathered rows."""
    if not is_distributed():
        return _one_or_all(tensors)
    out = []
    for tensor in tensors:
        rows = _gather_one(tensor)
        if rows.shape[0] != world_size() * tensor.shape[0]:
            raise RuntimeError("gather_batch needs the same number of rows on every rank (a training batch)")
        parts = rows.reshape(world_size(), tensor.shape[0], *tensor.shape[1:])
        out.append(parts.transpose(0, 1).reshape(-1, *tensor.shape[1:]))
    return _one_or_all(out)



def own_rows(rows: Tensor) -> Tensor:
    """This rank's rows of a global-batch tensor (rows in the single-process order, as
    :func:`gather_batch` and :func:`global_batch` give them): the inverse of the gather, with the
    gradient of the rows kept. An identity in a single process."""
    if not is_distributed():
        return rows
    return rows[rank()::world_size()]


class _GatherBatch(torch.autograd.Function):
    """gather_batch with a gradient: every rank's gradient for the global rows is summed, and each
    rank keeps the part for its own rows."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        ctx.rows = tensor.shape[0]
        return gather_batch(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        _dist().all_reduce(grad)
        return grad[rank()::world_size()][:ctx.rows]



def global_batch(values: Tensor, *labels: Tensor) -> tuple[Tensor, ...]:
    """``values`` (with a gradient to every rank's rows) and ``labels`` (without) of the global batch,
    rows in the single-process order. For a loss that couples the rows of a batch (contrastive
    pairs, in-batch sampling): each rank computes the global batch's loss, which DDP's gradient
    average turns into exactly that loss's gradient. Identities in one process."""
    if not is_distributed():
        return (values, *labels)
    return (_GatherBatch.apply(values), *(gather_batch(t) if t is not None else None for t in labels))



@torch.no_grad()
def set_rows(table: Tensor, index: Tensor, values: Tensor | bool | float, combine=None) -> None:
    """``table[index] = values`` (or ``combine(table[index], values)``) with every rank's rows of this
    iteration, so a per-sample table indexed by ``batch.index`` stays identical on every rank.
    ``values`` may be one value for every row (``True`` marks rows as seen)."""
    if not torch.is_tensor(values):
        values = torch.full(index.shape, values, dtype=table.dtype, device=index.device)
    index, values = gather_batch(index, values)
    index, values = index.to(table.device), values.to(table.device)
    table[index] = values if combine is None else combine(table[index], values)



def _gather_one(tensor: Tensor) -> Tensor:
    dist, comm = _dist(), _comm_device()
    home, dtype = tensor.device, tensor.dtype
    local = tensor.detach().to(comm)
    if dtype == torch.bool:                      # gloo cannot reduce or gather bool tensors
        local = local.to(torch.uint8)
    sizes = [torch.zeros(1, dtype=torch.long, device=comm) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.long, device=comm))
    counts = [int(s) for s in sizes]
    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    rows = torch.cat([p[:n] for p, n in zip(parts, counts)])
    return rows.to(dtype).to(home)



def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """A new tensor: ``op`` (sum | mean | max | min) of ``tensor`` over the ranks; the input unchanged.
    An identity (the input itself) in a single process."""
    if not is_distributed():
        return tensor
    dist = _dist()
    ops = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    work = tensor.detach().to(_comm_device(), copy=True)
    as_bool = work.dtype == torch.bool
    if as_bool:
        work = work.to(torch.uint8)
    dist.all_reduce(work, op=ops[op])
    if op == "mean":
        work = work / dist.get_world_size()
    return (work.bool() if as_bool else work).to(tensor.device)



def batch_normaliser(count: Tensor) -> Tensor:
    """The denominator of a loss averaged over the entries of the *global* batch, for one rank's sum:
    the entries counted on every rank (at least 1) divided by the world size. DDP averages the
    ranks' gradients, so ``rank_sum / batch_normaliser(rank_count)`` trains exactly like
    ``global_sum / global_count`` in one process, where it is ``count.clamp_min(1)``."""
    if not is_distributed():
        return count.clamp_min(1.0)
    return all_reduce(count.detach().float()).clamp_min(1.0).to(count.dtype) / world_size()



def batch_mean(values: Tensor) -> Tensor:
    """The mean of ``values`` [B, ...] over the rows of the *global* batch, with a gradient to every
    rank's rows (a collective; ``values.mean(0)`` in one process). For a loss that is a non-linear
    function of a batch mean (e.g. SPML's expected-positive regulariser): each rank then computes the
    global batch's loss, and DDP's averaged gradient is that loss's gradient."""
    if not is_distributed():
        return values.mean(0)
    total = _SumOverRanks.apply(values.sum(0))
    rows = all_reduce(torch.tensor([float(values.shape[0])], device=values.device))
    return total / rows.to(total.dtype)



def sum_scale() -> int:
    """The factor of a loss that *sums* over the batch: DDP averages the ranks' gradients, so a rank's
    sum times the world size trains like the sum over the global batch (1 in a single process)."""
    return world_size()



def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any (a collective: every rank must call it)."""
    if not is_distributed():
        return bool(flag)
    return bool(all_reduce(torch.tensor([1.0 if flag else 0.0]), op="max").item() > 0)



def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    holder = [obj]
    _dist().broadcast_object_list(holder, src=src, device=_comm_device())
    return holder[0]



def gather_objects(obj: Any) -> list:
    """Every rank's ``obj`` in rank order (a one-element list in a single process)."""
    if not is_distributed():
        return [obj]
    parts: list = [None] * world_size()
    _dist().all_gather_object(parts, obj)
    return parts



def shard(n: int) -> range:
    """This rank's contiguous share of ``range(n)``: concatenated in rank order, the shares are
    ``range(n)`` again, so rows gathered from an epoch pass keep the single-process order."""
    size, r = world_size(), rank()
    return range(n * r // size, n * (r + 1) // size)



class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with a gradient: the backward sums the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        _dist().all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        _dist().all_reduce(grad)
        return grad
