"""Partial-annotation losses: minimum at the exact distance, gradients, and blindness to unknown pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_scene, random_sparse_annotation

from sparseseg.annotations import PatchAnnotation, compute_targets
from sparseseg.losses import (EikonalWeights, SketchposeWeights, batch_targets, eikonal_loss, eikonal_regulariser,
                              masked_object_loss, sketchpose_loss, upwind_gradient)

#: The published Sketchpose weights: no logistic sign term, whose minimum lies at infinite distance.
PUBLISHED = SketchposeWeights(flow=2.0, sign=0.0)


def _batch(seed: int, dense: bool = False):
    rng = np.random.default_rng(seed)
    labels = random_scene(rng)
    annotation = PatchAnnotation.from_dense(labels) if dense else random_sparse_annotation(rng, labels)
    return labels, batch_targets([compute_targets(annotation)])


def _exact_prediction(seed: int):
    labels, t = _batch(seed, dense=True)
    return t, t.distance.clone().double(), t.flow.clone().double()


@pytest.mark.parametrize("seed", range(4))
def test_eikonal_loss_is_near_minimal_at_the_exact_signed_distance(seed):
    t, phi, v = _exact_prediction(seed)
    base = eikonal_loss(phi, v, t).item()
    rng = np.random.default_rng(seed)
    for scale in (0.1, 0.3):
        noise = torch.from_numpy(rng.normal(0, scale, phi.shape))
        assert eikonal_loss(phi + noise, v, t).item() > base
        flow_noise = torch.from_numpy(rng.normal(0, scale, v.shape))
        assert eikonal_loss(phi, v + flow_noise, t).item() > base
    # and exact targets are a minimum of the data-driven losses too
    assert sketchpose_loss(phi, v, t, PUBLISHED).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_object_loss(phi, v, t, PUBLISHED).item() == pytest.approx(0.0, abs=1e-12)


def test_upwind_gradient_has_unit_length_on_a_linear_ramp():
    y = torch.arange(12, dtype=torch.float64)[:, None].expand(12, 9)
    phi = (y - 5.5)[None]  # signed distance to the line y = 5.5, positive below it
    grad = upwind_gradient(phi)
    np.testing.assert_allclose(grad[0, 0, 1:-1].numpy(), 1.0)
    np.testing.assert_allclose(grad[0, 1].numpy(), 0.0)


@pytest.mark.parametrize("loss", [sketchpose_loss, masked_object_loss, eikonal_loss])
def test_autograd_gradient_matches_finite_differences(loss):
    _, t = _batch(3)
    crop = slice(14, 22), slice(20, 28)  # a small window keeps gradcheck fast
    t.__dict__.update({k: getattr(t, k)[:, crop[0], crop[1]] for k in
                       ("s0", "s1", "s1_sign_only", "valid", "distance", "lower_bound", "complete",
                        "boundary_support")})
    t.flow = t.flow[:, :, crop[0], crop[1]]
    t.boundary_pieces = t.boundary_pieces[:, 28:45, 40:57]
    t.point_boundary = t.point_boundary[:, 28:45, 40:57]
    rng = np.random.default_rng(0)
    phi = torch.from_numpy(rng.normal(0, 3, t.s0.shape)).requires_grad_()
    v = torch.from_numpy(rng.normal(0, 1, t.flow.shape)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b, t), (phi, v), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_predictions_on_unknown_pixels_change_no_label_term(seed):
    _, t = _batch(seed)
    unknown = ~t.known
    assert unknown.any()
    rng = np.random.default_rng(seed)
    phi = torch.from_numpy(rng.normal(0, 3, t.s0.shape))
    v = torch.from_numpy(rng.normal(0, 1, t.flow.shape))
    phi2 = torch.where(unknown, phi + torch.from_numpy(rng.normal(0, 5, phi.shape)), phi)
    v2 = torch.where(unknown[:, None], v + torch.from_numpy(rng.normal(0, 5, v.shape)), v)
    for loss in (sketchpose_loss, masked_object_loss):
        assert loss(phi2, v2, t).item() == loss(phi, v, t).item()
    assert eikonal_loss(phi2, v2, t, region="known").item() == pytest.approx(
        eikonal_loss(phi, v, t, region="known").item(), rel=1e-12)
    # region='all' regularises unknown pixels too, but only through the label-free regulariser
    everywhere = torch.ones_like(t.s0)
    label_part = eikonal_loss(phi, v, t) - eikonal_regulariser(phi, v, everywhere)
    label_part2 = eikonal_loss(phi2, v2, t) - eikonal_regulariser(phi2, v2, everywhere)
    assert label_part2.item() == pytest.approx(label_part.item(), rel=1e-9, abs=1e-12)


def test_inequality_penalises_magnitudes_below_the_lower_bound_only():
    partial = np.zeros((16, 16), np.uint32)
    partial[4:12, 4:12] = 1  # a background stroke: lower bound up to 4 px at its centre
    t = batch_targets([compute_targets(PatchAnnotation(partial=partial))])
    far_enough = -t.lower_bound.double() - 1.0  # more negative than required: no penalty
    zero_flow = torch.zeros(1, 2, 16, 16, dtype=torch.float64)
    assert sketchpose_loss(far_enough, zero_flow, t, PUBLISHED).item() == 0.0
    too_small = -0.5 * t.lower_bound.double()
    assert sketchpose_loss(too_small, zero_flow, t, PUBLISHED).item() > 0.0


def _fit_free_field(t, weights, steps=800):
    torch.manual_seed(0)
    shape = t.s0.shape[1:]
    phi = (0.01 * torch.randn(1, *shape)).requires_grad_()  # a network never outputs exact zeros
    v = (0.01 * torch.randn(1, 2, *shape)).requires_grad_()
    optimiser = torch.optim.Adam([phi, v], lr=0.2)
    for _ in range(steps):
        optimiser.zero_grad()
        eikonal_loss(phi, v, t, weights).backward()
        optimiser.step()
    return phi.detach()[0].numpy()


def test_foreground_mask_and_points_separate_touching_objects_under_the_eikonal_loss():
    """LACSS-style weak labels: one mask blob made of two touching disks, one point per disk.

    Fitting a free field to the eikonal loss gives a distance that is positive inside, negative
    outside, and - only thanks to the points - dips on the seam between the two disks."""
    yy, xx = np.mgrid[:40, :64]
    mask = ((yy - 20) ** 2 + (xx - 22) ** 2 < 12**2) | ((yy - 20) ** 2 + (xx - 41) ** 2 < 12**2)
    annotation = PatchAnnotation(partial=np.zeros(mask.shape, np.uint32), foreground=mask,
                                 points=np.array([[20.5, 22.5], [20.5, 41.5]]))
    t = batch_targets([compute_targets(annotation)])
    assert t.point_boundary.any() and t.s1_sign_only.sum() == mask.sum() and t.s0.sum() == (~mask).sum()
    for weights, separated in ((EikonalWeights(), True), (EikonalWeights(point_boundary=0.0), False)):
        field = _fit_free_field(t, weights)
        assert (field[mask] > 0).mean() > 0.95 and (field[~mask] < 0).mean() > 0.95
        seam = field[14:27, 31:33].max()  # the neck between the disks, on the Voronoi line
        inside = min(field[20, 22], field[20, 41])
        assert (seam < 0.3 * inside) if separated else (seam > 0.7 * inside), (seam, inside)


def test_points_on_background_are_rejected():
    partial = np.ones((10, 10), np.uint32)
    with pytest.raises(ValueError, match="lies on a background stroke"):
        compute_targets(PatchAnnotation(partial=partial, points=np.array([[5.0, 5.0]])))


def test_deep_background_only_has_to_stay_below_the_cap():
    partial = np.ones((1, 60), np.uint32)
    partial[0, :4] = 2  # an object at the left: background 0.5 .. 55.5 px from it
    t = batch_targets([compute_targets(PatchAnnotation(partial=partial, complete=frozenset({2})))])
    assert t.distance.min() < -50
    flow = t.flow.double()
    deep_enough = torch.where(t.distance < -5, torch.full_like(t.distance, -6.0), t.distance).double()
    assert sketchpose_loss(deep_enough, flow, t, PUBLISHED).item() == pytest.approx(0.0, abs=1e-12)
    too_shallow = torch.where(t.distance < -5, torch.full_like(t.distance, -3.0), t.distance).double()
    assert sketchpose_loss(too_shallow, flow, t, PUBLISHED).item() > 0.0


@pytest.mark.parametrize("loss", [sketchpose_loss, masked_object_loss])
def test_the_sign_term_is_a_logistic_loss_on_the_strokes_only(loss):
    _, t = _batch(0)  # sparse: strokes and unknown pixels
    generator = torch.Generator().manual_seed(0)
    phi = 3 * torch.randn(t.distance.shape, generator=generator, dtype=torch.float64)
    v = torch.randn(t.flow.shape, generator=generator, dtype=torch.float64)
    with_sign = loss(phi, v, t, SketchposeWeights(flow=2.0, sign=3.0)).item()
    strokes = t.s0 | t.s1
    if loss is masked_object_loss:
        strokes = t.complete | (t.s0 & t.valid) | (t.s0 & ~t.valid)
    sign = t.s1.double() * 2 - 1
    expected = 3.0 * torch.nn.functional.softplus(-sign * phi)[strokes].mean().item()
    assert with_sign - loss(phi, v, t, PUBLISHED).item() == pytest.approx(expected, rel=1e-9)
    # a distance further on the right side of zero lowers it; unknown pixels never enter it
    assert loss(phi + 0.5 * sign, v, t, SketchposeWeights(flow=2.0, sign=3.0, distance=0, inequality=0)).item() \
        < loss(phi, v, t, SketchposeWeights(flow=2.0, sign=3.0, distance=0, inequality=0)).item()
    unknown = ~(t.s0 | t.s1)
    assert unknown.any()
    changed = torch.where(unknown, -phi, phi)
    only_sign = SketchposeWeights(flow=0.0, sign=3.0, distance=0, inequality=0)
    assert loss(changed, v, t, only_sign).item() == pytest.approx(loss(phi, v, t, only_sign).item(), rel=1e-12)
