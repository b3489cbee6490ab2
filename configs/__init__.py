"""Experiment configs: one `get_config()` per paper recipe (ml_collections)."""
