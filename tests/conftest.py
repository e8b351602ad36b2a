"""Shared fixtures: paths to the committed CC0 test data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # two test processes share the cores: one torch thread each (before torch loads)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

DATA = Path(__file__).parent / "data"
SVS = Path(__file__).parents[1] / "sparseseg" / "data" / "cmu_small_region.svs"
OME_TIFF = DATA / "slides" / "cmu_small_region.pyramid.ome.tif"
GENERIC_TIFF = DATA / "slides" / "cmu_small_region.pyramid.generic.tif"
DSB = DATA / "dsb2018"


@pytest.fixture(scope="session")
def dsb_pairs() -> list[tuple[Path, Path]]:
    """(image PNG, instance-label TIFF) pairs of the committed DSB2018 images."""
    return [(p, DSB / "labels" / f"{p.stem}.tif") for p in sorted((DSB / "images").glob("*.png"))]


@pytest.fixture(scope="session")
def fluo_training_folders(tmp_path_factory) -> dict[str, str]:
    """Two real DSB fluorescence images with 30 % GP-sparse partial annotations, as a user's folders."""
    import shutil

    import tifffile

    from sparseseg.annotations.sparsify import sparsify_dense

    root = tmp_path_factory.mktemp("fluo-data")
    (root / "images").mkdir()
    (root / "annotations").mkdir()
    for name in ("fluo_0402a81e", "fluo_9586e48a"):
        shutil.copy(DSB / "images" / f"{name}.png", root / "images" / f"{name}.png")
        labels = tifffile.imread(DSB / "labels" / f"{name}.tif")
        tifffile.imwrite(root / "annotations" / f"{name}.tif", sparsify_dense(labels, 0.3, seed=0).partial)
    return {"images": str(root / "images"), "annotations": str(root / "annotations")}


def shared_root(tmp_path_factory) -> Path:
    """A folder all pytest-xdist workers of this run see (each worker's own base folder's parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def fluo_model(fluo_training_folders, tmp_path_factory) -> Path:
    """A small nuclei model trained briefly through the CLI on the folders above, once per run.

    Under pytest-xdist the first worker to need it trains it; the others wait on a file lock and load it."""
    from filelock import FileLock

    from sparseseg.cli import main

    folder = shared_root(tmp_path_factory) / "fluo-model"
    folder.mkdir(exist_ok=True)
    out = folder / "fluo.pt"
    with FileLock(folder / "train.lock"):
        if not out.is_file():
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(os.cpu_count() or 1)  # the other workers may be waiting for this model
            try:
                code = main(["train", "--images", fluo_training_folders["images"], "--annotations",
                             fluo_training_folders["annotations"], "--out", str(out), "--epochs", "50", "--patch",
                             "96", "--batch", "8", "--depth", "2", "--width", "16", "--lr", "3e-3", "--pixel-size",
                             "0.5", "-q"])
            finally:
                torch.set_num_threads(threads)
            assert code == 0
    return out
