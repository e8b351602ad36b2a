"""One cluster-spec format (YAML, deploy/clusters/) for the CLI and the flows alike.

kind: local       -> distributed.LocalCluster (CPU)
kind: local-cuda  -> dask_cuda.LocalCUDACluster, one worker per GPU (only where CUDA exists)
kind: slurm       -> dask_jobqueue.SLURMCluster, one GPU per job, scaled to ``jobs``
kind: scheduler   -> an existing Dask scheduler at ``address``
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import yaml
from distributed.diagnostics.plugin import WorkerPlugin

from sparseseg.errors import InputError

KINDS = ("local", "local-cuda", "slurm", "scheduler")


def load_spec(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(path, f"cannot read cluster spec ({exc})") from None
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise InputError(path, f"cluster spec needs 'kind' in {KINDS}")
    if spec["kind"] == "scheduler" and not spec.get("address"):
        raise InputError(path, "kind: scheduler needs an 'address' (tcp://HOST:PORT)")
    return spec


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


def default_spec() -> dict[str, Any]:
    """What runs with no configuration: one worker per GPU where CUDA and dask-cuda exist, else CPU."""
    if cuda_available():
        try:
            import dask_cuda  # noqa: F401

            return {"kind": "local-cuda"}
        except ImportError:
            pass
    return {"kind": "local", "n_workers": 1, "threads_per_worker": 2}


def workers_spec(workers: int | None, scheduler: str | None, default_workers: int = 1) -> dict[str, Any]:
    """The spec behind the CLI's ``--workers N`` / ``--scheduler ADDR``: one Dask thread per worker process,
    and local workers share this machine's cores for torch (``OMP_NUM_THREADS`` in their environment)."""
    if scheduler:
        return {"kind": "scheduler", "address": scheduler}
    n = workers or default_workers
    if n < 1:
        raise InputError(None, f"--workers must be at least 1, got {n}")
    return {"kind": "local", "n_workers": n, "threads_per_worker": 1, "torch_threads": max(1, (os.cpu_count() or 1) // n)}


def slurm_cluster(spec: dict[str, Any]):
    """A SLURMCluster with one GPU per job (not started: call ``.scale``)."""
    from dask_jobqueue import SLURMCluster

    gpus = int(spec.get("gpus_per_job", 1))
    directives = [f"--gres=gpu:{gpus}"] + list(spec.get("job_extra_directives", []))
    return SLURMCluster(cores=int(spec.get("cores", 8)), processes=1, memory=str(spec.get("memory", "32GB")),
                        walltime=str(spec.get("walltime", "04:00:00")), queue=spec.get("queue"),
                        account=spec.get("account"), job_extra_directives=directives,
                        job_script_prologue=list(spec.get("prologue", [])),
                        worker_extra_args=list(spec.get("worker_extra_args", [])),
                        interface=spec.get("interface"), scheduler_options={"dashboard_address": None})


def worker_environment():
    """Config for starting local worker processes: without Dask's MALLOC_TRIM_THRESHOLD_=65536, and without
    the statistical profiler.

    Setting that variable also fixes glibc's mmap threshold at 128 KiB, so every large numpy
    temporary is a fresh mmap whose pages fault in again: instance post-processing ran 2.5x slower
    in Dask workers than in a plain process (measured, docs/segment.md). A value exported in the
    environment still wins, as Dask documents. The profiler samples every thread's stack every 10 ms
    for a dashboard these clusters do not start: about 3 % of a worker's CPU (docs/benchmarks.md).
    """
    import dask

    return dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                            "distributed.worker.profile.enabled": False})


def worker_log_path() -> Path:
    """A fresh file for the Dask logs of one run (its workers' errors and shutdown noise)."""
    folder = Path(os.environ.get("SPARSESEG_LOG_DIR") or Path(tempfile.gettempdir()) / "sparseseg-logs")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"dask-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


class LogToFile(WorkerPlugin):
    """Worker plugin: the worker's Dask logs go to a file, not to the terminal the user reads."""

    name = "sparseseg-log-to-file"

    def __init__(self, path: Path):
        self.path = Path(path)

    def setup(self, worker) -> None:
        _divert_dask_logs(self.path)


def _divert_dask_logs(path: Path) -> list:
    """Sends the ``distributed`` logger (and asyncio's, which reports its shutdown) to ``path`` only; returns
    what to restore: (logger, handlers, propagate) for each."""
    handler = logging.FileHandler(path, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    saved = []
    for name in ("distributed", "asyncio"):
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        logger.handlers = [handler]
        logger.propagate = False
    return saved


@contextmanager
def _logs_in_file(path: Path):
    """This process's Dask logs in ``path`` while the cluster lives; an InputError raised meanwhile names it."""
    saved = _divert_dask_logs(path)
    try:
        yield
    except InputError as exc:
        if path.is_file() and path.stat().st_size:
            raise InputError(exc.path, f"{exc.problem} (Dask log: {path})") from exc
        raise
    finally:
        for logger, handlers, propagate in saved:
            for handler in logger.handlers:
                handler.close()
            logger.handlers, logger.propagate = handlers, propagate


@contextmanager
def dask_client(spec: dict[str, Any] | None = None):
    """A distributed Client for the spec; clusters started here are closed on exit. The logs of local
    workers go to a file (``worker_log_path``), named in any error that ends the run."""
    spec = spec or default_spec()
    path = worker_log_path() if spec["kind"] in ("local", "local-cuda") else None
    with _logs_in_file(path) if path else nullcontext(), _client(spec, path) as client:
        yield client


@contextmanager
def _client(spec: dict[str, Any], log_path: Path | None):
    from distributed import Client, LocalCluster

    kind = spec["kind"]
    cluster = None
    if kind == "scheduler":
        client = Client(spec["address"], set_as_default=False)
    elif kind == "local":
        processes = bool(spec.get("processes", True))
        extra = {"env": {"OMP_NUM_THREADS": str(spec["torch_threads"])}} if processes and spec.get("torch_threads") \
            else {}  # worker processes' own environment (threads of this process share its setting)
        with worker_environment():
            cluster = LocalCluster(n_workers=int(spec.get("n_workers", 1)),
                                   threads_per_worker=int(spec.get("threads_per_worker", 1)), processes=processes,
                                   memory_limit=spec.get("memory_limit", "auto"), dashboard_address=None,
                                   silence_logs=False, **extra)
        client = Client(cluster, set_as_default=False)
    elif kind == "local-cuda":
        if not cuda_available():
            raise InputError(None, "cluster kind local-cuda needs CUDA, which this machine lacks")
        from dask_cuda import LocalCUDACluster

        with worker_environment():
            cluster = LocalCUDACluster(dashboard_address=None)
        client = Client(cluster, set_as_default=False)
    else:
        cluster = slurm_cluster(spec)
        cluster.scale(jobs=int(spec.get("jobs", 1)))
        client = Client(cluster, set_as_default=False)
    if log_path is not None:
        client.register_plugin(LogToFile(log_path))
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
