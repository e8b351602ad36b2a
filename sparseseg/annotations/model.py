"""The canonical in-memory form of what a person annotated on a 2D patch.

Every annotation type the pipeline accepts (brush strokes, complete objects, boundary pieces,
points, image-level foreground masks, dense labels) is expressed in one ``PatchAnnotation``.
Unannotated pixels are *unknown*: they never count as background.

Geometry convention (see docs/annotations.md): pixel (i, j) is the unit square
[i, i+1] x [j, j+1] with its centre at (i + 0.5, j + 0.5). Boundaries lie on pixel interfaces.
Explicit boundary pieces are stored on the *half-pixel lattice* of shape (2H+1, 2W+1): lattice
point (a, b) is the position (a/2, b/2), so pixel centres are the odd-odd points, corners the
even-even points and interface midpoints the mixed ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sparseseg.geometry.lattice import empty_lattice

UNKNOWN = 0
BACKGROUND = 1
FIRST_OBJECT = 2


def encode_dense(labels):
    """Dense instance labels (0 background, k > 0 objects; numpy or dask) -> the partial encoding: every
    pixel known, background 1, object k -> k + 1."""
    return np.where(labels > 0, labels.astype(np.uint32) + np.uint32(1), np.uint32(BACKGROUND))


@dataclass(frozen=True)
class PatchAnnotation:
    """Sparse annotation of one (H, W) patch.

    partial: uint32 (H, W); 0 unknown, 1 background, k >= 2 pixels known to belong to object k.
        Different ids touching mark a boundary between them; an object next to background marks
        an object boundary.
    boundary: bool (2H+1, 2W+1) or None; explicit boundary pieces on the half-pixel lattice
        (manual boundaries, Sketchpose-2 curve pieces and boundary points).
    points: float (N, 2) of (y, x) pixel coordinates, one per object (LACSS-style seeds).
    foreground: bool (H, W) or None; image-level foreground mask: True = some object (identity
        unknown), False = background.
    complete: ids of objects drawn completely (their whole outline is a true boundary).
    classes: uint8 (H, W) or None; 0 class unknown, c >= 1 the pixel's cell is of class c - 1 (a
        classified point's disk, a classified object's pixels).
    """

    partial: np.ndarray
    boundary: np.ndarray | None = None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))
    foreground: np.ndarray | None = None
    complete: frozenset[int] = frozenset()
    classes: np.ndarray | None = None

    def __post_init__(self):
        partial = np.asarray(self.partial)
        if partial.ndim != 2:
            raise ValueError(f"partial map must be 2D, got shape {partial.shape}")
        if not np.issubdtype(partial.dtype, np.integer) or (partial.size and partial.min() < 0):
            raise ValueError(f"partial map must hold non-negative integers, got {partial.dtype}")
        object.__setattr__(self, "partial", partial.astype(np.uint32, copy=False))
        h, w = partial.shape
        if self.boundary is not None and self.boundary.shape != (2 * h + 1, 2 * w + 1):
            raise ValueError(f"boundary lattice must have shape {(2 * h + 1, 2 * w + 1)} for a {(h, w)} patch, "
                             f"got {self.boundary.shape}")
        if self.foreground is not None and self.foreground.shape != (h, w):
            raise ValueError(f"foreground mask must have shape {(h, w)}, got {self.foreground.shape}")
        if self.classes is not None and self.classes.shape != (h, w):
            raise ValueError(f"class map must have shape {(h, w)}, got {self.classes.shape}")
        points = np.asarray(self.points, np.float64).reshape(-1, 2)
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "complete", frozenset(int(k) for k in self.complete))
        missing = set(self.complete) - set(np.unique(partial).tolist())
        if missing:
            raise ValueError(f"objects {sorted(missing)} are flagged complete but absent from the partial map")

    @property
    def shape(self) -> tuple[int, int]:
        return self.partial.shape  # type: ignore[return-value]

    @property
    def known(self) -> np.ndarray:
        """Pixels carrying any label information (strokes, objects, or the foreground mask)."""
        known = self.partial != UNKNOWN
        return known if self.foreground is None else np.ones_like(known)

    @classmethod
    def from_dense(cls, labels: np.ndarray) -> PatchAnnotation:
        """Dense instance labels (0 = background, k > 0 objects): everything known, all complete."""
        partial = encode_dense(np.asarray(labels))
        return cls(partial=partial, complete=frozenset(np.unique(partial[partial >= FIRST_OBJECT]).tolist()))


def boundary_from_polylines(polylines: list[np.ndarray], shape: tuple[int, int], clip: bool = False) -> np.ndarray:
    """Rasterise (y, x) polylines in pixel coordinates onto the half-pixel lattice.

    Each segment is sampled every quarter pixel and snapped to the nearest lattice point, so a
    lattice point is at most 0.35 px from the drawn curve. Points outside the patch are refused,
    or dropped with ``clip`` (a patch cut from a larger annotated image).
    """
    h, w = shape
    lattice = empty_lattice(shape)
    for line in polylines:
        line = np.asarray(line, np.float64).reshape(-1, 2)
        outside = line.size and (line.min() < 0 or (line[:, 0] > h).any() or (line[:, 1] > w).any())
        if outside and not clip:
            raise ValueError(f"polyline leaves the {h}x{w} patch: {line.min(0)}..{line.max(0)}")
        if len(line) == 1:
            samples = line
        else:
            pieces = []
            for a, b in zip(line[:-1], line[1:]):
                n = max(2, int(np.ceil(np.abs(b - a).max() * 4)) + 1)
                pieces.append(a + (b - a) * np.linspace(0, 1, n)[:, None])
            samples = np.concatenate(pieces)
        idx = np.rint(samples * 2).astype(int)
        inside = (idx[:, 0] >= 0) & (idx[:, 0] <= 2 * h) & (idx[:, 1] >= 0) & (idx[:, 1] <= 2 * w)
        lattice[idx[inside, 0], idx[inside, 1]] = True
    return lattice
