"""Instances from predicted distance + flow (Euler integration), and their stitching."""
