"""Inference: whole-image and tiled network prediction (tiled equals whole-image)."""
