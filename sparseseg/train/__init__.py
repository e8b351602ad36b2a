"""Training from sparse annotations: patches, normalisation, checkpoints, loop, data parallelism."""
