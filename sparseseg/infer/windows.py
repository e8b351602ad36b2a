"""Network fields on windows of a large image, equal to the whole image's (the tiling guarantee).

A window whose origin lies on the network's pooling grid, read with the receptive-field halo from
real neighbouring pixels (never mirror-padded inside the image) and zero-extended at the image's
bottom/right like the whole-image canvas, gives exactly the whole image's output on the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparseseg.infer.predictor import Predictor
from sparseseg.tiling.blocks import Window, canvas_shape, read_canvas

#: Pixels of network input per forward on a GPU when ``batch`` is not set (several small blocks at once).
GPU_BATCH_PIXELS = 16 * 2**20


@dataclass
class Prepared:
    """A window's network input, ready: the canvas and where the window lies in its output."""

    context: Window
    canvas: np.ndarray
    crop: Window


class NetworkFields:
    """Distance + flow of an image on any window on the pooling grid, equal to the whole image's: the window
    is read with the network halo, zero-extended at the image's bottom/right like the whole image."""

    def __init__(self, predictor: Predictor, shape: tuple[int, int], read, batch: int | None = None):
        self.predictor, self.shape, self.read, self.batch = predictor, tuple(shape), read, batch
        self.halo, self.factor = predictor.halo, predictor.downsampling

    @property
    def device(self) -> str:
        return self.predictor.device

    def load(self, context: Window) -> Prepared:
        """Read ``context`` plus the halo (normalised by ``read``) onto its canvas."""
        h, w = self.shape
        read = tuple(slice(max(0, sl.start - self.halo), min(n, sl.stop + self.halo)) for sl, n in zip(context, (h, w)))
        if read[0].start % self.factor or read[1].start % self.factor:
            raise ValueError(f"window {context} does not start on the pooling grid of {self.factor}")
        canvas_h, canvas_w = canvas_shape((h, w), self.factor)
        stop_y = canvas_h if read[0].stop == h else read[0].stop
        stop_x = canvas_w if read[1].stop == w else read[1].stop
        canvas = read_canvas(self.read(read), slice(0, stop_y - read[0].start), slice(0, stop_x - read[1].start))
        crop = (slice(context[0].start - read[0].start, context[0].stop - read[0].start),
                slice(context[1].start - read[1].start, context[1].stop - read[1].start))
        return Prepared(context, canvas, crop)

    def compute(self, prepared: list[Prepared]) -> list[np.ndarray]:
        """Distance + flow (3, h, w) on each prepared window; equal-sized canvases share one forward."""
        outputs = self.predictor.forward(np.stack([p.canvas for p in prepared]))
        return [out[(slice(None), *p.crop)] for out, p in zip(outputs, prepared)]

    def batch_size(self, canvas: np.ndarray) -> int:
        if self.batch:
            return self.batch
        if self.predictor.device == "cpu":
            return 1
        return max(1, GPU_BATCH_PIXELS // (canvas.shape[-2] * canvas.shape[-1]))
