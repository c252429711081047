"""Benchmarked methods: one file per method, each registered with ``@METHODS.register_module()``.
Every module in this folder is imported by ``benchmark.core.registry.discover()``; nothing to edit."""
