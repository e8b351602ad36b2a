"""What a worker process holds for a run: its predictor (loaded once) and normalised model-grid pixels."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch
import zarr

from sparseseg.errors import InputError
from sparseseg.infer.predictor import Predictor, default_device
from sparseseg.infer.windows import NetworkFields
from sparseseg.model.grid import resample_window, source_window
from sparseseg.segment.plan import BlockJob
from sparseseg.tiling.blocks import Window


@lru_cache(maxsize=4)
def cached_predictor(checkpoint: str, mtime_ns: int, device: str, tta: bool = False, precision: str = "fp32"
                     ) -> Predictor:
    """The checkpoint's predictor, loaded once per worker process and device (never per block); with TTA its
    fields carry the views' disagreement too (saved in the doubt map)."""
    predictor = Predictor.from_checkpoint(checkpoint, device=device, tta=tta, precision=precision)
    predictor.tta_spread = tta
    return predictor


def worker_predictor(job: BlockJob) -> Predictor:
    """This worker's predictor: its own device (CUDA where it sees one) and thread setting, unless the job says."""
    if job.threads:
        torch.set_num_threads(job.threads)
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():  # a local worker started by sparseseg, or the nanny's 1
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return cached_predictor(job.checkpoint, job.checkpoint_mtime_ns, job.device or default_device(), job.tta,
                            job.precision)


class SlideReader:
    """Normalised model-grid pixels (C, h, w) of any window of a slide (resampled from level 0 when the
    slide's pixel size differs from the model's)."""

    def __init__(self, job: BlockJob):
        self.job = job
        self.image = zarr.open_group(job.slide, mode="r")["0"]

    def __call__(self, window: Window) -> np.ndarray:
        job = self.job
        channels = slice(None) if job.channels is None else list(job.channels)
        try:
            if job.scale == 1.0:
                pixels = self.image.get_orthogonal_selection((channels, *window))
            else:  # resample from global coordinates: any window equals the same part of the whole grid
                src = source_window(window, job.scale, job.source_shape)
                pixels = resample_window(self.image.get_orthogonal_selection((channels, *src)),
                                         (src[0].start, src[1].start), window, job.scale, job.source_shape)
        except Exception as exc:  # a corrupt or missing chunk: say where
            raise InputError(f"{job.slide}/0", f"cannot read the pixels of model-grid rows {window[0].start}:"
                                                f"{window[0].stop}, columns {window[1].start}:{window[1].stop}: "
                                                f"{type(exc).__name__}: {exc}") from None
        return job.normalization.apply(pixels)


def slide_fields(job: BlockJob) -> NetworkFields:
    """The slide's fields through this worker's predictor; one per worker and run, so consecutive tasks of the
    run share its cache of tile outputs."""
    worker_predictor(job)  # the thread setting applies to every task
    return _run_fields(job)


@lru_cache(maxsize=1)
def _run_fields(job: BlockJob) -> NetworkFields:
    return NetworkFields(worker_predictor(job), job.image_shape, SlideReader(job), job.batch, job.tile)
