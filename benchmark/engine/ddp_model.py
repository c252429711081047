"""What DDP training does to a model: BatchNorm layers synchronised over the global batch (for
any backend; torch's SyncBatchNorm runs on GPUs only) and digests of a module's state, which the
engine compares across ranks after every epoch.
"""
from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from benchmark.contract.collectives import _SumOverRanks, gather_objects
from benchmark.core.process_group import is_distributed


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (every rank's rows), for
    any backend (torch's SyncBatchNorm runs on GPUs only). With it a DDP run normalises as one
    process with the whole batch would, and the running statistics stay identical on every rank.
    Outside DDP training (one process, or eval mode) it is exactly ``nn.BatchNorm*d``. Parameters
    and buffers have the BatchNorm names, so checkpoints move between the two freely.

    Two passes (mean, then the centred squares) keep the variance accurate; gradients flow through
    both sums to every rank (the DDP objective is the mean of the ranks' losses, so the summed
    gradient here and DDP's average give the single-process gradient)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        xf = x.float()
        count = _SumOverRanks.apply(xf.new_tensor([xf.numel() / xf.shape[1]]))
        mean = _SumOverRanks.apply(xf.sum(dims)) / count
        centred = xf - mean.view(shape)
        var = _SumOverRanks.apply((centred * centred).sum(dims)) / count          # biased, for normalising
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1.0)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), m)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)



class SyncBatchNormAct(SyncBatchNorm):
    """:class:`SyncBatchNorm` followed by the dropout and activation of a timm ``BatchNormAct2d``
    (which subclasses ``nn.BatchNorm2d`` and applies ``drop`` then ``act`` after normalising)."""

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if hasattr(self, "drop"):
            x = self.drop(x)
        if hasattr(self, "act"):
            x = self.act(x)
        return x



PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)



def _synced(module: nn.Module) -> nn.Module | None:
    """The :class:`SyncBatchNorm` replacing ``module``, or None to keep it: plain BatchNorm layers and
    timm's BatchNormAct2d (its ``drop`` / ``act`` kept) are replaced; any other BatchNorm subclass may
    compute more than a BatchNorm and is kept (its running statistics then differ between ranks, which
    the engine's per-epoch state check reports)."""
    if type(module) in PLAIN_BATCHNORMS:
        cls = SyncBatchNorm
    elif isinstance(module, nn.BatchNorm2d) and type(module).__name__ == "BatchNormAct2d":
        cls = SyncBatchNormAct
    else:
        return None
    sync = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
    for name, child in module.named_children():           # BatchNormAct2d: drop, act
        sync.add_module(name, child)
    sync.load_state_dict(module.state_dict())
    state = list(module.state_dict().values())
    if state:
        sync = sync.to(state[0].device)
    if module.affine:
        sync.weight.requires_grad_(module.weight.requires_grad)
        sync.bias.requires_grad_(module.bias.requires_grad)
    sync.train(module.training)
    return sync



def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with its BatchNorm layers replaced by :class:`SyncBatchNorm` (same parameters,
    buffers, mode and ``requires_grad``; see :func:`_synced` for which); returns the module (replaced
    in place below the root). Code that keeps references to a replaced layer must look it up again."""
    if isinstance(module, SyncBatchNorm):
        return module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        sync = _synced(module)
        return module if sync is None else sync
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module



def state_digests(module: nn.Module) -> dict[str, str]:
    """sha256 of every parameter and buffer of ``module`` (name -> hex digest, exact bytes)."""
    out = {}
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        data = tensor.detach().cpu().contiguous()
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        out[name] = hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]
    return out



def differing_state(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers that are not identical on every rank (a collective;
    [] in a single process)."""
    if not is_distributed():
        return []
    digests = gather_objects(state_digests(module))
    names = set().union(*digests)
    return sorted(n for n in names if len({d.get(n) for d in digests}) > 1)
