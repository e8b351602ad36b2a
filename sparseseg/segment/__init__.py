"""Whole-slide segmentation: block plan, block work on Dask workers, stitching by ownership."""
