"""Backbones: each returns a dict of feature maps keyed by stage name."""
