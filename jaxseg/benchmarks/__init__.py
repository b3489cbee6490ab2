"""Benchmarks: `jaxseg benchmark` (run.py) and the per-convolution census (conv_census.py)."""
