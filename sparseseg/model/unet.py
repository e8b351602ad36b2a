"""Omnipose-style U-Net: image -> signed distance (1) + flow (2) [+ boundary logit (1)] [+ class logits (K)].

Normalisation is batch normalisation or none. Batch statistics are used only while training; in
evaluation each BatchNorm is a fixed per-channel affine map, so tiled inference still equals
whole-image inference. Under data-parallel training the batch statistics are summed over all
ranks (``SyncedBatchNorm``), so N ranks reproduce one process's global batch. Without
normalisation, residual blocks with scaled Kaiming initialisation keep the network trainable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "none")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture; stored verbatim in checkpoints."""

    in_channels: int = 3
    depth: int = 3             # number of 2x poolings
    width: int = 16            # channels at full resolution, doubled per level
    convs_per_block: int = 2
    kernel_size: int = 3
    boundary_head: bool = False
    norm: str = "batch"        # "batch" or "none" (checkpoints older than the option are "none")
    classes: int = 0           # cell classes of the class head (0: no class head)

    def __post_init__(self):
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.depth < 0 or self.width < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"invalid U-Net config {self}")
        if self.classes < 0 or self.classes == 1:
            raise ValueError(f"a class head needs at least 2 classes, got {self.classes}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> UNetConfig:
        """A stored config; keys added since a checkpoint was written take their value of that time."""
        return cls(**{"norm": "none", "classes": 0, **values})

    @property
    def outputs(self) -> int:
        """Output channels: distance, flow (2), the boundary logit if any, one logit per class."""
        return 3 + int(self.boundary_head) + self.classes

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


class _AllReduceSum(torch.autograd.Function):
    """Sum over data-parallel ranks; the gradient of a sum is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncedBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch of all data-parallel ranks.

    torch's SyncBatchNorm only runs on GPUs; this one all-reduces (differentiably) the per-channel
    sums on any backend (gloo on CPU, NCCL on GPU). In one process it is plain batch norm with the
    same arithmetic, so one process and N ranks compute the same numbers. Evaluation uses the
    running statistics: a fixed affine map.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            stats = _AllReduceSum.apply(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), self.momentum)
        scale = self.weight / torch.sqrt(var + self.eps)
        shift = self.bias - mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def _norm(channels: int, norm: str) -> nn.Module:
    return SyncedBatchNorm(channels) if norm == "batch" else nn.Identity()


class ResidualBlock(nn.Module):
    """Pre-activation residual block: (norm -> ReLU -> conv) x n, plus a (1x1) skip."""

    def __init__(self, channels_in: int, channels_out: int, n_convs: int, kernel_size: int, norm: str = "none"):
        super().__init__()
        pad = kernel_size // 2
        # with batch norm no conv inside the network needs a bias: every path to the head passes a norm
        # that removes a constant shift (its gradient is ~0, and Adam would only amplify that noise)
        bias = norm == "none"
        self.convs = nn.ModuleList(
            nn.Conv2d(channels_in if i == 0 else channels_out, channels_out, kernel_size, padding=pad, bias=bias)
            for i in range(n_convs))
        self.norms = nn.ModuleList(_norm(channels_in if i == 0 else channels_out, norm) for i in range(n_convs))
        self.skip = nn.Conv2d(channels_in, channels_out, 1, bias=bias) if channels_in != channels_out else nn.Identity()
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        with torch.no_grad():  # keep the residual branch small at init
            self.convs[-1].weight.mul_(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for norm, conv in zip(self.norms, self.convs):
            y = conv(F.relu(norm(y)))
        return self.skip(x) + y


def check_input_shape(x: torch.Tensor, factor: int) -> None:
    """Refuse an input whose height or width is not a multiple of the downsampling ``factor``."""
    if x.shape[-2] % factor or x.shape[-1] % factor:
        raise ValueError(f"input {tuple(x.shape[-2:])} must be a multiple of {factor} (the downsampling factor)")


class UNet(nn.Module):
    """Input (N, C, H, W) with H, W multiples of ``config.downsampling``; output (N, ``config.outputs``, H, W)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c, n, k, norm = config.width, config.convs_per_block, config.kernel_size, config.norm
        widths = [c * 2**level for level in range(config.depth + 1)]
        self.stem = nn.Conv2d(config.in_channels, c, 1, bias=norm == "none")
        self.down = nn.ModuleList(ResidualBlock(widths[max(level - 1, 0)] if level else c, widths[level], n, k, norm)
                                  for level in range(config.depth))
        self.bottom = ResidualBlock(widths[config.depth - 1] if config.depth else c, widths[config.depth], n, k, norm)
        self.up = nn.ModuleList(ResidualBlock(widths[level + 1] + widths[level], widths[level], n, k, norm)
                                for level in reversed(range(config.depth)))
        self.head_norm = _norm(c, norm)
        self.head = nn.Conv2d(c, config.outputs, 1)
        nn.init.zeros_(self.head.bias)

    @property
    def halo(self) -> int:
        return self.config.analytic_halo

    @property
    def downsampling(self) -> int:
        return self.config.downsampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_shape(x, self.downsampling)
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
        return self.head(F.relu(self.head_norm(x)))


def split_outputs(output: torch.Tensor, config: UNetConfig | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(distance (N, H, W), flow (N, 2, H, W), boundary logit (N, H, W) or None).

    Without ``config`` a fourth channel is taken as the boundary logit (networks without a class head)."""
    has_boundary = config.boundary_head if config is not None else output.shape[1] > 3
    return output[:, 0], output[:, 1:3], output[:, 3] if has_boundary else None


def class_logits(output: torch.Tensor, config: UNetConfig) -> torch.Tensor | None:
    """The class logits (N, K, H, W) of a network output, None without a class head."""
    if not config.classes:
        return None
    first = 3 + int(config.boundary_head)
    return output[:, first:first + config.classes]


def with_class_head(model: UNet, classes: int) -> UNet:
    """A copy of ``model`` with a fresh head for ``classes`` classes; the body and the distance, flow (and
    boundary) outputs are kept (``--init`` from a model trained on other classes)."""
    from dataclasses import replace

    fresh = UNet(replace(model.config, classes=classes))
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    fresh.load_state_dict(body, strict=False)
    kept = 3 + int(model.config.boundary_head)
    with torch.no_grad():
        fresh.head.weight[:kept] = model.head.weight[:kept]
        fresh.head.bias[:kept] = model.head.bias[:kept]
        fresh.head.weight[kept:].mul_(0.1)
        fresh.head.bias[kept:].zero_()
    return fresh
