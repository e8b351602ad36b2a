"""Whole-slide segmentation: plan, blocks on Dask workers, objects a block cannot see whole on grown windows, labels written."""

from sparseseg.segment.options import SegmentOptions
from sparseseg.segment.run import SegmentResult, segment_slide

__all__ = ["SegmentOptions", "SegmentResult", "segment_slide"]
