"""The segmentation network and its geometry (receptive field, downsampling)."""

from sparseseg.model.unet import UNet, UNetConfig, split_outputs

__all__ = ["UNet", "UNetConfig", "split_outputs"]
