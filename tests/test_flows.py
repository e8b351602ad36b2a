"""Prefect flows on the ephemeral API (PREFECT_HOME in a temp dir) with a Dask LocalCluster, on tiny
real data; deployments on a real `prefect server`; cluster specs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import imageio.v3 as iio
import pytest
import tifffile
from conftest import DSB

from sparseseg.cluster import default_spec, load_spec, slurm_cluster

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "sparseseg" / "data" / "models" / "nuclei_he.pt"
BIN = Path(sys.executable).parent


def make_archive(folder: Path) -> None:
    """Two small real H&E slides as TIFFs at the bundled model's pixel size."""
    folder.mkdir(parents=True)
    for name in ("he_65c8527c", "he_0121d675"):
        tifffile.imwrite(folder / f"{name}.tif", iio.imread(DSB / "images" / f"{name}.png")[..., :3],
                         resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER", photometric="rgb")


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1",
               SPARSESEG_HOME=str(ROOT), PREFECT_LOGGING_LEVEL="WARNING",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",  # 2 busy cores start slowly
               PREFECT_API_REQUEST_TIMEOUT="300")  # and answer slowly: a 60 s read timeout failed once under load
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def test_flows_run_on_the_ephemeral_api(tmp_path):
    make_archive(tmp_path / "archive")
    train = tmp_path / "train"
    (train / "images").mkdir(parents=True)
    (train / "annotations").mkdir()
    shutil.copy(DSB / "images" / "he_65c8527c.png", train / "images")
    labels = tifffile.imread(DSB / "labels" / "he_65c8527c.tif")
    tifffile.imwrite(train / "annotations" / "he_65c8527c.tif", (labels + 1).astype("uint32"))
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "flow_scenarios.py"), str(tmp_path)],
                            env=prefect_env(tmp_path / "prefect-home"), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.split("RESULTS ", 1)[1])
    assert Path(results["ingest"]).is_dir() and results["segment"]["cells"] > 20
    assert Path(results["segment"]["report"]).is_file() and Path(results["train"]).is_file()
    first, second = results["archive_first"], results["archive_second"]
    assert [r["status"] for r in first] == ["processed", "processed"] and all(r["cells"] > 10 for r in first)
    assert [r["status"] for r in second] == ["skipped (done)", "skipped (done)"]
    for row in first:
        out = Path(row["output"])
        assert (out / "measure" / "report.html").is_file() and (out / "cells.geojson.gz").is_file()
        assert (out / ".sparseseg-complete.json").is_file()
    # the active-learning loop: round 0 proposes, round 1 learns from what was drawn and proposes elsewhere
    first, second = results["active_learning"]
    assert len(first["proposals"]) == len(second["proposals"]) == 2 and "gain" in second
    assert 0 < first["mean"]["f1@0.5"] <= 1 and set(second["gain"]) == {"f1@0.5", "aji"}
    assert first["model"].endswith("nuclei_he.pt") and Path(second["model"]).is_file()
    assert second["model"].endswith("round_1/model.pt")
    drawn = [(p["y"], p["x"]) for p in first["proposals"]]
    assert not {(p["y"], p["x"]) for p in second["proposals"]} & set(drawn)  # annotated squares are not proposed
    assert (tmp_path / "al" / "round_1" / "proposals" / "index.html").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


DEPLOYED_RUN = r"""
import json, sys
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
params = json.loads(sys.argv[1])
runs = []
for _ in range(2):
    run = run_deployment("process-archive/nightly", parameters=params, timeout=600)
    runs.append(run.state.type.value)
    if run.state.type.value != "COMPLETED":
        print("STATE MESSAGE", run.state.message, file=sys.stderr)
import asyncio
async def artifacts():
    async with get_client() as client:
        found = await client.read_artifacts(limit=10)
        return [json.loads(a.data) if isinstance(a.data, str) else a.data for a in found if a.key == "process-archive"]
print("RUNS " + json.dumps({"states": runs, "artifacts": asyncio.run(artifacts())}))
"""


def test_deployment_on_a_real_prefect_server(tmp_path):
    make_archive(tmp_path / "archive")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_env(tmp_path / "prefect-home", api)
    prefect = str(BIN / "prefect")
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port),
                               "--analytics-off"], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prefect server did not become healthy"
            time.sleep(1)
        run = lambda *args: subprocess.run([prefect, *args], env=env, cwd=ROOT, capture_output=True,  # noqa: E731
                                           text=True, timeout=300)
        created = run("work-pool", "create", "process", "--type", "process")
        assert created.returncode == 0, created.stderr
        deployed = run("--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml")
        assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
        worker = subprocess.Popen([prefect, "worker", "start", "--pool", "process"], env=env, cwd=ROOT,
                                  start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spec = tmp_path / "threads.yaml"  # in-process workers: no nanny start-up on a loaded 2-core machine
        spec.write_text("kind: local\nn_workers: 1\nthreads_per_worker: 2\nprocesses: false\n")
        params = {"input_dir": str(tmp_path / "archive"), "output_dir": str(tmp_path / "out"), "model": str(MODEL),
                  "cluster": str(spec), "regions": "grid:50um"}
        result = subprocess.run([sys.executable, "-c", DEPLOYED_RUN, json.dumps(params)], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout.split("RUNS ", 1)[1])
        assert report["states"] == ["COMPLETED", "COMPLETED"], result.stderr[-3000:]
        for name in ("he_65c8527c", "he_0121d675"):
            out = tmp_path / "out" / name
            assert (out / ".sparseseg-complete.json").is_file() and (out / "measure" / "objects.parquet").is_file()
        statuses = [[row["status"] for row in table] for table in report["artifacts"]]
        assert ["skipped (done)", "skipped (done)"] in statuses and ["processed", "processed"] in statuses
    finally:
        if worker is not None:
            _stop(worker)  # workers first: one retrying a dead server may ignore SIGTERM
        _stop(server)


PREFECT_MODELS = r"""
import sys
sys.path.insert(0, sys.argv[1])
import pydantic
from flows.pipeline import build_deferred_prefect_models

def deferred():
    pending, found = list(pydantic.BaseModel.__subclasses__()), []
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        if model.__module__.startswith("prefect") and not model.__dict__.get("__pydantic_complete__", True):
            found.append(model.__name__)
    return found

before = deferred()
build_deferred_prefect_models()
print(len(before), "FlowRunFilter" in before, len(deferred()))
"""


def test_prefect_models_are_built_before_subflows_run_in_threads(tmp_path):
    """A deferred model first used by two subflow threads at once failed a deployed archive run; none is left."""
    result = subprocess.run([sys.executable, "-c", PREFECT_MODELS, str(ROOT)], capture_output=True, text=True,
                            timeout=300, env=prefect_env(tmp_path / "prefect-home"))
    assert result.returncode == 0, result.stderr[-2000:]
    before, flow_run_filter, after = result.stdout.split()
    assert int(before) > 100 and flow_run_filter == "True" and int(after) == 0


def test_slurm_spec_renders_a_job_script_with_one_gpu_per_job():
    pytest.importorskip("dask_jobqueue")
    spec = load_spec(ROOT / "deploy" / "clusters" / "slurm-gpu.yaml")
    cluster = slurm_cluster(spec)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert script.startswith("#!/usr/bin/env bash")
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -p gpu" in script and "#SBATCH --mem=" in script
    assert "module load cuda" in script and "-m distributed.cli.dask_worker" in script


def test_cuda_spec_only_where_cuda_exists():
    import torch

    spec = default_spec()
    if torch.cuda.is_available():
        pytest.importorskip("dask_cuda")
        assert spec["kind"] == "local-cuda"
    else:
        assert spec["kind"] == "local"
    from sparseseg.cluster import dask_client
    from sparseseg.errors import InputError

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="needs CUDA"):
            with dask_client({"kind": "local-cuda"}):
                pass


def _worker_environ() -> tuple[str | None, str | None]:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")


def test_local_workers_start_without_dask_malloc_trim(monkeypatch):
    """Dask's MALLOC_TRIM_THRESHOLD_ made block post-processing 2.5x slower; our local workers omit it."""
    from sparseseg.cluster import dask_client

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # a parent's earlier nanny may have set it
    with dask_client({"kind": "local", "n_workers": 1}) as client:
        (trim, omp), = client.run(_worker_environ).values()
    assert trim is None and omp == "1"  # Dask's other worker defaults stay


def _worker_profiles(dask_worker) -> bool:
    return "profile" in dask_worker.periodic_callbacks


def test_local_workers_run_without_the_statistical_profiler():
    """The profiler samples every thread every 10 ms for a dashboard our clusters never start; it is off."""
    from sparseseg.cluster import dask_client

    with dask_client({"kind": "local", "n_workers": 1}) as client:
        assert list(client.run(_worker_profiles).values()) == [False]
    from distributed import Client, LocalCluster  # a plain LocalCluster has it: the check above can fail

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        assert list(client.run(_worker_profiles).values()) == [True]
