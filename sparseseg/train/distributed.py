"""Data-parallel training on Dask workers: one torch DDP rank per worker (gloo on CPU, NCCL on GPU).

The driver ships only the request (paths and settings); each worker opens the data, holds out the
same validation images as a single process would (``data.split_sources``), and draws its own
share of every batch. Rank 0 writes the checkpoints. A lost worker fails the run with a message
naming the checkpoint to resume from.
"""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from pathlib import Path

from sparseseg.cluster import dask_client, workers_spec
from sparseseg.errors import InputError
from sparseseg.train.data import channel_names, split_sources

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, address: str, port: int, request, timeout_s: float) -> dict:
    import torch
    import torch.distributed as dist

    from sparseseg.train.loop import train

    torch.set_num_threads(1)
    backend = "nccl" if request.config.device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(0)  # one GPU per worker (CUDA_VISIBLE_DEVICES set by the cluster)
    dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    try:
        sources = request.open_sources()  # scaled to the model's pixel size as in one process
        train_sources, val_sources = split_sources(sources)
        return train(train_sources, Path(request.out), request.model, request.config, init=request.init,
                     resume=request.resume, command=request.command, pixel_size_um=request.model_pixel_size_um,
                     progress=False, val_sources=val_sources, channels=channel_names(sources),
                     class_names=request.class_names(sources))
    finally:
        dist.destroy_process_group()


def train_on_dask(request, timeout_s: float = 300.0) -> dict:
    """Run ``train`` as DDP over ``request.workers`` local processes or every worker of ``request.scheduler``.

    ``timeout_s`` bounds how long a rank waits for a lost peer before the run fails.
    """
    from distributed import as_completed

    out = Path(request.out)
    with dask_client(workers_spec(request.workers, request.scheduler, default_workers=2)) as client:
        worker_addresses = sorted(client.scheduler_info()["workers"])
        world = len(worker_addresses)
        if world == 0:
            raise InputError(None, f"no Dask workers available at {request.scheduler}")
        if request.config.batch % world:
            raise InputError(None, f"--batch {request.config.batch} must be divisible by the {world} workers")
        master = worker_addresses[0]
        host = master.split("://")[-1].rsplit(":", 1)[0]
        port = client.run(_free_port, workers=[master])[master]
        futures = [client.submit(_rank_main, rank, world, host, port, request, timeout_s, workers=[address],
                                 pure=False, retries=0, allow_other_workers=False)
                   for rank, address in enumerate(worker_addresses)]
        failed = next((f for f in as_completed(futures, loop=client.loop) if f.status != "finished"), None)
        if failed is not None:  # the first failure ends the run: the other ranks would wait forever
            error = failed.exception() if failed.status == "error" else RuntimeError(f"task {failed.status}")
            for future in futures:
                future.cancel()
            if isinstance(error, InputError):
                raise error
            hint = f"resume with --resume from {out}" if out.exists() else "no checkpoint was written yet"
            raise InputError(None, f"distributed training failed on a worker ({type(error).__name__}: {error}); {hint}")
        results = client.gather(futures)
        return results[0]
