"""Training, evaluation and prediction entry points for jaxseg (`python -m train.main`)."""
