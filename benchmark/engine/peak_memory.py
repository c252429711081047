"""Peak memory of a run: CUDA's allocator peak on a GPU, the process's resident set on a CPU.
"""
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
