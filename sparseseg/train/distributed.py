"""Data-parallel training on Dask workers: one torch DDP rank per worker (gloo on CPU, NCCL on GPU).

The driver ships only a small description of the data (paths); each worker opens the slides and
draws its own patches. Rank 0 writes the checkpoints. A lost worker fails the run with a message
naming the checkpoint to resume from.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from sparseseg.cluster import dask_client, workers_spec
from sparseseg.errors import InputError
from sparseseg.model.unet import UNetConfig
from sparseseg.train.loop import TrainConfig, train

log = logging.getLogger(__name__)


def open_sources(spec: dict):
    """Build training sources from a picklable description: {'slides': [...]} or {'images', 'annotations'}."""
    from sparseseg.train.data import SlideSource, folder_sources

    if "slides" in spec:
        return [SlideSource(Path(p)) for p in spec["slides"]]
    return folder_sources(Path(spec["images"]), Path(spec["annotations"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, address: str, port: int, spec: dict, out: str, model_config: dict,
               config: dict, init: str | None, resume: bool, command: str, pixel_size_um: float | None,
               timeout_s: float) -> dict:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    backend = "nccl" if config.get("device", "cpu").startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(0)  # one GPU per worker (CUDA_VISIBLE_DEVICES set by the cluster)
    dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    try:
        sources = open_sources(spec)
        return train(sources, Path(out), UNetConfig(**model_config), TrainConfig(**config),
                     init=Path(init) if init else None, resume=resume, command=command,
                     pixel_size_um=pixel_size_um, progress=False)
    finally:
        dist.destroy_process_group()


def train_on_dask(spec: dict, out: Path, model_config: UNetConfig, config: TrainConfig, *, workers: int | None = None,
                  scheduler: str | None = None, init: Path | None = None, resume: bool = False, command: str = "",
                  pixel_size_um: float | None = None, timeout_s: float = 300.0) -> dict:
    """Run ``train`` as DDP over ``workers`` local processes or every worker of ``scheduler``.

    ``timeout_s`` bounds how long a rank waits for a lost peer before the run fails.
    """
    from distributed import as_completed

    with dask_client(workers_spec(workers, scheduler, default_workers=2)) as client:
        worker_addresses = sorted(client.scheduler_info()["workers"])
        world = len(worker_addresses)
        if world == 0:
            raise InputError(None, f"no Dask workers available at {scheduler}")
        master = worker_addresses[0]
        host = master.split("://")[-1].rsplit(":", 1)[0]
        port = client.run(_free_port, workers=[master])[master]
        futures = [client.submit(_rank_main, rank, world, host, port, spec, str(out), model_config.to_dict(),
                                 asdict(config), str(init) if init else None, resume, command, pixel_size_um,
                                 timeout_s, workers=[address], pure=False, retries=0, allow_other_workers=False)
                   for rank, address in enumerate(worker_addresses)]
        failed = next((f for f in as_completed(futures, loop=client.loop) if f.status != "finished"), None)
        if failed is not None:  # the first failure ends the run: the other ranks would wait forever
            error = failed.exception() if failed.status == "error" else RuntimeError(f"task {failed.status}")
            for future in futures:
                future.cancel()
            hint = f"resume with --resume from {out}" if Path(out).exists() else "no checkpoint was written yet"
            raise InputError(None, f"distributed training failed on a worker ({type(error).__name__}: {error}); {hint}")
        results = client.gather(futures)
        return results[0]
