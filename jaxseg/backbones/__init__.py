"""Backbones: each returns a dict of feature maps keyed by stage name.

Models build theirs from their `backbone_spec()` with `jaxseg.registry.build_backbone`.
"""
