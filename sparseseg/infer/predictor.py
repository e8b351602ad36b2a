"""A trained network ready for inference: ``Predictor`` = network + normalisation method + instance parameters.

One object serves the segment blocks, training validation and calibration, benchmarks, the demo
and the tests, so "load a checkpoint, normalise, predict, derive instances" is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparseseg.infer.windows import NetworkFields
from sparseseg.instances.dynamics import InstanceParams, flows_to_labels
from sparseseg.model.checkpoint import load_checkpoint, model_from_checkpoint
from sparseseg.model.inference import PRECISIONS, InferenceUNet
from sparseseg.model.normalize import Normalization, percentile_normalization
from sparseseg.model.unet import UNet, class_logits


def default_device() -> str:
    """CUDA where this process sees a GPU, else the CPU (decided where the work runs)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def instance_params(stored: dict[str, Any] | None, overrides: dict[str, Any] | None = None) -> InstanceParams:
    """Instance parameters: the defaults, then those stored in a checkpoint, then explicit overrides."""
    known = {f.name for f in fields(InstanceParams)}
    values = {k: v for k, v in (stored or {}).items() if k in known}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return InstanceParams(**values)


def hardware_has_bf16(device: str) -> bool:
    """Whether ``device`` computes bfloat16 natively (AVX512-BF16 or AMX on a CPU; a GPU that reports it)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: str) -> str:
    """``precision`` ("fp32", "bf16" or "auto": bf16 only where the hardware has it) for ``device``."""
    if precision == "auto":
        return "bf16" if hardware_has_bf16(device) else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS + ('auto',)}, got {precision!r}")
    return precision


@dataclass
class Predictor:
    """``network`` (eval mode, on ``device``) with what inference needs from its checkpoint."""

    network: UNet
    device: str = "cpu"
    params: InstanceParams = InstanceParams()
    pixel_size_um: float | None = None
    channels: tuple[str, ...] | None = None   # channel names the network was trained on, when recorded
    class_names: tuple[str, ...] = ()         # cell classes of the class head (empty: no class head)
    tta: bool = False                         # average the fields over the 8 flips / 90-degree rotations
    tta_spread: bool = False                  # with tta: one more channel, last, the views' disagreement
    precision: str = "fp32"                   # "fp32" or "bf16" (weights and activations; see model.inference)
    fused: bool = True                        # run the rearranged inference network (False: the eager one, fp32 only)
    # built from the network's weights at the first forward: a Predictor serves a network that no longer trains
    _inference: InferenceUNet | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_checkpoint(cls, path: str | Path | dict, device: str | None = None,
                        params: dict[str, Any] | None = None, tta: bool = False, precision: str = "fp32"
                        ) -> Predictor:
        """Load ``path`` (weights only, no code executed); ``params`` override the stored instance parameters;
        ``precision`` "auto" is bf16 where ``device`` computes it natively, else fp32."""
        state = load_checkpoint(path) if not isinstance(path, dict) else path
        device = device or default_device()
        if device.startswith("cuda"):  # one algorithm per shape, no TF32: tiles give the same bits every time
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        network = model_from_checkpoint(state).to(device).eval().to(memory_format=torch.channels_last)
        channels = state.get("channels")
        return cls(network=network, device=device, params=instance_params(state.get("instance_params"), params),
                   pixel_size_um=state.get("pixel_size_um"), channels=tuple(channels) if channels else None,
                   class_names=tuple(state.get("classes") or ()), tta=tta,
                   precision=resolve_precision(precision, device))

    @property
    def halo(self) -> int:
        return self.network.halo

    @property
    def downsampling(self) -> int:
        return self.network.downsampling

    @property
    def in_channels(self) -> int:
        return self.network.config.in_channels

    def with_params(self, **values) -> Predictor:
        """The same network with some instance parameters replaced."""
        return replace(self, params=replace(self.params, **values))

    @property
    def outputs(self) -> int:
        """Field channels: distance, flow (2), then one probability per class (and the TTA spread, last)."""
        return 3 + len(self.class_names) + int(self.tta and self.tta_spread)

    @torch.no_grad()
    def forward(self, canvases: np.ndarray) -> np.ndarray:
        """Fields (N, ``outputs``, h, w) float32 for normalised canvases (N, C, h, w), h and w multiples of
        ``downsampling``: distance, flow, class probabilities (softmax); one (C, h, w) canvas gives (outputs, h, w)."""
        single = canvases.ndim == 3
        x = torch.from_numpy(np.ascontiguousarray(canvases[None] if single else canvases, np.float32))
        x = x.to(self.device)
        out = self._augmented_fields(x) if self.tta else self._fields(x)
        out = out.cpu().numpy()
        return out[0] if single else out

    def _network_output(self, x: torch.Tensor) -> torch.Tensor:
        """The network's float32 output for a batch: the inference network (built once) or the eager one."""
        if not self.fused and self.precision == "fp32":
            return self.network(x.contiguous(memory_format=torch.channels_last)).float()
        if self._inference is None:
            self._inference = InferenceUNet(self.network, self.precision)
        return self._inference(x)

    def _fields(self, x: torch.Tensor) -> torch.Tensor:
        """Distance, flow and class probabilities of a batch, as the network gives them."""
        raw = self._network_output(x)
        logits = class_logits(raw, self.network.config)
        return raw[:, :3] if logits is None else torch.cat([raw[:, :3], torch.softmax(logits, 1)], 1)

    def _augmented_fields(self, x: torch.Tensor) -> torch.Tensor:
        """Test-time augmentation: the fields of the 8 flips / 90-degree rotations of the input, each mapped back
        (flow vectors rotated with it) and averaged in a fixed order: a function of the input alone, so tiles
        stay bitwise the same in any window. With ``tta_spread`` one more channel follows: the views'
        disagreement, the standard deviations of distance and flow over the 8 views, summed."""
        total = squares = None
        for k in range(4):
            for flip in (False, True):
                view = torch.rot90(x, k, (2, 3))
                fields = self._fields(view.flip(3) if flip else view)
                if flip:  # x -> W - 1 - x: undo, and the x component of the flow changes sign
                    fields = fields.flip(3)
                    fields[:, 2] = -fields[:, 2]
                fields = torch.rot90(fields, -k, (2, 3))
                for _ in range(k):  # a vector (vy, vx) in the rotated frame is (vx, -vy) in this one
                    fields = torch.cat([fields[:, :1], fields[:, 2:3], -fields[:, 1:2], fields[:, 3:]], 1)
                total = fields if total is None else total + fields
                if self.tta_spread:
                    squares = fields[:, :3] ** 2 if squares is None else squares + fields[:, :3] ** 2
        mean = total / 8
        if not self.tta_spread:
            return mean
        spread = (squares / 8 - mean[:, :3] ** 2).clamp_min(0).sqrt().sum(1, keepdim=True)
        return torch.cat([mean, spread], 1)

    def fields(self, image: np.ndarray, normalization: Normalization | None = None, tile: int | None = None
               ) -> np.ndarray:
        """Fields (``outputs``, H, W: distance, flow, class probabilities) of a whole (C, H, W) image, on the fixed tile grid (``infer.tiles``) like any
        window of it; normalised with ``normalization`` or, by default, the image's own percentiles."""
        normalization = normalization or percentile_normalization(image)
        normalized = normalization.apply(np.asarray(image))
        h, w = image.shape[1:]
        fields = NetworkFields(self, (h, w), lambda window: normalized[(slice(None), *window)],
                               **({"tile": tile} if tile else {}))
        return fields.compute([fields.load((slice(0, h), slice(0, w)))])[0]

    def instances(self, image: np.ndarray, normalization: Normalization | None = None,
                  params: InstanceParams | None = None, tile: int | None = None) -> np.ndarray:
        """uint32 instance labels (H, W) of a whole (C, H, W) image."""
        output = self.fields(image, normalization, tile)
        return flows_to_labels(output[0], output[1:3], params or self.params, device=self.device)
