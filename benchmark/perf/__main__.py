"""``python -m benchmark.perf COMMAND``: the timing scripts of :mod:`benchmark.perf.timing`."""
import sys

from benchmark.perf.timing import main

sys.exit(main(sys.argv[1:]))
