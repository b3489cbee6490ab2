"""Training, evaluation and prediction: the library behind `jaxseg train`, `jaxseg eval` and `jaxseg predict`."""
