"""Pass 1 on a worker: a group of blocks in an overlapped pipeline, each block's record written atomically.

Blocks run in groups (one Dask task per group). Inside a group a reader thread reads and
normalises the next block while the network runs on the current one and a second thread derives
the instances of the previous one (``stitch.block_record``): the device never waits for zarr, and
at most two blocks are held ahead, so memory stays flat. Each finished block's record is also what
``--resume`` and a retried task skip.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from sparseseg.infer.windows import FieldSource
from sparseseg.segment.plan import BlockJob
from sparseseg.segment.records import BlockRecord, block_record_path, read_block_record, write_block_record
from sparseseg.segment.stitch import block_record, resolve_candidates
from sparseseg.segment.worker import slide_fields
from sparseseg.tiling.blocks import Block


@dataclass
class PipelineSeconds:
    """Where this worker process's pass-1 pipeline spent its time (summed over its groups; for benchmarks): the
    network waiting for a read, running, and waiting for the previous block's instances."""

    read_wait: float = 0.0
    forward: float = 0.0
    instances_wait: float = 0.0
    blocks: int = 0


#: This process's totals (``bench/gpu.py`` collects them from every worker with ``client.run``).
PIPELINE_SECONDS = PipelineSeconds()


def run_block_group(job: BlockJob, blocks: list[Block], skips: frozenset, fields: FieldSource | None = None
                    ) -> list[BlockRecord]:
    """Process ``blocks`` (one Dask task): read ahead, forward, derive instances behind; returns their summaries.

    ``fields``: where network outputs come from (default: the slide through this worker's predictor).
    """
    done: dict[str, BlockRecord] = {}
    todo = []
    for block in blocks:
        record = read_block_record(block_record_path(job.work, block.name))
        if record is not None:  # done before (resume, or a retried task after a lost worker)
            done[block.name] = record
        elif block.index in skips:
            empty = BlockRecord.empty()
            write_block_record(block_record_path(job.work, block.name), empty)
            done[block.name] = empty
        else:
            todo.append(block)
    if todo:
        fields = fields or slide_fields(job)
        for block, record in _pipeline(job, todo, fields):
            write_block_record(block_record_path(job.work, block.name), record)
            done[block.name] = record.summary()
    return [done[b.name] for b in blocks]


def _pipeline(job: BlockJob, blocks: list[Block], fields: FieldSource):
    """(block, record) for each block, in order: reading runs one block ahead of the network, and the
    instances of a block are derived while the network runs on the next one."""
    with ThreadPoolExecutor(1, thread_name_prefix="sparseseg-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="sparseseg-instances") as post:
        reads = deque(maxlen=2)
        queue = iter(blocks)

        def read_ahead() -> None:
            block = next(queue, None)
            if block is not None:
                reads.append((block, reader.submit(fields.load, block.context)))

        finishing = None
        read_ahead()
        while reads:
            block, future = reads.popleft()
            start = time.perf_counter()
            prepared = future.result()
            read_ahead()
            ready = time.perf_counter()
            output = fields.compute([prepared])[0]
            computed = time.perf_counter()
            if finishing is not None:
                finished = finishing.result()
                PIPELINE_SECONDS.instances_wait += time.perf_counter() - computed
                yield finished
            PIPELINE_SECONDS.read_wait += ready - start
            PIPELINE_SECONDS.forward += computed - ready
            PIPELINE_SECONDS.blocks += 1
            finishing = post.submit(_finish, job, block, output, fields, prepared.tiles_run)
        if finishing is not None:
            yield finishing.result()


def _finish(job: BlockJob, block: Block, output: np.ndarray, fields: FieldSource, tiles: int
            ) -> tuple[Block, BlockRecord]:
    """The block's record, its candidates resolved at once, while the tiles around the block are still cached."""
    record = block_record(job, block, output, fields.device)
    record.tiles = tiles
    if len(record.candidates):
        record.add_outcomes(resolve_candidates(job, record.candidates, fields, block))
    return block, record
