"""Partial-annotation losses (torch) on distance + flow predictions (science.md sections 2-5).

Predictions: ``distance`` (N, H, W), positive inside objects; ``flow`` (N, 2, H, W). Targets come
from ``sparseseg.annotations.targets`` via ``batch_targets``. Every label term only reads pixels
that carry annotation; unknown pixels enter only the eikonal loss's label-free regulariser.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sparseseg.annotations.targets import Targets


@dataclass
class TargetBatch:
    """Targets of N patches as tensors (bool masks, float32 values)."""

    s0: torch.Tensor
    s1: torch.Tensor
    s1_sign_only: torch.Tensor
    valid: torch.Tensor
    distance: torch.Tensor
    flow: torch.Tensor
    lower_bound: torch.Tensor
    complete: torch.Tensor
    boundary_pieces: torch.Tensor  # (N, 2H+1, 2W+1) lattice
    boundary_support: torch.Tensor
    point_boundary: torch.Tensor   # (N, 2H+1, 2W+1) lattice, heuristic (points + foreground mask)
    classes: torch.Tensor          # (N, H, W) int64 class ids, -1 unknown

    @property
    def known(self) -> torch.Tensor:
        """Pixels any label term reads: strokes, sign-only foreground, pixels under boundary pieces."""
        return self.s0 | self.s1 | self.s1_sign_only | self.boundary_support


def batch_targets(targets: list[Targets], device: torch.device | str = "cpu") -> TargetBatch:
    def stack(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(t, name) for t in targets])).to(device)

    return TargetBatch(**{name: stack(name) for name in TargetBatch.__dataclass_fields__})


@dataclass(frozen=True)
class SketchposeWeights:
    """Weights of the sketchpose (and masked) loss terms. The defaults weigh the flow and the sign of the
    distance much more than the published 2 / 2 (docs/accuracy.md: +0.05 F1 and AJI on H&E)."""

    distance: float = 2.0
    flow: float = 20.0
    inequality: float = 1.0
    #: Logistic loss on the sign of the predicted distance at every labelled stroke pixel (foreground
    #: positive, background negative): sharpens the foreground/background decision at object edges,
    #: where the distance regression has little gradient. 0 = off (the published loss).
    sign: float = 10.0
    #: Background deeper than this (px) only has to stay at least this negative: far-background
    #: distances would otherwise dominate the loss (Omnipose likewise uses a fixed negative value).
    background_cap: float = 5.0


def _capped(distance: torch.Tensor, target: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction and target with values below -cap raised to -cap (only where the target is)."""
    floor = torch.full_like(target, -cap)
    deep = target < -cap
    return torch.where(deep, torch.maximum(distance, floor), distance), torch.maximum(target, floor)


@dataclass(frozen=True)
class EikonalWeights:
    unit_flow: float = 1.0
    unit_gradient: float = 1.0
    coupling: float = 1.0
    boundary: float = 1.0
    sign: float = 1.0
    point_boundary: float = 0.25


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image mean of ``values`` over ``mask`` (0 for an empty mask), averaged over the batch.

    Every patch weighs the same whatever its annotated area, so data-parallel ranks averaging
    their losses reproduce the single-process loss of the same global batch exactly.
    """
    mask = mask.to(values.dtype)
    per_image = (values * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)
    return per_image.mean()


def sketchpose_loss(distance: torch.Tensor, flow: torch.Tensor, t: TargetBatch,
                    weights: SketchposeWeights = SketchposeWeights()) -> torch.Tensor:
    """Distance MSE and flow MSE on D, plus the one-sided inequality on all strokes.

    The inequality penalises a predicted distance *magnitude* below the lower bound dist(x, CB):
    ReLU(lb - s * d)^2 with s = +1 on foreground and -1 on background strokes.
    """
    d, target = _capped(distance, t.distance, weights.background_cap)
    l_distance = _masked_mean((d - target) ** 2, t.valid)
    l_flow = _masked_mean(((flow - t.flow) ** 2).sum(1), t.valid & (t.distance >= -weights.background_cap))
    sign = t.s1.to(distance.dtype) * 2 - 1
    bound = torch.where(t.s0, t.lower_bound.clamp(max=weights.background_cap), t.lower_bound)
    shortfall = F.relu(bound - sign * distance) ** 2
    l_ineq = _masked_mean(shortfall, t.s0 | t.s1)
    total = weights.distance * l_distance + weights.flow * l_flow + weights.inequality * l_ineq
    if weights.sign:
        total = total + weights.sign * _masked_mean(F.softplus(-sign * distance), t.s0 | t.s1)
    return total


def masked_object_loss(distance: torch.Tensor, flow: torch.Tensor, t: TargetBatch,
                       weights: SketchposeWeights = SketchposeWeights()) -> torch.Tensor:
    """Sugawara-style subset loss: full targets on completely drawn objects and background in D.

    Background strokes outside D only carry their sign (penalise a positive predicted distance);
    every other pixel is ignored.
    """
    exact = t.complete | (t.s0 & t.valid)
    d, target = _capped(distance, t.distance, weights.background_cap)
    l_distance = _masked_mean((d - target) ** 2, exact)
    l_flow = _masked_mean(((flow - t.flow) ** 2).sum(1), exact & (t.distance >= -weights.background_cap))
    l_sign = _masked_mean(F.relu(distance) ** 2, t.s0 & ~t.valid)
    total = weights.distance * l_distance + weights.flow * l_flow + weights.inequality * l_sign
    if weights.sign:
        sign = t.s1.to(distance.dtype) * 2 - 1
        total = total + weights.sign * _masked_mean(F.softplus(-sign * distance), exact | (t.s0 & ~t.valid))
    return total


def _pad_linear(phi: torch.Tensor) -> torch.Tensor:
    """Pad (N, H, W) by one pixel, extrapolating the edge slope (exact for linear fields)."""
    rows = torch.cat([2 * phi[:, :1] - phi[:, 1:2], phi, 2 * phi[:, -1:] - phi[:, -2:-1]], 1)
    return torch.cat([2 * rows[:, :, :1] - rows[:, :, 1:2], rows, 2 * rows[:, :, -1:] - rows[:, :, -2:-1]], 2)


def upwind_gradient(phi: torch.Tensor) -> torch.Tensor:
    """Godunov upwind gradient (N, 2, H, W) of a signed distance-like field (N, H, W).

    Where phi >= 0 each axis uses the difference to its smaller neighbour (phi - min)_+, pointing
    uphill; where phi < 0 the scheme is applied to -phi, so both sides of the zero level follow the
    viscosity solution of |grad phi| = 1. The patch edge extrapolates the edge slope linearly.
    """
    sign = torch.where(phi.detach() >= 0, 1.0, -1.0).to(phi.dtype)
    u = sign * phi
    padded = _pad_linear(phi)
    components = []
    for before, after in ((padded[:, :-2, 1:-1], padded[:, 2:, 1:-1]), (padded[:, 1:-1, :-2], padded[:, 1:-1, 2:])):
        before, after = sign * before, sign * after  # neighbours seen with the centre's sign
        smaller = torch.minimum(before, after)
        direction = torch.where(before <= after, 1.0, -1.0).to(phi.dtype)  # uphill away from the smaller side
        components.append(direction * F.relu(u - smaller))
    return sign[:, None] * torch.stack(components, 1)


def lattice_values(phi: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``phi`` (N, H, W) at every half-pixel lattice point: (N, 2H+1, 2W+1)."""
    p = F.pad(phi[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    rows = torch.empty(p.shape[0], 2 * phi.shape[1] + 1, p.shape[2], dtype=phi.dtype, device=phi.device)
    rows[:, 1::2] = p[:, 1:-1]
    rows[:, 0::2] = (p[:, :-1] + p[:, 1:]) / 2
    out = torch.empty(p.shape[0], rows.shape[1], 2 * phi.shape[2] + 1, dtype=phi.dtype, device=phi.device)
    out[:, :, 1::2] = rows[:, :, 1:-1]
    out[:, :, 0::2] = (rows[:, :, :-1] + rows[:, :, 1:]) / 2
    return out


def eikonal_regulariser(distance: torch.Tensor, flow: torch.Tensor, region: torch.Tensor,
                        weights: EikonalWeights = EikonalWeights()) -> torch.Tensor:
    """Label-free part of the Sketchpose-2 loss over ``region``: unit flow, unit upwind gradient, coupling."""
    grad = upwind_gradient(distance)
    unit_flow = (flow.norm(dim=1) - 1) ** 2
    unit_grad = (grad.norm(dim=1) - 1) ** 2
    coupling = ((grad - flow) ** 2).sum(1)
    return (weights.unit_flow * _masked_mean(unit_flow, region)
            + weights.unit_gradient * _masked_mean(unit_grad, region)
            + weights.coupling * _masked_mean(coupling, region))


def known_stencil(known: torch.Tensor) -> torch.Tensor:
    """Pixels whose whole 4-neighbour stencil is annotated (the patch edge counts as annotated)."""
    k = F.pad(known[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    return (k[:, 1:-1, 1:-1] * k[:, :-2, 1:-1] * k[:, 2:, 1:-1] * k[:, 1:-1, :-2] * k[:, 1:-1, 2:]) > 0


def eikonal_loss(distance: torch.Tensor, flow: torch.Tensor, t: TargetBatch,
                 weights: EikonalWeights = EikonalWeights(), region: str = "all") -> torch.Tensor:
    """Sketchpose-2 loss: eikonal regulariser + zero on boundary pieces + sign on S0 / S1.

    ``region='all'`` regularises every pixel as published (what lets points and curve pieces
    propagate into unannotated areas); ``region='known'`` only where the stencil is annotated.
    Foreground of unknown identity (masks, points) enters the sign term; with a foreground mask,
    the Voronoi lines between points of one blob are pulled to zero with the (low) weight
    ``point_boundary``, which is what separates touching objects annotated only by mask + points.
    """
    if region == "all":
        mask = torch.ones_like(t.s0)
    elif region == "known":
        mask = known_stencil(t.known)
    else:
        raise ValueError(f"region must be 'all' or 'known', got {region!r}")
    l_reg = eikonal_regulariser(distance, flow, mask, weights)
    on_lattice = lattice_values(distance) ** 2
    l_boundary = _masked_mean(on_lattice, t.boundary_pieces)
    l_points = _masked_mean(on_lattice, t.point_boundary)
    l_sign = _masked_mean(F.relu(distance), t.s0) + _masked_mean(F.relu(-distance), t.s1 | t.s1_sign_only)
    return l_reg + weights.boundary * l_boundary + weights.sign * l_sign + weights.point_boundary * l_points


def class_loss(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Class-balanced cross-entropy where a class is known: per image, the mean over the classes present
    of each class's mean pixel loss, then the mean over the batch (images without a class count 0, so
    data-parallel ranks reproduce one process's batch). Unknown pixels (-1) contribute nothing."""
    known = classes >= 0
    if not known.any():
        return logits.sum() * 0.0
    pixel = F.cross_entropy(logits, classes.clamp_min(0), reduction="none") * known
    n_classes = logits.shape[1]
    onehot = F.one_hot(classes.clamp_min(0), n_classes).permute(0, 3, 1, 2) * known[:, None]
    per_class_sum = (pixel[:, None] * onehot).flatten(2).sum(2)
    per_class_count = onehot.flatten(2).sum(2).to(logits.dtype)
    present = per_class_count > 0
    per_class = per_class_sum / per_class_count.clamp_min(1.0)
    per_image = per_class.sum(1) / present.sum(1).clamp_min(1)
    return per_image.mean()


LOSSES = {"sketchpose": sketchpose_loss, "eikonal": eikonal_loss, "masked": masked_object_loss}
