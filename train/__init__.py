"""Checkout entry points: `python -m train.main|eval|predict` run `jaxseg train|eval|predict`.

The code lives in the installed package (jaxseg/train/); these modules only
keep the repository-root commands working.
"""
