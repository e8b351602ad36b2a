"""The U-Net rearranged for inference: the same function with fewer passes over memory.

On a CPU half of an eager forward is element-wise work (batch norm, ReLU, concatenation,
upsampling), memory-bound around the convolutions. In evaluation every batch norm is a fixed
per-channel affine map, so at load:

- a norm that directly follows a convolution is folded into its weights and bias, and its ReLU
  runs in place on the convolution's output;
- the remaining norm + ReLU is one ``addcmul`` over channels-last memory (channels contiguous);
- 1x1 convolutions (stem, skips, head) are matrix products over the (pixels, channels) view;
- an up block never concatenates: the upsampled half of its input is normalised at the lower
  resolution (a per-channel map commutes with nearest upsampling), its 1x1 skip is computed there
  and broadcast-added, and its first 3x3 convolution is split into the two halves' sums.

The result equals the eager network up to float rounding (tested); every tile of one shape runs the
same kernels, so tiled == whole stays bitwise. ``dtype=torch.bfloat16`` stores weights and
activations in bfloat16 (accumulation stays float32 inside the convolutions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparseseg.model.unet import ResidualBlock, UNet, check_input_shape

PRECISIONS = ("fp32", "bf16")


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """The (N, H, W, C) view of a channels-last (N, C, H, W) tensor."""
    return x.permute(0, 2, 3, 1)


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _affine(norm: nn.Module, channels: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an evaluation-mode batch norm; identity for a network without norms."""
    if isinstance(norm, nn.BatchNorm2d):
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        return scale, norm.bias - norm.running_mean * scale
    return torch.ones(channels, dtype=like.dtype), torch.zeros(channels, dtype=like.dtype)


def _norm_relu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """ReLU(scale * x + shift) per channel, one pass over channels-last memory."""
    return _nchw(torch.addcmul(shift, _nhwc(x), scale).relu_())


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    """Nearest 2x upsampling of a channels-last tensor (a broadcast copy)."""
    n, c, h, w = x.shape
    up = _nhwc(x)[:, :, None, :, None, :].expand(n, h, 2, w, 2, c).reshape(n, 2 * h, 2 * w, c)
    return _nchw(up)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _add_matmul_(out: torch.Tensor, x: torch.Tensor, weight_t: torch.Tensor) -> None:
    """out += x @ weight_t over the (pixels, channels) views of channels-last tensors (a 1x1 convolution)."""
    rows = _nhwc(out).reshape(-1, out.shape[1])
    torch.addmm(rows, _nhwc(x).reshape(-1, x.shape[1]), weight_t, out=rows)


class _FoldedBlock(nn.Module):
    """A residual block (norm -> ReLU -> conv) x n + skip, with every norm after the first folded into a conv.

    ``split`` (up blocks): the input is (low-resolution half of ``split`` channels, skip half); the first
    half is upsampled 2x inside the block."""

    def __init__(self, block: ResidualBlock, dtype: torch.dtype, split: int | None = None):
        super().__init__()
        channels_in = block.convs[0].in_channels
        convs = list(block.convs)
        self.padding = convs[0].padding
        self.split = split
        first_scale, first_shift = _affine(block.norms[0], channels_in, convs[0].weight)
        weights, biases = [], []
        for i, conv in enumerate(convs):
            weight = conv.weight.detach()
            bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
            if i + 1 < len(convs):  # the next norm follows this conv directly: fold it in
                scale, shift = _affine(block.norms[i + 1], conv.out_channels, weight)
                weight, bias = weight * scale[:, None, None, None], bias * scale + shift
            weights.append(weight)
            biases.append(bias)
        skip = block.skip.weight.detach()[:, :, 0, 0].t() if isinstance(block.skip, nn.Conv2d) else None
        skip_bias = block.skip.bias.detach() if isinstance(block.skip, nn.Conv2d) and block.skip.bias is not None \
            else None
        if split is None:
            self.register_buffer("first_scale", first_scale.to(dtype))
            self.register_buffer("first_shift", first_shift.to(dtype))
            self.register_buffer("first_weight", _channels_last(weights[0].to(dtype)))
        else:  # the two halves of the (never built) concatenation
            for name, lo, hi in (("low", 0, split), ("high", split, channels_in)):
                self.register_buffer(f"{name}_scale", first_scale[lo:hi].to(dtype))
                self.register_buffer(f"{name}_shift", first_shift[lo:hi].to(dtype))
                self.register_buffer(f"{name}_weight", _channels_last(weights[0][:, lo:hi].to(dtype)))
                if skip is not None:
                    self.register_buffer(f"{name}_skip", skip[lo:hi].contiguous().to(dtype))
        self.register_buffer("first_bias", biases[0].to(dtype))
        self.rest_count = len(convs) - 1
        for i in range(1, len(convs)):
            self.register_buffer(f"weight_{i}", _channels_last(weights[i].to(dtype)))
            self.register_buffer(f"bias_{i}", biases[i].to(dtype))
        self.register_buffer("skip_weight", skip.contiguous().to(dtype) if skip is not None and split is None else None)
        self.register_buffer("skip_bias", skip_bias.to(dtype) if skip_bias is not None else None)

    def _rest(self, y: torch.Tensor) -> torch.Tensor:
        """The convs after the first: each but the last followed by its (folded) norm's ReLU."""
        if self.rest_count:
            y = y.relu_()
        for i in range(1, self.rest_count + 1):
            y = F.conv2d(y, getattr(self, f"weight_{i}"), getattr(self, f"bias_{i}"), padding=self.padding)
            if i < self.rest_count:
                y = y.relu_()
        return _channels_last(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(_norm_relu(x, self.first_scale, self.first_shift), self.first_weight, self.first_bias,
                     padding=self.padding)
        y = self._rest(y)
        if self.skip_weight is None:
            y = y.add_(x)
        else:
            _add_matmul_(y, x, self.skip_weight)
        if self.skip_bias is not None:
            _nhwc(y).add_(self.skip_bias)
        return y

    def forward_up(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """The block on concat(upsample2(low), high), without building either."""
        low_act = _upsample2(_norm_relu(low, self.low_scale, self.low_shift))
        y = F.conv2d(low_act, self.low_weight, self.first_bias, padding=self.padding)
        y = y.add_(F.conv2d(_norm_relu(high, self.high_scale, self.high_shift), self.high_weight, None,
                            padding=self.padding))
        y = self._rest(_channels_last(y))
        _add_matmul_(y, high, self.high_skip)
        low_skip = _nhwc(low).reshape(-1, low.shape[1]) @ self.low_skip  # the skip at low resolution
        n, c, h, w = y.shape
        _nhwc(y).view(n, h // 2, 2, w // 2, 2, c).add_(low_skip.view(n, h // 2, 1, w // 2, 1, c))
        if self.skip_bias is not None:
            _nhwc(y).add_(self.skip_bias)
        return y


class InferenceUNet(nn.Module):
    """``UNet`` for evaluation only, rearranged for speed (see the module docstring); same input and output."""

    def __init__(self, network: UNet, precision: str = "fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        network = network.eval()
        self.config = network.config
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        device = next(network.parameters()).device
        with torch.no_grad():
            stem = network.stem
            self.register_buffer("stem_weight", stem.weight.detach()[:, :, 0, 0].to(self.dtype))
            self.register_buffer("stem_bias", stem.bias.detach().to(self.dtype) if stem.bias is not None else None)
            self.down = nn.ModuleList(_FoldedBlock(block, self.dtype) for block in network.down)
            self.bottom = _FoldedBlock(network.bottom, self.dtype)
            self.up = nn.ModuleList(_FoldedBlock(block, self.dtype, split=block.convs[0].in_channels - skip)
                                    for block, skip in zip(network.up, self._skip_widths()))
            scale, shift = _affine(network.head_norm, network.head.in_channels, network.head.weight)
            self.register_buffer("head_scale", scale.to(self.dtype))
            self.register_buffer("head_shift", shift.to(self.dtype))
            self.register_buffer("head_weight", network.head.weight.detach()[:, :, 0, 0].to(self.dtype))
            self.register_buffer("head_bias", network.head.bias.detach().to(self.dtype))
        self.to(device)
        self.halo = network.halo
        self.downsampling = network.downsampling

    def _skip_widths(self) -> list[int]:
        """Channels of the skip connection each up block receives (deepest first)."""
        c = self.config.width
        return [c * 2**level for level in reversed(range(self.config.depth))]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 output (N, outputs, H, W) of a (N, C, H, W) input."""
        check_input_shape(x, self.downsampling)
        x = _channels_last(x.to(self.dtype))
        x = _nchw(F.linear(_nhwc(x), self.stem_weight, self.stem_bias))
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = block.forward_up(x, skip)
        x = _nhwc(x)
        out = F.linear(torch.addcmul(self.head_shift, x, self.head_scale).relu_(), self.head_weight, self.head_bias)
        return _nchw(out).float()
