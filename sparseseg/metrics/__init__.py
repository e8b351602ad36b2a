"""Accuracy metrics and per-object measurements."""
