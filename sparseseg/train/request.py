"""One training request: what to train on, how long, where to write; the CLI, the flows and the demo only build it.

The policy lives here, once: which images are held out for validation (every 5th image or slide
when there are at least 5; in one process and on every data-parallel rank alike), how many steps
a budget in epochs means, which pixel size the data has, and the exact call recorded in the
checkpoint.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from sparseseg.errors import InputError
from sparseseg.files.atomic import remove_leftovers
from sparseseg.files.lock import writer_lock
from sparseseg.model.checkpoint import check_checkpoint_out
from sparseseg.model.unet import UNetConfig
from sparseseg.train.data import (channel_names, class_names_of, label_point_sources, scale_to_model,
                                  source_pixel_size, split_sources)
from sparseseg.train.loop import TrainConfig

#: Default budget when neither minutes nor epochs are given.
DEFAULT_EPOCHS = 50.0


@dataclass(frozen=True)
class DataSpec:
    """Training data as paths only (picklable, opened where it is used): annotated slides, or two folders."""

    slides: tuple[str, ...] = ()
    images: str | None = None
    annotations: str | None = None
    channels: tuple[str, ...] | None = None   # slide channels to train on (names or indices); None: all
    point_encoding: str = "voronoi"           # clicked cells: disks + Voronoi background, disks only, or clusters

    def __post_init__(self):
        if bool(self.slides) == bool(self.images):
            raise InputError(None, "give annotated slides (--data) or an image folder (--images), not both or neither")
        if self.images and not self.annotations:
            raise InputError(None, "--images needs --annotations DIR")

    def open(self) -> list:
        from sparseseg.train.data import SlideSource, folder_sources

        if self.slides:
            return [SlideSource(Path(p), channels=self.channels) for p in self.slides]
        return folder_sources(Path(self.images), Path(self.annotations), channels=self.channels)


@dataclass(frozen=True)
class TrainRequest:
    data: DataSpec
    out: Path
    model: UNetConfig = field(default_factory=UNetConfig)   # in_channels is set from the data
    config: TrainConfig = field(default_factory=TrainConfig)
    init: Path | None = None
    resume: bool = False
    overwrite: bool = False
    minutes: float | None = None
    epochs: float | None = None
    workers: int | None = None
    scheduler: str | None = None
    pixel_size_um: float | None = None   # of --images data (slides record theirs)
    model_pixel_size_um: float | None = None  # to train at (--train-pixel-size); else ``prepared`` decides
    calibrate: bool = True
    command: str = ""          # the call that made it, recorded in the checkpoint
    bundled_init: bool = False  # no init given: start from the bundled model when the data's channels are its own

    def __post_init__(self):
        if self.minutes is not None and self.epochs is not None:
            raise InputError(None, "--minutes and --epochs exclude each other")
        for flag, value in (("--minutes", self.minutes), ("--epochs", self.epochs)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InputError(None, f"{flag} must be a positive number, got {value}")
        for flag, size in (("--pixel-size", self.pixel_size_um), ("--train-pixel-size", self.model_pixel_size_um)):
            if size is not None and not (math.isfinite(size) and size > 0):
                raise InputError(None, f"{flag} must be a positive number of micrometres, got {size}")
        if self.workers is not None and self.workers < 1:
            raise InputError(None, f"--workers must be at least 1, got {self.workers}")
        out = Path(self.out)
        if out.is_dir():
            raise InputError(out, "is a folder; --out names the checkpoint file to write")
        if not out.parent.is_dir():
            raise InputError(out, f"folder {out.parent} does not exist")
        if self.resume and not out.exists():
            raise InputError(out, "--resume needs the checkpoint of the run to continue, which does not exist")
        if out.exists() and not (self.resume or self.overwrite):
            raise InputError(out, "already exists (use --overwrite to replace it, or --resume to continue it)")
        if out.exists() and self.overwrite:
            check_checkpoint_out(out, overwrite=True)
        factor = 2 ** self.model.depth
        if self.config.patch < 2 * factor or self.config.patch % factor:
            raise InputError(None, f"--patch must be a multiple of {factor} (2 ** depth) and at least {2 * factor}, "
                                   f"got {self.config.patch}")
        if not os.access(out.parent, os.W_OK):
            raise InputError(out, f"folder {out.parent} is not writable")

    def prepared(self, sources: list) -> TrainRequest:
        """The request with what the data decides: the init model (``bundled_init``), input channels, steps of
        the budget, pixel size."""
        channels = {s.n_channels for s in sources}
        if len(channels) != 1:
            raise InputError(None, f"training images mix channel counts {sorted(channels)}; choose with --channels")
        if self.init is None and self.bundled_init:
            return replace(self, init=matching_bundled_model(sources), bundled_init=False).prepared(sources)
        model = replace(self.model, in_channels=channels.pop(), classes=len(self.class_names(sources)))
        area = sum(s.shape[0] * s.shape[1] for s in sources)
        per_epoch = max(1, math.ceil(area / (self.config.patch ** 2 * self.config.batch)))
        steps = 10**9 if self.minutes else max(1, round((self.epochs or DEFAULT_EPOCHS) * per_epoch))
        return replace(self, model=model, model_pixel_size_um=self.model_pixel_size(sources),
                       config=replace(self.config, steps=steps, minutes=self.minutes))

    def model_pixel_size(self, sources: list) -> float | None:
        """The pixel size to train at (the data is resampled onto it): the one asked for, else the resumed
        run's, else the data's own; mixed sizes train at the finest. None: unknown.

        Not an --init model's by default: on MoNuSeg (0.25 um) fine-tuning the 0.5 um bundled model at the
        data's own size scored F1 0.644, resampled to 0.5 um 0.557 (docs/accuracy.md)."""
        sizes = [source_pixel_size(s, self.pixel_size_um) for s in sources]
        known = sorted({size for size in sizes if size is not None})
        if self.model_pixel_size_um:
            if None in sizes:
                raise InputError(None, "--train-pixel-size needs the data's pixel size (--pixel-size for --images)")
            return self.model_pixel_size_um
        if self.resume and None not in sizes:
            from sparseseg.model.checkpoint import load_checkpoint

            inherited = load_checkpoint(self.out).get("pixel_size_um")
            if inherited:
                return float(inherited)
        if not known:
            return None
        return known[0] if None not in sizes or len(known) == 1 else None

    def class_names(self, sources: list) -> tuple[str, ...]:
        """The cell classes of the class head: those the data names, else an ``--init`` model's (kept as
        they are), else none."""
        named = class_names_of(sources)
        if named or self.init is None:
            return named
        from sparseseg.model.checkpoint import load_checkpoint

        return tuple(load_checkpoint(self.init).get("classes") or ())

    def scale_sources(self, sources: list) -> list:
        """``sources``, each scaled onto the grid of ``model_pixel_size_um`` (after ``prepared``), point
        annotations turned into labels at their pixel size."""
        scale_to_model(sources, self.model_pixel_size_um, self.pixel_size_um)
        label_point_sources(sources, self.pixel_size_um, class_names_of(sources), self.data.point_encoding)
        return sources

    def open_sources(self) -> list:
        """The data, scaled as ``scale_sources`` does (what each data-parallel rank opens)."""
        return self.scale_sources(self.data.open())


def matching_bundled_model(sources: list) -> Path | None:
    """The bundled default model when the data has its channels (e.g. R, G, B): fine-tuning it beat training
    from scratch on MoNuSeg at 10 min (F1@0.5 0.727 vs 0.709, docs/benchmarks.md); else None (scratch)."""
    from sparseseg.model.checkpoint import load_checkpoint
    from sparseseg.model.registry import resolve_model

    bundled = resolve_model("nuclei_he")
    return bundled if tuple(load_checkpoint(bundled).get("channels") or ()) == channel_names(sources) else None


def run_training(request: TrainRequest, progress: bool = True, announce=None) -> dict:
    """Train as requested (one process, or DDP over Dask workers) and write ``request.out``. ``announce``
    (a function of one line) hears, before training starts, which model it starts from.

    Returns {'history': [...], 'step': n, 'calibration': {...} or None, 'init': path or None}.
    """
    with writer_lock(request.out, "train", inside=False):
        remove_leftovers(request.out)
        return _run_training(request, progress, announce)


def _run_training(request: TrainRequest, progress: bool, announce) -> dict:
    from sparseseg.train.distributed import train_on_dask
    from sparseseg.train.loop import train

    sources = request.data.open()
    chose = request.bundled_init and request.init is None
    request = request.prepared(sources)
    if announce is not None and chose:
        announce(f"starting from the bundled model {request.init.stem} (the data's channels are its own; --init none "
                 "trains from scratch)" if request.init else "training from scratch (no bundled model takes the "
                 f"channels {', '.join(channel_names(sources))})")
    request.scale_sources(sources)
    train_sources, val_sources = split_sources(sources)
    if request.workers or request.scheduler:
        result = train_on_dask(request)
    else:
        result = train(train_sources, request.out, request.model, request.config, init=request.init,
                       resume=request.resume, command=request.command, pixel_size_um=request.model_pixel_size_um,
                       progress=progress, val_sources=val_sources, channels=channel_names(sources),
                       class_names=request.class_names(sources))
    result["calibration"] = None
    result["init"] = str(request.init) if request.init else None
    if request.calibrate:
        from sparseseg.train.calibrate import calibrate_unlocked

        calibration = calibrate_unlocked(request.out, val_sources, None, request.config.device)  # lock held above
        result["calibration"] = calibration.to_dict() if calibration else None
    return result
