"""Measurements: per-object tables, regions, accuracy, report."""
