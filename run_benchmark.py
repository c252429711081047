#!/usr/bin/env python
"""Benchmark multi-label image recognition with partial labels.

    python run_benchmark.py                                  # the default grid, offline, CPU
    python run_benchmark.py --methods clsl hst --ratios 0.1:0.9
    python run_benchmark.py report --out results/NAME
"""
import sys

from benchmark.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
