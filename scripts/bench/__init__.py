"""The benchmarks behind scripts/benchmark.py, one module each."""
