"""Sparse annotations: the canonical model, its storage/import, and training targets."""

from sparseseg.annotations.model import BACKGROUND, FIRST_OBJECT, UNKNOWN, PatchAnnotation
from sparseseg.annotations.targets import Targets, compute_targets

__all__ = ["BACKGROUND", "FIRST_OBJECT", "UNKNOWN", "PatchAnnotation", "Targets", "compute_targets"]
