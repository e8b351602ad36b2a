"""Flow-derived instances (Omnipose-style): follow the flow from every foreground pixel, cluster end points.

Every foreground pixel (distance > threshold) is moved by damped explicit Euler steps along the
bilinearly sampled flow; the number of steps follows the largest predicted distance (about the
object radius). The flow points up the distance, so trajectories of one object gather on its
medial axis; pixels whose end points fall in one connected cluster form one instance. Objects whose
recomputed flow disagrees with the prediction (flow error QC) or that are too small are dropped.
The integration runs in torch on the network's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage import measure

from sparseseg.geometry.lattice import dense_flow


@dataclass(frozen=True)
class InstanceParams:
    """How instances are derived from distance + flow; stored in checkpoints (calibrated at the end of training)."""

    distance_threshold: float = 0.0    # foreground: predicted distance above this (px)
    min_size: int = 15                 # objects with fewer pixels are dropped
    flow_error_threshold: float = 0.6  # mean squared flow difference per object (0 = perfect, 4 = opposite)
    n_steps: int = 50                  # Euler steps: a fixed count, so a block integrates as the whole image does
    merge_ratio: float = 0.0           # > 0: merge touching clusters whose saddle distance >= ratio x the lower peak


FIXED_POINT_BITS = 16  # positions in 1/65536 px: integer arithmetic is exact and translation-invariant
CPU_CHUNK = 65536  # trajectories integrated together on a CPU (their temporaries stay in cache)


def max_travel(n_steps: int) -> float:
    """The farthest (px, per axis) any trajectory moves in ``n_steps``: velocities are clipped to [-1, 1] per axis,
    so a step moves at most its step size (plus 1/65536 px of rounding)."""
    return sum(max(0.25, 1.0 - t / n_steps) for t in range(n_steps)) + n_steps / (1 << FIXED_POINT_BITS)


def euler_endpoints(flow: torch.Tensor, seeds: torch.Tensor, n_steps: int,
                    trail: torch.Tensor | None = None, open_edges: tuple[bool, bool, bool, bool] = (False,) * 4
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate integer pixel positions (M, 2) (y, x) along flow (2, H, W); returns (float positions, stopped).

    Damped explicit Euler: the step size decays from 1 to 0.25, each velocity component clipped to
    [-1, 1] (so no trajectory travels farther than ``max_travel``). Positions are fixed-point
    integers and the bilinear weights come from their fractional bits, so a trajectory computed in a
    window is bit-identical to the same trajectory in the whole image as long as the window never
    stops it. ``open_edges`` (top, left, bottom, right) marks window edges that are not the image's:
    ``stopped`` (bool (M,)) flags trajectories held back there at least once (they may differ from the
    whole image's). With ``trail`` (bool (H, W)), marks every pixel visited during the second half of
    the steps: the tails run along each object's medial axis.
    """
    h, w = flow.shape[-2:]
    # one 8-byte item per pixel holding its (y, x) velocity: a single gather fetches both components
    velocities = flow.to(torch.float32).clamp(-1.0, 1.0).permute(1, 2, 0).contiguous().view(torch.float64).view(-1)
    pos = seeds.to(torch.int64) * (1 << FIXED_POINT_BITS)
    stopped = torch.zeros(len(pos), dtype=torch.bool, device=flow.device)
    # trajectories are independent: on a CPU, chunks whose temporaries stay in cache run faster
    chunk = len(pos) if flow.device.type != "cpu" else CPU_CHUNK
    for start in range(0, len(pos), max(chunk, 1)):
        part = slice(start, start + chunk)
        pos[part], stopped[part] = _integrate(velocities, (h, w), pos[part], n_steps, trail, open_edges)
    return pos.to(torch.float64) / (1 << FIXED_POINT_BITS), stopped


def position_dtype(shape: tuple[int, int]) -> torch.dtype:
    """int32 for fixed-point positions where every position of the window fits (with room for a step
    beyond the edge, less than one pixel), else int64; the end points are the same either way."""
    return torch.int32 if max(shape) * (1 << FIXED_POINT_BITS) < 2**31 - 4 * (1 << FIXED_POINT_BITS) else torch.int64


def _integrate(velocities: torch.Tensor, shape: tuple[int, int], pos: torch.Tensor, n_steps: int,
               trail: torch.Tensor | None, open_edges: tuple[bool, bool, bool, bool]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``euler_endpoints`` for fixed-point positions ``pos`` (M, 2) over the (H*W,) velocity pairs.

    Rows and columns are integrated as two 1-D integer arrays (int32 where the window fits, half the
    memory traffic of int64) and the interpolation runs in place: the same float32 operations in the
    same order as ``a + (b - a) * f``, so every end point is bit-identical whatever the integer width."""
    h, w = shape
    one = 1 << FIXED_POINT_BITS
    scale = float(one)
    kind = position_dtype(shape)
    py, px = pos[:, 0].to(kind), pos[:, 1].to(kind)
    last_y, last_x = (h - 1) * one, (w - 1) * one
    stopped = torch.zeros(len(pos), dtype=torch.bool, device=pos.device)
    top, left, bottom, right = open_edges
    flat_trail = trail.view(-1) if trail is not None else None

    def at(index: torch.Tensor) -> torch.Tensor:
        return velocities.index_select(0, index).view(torch.float32).view(-1, 2)

    for t in range(n_steps):
        fy = (py & (one - 1)).to(torch.float32).div_(scale).unsqueeze(1)
        fx = (px & (one - 1)).to(torch.float32).div_(scale).unsqueeze(1)
        here = (py >> FIXED_POINT_BITS).to(torch.int64).mul_(w).add_(px >> FIXED_POINT_BITS)
        beside = here + (px < last_x)  # the last row and column repeat themselves
        below = (py < last_y).to(torch.int64).mul_(w)
        v0, v1 = at(here), at(beside)
        v2, v3 = at(here.add_(below)), at(beside.add_(below))
        top_row = v1.sub_(v0).mul_(fx).add_(v0)
        velocity = v3.sub_(v2).mul_(fx).add_(v2).sub_(top_row).mul_(fy).add_(top_row)  # (M, 2)
        step = max(0.25, 1.0 - t / n_steps)
        move = velocity.mul_(step * scale).round_().to(kind)
        py += move[:, 0]
        px += move[:, 1]
        if top:
            stopped |= py < 0
        if left:
            stopped |= px < 0
        if bottom:
            stopped |= py > last_y
        if right:
            stopped |= px > last_x
        py.clamp_(0, last_y)
        px.clamp_(0, last_x)
        if flat_trail is not None and t >= n_steps // 2:
            nearest_y = (py + (one >> 1)) >> FIXED_POINT_BITS
            flat_trail[nearest_y.to(torch.int64).mul_(w).add_((px + (one >> 1)) >> FIXED_POINT_BITS)] = True
    return torch.stack([py.to(torch.int64), px.to(torch.int64)], 1), stopped


def cluster_endpoints(endpoints: np.ndarray, trail: np.ndarray) -> np.ndarray:
    """Cluster label of each trajectory: 8-connected components of the trajectory tails."""
    return tail_components(endpoints, trail)[0]


def tail_components(endpoints: np.ndarray, trail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(component of each trajectory, component map (H, W)): 8-connected components of the tails and end cells."""
    cells = np.rint(endpoints).astype(np.int64)
    occupied = trail.copy()
    occupied[cells[:, 0], cells[:, 1]] = True
    components, _ = ndi.label(occupied, structure=np.ones((3, 3)))
    return components[cells[:, 0], cells[:, 1]], components


def merge_lobes(labels: np.ndarray, distance: np.ndarray, ratio: float) -> np.ndarray:
    """Merge touching clusters that no boundary separates (one irregular object with several maxima)."""
    return lobe_components(labels, distance, ratio)[labels].astype(labels.dtype)


def lobe_components(labels: np.ndarray, distance: np.ndarray, ratio: float) -> np.ndarray:
    """The merged id of each cluster id (``merge_lobes`` is ``lobe_components(...)[labels]``).

    For each pair of 4-adjacent clusters the saddle is the highest min(d(p), d(q)) over their shared
    interface; two touching objects meet where the distance is ~0, two lobes of one object meet
    high on its medial axis. Pairs with saddle >= ratio x the smaller of their peaks are merged.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = int(labels.max())
    identity = np.arange(n + 1, dtype=np.int64)
    if n < 2 or ratio <= 0:
        return identity
    pairs = []
    for a, b, da, db in ((labels[:-1], labels[1:], distance[:-1], distance[1:]),
                         (labels[:, :-1], labels[:, 1:], distance[:, :-1], distance[:, 1:])):
        touching = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.stack([np.minimum(a, b)[touching], np.maximum(a, b)[touching],
                               np.minimum(da, db)[touching]], 1))
    pairs = np.concatenate(pairs)
    if not len(pairs):
        return identity
    key = pairs[:, 0].astype(np.int64) * (n + 1) + pairs[:, 1].astype(np.int64)
    order = np.argsort(key)
    key, pairs = key[order], pairs[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    saddle = np.maximum.reduceat(pairs[:, 2], starts)
    a, b = pairs[starts, 0].astype(np.int64), pairs[starts, 1].astype(np.int64)
    peaks = np.full(n + 1, -np.inf)
    inside = labels > 0
    np.maximum.at(peaks, labels[inside], distance[inside])  # per-cluster peak, no sort of the whole block
    merge = (saddle >= ratio * np.minimum(peaks[a], peaks[b])) & (saddle > 1.0)  # never across a thin neck
    graph = coo_matrix((np.ones(merge.sum()), (a[merge], b[merge])), shape=(n + 1, n + 1))
    _, component = connected_components(graph, directed=False)
    component[0] = -1
    remap = np.zeros(n + 1, np.int64)
    remap[1:] = component[1:] + 1
    return remap


def flow_errors(labels: np.ndarray, flow: np.ndarray, threads: int = 1) -> dict[int, float]:
    """Mean squared difference per object between the predicted flow and the flow of its own mask."""
    if labels.max() == 0:
        return {}
    inside = np.flatnonzero(labels)  # raster order: each object's sum adds up as over the whole image
    ids = labels.ravel()[inside]
    error = ((dense_flow(labels, threads).reshape(2, -1)[:, inside] - flow.reshape(2, -1)[:, inside]) ** 2).sum(0)
    sizes = np.bincount(ids)
    sums = np.bincount(ids, weights=error, minlength=sizes.size)
    present = np.flatnonzero(sizes[1:]) + 1
    return dict(zip(present.tolist(), (sums[present] / sizes[present]).tolist()))


def instance_clusters(distance: np.ndarray | torch.Tensor, flow: np.ndarray | torch.Tensor,
                      params: InstanceParams = InstanceParams(), device: str | torch.device | None = None
                      ) -> np.ndarray:
    """uint32 clusters (H, W) of a whole image: foreground pixels grouped by where their trajectories end,
    lobes merged. The candidates for objects before any is rejected: ``finalize_clusters`` decides which stay."""
    return window_clusters(distance, flow, params, device).clusters


def trajectory_clusters(distance: np.ndarray | torch.Tensor, flow: np.ndarray | torch.Tensor,
                        params: InstanceParams = InstanceParams(), device: str | torch.device | None = None
                        ) -> np.ndarray:
    """uint32 (H, W): foreground pixels (distance above the threshold) grouped by where their trajectories end."""
    return _trajectories(distance, flow, params, device).clusters


@dataclass
class _Trajectories:
    clusters: np.ndarray   # uint32 (H, W): tail component of each foreground pixel
    exact: np.ndarray      # bool (n + 1,): per component, whether it equals the whole image's (index 0 unused)


def _trajectories(distance, flow, params: InstanceParams, device, open_edges=(False,) * 4) -> _Trajectories:
    distance_t = torch.as_tensor(distance, dtype=torch.float32, device=device)
    flow_t = torch.as_tensor(flow, dtype=torch.float32, device=distance_t.device)
    shape = tuple(distance_t.shape)
    foreground = distance_t > params.distance_threshold
    labels = np.zeros(shape, np.uint32)
    if not bool(foreground.any()):
        return _Trajectories(labels, np.zeros(1, bool))
    seeds = torch.nonzero(foreground).to(torch.float32)
    trail = torch.zeros(shape, dtype=torch.bool, device=distance_t.device)
    ends, stopped = euler_endpoints(flow_t, seeds, params.n_steps, trail, open_edges)
    component, components = tail_components(ends.cpu().numpy(), trail.cpu().numpy())
    cells = seeds.cpu().numpy().astype(np.int64)
    labels[cells[:, 0], cells[:, 1]] = component
    n = int(components.max())
    exact = np.ones(n + 1, bool)
    if any(open_edges):
        exact[component[stopped.cpu().numpy()]] = False
        # no trajectory from outside the window (or stopped at its edge) can reach a tail farther than this
        reach = int(np.ceil(max_travel(params.n_steps))) + 3
        exact &= _clear_of_edges(components, n, open_edges, reach) & _clear_of_edges(labels, n, open_edges, 1)
    exact[0] = False
    return _Trajectories(labels, exact)


def _clear_of_edges(labels: np.ndarray, n: int, open_edges, reach: int) -> np.ndarray:
    """bool (n + 1,): whether each id's pixels stay at least ``reach`` px from every open window edge."""
    clear = np.ones(n + 1, bool)
    h, w = labels.shape
    top, left, bottom, right = open_edges
    bands = [labels[:reach] if top else None, labels[:, :reach] if left else None,
             labels[max(0, h - reach):] if bottom else None, labels[:, max(0, w - reach):] if right else None]
    for band in bands:
        if band is not None:
            clear[np.unique(band)] = False
    return clear


@dataclass
class WindowClusters:
    """A window's clusters (uint32 (H, W), lobes merged) and which of them are *exact*: equal to a cluster of
    the whole image whatever lies beyond the window's open edges (``exact[id]``; index 0 unused)."""

    clusters: np.ndarray
    exact: np.ndarray


def window_clusters(distance: np.ndarray | torch.Tensor, flow: np.ndarray | torch.Tensor,
                    params: InstanceParams = InstanceParams(), device: str | torch.device | None = None,
                    open_edges: tuple[bool, bool, bool, bool] = (False,) * 4) -> WindowClusters:
    """Clusters of a window whose ``open_edges`` (top, left, bottom, right) are not the image's edges.

    A cluster is exact when none of its trajectories was stopped at an open edge, its tails stay
    farther from the open edges than any trajectory travels (so none from outside can join it) and its
    pixels do not touch them; with lobe merging, when its neighbours are exact too (a merge depends on
    both sides). On the whole image (no open edge) every cluster is exact.
    """
    raw = _trajectories(distance, flow, params, device, open_edges)
    remap = lobe_components(raw.clusters, np.asarray(torch.as_tensor(distance).cpu(), np.float32),
                            params.merge_ratio)
    merged = remap[raw.clusters].astype(np.uint32)
    exact = raw.exact
    if params.merge_ratio > 0 and any(open_edges):
        exact = exact & ~_next_to(raw.clusters, ~raw.exact)
    ok = np.ones(int(remap.max()) + 1, bool)
    np.logical_and.at(ok, remap, exact)
    ok[0] = False
    return WindowClusters(merged, ok)


def _next_to(labels: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """bool per id: whether it is 4-adjacent to a different id flagged in ``bad``."""
    out = np.zeros(bad.size, bool)
    for a, b in ((labels[:-1], labels[1:]), (labels[:, :-1], labels[:, 1:])):
        touching = (a != b) & (a > 0) & (b > 0)
        a, b = a[touching].astype(np.int64), b[touching].astype(np.int64)
        out[a[bad[b]]] = True
        out[b[bad[a]]] = True
    return out


def cluster_flow_errors(clusters: np.ndarray, flow: np.ndarray, params: InstanceParams = InstanceParams()
                        ) -> dict[int, float]:
    """The flow error of each cluster at or above the size floor: each cluster's own flow depends on its own
    pixels only, so the small ones are left out of the transform."""
    sizes = np.bincount(clusters.ravel())
    keep = sizes >= params.min_size
    keep[0] = False
    return flow_errors(np.where(keep[clusters], clusters, np.uint32(0)), np.asarray(flow, np.float32),
                       torch.get_num_threads())


def finalize_clusters(clusters: np.ndarray, flow: np.ndarray, params: InstanceParams = InstanceParams(),
                      errors: dict[int, float] | None = None) -> np.ndarray:
    """The objects among ``clusters`` (ids kept, 0 elsewhere): each one 4-connected piece.

    A cluster whose recomputed flow disagrees with the prediction (flow error QC) or that is too
    small is dropped; of the rest, only the largest 4-connected piece stays (the other pieces,
    slivers of trajectories that ended in a neighbour's cluster, become background, so every
    object is one piece and one polygon), and is dropped too when that piece is below the size floor or
    is a sliver at most 2 px wide. Each object depends on its own cluster's pixels only,
    so a cluster computed exactly in a block gives exactly the whole image's object.
    """
    sizes = np.bincount(clusters.ravel())
    keep = sizes >= params.min_size  # below the size floor a cluster goes whatever its flow
    keep[0] = False
    if errors is None:  # given when several thresholds are tried on one set, or the caller keeps them
        errors = cluster_flow_errors(clusters, flow, params)
    keep[[k for k, e in errors.items() if e > params.flow_error_threshold]] = False
    labels = largest_pieces(np.where(keep[clusters], clusters, 0).astype(np.uint32))
    left = np.bincount(labels.ravel(), minlength=sizes.size)
    inner = np.bincount(labels[interior(labels)], minlength=sizes.size)
    # a piece below the size floor is no object, nor is a sliver at most 2 px wide (no pixel whose 4
    # neighbours are all its own): streaks and image-edge artefacts, never a nucleus
    dropped = (left > 0) & ((left < params.min_size) | (inner == 0))
    return np.where(dropped[labels], 0, labels).astype(np.uint32) if dropped.any() else labels


def interior(labels: np.ndarray) -> np.ndarray:
    """Pixels whose 4 neighbours all carry their own (non-zero) label; outside the array counts as another
    label, so the answer for an object depends on its own pixels only (tiled == whole)."""
    same = labels > 0
    same[1:] &= labels[1:] == labels[:-1]
    same[:-1] &= labels[:-1] == labels[1:]
    same[:, 1:] &= labels[:, 1:] == labels[:, :-1]
    same[:, :-1] &= labels[:, :-1] == labels[:, 1:]
    same[0], same[-1], same[:, 0], same[:, -1] = False, False, False, False
    return same


def largest_pieces(labels: np.ndarray) -> np.ndarray:
    """``labels`` with every object cut down to its largest 4-connected piece (ties: the piece whose first
    pixel comes first in raster order, which does not depend on where the image starts)."""
    pieces = measure.label(labels, background=0, connectivity=1)  # equal neighbours join: pieces of one object
    n = int(pieces.max())
    if n == 0:
        return labels
    owner = np.zeros(n + 1, np.int64)
    owner[pieces.ravel()] = labels.ravel()
    size = np.bincount(pieces.ravel(), minlength=n + 1)
    size[0] = 0
    if np.bincount(owner[1:]).max() == 1:  # every object in one piece already
        return labels
    order = np.lexsort((np.arange(n + 1), -size))  # largest first; skimage numbers pieces in raster order
    _, first = np.unique(owner[order], return_index=True)
    chosen = np.zeros(n + 1, bool)
    chosen[order[first]] = True
    chosen[0] = False
    return np.where(chosen[pieces], labels, 0).astype(labels.dtype)


def trimmed_pixels(clusters: np.ndarray, final: np.ndarray) -> np.ndarray:
    """Per id, the pixels of its cluster that ``finalize_clusters`` cut away as smaller pieces (0 for an id
    it dropped whole or left whole); what `segment` reports, so no trimmed pixel goes uncounted."""
    n = int(max(clusters.max(initial=0), final.max(initial=0))) + 1
    before = np.bincount(clusters.ravel().astype(np.int64), minlength=n)
    after = np.bincount(final.ravel().astype(np.int64), minlength=n)
    lost = np.where(after > 0, before - after, 0)
    lost[0] = 0  # background gains what the objects lose
    return lost


def flows_to_labels(distance: np.ndarray | torch.Tensor, flow: np.ndarray | torch.Tensor,
                    params: InstanceParams = InstanceParams(), device: str | torch.device | None = None) -> np.ndarray:
    """uint32 instance labels (0 background, 1..N), each one 4-connected piece, from one distance (H, W)
    and flow (2, H, W)."""
    clusters = instance_clusters(distance, flow, params, device)
    return relabel_sequential(finalize_clusters(clusters, np.asarray(torch.as_tensor(flow).cpu()), params))


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Compact ids 1..N in order of first appearance (row-major), uint32."""
    flat = labels.ravel()
    where = np.flatnonzero(flat)  # increasing: the first occurrence of an id is its smallest index
    first = np.full(int(labels.max()) + 1, flat.size, np.int64)
    np.minimum.at(first, flat[where], where)
    present = np.flatnonzero(first < flat.size)
    order = present[np.argsort(first[present])]
    lut = np.zeros(first.size, np.uint32)
    lut[order] = np.arange(1, order.size + 1, dtype=np.uint32)
    return lut[labels]
