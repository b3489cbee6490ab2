"""PyTorch reference implementations used by the parity tests (CPU, eval mode).

Each module reproduces the key layout named in DESIGN.md / the model's
docstring so that `jaxseg.weights.from_torch` is exercised on the same state
dict the published checkpoints use.
"""
