"""Segmentation models, one module per family; each registers itself in jaxseg.registry."""
