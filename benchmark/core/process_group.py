"""The process group of a ``torchrun`` launch: whether there is one, this process's rank and
device, starting and ending it. Every query answers for a single process when there is none
(``world_size() == 1``, ``rank() == 0``, ``is_main()``).
"""
from __future__ import annotations

import datetime
import os

import torch

TIMEOUT_MINUTES = 180        # a rank may wait this long for another (rank 0 building a feature cache)



def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None



def launched_by_torchrun() -> bool:
    """True in a process started by ``torchrun`` (it sets RANK, LOCAL_RANK and WORLD_SIZE)."""
    return all(key in os.environ for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))



def is_distributed() -> bool:
    dist = _dist()
    return dist is not None and dist.get_world_size() > 1



def world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist is not None else 1



def rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist is not None else 0



def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if _dist() is not None else 0



def is_main() -> bool:
    return rank() == 0



def init(backend: str | None = None) -> str:
    """Start the process group of a ``torchrun`` launch (once); returns the backend. With CUDA each
    rank takes GPU ``LOCAL_RANK``."""
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_backend()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES))
    return backend



def backend() -> str | None:
    dist = _dist()
    return dist.get_backend() if dist is not None else None



def shutdown() -> None:
    dist = _dist()
    if dist is not None:
        dist.destroy_process_group()



def device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` with CUDA, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")



def _comm_device() -> torch.device:
    dist = _dist()
    return device() if dist is not None and dist.get_backend() == "nccl" else torch.device("cpu")



def barrier() -> None:
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()
