"""What a user can ask of ``segment``: one options object, validated before anything is read or written."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sparseseg.errors import InputError
from sparseseg.infer.tiles import SLIDE_TILE
from sparseseg.io.labels import check_label_name

#: What to do with an object that reaches the edge of its block's label context.
LARGE_OBJECT_POLICIES = ("grow", "drop", "error")
PRECISION_CHOICES = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class SegmentOptions:
    """Options of ``segment_slide``; the CLI flags of ``sparseseg segment`` map one to one.

    ``large_objects``: ``grow`` segments such an object again on a window grown around it until it
    no longer touches the window edge (up to ``max_object_um``; larger ones are dropped and
    counted); ``error`` does the same but stops at an object beyond the cap; ``drop`` drops every
    object reaching its block's context edge (the cheapest; loses objects larger than ``margin``).
    ``device`` and ``threads`` default to what each worker has: CUDA where the worker sees a GPU,
    and the worker's own thread setting (local workers started here share this machine's cores).
    ``tile``: edge of the fixed tiles the network runs on (``infer.tiles``); every window's fields come from
    them, so any block size gives the whole image's fields to the bit. ``batch``: tiles per network forward
    (default 1 on CPU, as many as fit on a GPU).
    ``params``: instance parameters overriding those stored in the checkpoint (calibrated).
    ``working_pixel_size_um``: the grid the network and the instances run on (default: the pixel size the model
    was trained at), like Cellpose's diameter or StarDist's scale; the instance parameters stay in pixels of it.
    """

    name: str = "cells"
    block: int = 2048
    margin: int = 48
    workers: int | None = None
    scheduler: str | None = None
    device: str | None = None
    threads: int | None = None
    batch: int | None = None
    tile: int = SLIDE_TILE
    resume: bool = False
    overwrite: bool = False
    large_objects: str = "grow"
    max_object_um: float = 200.0
    params: dict[str, Any] = field(default_factory=dict)
    channels: tuple[str, ...] | None = None
    fill_missing: bool = False   # read image chunks missing on disk as the fill value (default: refuse the slide)
    tta: bool = False            # test-time augmentation: fields averaged over the 8 flips / rotations (8x the work)
    precision: str = "fp32"      # network arithmetic: fp32, bf16, or auto (bf16 where the worker's hardware has it)
    working_pixel_size_um: float | None = None
    progress: bool = True

    def __post_init__(self):
        check_label_name(self.name)
        if self.block <= 0:
            raise InputError(None, f"--block must be a positive number of pixels, got {self.block}")
        if self.margin < 0:
            raise InputError(None, f"--margin must be >= 0, got {self.margin}")
        for flag, value in (("--workers", self.workers), ("--threads", self.threads), ("--batch", self.batch),
                            ("--tile", self.tile)):
            if value is not None and value < 1:
                raise InputError(None, f"{flag} must be at least 1, got {value}")
        if self.workers is not None and self.scheduler is not None:
            raise InputError(None, "--workers and --scheduler exclude each other")
        if self.device not in (None, "cpu", "cuda"):
            raise InputError(None, f"--device must be cpu or cuda, got {self.device!r}")
        if self.precision not in PRECISION_CHOICES:
            raise InputError(None, f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r}")
        if self.large_objects not in LARGE_OBJECT_POLICIES:
            raise InputError(None, f"--large-objects must be one of {', '.join(LARGE_OBJECT_POLICIES)}, "
                                   f"got {self.large_objects!r}")
        working = self.working_pixel_size_um
        if working is not None and not (math.isfinite(working) and working > 0):
            raise InputError(None, f"--working-pixel-size must be a positive number of um, got {working}")
        if not (math.isfinite(self.max_object_um) and self.max_object_um > 0):
            raise InputError(None, f"--max-object-um must be a positive number, got {self.max_object_um}")
