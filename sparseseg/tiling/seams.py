"""Objects streamed over non-overlapping tiles, each object handled once and whole.

An object inside one tile is handled there. An object touching (or within a margin of) a tile
edge that is not the image edge is a *seam object*: its pixels (and image values) are set aside
as ``SeamPiece``s and assembled once no later tile can add to it (``tiles_with_seams``), so
objects of any size come out once, whole. Shared by ``measure`` (features) and ``export``
(outlines). Memory holds one tile per thread plus about one tile row of seam pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype

from sparseseg.errors import InputError
from sparseseg.tiling.blocks import Block, near_inner_edges
from sparseseg.tiling.pixels import ObjectPixels, compact_values, pixel_values


def read_window(array, window: tuple[slice, ...], source: str, out: np.ndarray | None = None) -> np.ndarray:
    """``array[window]``; a zarr array is decoded straight into ``out`` when given."""
    try:
        if out is None or not isinstance(array, zarr.Array):
            return np.asarray(array[window])
        array.get_basic_selection(window, out=default_buffer_prototype().nd_buffer.from_numpy_array(out))
        return out
    except Exception as err:  # a corrupt or missing chunk: say where, not only the codec's message
        raise InputError(source, f"cannot read rows {window[-2].start}:{window[-2].stop}, columns "
                                 f"{window[-1].start}:{window[-1].stop}: {err}") from err


@dataclass(frozen=True)
class SeamPiece:
    """The pixels a tile holds of some seam objects, grouped by object: ``objects`` (distinct global ids)
    with ``counts`` pixels each, then per pixel its level-0 ``rows``, ``cols`` and image ``values`` (C, M)."""

    objects: np.ndarray
    counts: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray | None

    def select(self, chosen: np.ndarray) -> SeamPiece:
        """The objects where ``chosen`` (bool per object) is set."""
        pixels = np.repeat(chosen, self.counts)
        return SeamPiece(self.objects[chosen], self.counts[chosen], self.rows[pixels], self.cols[pixels],
                         None if self.values is None else self.values[:, pixels])


def join_pieces(pieces: list[tuple[SeamPiece, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                      np.ndarray | None]:
    """(ids, rows, cols, values (C, M) or None) per pixel of the chosen objects of ``pieces`` (piece, bool per
    object) together."""
    chosen = [piece if keep.all() else piece.select(keep) for piece, keep in pieces]
    ids = np.concatenate([np.repeat(p.objects, p.counts) for p in chosen])
    rows, cols = (np.concatenate([getattr(p, name) for p in chosen]) for name in ("rows", "cols"))
    return ids, rows, cols, None if chosen[0].values is None else np.concatenate([p.values for p in chosen], 1)


@dataclass
class SeamPixels:
    """The seam objects' pixels, in pieces, each with which of its objects are still incomplete."""

    pieces: list[tuple[SeamPiece, np.ndarray]] = field(default_factory=list)

    def add(self, piece: SeamPiece | None) -> None:
        if piece is not None and piece.objects.size:
            self.pieces.append((piece, np.ones(piece.objects.size, bool)))

    def pop_complete(self, continuing: np.ndarray) -> list[tuple[SeamPiece, np.ndarray]]:
        """(piece, bool per object) for every incomplete object not in ``continuing``, now complete.

        Decided per object, not per pixel, and nothing is copied here: ``join_pieces`` gathers the
        pixels (in a worker thread); a piece is dropped once all its objects are complete.
        """
        done, kept = [], []
        for piece, incomplete in self.pieces:
            later = incomplete & np.isin(piece.objects, continuing)
            if (finished := incomplete & ~later).any():
                done.append((piece, finished))
            if later.any():
                kept.append((piece, later))
        self.pieces = kept
        return done


def split_seam_objects(ids: np.ndarray, pixels: ObjectPixels, bbox: np.ndarray, tile: Block, shape: tuple[int, int],
                       reach: int, image: np.ndarray | None = None
                       ) -> tuple[np.ndarray, SeamPiece | None, np.ndarray, np.ndarray]:
    """(seam, piece, ids reaching down, ids reaching right) for the objects ``pixels`` (ids ``ids[1:]``,
    tile-relative boxes) of ``tile``.

    ``seam``: which objects come within ``reach`` px of an inner tile edge; ``piece``: their pixels
    with their level-0 rows, columns and image values (or None), for ``SeamPixels``.
    """
    seam, bottom, right = near_inner_edges(bbox, tile.core, shape, reach)
    piece = None
    if seam.any():
        part = pixels.subset(np.flatnonzero(seam) + 1)
        order = np.argsort(part.objects, kind="stable")  # grouped by object, raster order within each
        piece = SeamPiece(ids[1:][seam], np.bincount(part.objects, minlength=part.n + 1)[1:],
                          part.rows[order] + tile.core[0].start, part.cols[order] + tile.core[1].start,
                          None if image is None else pixel_values(image, part.flat[order]))
    return seam, piece, ids[1:][bottom], ids[1:][right]


def tiles_with_seams(results: Iterable[tuple], seams: SeamPixels, width: int
                     ) -> Iterator[tuple[Block, object, list[tuple[SeamPiece, np.ndarray]]]]:
    """(tile, its result, the seam objects complete once it has been seen: ``pop_complete``'s list, often empty).

    ``results``: (tile, result, seam piece, ids reaching down, ids reaching right) per tile, in
    row-major order over an image ``width`` px wide. After tile (r, c) an object may still grow
    if it reaches down from a tile of row r at or left of c, reaches right from (r, c), or reaches
    down from row r - 1 at or right of c (at c: diagonally into (r, c + 1)). Everything else is
    complete, so what is held is about one row of tiles' bottom seams, and little is assembled at once;
    after the last tile nothing is held (no tile of the last row reaches down, the last column right).
    """
    above, current, row = {}, {}, None
    for tile, result, piece, reaching_down, reaching_right in results:
        (r, c), last_column = tile.index, tile.core[1].stop >= width
        if r != row:
            above, current, row = current, {}, r
        seams.add(piece)
        current[c] = reaching_down
        from_above = [ids for column, ids in above.items() if column > c or (column == c and not last_column)]
        yield tile, result, seams.pop_complete(np.concatenate([*current.values(), reaching_right, *from_above]))


def group_by_object(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(unique, objects, order, starts) for pixels given by their ids, in any order: ``unique`` the
    distinct ids with 0 first, ``objects`` each pixel's number 1..n in it, and ``order[starts[k]:
    starts[k + 1]]`` the pixels of object k + 1."""
    unique, objects = compact_values(ids, ids.size)
    order = np.argsort(objects, kind="stable")
    return unique, objects, order, np.searchsorted(objects[order], np.arange(1, unique.size + 1))


def check_unique_ids(ids: np.ndarray, source: str, margin: int) -> None:
    """Raise when an id was written twice: a label in parts too far apart to be joined at a tile seam."""
    ids = np.sort(ids)
    repeated = ids[1:][ids[1:] == ids[:-1]]
    if repeated.size:
        raise InputError(source, f"label {repeated[0]} (and {repeated.size - 1} more) has parts farther than "
                                 f"--margin {margin} px of a tile seam on either side: label its connected components "
                                 f"separately, or use a larger --margin")
