"""Inference: a checkpoint as a ready Predictor."""
