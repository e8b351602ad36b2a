"""Training targets from a sparse annotation (Sketchpose, science.md section 2).

S0 / S1 are background / foreground strokes, B the known true boundaries (manual pieces,
interfaces between differently labelled annotated pixels, outlines of complete objects), CB the
complete annotation boundary (B and the strokes' own outlines), D the valid distance set
{x in S : dist(x, B) <= dist(x, CB)}. On D the true distance to the object boundaries is known
(the theorem); on every stroke pixel dist(x, CB) is a lower bound of it.

Distances are from pixel centres to boundaries lying on pixel interfaces (see ``lattice``); the
patch edge is not a boundary (as in Omnipose). Signs: positive inside objects, negative on
background. With dense labels D is the whole patch and the targets are the Omnipose-style signed
distance and its unit gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from sparseseg.geometry.lattice import (centre_distance, centre_gradient, empty_lattice, label_interfaces,
                                           lattice_distance, lattice_support, set_boundary)
from sparseseg.annotations.model import BACKGROUND, FIRST_OBJECT, UNKNOWN, PatchAnnotation

#: Foreground of unknown identity (image-level mask) in the internal state map.
_FG_UNKNOWN_ID = np.uint32(np.iinfo(np.uint32).max)


@dataclass(frozen=True)
class Targets:
    """Per-pixel training targets of one (H, W) patch (float32 / bool arrays)."""

    s0: np.ndarray            # background strokes (and outside an image-level foreground mask)
    s1: np.ndarray            # foreground pixels of known object identity
    s1_sign_only: np.ndarray  # foreground of unknown identity (mask, points): only the sign is known
    valid: np.ndarray         # D
    distance: np.ndarray      # signed distance target on D, 0 elsewhere
    flow: np.ndarray          # (2, H, W) unit gradient of the signed distance on D, 0 elsewhere
    lower_bound: np.ndarray   # dist(x, CB) on S0 | S1, 0 elsewhere
    complete: np.ndarray      # pixels of completely drawn objects
    boundary: np.ndarray      # B on the half-pixel lattice
    boundary_pieces: np.ndarray  # lattice points where the distance must be 0 (eikonal loss)
    boundary_support: np.ndarray  # pixels a boundary piece runs through (they are annotated too)
    point_boundary: np.ndarray    # lattice: Voronoi lines between points inside one foreground-mask blob
    classes: np.ndarray           # int64 class id per pixel, -1 where the class is unknown

    @property
    def strokes(self) -> np.ndarray:
        return self.s0 | self.s1


def _state_map(annotation: PatchAnnotation) -> np.ndarray:
    """uint32 map: 0 unknown, 1 background, k >= 2 objects, _FG_UNKNOWN_ID foreground without identity."""
    state = annotation.partial.copy()
    if annotation.foreground is not None:
        fg = annotation.foreground.astype(bool)
        conflict = fg & (state == BACKGROUND)
        if conflict.any():
            raise ValueError(f"{int(conflict.sum())} pixels are background strokes inside the foreground mask")
        state[(state == UNKNOWN) & fg] = _FG_UNKNOWN_ID
        state[(state == UNKNOWN) & ~fg] = BACKGROUND
    for y, x in annotation.points:
        i, j = min(int(y), state.shape[0] - 1), min(int(x), state.shape[1] - 1)
        if state[i, j] == BACKGROUND:
            raise ValueError(f"point ({y:.1f}, {x:.1f}) lies on a background stroke")
        if state[i, j] == UNKNOWN:
            state[i, j] = _FG_UNKNOWN_ID
    return state


def _known_boundary(state: np.ndarray, complete: frozenset[int]) -> np.ndarray:
    """Interfaces that are true boundaries given the annotation alone (without manual pieces)."""
    is_complete = np.isin(state, np.fromiter(complete, np.uint32, len(complete))) if complete else None

    def between(a, b):
        differ = (a != b) & (a != UNKNOWN) & (b != UNKNOWN)
        # identity-unknown foreground next to an object may be the same object: not a boundary
        ambiguous = ((a == _FG_UNKNOWN_ID) & (b >= FIRST_OBJECT)) | ((b == _FG_UNKNOWN_ID) & (a >= FIRST_OBJECT))
        return differ & ~ambiguous

    lattice = label_interfaces(state, between)
    if is_complete is not None:  # a complete object's whole outline is a true boundary
        lattice |= label_interfaces(np.where(is_complete, state, 0), lambda a, b: (a != b))
    return lattice


def point_voronoi_boundaries(foreground: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Interfaces between the Voronoi cells of points that share one connected foreground blob.

    A heuristic separation for touching objects annotated only by a mask and one point each
    (LACSS-style weak labels): not a guaranteed true boundary, so it never enters B or D.
    """
    h, w = foreground.shape
    lattice = empty_lattice((h, w))
    if len(points) < 2:
        return lattice
    blobs, _ = ndi.label(foreground)
    seeds = np.zeros((h, w), np.int64)
    rows = np.minimum(points[:, 0].astype(int), h - 1)
    cols = np.minimum(points[:, 1].astype(int), w - 1)
    seeds[rows, cols] = np.arange(1, len(points) + 1)
    _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[iy, ix]
    cells[(blobs == 0) | (blobs[iy, ix] != blobs)] = 0  # a cell never crosses into another blob
    return label_interfaces(cells, lambda a, b: (a != b) & (a > 0) & (b > 0))


def compute_targets(annotation: PatchAnnotation) -> Targets:
    """All Sketchpose targets of a patch; see the module docstring for the definitions."""
    state = _state_map(annotation)
    s0 = state == BACKGROUND
    s1 = (state >= FIRST_OBJECT) & (state != _FG_UNKNOWN_ID)
    sign_only = state == _FG_UNKNOWN_ID
    pieces = empty_lattice(state.shape)
    if annotation.boundary is not None:
        pieces |= annotation.boundary
    boundary = _known_boundary(state, annotation.complete) | pieces
    complete_boundary = boundary | set_boundary(s0) | set_boundary(s1)

    strokes = s0 | s1
    lattice_b = lattice_distance(boundary) if boundary.any() else None
    dist_b = (lattice_b[1::2, 1::2] * 0.5).astype(np.float32) if lattice_b is not None \
        else np.full(state.shape, np.inf, np.float32)
    # CB adds the strokes' outlines to B; where it adds nothing (dense labels) reuse dist(x, B)
    dist_cb = dist_b if np.array_equal(complete_boundary, boundary) else centre_distance(complete_boundary)
    valid = strokes & np.isfinite(dist_b) & (dist_b <= dist_cb)  # no known boundary: nothing valid
    sign = np.where(s1, 1.0, -1.0).astype(np.float32)
    distance = np.where(valid, sign * dist_b, 0.0).astype(np.float32)
    flow = np.zeros((2, *state.shape), np.float32)
    if lattice_b is not None:
        flow = np.where(valid, sign * centre_gradient(lattice_b), 0.0).astype(np.float32)
    lower = np.where(strokes & np.isfinite(dist_cb), dist_cb, 0.0).astype(np.float32)
    complete = np.isin(state, list(annotation.complete)) if annotation.complete else np.zeros_like(s0)
    return Targets(s0=s0, s1=s1, s1_sign_only=sign_only, valid=valid, distance=distance, flow=flow,
                   lower_bound=lower, complete=complete, boundary=boundary, boundary_pieces=pieces,
                   boundary_support=lattice_support(pieces),
                   point_boundary=point_voronoi_boundaries(annotation.foreground.astype(bool), annotation.points)
                   if annotation.foreground is not None else np.zeros_like(pieces),
                   classes=np.full(state.shape, -1, np.int64) if annotation.classes is None
                   else annotation.classes.astype(np.int64) - 1)
