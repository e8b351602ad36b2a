"""Planning a segmentation reads metadata only: a 200k x 100k slide is planned without its pixels."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zarr

from sparseseg.io.ngff import create_level_array, write_image_metadata
from sparseseg.pyramid import level_factors, pyramid_shapes
from sparseseg.model.checkpoint import load_checkpoint
from sparseseg.segment import SegmentOptions
from sparseseg.segment.plan import plan_segment
from sparseseg.tiling.blocks import BlockGrid

MODEL = __import__("pathlib").Path(__file__).parents[1] / "sparseseg" / "data" / "models" / "nuclei_he.pt"


def test_a_whole_slide_of_200k_x_100k_is_planned_from_metadata(tmp_path, capsys):
    """Level 0 holds no chunk on disk (a slide's worth of nothing); only the low levels normalisation reads."""
    slide = tmp_path / "huge.ome.zarr"
    group = zarr.open_group(slide, mode="w", zarr_format=2)
    shapes = pyramid_shapes((200_000, 100_000), 1024)
    for level, shape in enumerate(shapes):
        array = create_level_array(group, str(level), (3, *shape), (3, 1024, 1024), np.uint8, ("c", "y", "x"))
        if max(shape) <= 2048:  # the level the per-slide normalisation reads
            array[...] = np.random.default_rng(level).integers(0, 255, array.shape, np.uint8)
    pixel_size = load_checkpoint(MODEL)["pixel_size_um"]  # the model's: planned without resampling
    write_image_metadata(group, "0.4", "huge", len(shapes), (pixel_size, pixel_size), level_factors(shapes),
                         omero=None)
    started = time.perf_counter()
    plan = plan_segment(slide, MODEL, SegmentOptions(fill_missing=True))
    seconds = time.perf_counter() - started
    blocks = plan.grid
    n_blocks = blocks.grid[0] * blocks.grid[1]
    assert blocks.shape == (200_000, 100_000) and n_blocks == 98 * 49
    chunk_tasks = sum(-(-h // 1024) * -(-w // 1024) for h, w in shapes)
    with capsys.disabled():
        print(f"\n200000 x 100000 slide planned in {seconds:.2f} s: {n_blocks} blocks in "
              f"{-(-n_blocks // 16)} block tasks, {chunk_tasks} label chunk tasks over {len(shapes)} levels")
    assert seconds < 30


def test_chunk_to_blocks_lookup_by_index_arithmetic_equals_a_scan():
    rng = np.random.default_rng(0)
    for _ in range(50):
        shape = (int(rng.integers(50, 900)), int(rng.integers(50, 900)))
        grid = BlockGrid(shape=shape, block=int(rng.choice([32, 64, 96])), margin=int(rng.choice([0, 16, 48])),
                         halo=16, factor=16)
        y0, x0 = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
        window = (slice(y0, int(rng.integers(y0 + 1, shape[0] + 1))), slice(x0, int(rng.integers(x0 + 1, shape[1] + 1))))
        scanned = [b.index for b in grid.blocks()
                   if b.context[0].start < window[0].stop and window[0].start < b.context[0].stop
                   and b.context[1].start < window[1].stop and window[1].start < b.context[1].stop]
        assert [b.index for b in grid.blocks_touching(window)] == scanned


@pytest.mark.parametrize("n_blocks, workers", [(1, 1), (16, 2), (240, 2), (1000, 4)])
def test_block_groups_shrink_to_single_blocks_at_the_end(n_blocks, workers):
    """Consecutive blocks, every block once, long groups first (never above MAX_GROUP) and single blocks last,
    so the last tasks are short whatever the slide size."""
    from sparseseg.segment.run import MAX_GROUP, block_groups

    groups = block_groups(list(range(n_blocks)), workers)
    assert [b for g in groups for b in g] == list(range(n_blocks))
    sizes = [len(g) for g in groups]
    assert sizes == sorted(sizes, reverse=True) and max(sizes) <= MAX_GROUP and sizes[-1] == 1
    assert sizes.count(1) <= 4 * workers  # the tail is short: few single-block tasks
    if n_blocks >= 240:
        assert sizes[0] == MAX_GROUP
