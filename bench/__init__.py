"""Benchmarks: `python -m bench.stream` measures streaming accuracy, latency and stability against a live server."""
