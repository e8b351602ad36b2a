"""Geometry shared by every stage: the half-pixel lattice of pixel interfaces, and pixel sets <-> polygons."""
