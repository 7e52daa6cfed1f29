"""Benchmarks and soaks of the real bot, driven through its public faces only.

`python -m bench.soak` (or `make soak`): a chaos soak, see `bench/soak.py`.
"""
