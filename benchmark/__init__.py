"""The harness: registry, run specs and grids, the MMEngine engine, metrics, results store."""
