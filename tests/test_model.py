"""U-Net geometry: analytic vs empirical receptive field, and tiled == whole-image prediction."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import DSB

from sparseseg.infer.tiling import predict_tiled, predict_whole
from sparseseg.model import UNet, UNetConfig, split_outputs
from sparseseg.model.receptive_field import empirical_halo

CONFIGS = [UNetConfig(in_channels=1, depth=2, width=8), UNetConfig(in_channels=3, depth=3, width=8),
           UNetConfig(in_channels=3, depth=3, width=8, convs_per_block=1, kernel_size=5)]


@pytest.mark.parametrize("config", CONFIGS)
def test_empirical_receptive_field_is_within_the_analytic_halo(config):
    torch.manual_seed(0)
    model = UNet(config)
    measured = empirical_halo(model)
    assert 0 < measured <= model.halo
    assert measured > model.halo // 2  # the analytic bound is not absurdly loose


@pytest.mark.parametrize("config,tile,shape", [(CONFIGS[0], 64, (173, 259)), (CONFIGS[1], 96, (260, 347)),
                                               (CONFIGS[2], 128, (201, 130))])
def test_tiled_prediction_equals_whole_image_prediction(config, tile, shape):
    torch.manual_seed(1)
    model = UNet(config).eval()
    pixels = iio.imread(DSB / "images" / ("fluo_0402a81e.png" if config.in_channels == 1 else "he_65c8527c.png"))
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    image = np.zeros((config.in_channels, *shape), np.float32)
    h, w = min(shape[0], pixels.shape[1]), min(shape[1], pixels.shape[2])
    image[:, :h, :w] = pixels[:, :h, :w] / 255.0
    whole = predict_whole(model, image)
    tiled = predict_tiled(model, image, tile=tile)
    assert whole.shape == (3, *shape)
    np.testing.assert_allclose(tiled, whole, atol=1e-4, rtol=0)
    # and a halo that is too small does break it: the test can fail
    too_small = predict_tiled(model, image, tile=tile, halo=model.downsampling)
    assert np.abs(too_small - whole).max() > 1e-3


def test_outputs_and_input_validation():
    model = UNet(UNetConfig(in_channels=1, depth=2, width=4, boundary_head=True))
    distance, flow, boundary = split_outputs(model(torch.zeros(2, 1, 32, 32)))
    assert distance.shape == (2, 32, 32) and flow.shape == (2, 2, 32, 32) and boundary.shape == (2, 32, 32)
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match="in_channels"):
        UNetConfig(in_channels=0)
