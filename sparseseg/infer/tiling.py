"""Tiled network prediction that equals whole-image prediction.

The image is conceptually zero-padded at the bottom/right to a canvas whose size is a multiple
of the network's downsampling factor D (what whole-image inference does). Every tile is read with
a context halo (the network's receptive-field halo, a multiple of D) from real neighbouring
pixels, clipped at the canvas edge (never mirror-padded inside the image), and its halo is
cropped. Tile origins and sizes are multiples of D, so pooling grids line up with the whole image.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from sparseseg.model.unet import UNet


def canvas_shape(shape_yx: tuple[int, int], factor: int) -> tuple[int, int]:
    return tuple(-(-s // factor) * factor for s in shape_yx)  # type: ignore[return-value]


def read_canvas(image: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """(C, h, w) window of the zero-extended canvas (zeros beyond the image's bottom/right)."""
    out = np.zeros((image.shape[0], rows.stop - rows.start, cols.stop - cols.start), np.float32)
    part = image[:, rows.start: min(rows.stop, image.shape[1]), cols.start: min(cols.stop, image.shape[2])]
    out[:, : part.shape[1], : part.shape[2]] = part
    return out


@torch.no_grad()
def predict_whole(model: UNet, image: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Network output (K, H, W) float32 for a normalised (C, H, W) image in one pass."""
    h, w = image.shape[1:]
    ch, cw = canvas_shape((h, w), model.downsampling)
    x = torch.from_numpy(read_canvas(image, slice(0, ch), slice(0, cw)))[None].to(device)
    return model(x)[0, :, :h, :w].float().cpu().numpy()


def tile_windows(shape_yx: tuple[int, int], tile: int, halo: int, factor: int
                 ) -> Iterator[tuple[tuple[slice, slice], tuple[slice, slice]]]:
    """(read window, write window) pairs in canvas coordinates covering the canvas."""
    if tile % factor or halo % factor:
        raise ValueError(f"tile ({tile}) and halo ({halo}) must be multiples of the downsampling factor {factor}")
    ch, cw = canvas_shape(shape_yx, factor)
    for y0 in range(0, ch, tile):
        for x0 in range(0, cw, tile):
            y1, x1 = min(y0 + tile, ch), min(x0 + tile, cw)
            read = (slice(max(0, y0 - halo), min(ch, y1 + halo)), slice(max(0, x0 - halo), min(cw, x1 + halo)))
            yield read, (slice(y0, y1), slice(x0, x1))


@torch.no_grad()
def predict_tiled(model: UNet, image: np.ndarray, tile: int, halo: int | None = None,
                  device: str = "cpu") -> np.ndarray:
    """Same as ``predict_whole`` but tile by tile with a cropped context halo (default: model.halo)."""
    halo = model.halo if halo is None else halo
    h, w = image.shape[1:]
    ch, cw = canvas_shape((h, w), model.downsampling)
    out = np.zeros((model.head.out_channels, ch, cw), np.float32)
    for (rr, rc), (wr, wc) in tile_windows((h, w), tile, halo, model.downsampling):
        x = torch.from_numpy(read_canvas(image, rr, rc))[None].to(device)
        y = model(x)[0].float().cpu().numpy()
        out[:, wr, wc] = y[:, wr.start - rr.start: wr.stop - rr.start, wc.start - rc.start: wc.stop - rc.start]
    return out[:, :h, :w]
