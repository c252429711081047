"""Peak memory of a run: CUDA's allocator peak on a GPU, the process's resident set on a CPU."""
from __future__ import annotations

import os

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return float("nan")


class PeakMemory:
    """Tracks the peak over one run (sampled once per training iteration on a CPU)."""

    def __init__(self):
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.peak = _rss_mb() if not self.cuda else 0.0

    def sample(self) -> None:
        if not self.cuda:
            self.peak = max(self.peak, _rss_mb())

    def peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        return self.peak


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4       # glibc mallopt parameters (malloc.h)
TRIM_THRESHOLD = 2**30                      # 1 GiB, within a C int


def tune_allocator() -> bool:
    """Keep freed large buffers in the process instead of returning them to the kernel (glibc only).

    By default glibc serves each large tensor with its own mmap and unmaps it on free, so every
    batch of feature extraction faults its buffers in again: half its CPU time was kernel time
    (19.6 M minor page faults for 4,000 images). No mmap for large blocks and a high trim threshold
    keep them; results are byte-identical. Called once at start-up (CLI, workers); a no-op where
    there is no glibc. Returns whether it took effect."""
    import ctypes
    import platform

    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
