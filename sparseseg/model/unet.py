"""Omnipose-style U-Net: image -> signed distance (1) + flow (2) [+ boundary logit (1)].

The network has no normalisation layers on purpose: batch statistics would make tiled
inference differ from whole-image inference (GroupNorm/InstanceNorm) or make data-parallel
training differ from one process (BatchNorm without a CUDA SyncBatchNorm). Residual blocks
with scaled Kaiming initialisation keep it trainable without them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Architecture; stored verbatim in checkpoints."""

    in_channels: int = 3
    depth: int = 3             # number of 2x poolings
    width: int = 16            # channels at full resolution, doubled per level
    convs_per_block: int = 2
    kernel_size: int = 3
    boundary_head: bool = False

    def __post_init__(self):
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.depth < 0 or self.width < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"invalid U-Net config {self}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def downsampling(self) -> int:
        """Total downsampling factor: tile origins and sizes must be multiples of it."""
        return 2**self.depth

    @property
    def analytic_halo(self) -> int:
        """Context per side (px) every output pixel may depend on (PlantSeg rule, science.md s.6).

        Each k x k conv at level l adds 2**l * (k // 2); each 2x pooling from level l adds 2**l
        (conservative: its window is one-sided) and each 2x upsampling into level l adds 2**l.
        Rounded up to a multiple of the downsampling factor so tiles stay aligned.
        """
        half = self.kernel_size // 2
        total = 0
        for level in range(self.depth + 1):
            convs = self.convs_per_block if level == self.depth else 2 * self.convs_per_block
            total += convs * (2**level) * half
        for level in range(self.depth):
            total += 2**level + 2**level  # pooling out of level, upsampling back into it
        factor = self.downsampling
        return -(-total // factor) * factor


class ResidualBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, n_convs: int, kernel_size: int):
        super().__init__()
        pad = kernel_size // 2
        self.convs = nn.ModuleList(
            nn.Conv2d(channels_in if i == 0 else channels_out, channels_out, kernel_size, padding=pad)
            for i in range(n_convs))
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        with torch.no_grad():  # keep the residual branch small at init (no normalisation to tame it)
            self.convs[-1].weight.mul_(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for conv in self.convs:
            y = conv(F.relu(y))
        return self.skip(x) + y


class UNet(nn.Module):
    """Input (N, C, H, W) with H, W multiples of ``config.downsampling``; output (N, 3|4, H, W)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c, n, k = config.width, config.convs_per_block, config.kernel_size
        widths = [c * 2**level for level in range(config.depth + 1)]
        self.stem = nn.Conv2d(config.in_channels, c, 1)
        self.down = nn.ModuleList(ResidualBlock(widths[max(level - 1, 0)] if level else c, widths[level], n, k)
                                  for level in range(config.depth))
        self.bottom = ResidualBlock(widths[config.depth - 1] if config.depth else c, widths[config.depth], n, k)
        self.up = nn.ModuleList(ResidualBlock(widths[level + 1] + widths[level], widths[level], n, k)
                                for level in reversed(range(config.depth)))
        self.head = nn.Conv2d(c, 4 if config.boundary_head else 3, 1)
        nn.init.zeros_(self.head.bias)

    @property
    def halo(self) -> int:
        return self.config.analytic_halo

    @property
    def downsampling(self) -> int:
        return self.config.downsampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = self.downsampling
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"input {tuple(x.shape[-2:])} must be a multiple of {factor} (the downsampling factor)")
        x = self.stem(x)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([x, skip], 1))
        return self.head(F.relu(x))


def split_outputs(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(distance (N, H, W), flow (N, 2, H, W), boundary logit (N, H, W) or None)."""
    boundary = output[:, 3] if output.shape[1] > 3 else None
    return output[:, 0], output[:, 1:3], boundary
