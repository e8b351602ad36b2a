"""The training loop: one process, or one rank of torch DistributedDataParallel.

Each rank draws its own share of every global batch (see ``data.draw_patch``), so no pixel data
travels between processes; rank 0 validates and writes checkpoints.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from sparseseg.errors import InputError
from sparseseg.losses import LOSSES, SketchposeWeights, batch_targets, class_loss
from sparseseg.model.unet import UNet, UNetConfig, class_logits, split_outputs, with_class_head
from sparseseg.model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from sparseseg.train.data import Augment, _source_cumulative, draw_patch

log = logging.getLogger(__name__)

#: The "step" validation patches are drawn at: never reached by training, so never a training patch.
VALIDATION_STEP = 10**9


@dataclass
class TrainConfig:
    loss: str = "sketchpose"
    patch: int = 128
    margin: int = 32          # targets are computed on patch + 2 margin, then cropped
    batch: int = 8            # global batch (split over ranks)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    steps: int = 200          # upper bound; --minutes may stop earlier
    minutes: float | None = None
    seed: int = 0
    augment: bool = True
    augmentation: Augment = field(default_factory=Augment)
    weights: SketchposeWeights = field(default_factory=SketchposeWeights)  # of the sketchpose and masked losses
    ema: float = 0.0           # decay of the weight average written as the model (0 = the raw weights)
    val_patches: int = 16
    val_every: int = 50
    checkpoint_every: int = 100
    cpu_minutes: float | None = None   # budget in process CPU time (fair comparisons on a busy machine)
    device: str = "cpu"
    amp: bool = True           # bf16 autocast on CUDA (no effect on CPU, where it does not help)
    compile: bool = False      # torch.compile the network
    class_weight: float = 1.0  # weight of the class-balanced cross-entropy of the class head (if any)

    def __post_init__(self):
        if isinstance(self.augmentation, dict):  # read back from a checkpoint or shipped to a worker
            self.augmentation = Augment(**self.augmentation)
        if isinstance(self.weights, dict):
            self.weights = SketchposeWeights(**self.weights)
        if not (math.isfinite(self.class_weight) and self.class_weight >= 0):
            raise InputError(None, f"--class-weight must be a number >= 0, got {self.class_weight}")
        if self.loss not in LOSSES:
            raise InputError(None, f"--loss must be one of {sorted(LOSSES)}, got {self.loss!r}")


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _batch(sources, normalizations, config: TrainConfig, step: int, indices: range, augment: bool, device):
    cumulative = _source_cumulative(sources)
    patches = [draw_patch(sources, normalizations, config.patch, config.margin, config.seed, step, i,
                          config.augmentation if augment else None, cumulative) for i in indices]
    images = torch.from_numpy(np.stack([p.image for p in patches])).to(device)
    drawn = np.bincount([p.source for p in patches], minlength=len(sources))
    return images, batch_targets([p.targets for p in patches], device), drawn


class WeightAverage:
    """Exponential moving average of a network's weights (and a copy of its buffers) for inference."""

    def __init__(self, net: torch.nn.Module, decay: float, state: dict | None = None):
        self.decay = decay
        self.net = copy.deepcopy(net).eval()
        if state is not None:
            self.net.load_state_dict(state)
        for p in self.net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # short memory early on, when weights move fast
        for mine, theirs in zip(self.net.parameters(), net.parameters()):
            mine.lerp_(theirs.detach(), 1 - decay)
        for mine, theirs in zip(self.net.buffers(), net.buffers()):
            mine.copy_(theirs)


def _loss(model, images, targets, config: TrainConfig) -> torch.Tensor:
    """The configured loss of a batch; bf16 autocast for the network on CUDA, loss in float32."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=config.amp and images.device.type == "cuda"):
        output = model(images.contiguous(memory_format=torch.channels_last))
    net_config = _unwrap(model).config
    output = output.float()
    distance, flow, _ = split_outputs(output, net_config)
    if config.loss == "eikonal":
        loss = LOSSES[config.loss](distance, flow, targets)
    else:
        loss = LOSSES[config.loss](distance, flow, targets, config.weights)
    logits = class_logits(output, net_config)
    if logits is not None and config.class_weight:
        loss = loss + config.class_weight * class_loss(logits, targets.classes)
    return loss


def _unwrap(model: torch.nn.Module) -> UNet:
    """The UNet inside a DDP and/or torch.compile wrapper."""
    while not isinstance(model, UNet):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def _lr_factor(progress: float) -> float:
    """Linear warm-up over the first 5 %, then cosine decay to 5 % of the base rate."""
    if progress < 0.05:
        return max(progress / 0.05, 0.05)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - 0.05) / 0.95)))


def train(sources, out: Path, model_config: UNetConfig, config: TrainConfig, init: Path | None = None,
          resume: bool = False, command: str = "", pixel_size_um: float | None = None,
          progress: bool = True, val_sources=None, channels: tuple[str, ...] | None = None,
          class_names: tuple[str, ...] = ()) -> dict:
    """Train on ``sources`` and write ``out`` (checkpoint); returns {'history': [...], 'step': n}.

    ``val_sources`` give the validation loss (default: fixed patches of ``sources``). The checkpoint
    records how many patches each source gave (``data``), the channel names, the cell classes of the
    class head (``class_names``, empty: none), the pixel size and ``command``. An ``init`` model with
    other classes keeps its body and gets a new class head.

    The next batch is drawn in a background thread while the network trains on the current one.
    With ``config.ema`` the checkpoint's weights are the moving average (the raw weights are kept
    for ``resume`` under ``raw_state_dict``).
    """
    rank, world = _rank_world()
    if config.batch % world:
        raise InputError(None, f"global batch {config.batch} must be divisible by the {world} workers")
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    start_step, history, optimizer_state, average_state, drawn_before = 0, [], None, None, {}
    inherited = None  # the calibrated instance parameters of the checkpoint resumed or fine-tuned
    if resume:
        state = load_checkpoint(out)
        inherited = state.get("instance_params")
        drawn_before = state.get("data", {}).get("train", {}) if rank == 0 else {}
        model = model_from_checkpoint(state)
        if "raw_state_dict" in state:
            average_state = state["state_dict"]
            model.load_state_dict(state["raw_state_dict"])
        start_step, history, optimizer_state = int(state["step"]), list(state.get("history", [])), state.get("optimizer")
    elif init is not None:
        state = load_checkpoint(init)
        inherited = state.get("instance_params")
        if state["config"]["in_channels"] != model_config.in_channels:
            raise InputError(init, f"checkpoint expects {state['config']['in_channels']} input channels, "
                                   f"the data has {model_config.in_channels}")
        model = model_from_checkpoint(state)
        if list(state.get("classes") or []) != list(class_names):
            model = with_class_head(model, len(class_names))
    else:
        model = UNet(model_config)
    model = model.to(device).to(memory_format=torch.channels_last)
    net = model
    average = WeightAverage(net, config.ema, average_state) if config.ema > 0 else None
    if config.compile:
        model = torch.compile(model)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    normalizations = [s.normalization for s in sources]
    val_sources = val_sources or sources
    val_norms = [s.normalization for s in val_sources]
    per_rank = config.batch // world
    started = time.monotonic()
    cpu_started = time.process_time()
    budgeted = config.minutes is not None or config.cpu_minutes is not None  # steps unknown in advance
    bar = tqdm(total=None if budgeted else config.steps, initial=start_step, desc="train", unit="step",
               disable=not (progress and rank == 0), dynamic_ncols=True)
    step = start_step
    meta = dict(normalization={"method": "percentile", "per_source": [n.to_dict() for n in normalizations]},
                pixel_size_um=pixel_size_um, command=command, loss=config.loss, train_config=asdict(config),
                channels=list(channels) if channels else None, classes=list(class_names))
    if inherited:  # --init / --resume keep the calibrated instance parameters until calibration replaces them
        meta["instance_params"] = inherited
    shares = range(rank * per_rank, (rank + 1) * per_rank)
    # patches this rank drew from each source (rank 0 carries a resumed run's earlier counts)
    drawn = torch.tensor([int(drawn_before.get(s.name, 0)) for s in sources], dtype=torch.int64)

    def draw(at_step: int):
        return _batch(sources, normalizations, config, at_step, shares, config.augment, device)

    def save() -> None:
        counts = drawn.clone()
        if world > 1:  # every rank reaches the same checkpoint steps
            dist.all_reduce(counts)
        if rank != 0:
            return
        meta["data"] = {"train": {s.name: int(c) for s, c in zip(sources, counts)},
                        "validation": [s.name for s in val_sources if all(s is not t for t in sources)]}
        if average is None:
            save_checkpoint(out, net, optimizer, step=step, history=history, **meta)
        else:
            save_checkpoint(out, average.net, optimizer, step=step, history=history,
                            raw_state_dict={k: v.detach().cpu() for k, v in net.state_dict().items()}, **meta)

    inference_net = net if average is None else average.net
    with ThreadPoolExecutor(1, thread_name_prefix="sparseseg-patches") as prefetch:
        pending = prefetch.submit(draw, step)
        while step < config.steps:
            elapsed_min = (time.monotonic() - started) / 60
            cpu_min = (time.process_time() - cpu_started) / 60
            stop = torch.tensor([(config.minutes is not None and elapsed_min >= config.minutes)
                                 or (config.cpu_minutes is not None and cpu_min >= config.cpu_minutes)],
                                dtype=torch.int32)
            if world > 1:
                dist.broadcast(stop, 0)  # rank 0's clock decides for everyone
            if stop.item():
                break
            progress_fraction = step / config.steps
            if config.minutes is not None:
                progress_fraction = max(progress_fraction, elapsed_min / config.minutes)
            if config.cpu_minutes is not None:
                progress_fraction = max(progress_fraction, cpu_min / config.cpu_minutes)
            progress_fraction = min(1.0, progress_fraction)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * _lr_factor(progress_fraction)
            model.train()
            images, targets, counts = pending.result()
            drawn += torch.from_numpy(counts)
            pending = prefetch.submit(draw, step + 1)
            loss = _loss(model, images, targets, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if average is not None:
                average.update(net, step)
            reported = loss.detach().clone()
            if world > 1:  # log the global-batch loss, not rank 0's share
                dist.all_reduce(reported)
                reported /= world
            record = {"step": step, "loss": float(reported)}
            if rank == 0 and (step % config.val_every == 0 or step == config.steps):
                record["val_loss"] = validation_loss(inference_net, val_sources, val_norms, config, device)
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            bar.update(1)
            if step % config.checkpoint_every == 0:
                save()
        pending.cancel()
    bar.close()
    if rank == 0 and (not history or "val_loss" not in history[-1]):
        history.append({"step": step, "val_loss": validation_loss(inference_net, val_sources, val_norms, config,
                                                                  device)})
    save()
    return {"history": history, "step": step}


@torch.no_grad()
def validation_loss(model: UNet, sources, normalizations, config: TrainConfig, device) -> float:
    """Mean loss over a fixed set of un-augmented patches, drawn at ``VALIDATION_STEP``."""
    model.eval()
    images, targets, _ = _batch(sources, normalizations, config, VALIDATION_STEP, range(config.val_patches), False,
                                device)
    losses = [float(_loss(model, images[i:i + 4], _slice_targets(targets, i, i + 4), config))
              for i in range(0, config.val_patches, 4)]
    return float(np.mean(losses))


def _slice_targets(t, a: int, b: int):
    return type(t)(**{k: getattr(t, k)[a:b] for k in t.__dataclass_fields__})
