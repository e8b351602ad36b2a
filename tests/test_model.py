"""U-Net geometry: analytic vs empirical receptive field, and tiled == whole-image prediction."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import DSB

from sparseseg.infer.predictor import Predictor, hardware_has_bf16, resolve_precision
from sparseseg.infer.tiles import TileGrid
from sparseseg.infer.windows import NetworkFields
from sparseseg.model import UNet, UNetConfig, split_outputs
from sparseseg.model.inference import InferenceUNet
from sparseseg.model.normalize import Normalization
from sparseseg.model.receptive_field import empirical_halo
from sparseseg.tiling.blocks import BlockGrid

IDENTITY = {c: Normalization(low=(0.0,) * c, high=(1.0,) * c) for c in (1, 3)}
CONFIGS = [UNetConfig(in_channels=1, depth=2, width=8), UNetConfig(in_channels=3, depth=3, width=8),
           UNetConfig(in_channels=3, depth=3, width=8, convs_per_block=1, kernel_size=5, norm="none")]


def tiled(predictor: Predictor, image: np.ndarray, block: int, tile: int, halo: int | None = None) -> np.ndarray:
    """The network output assembled block by block (each block's own fields, nothing cached between blocks) on
    a grid of ``tile`` px tiles with ``halo`` (default the model's)."""
    out = np.zeros((3, *image.shape[1:]), np.float32)
    plan = BlockGrid(shape=image.shape[1:], block=block, margin=0, halo=predictor.halo, factor=predictor.downsampling)
    for b in plan.blocks():
        fields = NetworkFields(predictor, image.shape[1:], lambda window: image[(slice(None), *window)], tile=tile)
        if halo is not None:
            fields.grid = TileGrid(fields.grid.shape, tile, halo, predictor.downsampling)
        out[(slice(None), *b.core)] = fields.compute([fields.load(b.core)])[0]
    return out


def trained_a_little(model: UNet) -> UNet:
    """Batch norm with statistics that are not the identity (a network fresh from init hides mistakes)."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, model.config.in_channels, 64, 64) * 3)
    return model.eval()


@pytest.mark.parametrize("config", CONFIGS)
def test_empirical_receptive_field_is_within_the_analytic_halo(config):
    torch.manual_seed(0)
    model = UNet(config)
    measured = empirical_halo(model)
    assert 0 < measured <= model.halo
    assert measured > model.halo // 2  # the analytic bound is not absurdly loose


@pytest.mark.parametrize("config,block,shape,precision", [(CONFIGS[0], 64, (173, 259), "fp32"),
                                                          (CONFIGS[1], 96, (260, 347), "fp32"),
                                                          (CONFIGS[2], 128, (201, 130), "fp32"),
                                                          (CONFIGS[1], 96, (260, 347), "bf16")])
def test_tiled_prediction_equals_whole_image_prediction_bitwise(config, block, shape, precision):
    torch.manual_seed(1)
    model = trained_a_little(UNet(config))
    predictor = Predictor(network=model, precision=precision)
    pixels = iio.imread(DSB / "images" / ("fluo_0402a81e.png" if config.in_channels == 1 else "he_65c8527c.png"))
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    image = np.zeros((config.in_channels, *shape), np.float32)
    h, w = min(shape[0], pixels.shape[1]), min(shape[1], pixels.shape[2])
    image[:, :h, :w] = pixels[:, :h, :w] / 255.0
    tile = 2 * model.halo + 2 * model.downsampling  # several tiles along both axes
    whole_fields = NetworkFields(predictor, shape, lambda window: image[(slice(None), *window)], tile=tile)
    whole = whole_fields.compute([whole_fields.load((slice(0, shape[0]), slice(0, shape[1])))])[0]
    assert whole.shape == (3, *shape) and len(whole_fields.grid.covering((slice(0, shape[0]), slice(0, shape[1])))) > 4
    assert torch.equal(torch.from_numpy(tiled(predictor, image, block, tile)), torch.from_numpy(whole))
    # a tile cached when a window was loaded but evicted before it was computed is read then: still the same bits
    fields = NetworkFields(predictor, shape, lambda window: image[(slice(None), *window)], tile=tile)
    half = (slice(0, shape[0]), slice(0, shape[1] // 2))
    fields.compute([fields.load(half)])
    prepared = fields.load((slice(0, shape[0]), slice(0, shape[1])))
    fields.cache.clear()
    assert torch.equal(torch.from_numpy(fields.compute([prepared])[0]), torch.from_numpy(whole))
    # the default grid (one tile here) is the plain whole-image forward: the same to float precision wherever
    # the receptive field stays inside the image (nearer the bottom/right, zero padding of another depth)
    plain = predictor.fields(image, normalization=IDENTITY[config.in_channels])
    inside = (slice(None), slice(0, shape[0] - model.halo), slice(0, shape[1] - model.halo))
    np.testing.assert_allclose(plain[inside], whole[inside], atol=1e-4, rtol=0)
    # and a halo that is too small does break it: the test can fail
    too_small = tiled(predictor, image, block, tile, halo=model.downsampling)
    assert np.abs(too_small - whole).max() > 1e-3


def test_outputs_and_input_validation():
    model = UNet(UNetConfig(in_channels=1, depth=2, width=4, boundary_head=True))
    distance, flow, boundary = split_outputs(model(torch.zeros(2, 1, 32, 32)))
    assert distance.shape == (2, 32, 32) and flow.shape == (2, 2, 32, 32) and boundary.shape == (2, 32, 32)
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match="in_channels"):
        UNetConfig(in_channels=0)


def test_test_time_augmentation_is_equivariant_and_tiled_equals_whole():
    """The 8-fold average maps back flows correctly: augmented fields of a rotated / flipped image are the rotated /
    flipped fields (flow vectors turned with them); and augmented tiles still give any window the same bits."""
    torch.manual_seed(2)
    model = trained_a_little(UNet(UNetConfig(in_channels=3, depth=2, width=8, classes=3)))
    predictor = Predictor(network=model, class_names=("a", "b", "c"), tta=True)
    pixels = iio.imread(DSB / "images" / "he_65c8527c.png")[:96, :96, :3].transpose(2, 0, 1) / 255.0
    image = np.ascontiguousarray(pixels, np.float32)
    fields = predictor.forward(image)
    plain = Predictor(network=model, class_names=("a", "b", "c")).forward(image)
    assert fields.shape == plain.shape == (6, 96, 96) and np.abs(fields - plain).max() > 1e-3
    rotated = predictor.forward(np.ascontiguousarray(np.rot90(image, 1, (1, 2))))
    # rot90 (counter-clockwise): a flow (vy, vx) becomes (-vx, vy) in the rotated frame
    expected = np.rot90(fields, 1, (1, 2)).copy()
    expected[1], expected[2] = -np.rot90(fields[2], 1), np.rot90(fields[1], 1)
    np.testing.assert_allclose(rotated, expected, atol=1e-5)
    flipped = predictor.forward(np.ascontiguousarray(image[:, :, ::-1]))
    expected = fields[:, :, ::-1].copy()
    expected[2] = -expected[2]
    np.testing.assert_allclose(flipped, expected, atol=1e-5)
    assert np.allclose(fields[3:].sum(0), 1, atol=1e-5)
    # augmented tiles: any window gets the whole image's bits
    shape = (150, 170)
    big = np.zeros((3, *shape), np.float32)
    big[:, :96, :96] = image
    big[:, 54:, 74:] = image[:, :96, :96]
    tile = 2 * model.halo + 2 * model.downsampling
    whole_fields = NetworkFields(predictor, shape, lambda window: big[(slice(None), *window)], tile=tile)
    whole = whole_fields.compute([whole_fields.load((slice(0, shape[0]), slice(0, shape[1])))])[0]
    window = (slice(40, 120), slice(24, 130))
    part = NetworkFields(predictor, shape, lambda w: big[(slice(None), *w)], tile=tile)
    assert torch.equal(torch.from_numpy(part.compute([part.load(window)])[0]),
                       torch.from_numpy(whole[(slice(None), *window)]))


def test_the_views_disagreement_leaves_the_average_alone_and_turns_with_the_image():
    """With ``tta_spread`` one channel follows the averaged fields (unchanged to the bit): the 8 views' spread,
    non-negative, larger than zero, and the same set of views for a rotated image (so it rotates with it)."""
    torch.manual_seed(3)
    model = trained_a_little(UNet(UNetConfig(in_channels=3, depth=2, width=8, classes=3)))
    pixels = iio.imread(DSB / "images" / "he_65c8527c.png")[:96, :96, :3].transpose(2, 0, 1) / 255.0
    image = np.ascontiguousarray(pixels, np.float32)
    averaged = Predictor(network=model, class_names=("a", "b", "c"), tta=True).forward(image)
    spreading = Predictor(network=model, class_names=("a", "b", "c"), tta=True, tta_spread=True)
    fields = spreading.forward(image)
    assert spreading.outputs == fields.shape[0] == 7
    assert np.array_equal(fields[:6], averaged)
    assert (fields[6] >= 0).all() and fields[6].mean() > 1e-3
    rotated = spreading.forward(np.ascontiguousarray(np.rot90(image, 1, (1, 2))))
    np.testing.assert_allclose(rotated[6], np.rot90(fields[6], 1), atol=1e-4)


INFERENCE_CONFIGS = CONFIGS + [UNetConfig(in_channels=3, depth=2, width=8, convs_per_block=3, classes=3),
                               UNetConfig(in_channels=1, depth=0, width=8, boundary_head=True),
                               UNetConfig(in_channels=3, depth=3, width=8, norm="none", boundary_head=True)]


@pytest.mark.parametrize("config", INFERENCE_CONFIGS)
def test_the_inference_network_computes_the_eager_network_and_bf16_stays_close(config):
    """Folded norms, matrix-product 1x1 convs and the concatenation-free up blocks are the same function as the
    trained network (to float rounding) for every architecture option; bf16 stays within its precision."""
    torch.manual_seed(3)
    model = trained_a_little(UNet(config))
    x = torch.rand(2, config.in_channels, 8 * model.downsampling, 5 * model.downsampling) * 2
    with torch.no_grad():
        eager = model(x)
        fused = InferenceUNet(model)(x)
        bf16 = InferenceUNet(model, "bf16")(x)
    scale = float(eager.abs().max())
    assert fused.shape == bf16.shape == eager.shape and fused.dtype == bf16.dtype == torch.float32
    assert float((fused - eager).abs().max()) <= 1e-5 * scale
    assert 0 < float((bf16 - eager).abs().max()) <= 0.05 * scale
    if model.downsampling > 1:
        with pytest.raises(ValueError, match="multiple of"):
            InferenceUNet(model)(x[..., :-1])


def test_predictor_precision_auto_follows_the_hardware_and_rejects_unknown_names():
    assert resolve_precision("auto", "cpu") == ("bf16" if hardware_has_bf16("cpu") else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")
    torch.manual_seed(4)
    model = trained_a_little(UNet(CONFIGS[1]))
    image = np.random.default_rng(0).random((3, 64, 64), np.float32)
    eager = Predictor(network=model, fused=False).forward(image)
    np.testing.assert_allclose(Predictor(network=model).forward(image), eager, atol=1e-5)
    assert np.abs(Predictor(network=model, precision="bf16").forward(image) - eager).max() > 0
