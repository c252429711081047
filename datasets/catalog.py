"""The dataset registry's entries: name -> loader(size, seed) returning DatasetSplits."""
from __future__ import annotations

from benchmark.registry import DATASETS


@DATASETS.register_module(name="synthetic")
def synthetic(size: str = "default", seed: int = 0, **_):
    """The embedded procedurally generated dataset (offline, CPU-sized); see datasets/synthetic.py."""
    from datasets.synthetic import load_synthetic

    return load_synthetic(size=size, seed=seed)
