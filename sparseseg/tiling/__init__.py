"""Tiles and blocks of large images, and objects streamed over tiles (shared by segment, measure, export)."""
