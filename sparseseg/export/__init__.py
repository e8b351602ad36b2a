"""Exports for other tools (QuPath GeoJSON)."""
