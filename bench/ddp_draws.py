"""Which images do DDP ranks draw training patches from? A check of issue 15 that runs on old and new code alike.

Six folder images (two real DSB fluorescence images and four renamed copies, 30 % sparse annotations), two
Dask worker processes; each worker records the image behind every patch drawn for training (validation
patches, drawn by the same function at VALIDATION_STEP, are not counted). Both versions hold out every 5th
image for validation. Run it on any checkout:

    git worktree add /tmp/old b935202
    PYTHONPATH=/tmp/old .venv/bin/python bench/ddp_draws.py   # old code: the held-out image is trained on
    .venv/bin/python bench/ddp_draws.py                       # this checkout
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

DSB = Path(__file__).resolve().parents[1] / "tests" / "data" / "dsb2018"
RECORD = Path(tempfile.mkdtemp()) / "draws"


def install(record: str) -> None:
    """On a worker: record the image behind every training patch (reads made inside draw_patch only)."""
    import sparseseg.train.data as data
    import sparseseg.train.loop as loop
    state = {"on": False}
    original_draw, original_read = loop.draw_patch, data.FolderSource.read_annotation

    def draw(*args, **kwargs):
        step = args[5] if len(args) > 5 else kwargs["step"]
        state["on"] = step != loop.VALIDATION_STEP  # validation patches are drawn by the same function
        try:
            return original_draw(*args, **kwargs)
        finally:
            state["on"] = False

    def read(self, window):
        if state["on"]:
            with open(f"{record}-{os.getpid()}", "a") as f:
                f.write((getattr(self, "name", None) or Path(self.image_path).stem) + "\n")
        return original_read(self, window)

    loop.draw_patch, data.FolderSource.read_annotation = draw, read


def make_folders(root: Path) -> Path:
    """The 6-image folder pair the DDP split test uses, made from the committed DSB images."""
    import numpy as np
    import tifffile
    from sparseseg.annotations.sparsify import sparsify_dense

    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name in ("fluo_0402a81e", "fluo_9586e48a"):
        shutil.copy(DSB / "images" / f"{name}.png", root / "images" / f"{name}.png")
        labels = tifffile.imread(DSB / "labels" / f"{name}.tif")
        tifffile.imwrite(root / "annotations" / f"{name}.tif", sparsify_dense(labels, 0.3, seed=0).partial.astype(np.uint32))
    for k in range(4):
        for folder, suffix in ((root / "images", ".png"), (root / "annotations", ".tif")):
            shutil.copy(sorted(folder.glob(f"*{suffix}"))[k % 2], folder / f"copy{k}{suffix}")
    return root


def main(folders: Path) -> None:
    from distributed import Client, LocalCluster
    from sparseseg.model.unet import UNetConfig
    from sparseseg.train.loop import TrainConfig
    small = UNetConfig(in_channels=1, width=8, depth=2)
    config = TrainConfig(batch=4, steps=6, patch=64, margin=16, val_patches=4, checkpoint_every=3)
    out = folders / "ddp.pt"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(install, str(RECORD))
        try:  # the new API: one request object
            from sparseseg.train.request import DataSpec, TrainRequest, run_training
            run_training(TrainRequest(data=DataSpec(images=str(folders / "images"), annotations=str(folders / "annotations")),
                                      out=out, model=small, config=config, scheduler=cluster.scheduler_address,
                                      epochs=0.05, calibrate=False))
            api = "new"
        except ImportError:  # the old code: what `sparseseg train --scheduler` called
            from sparseseg.train.distributed import train_on_dask
            train_on_dask({"images": str(folders / "images"), "annotations": str(folders / "annotations")}, out,
                          small, config, scheduler=cluster.scheduler_address)
            api = "old"
    names = sorted(p.stem for p in (folders / "images").glob("*.png"))
    held_out = names[4::5]  # both versions hold out every 5th image for validation
    drawn = {}
    for f in RECORD.parent.glob("draws-*"):
        for line in f.read_text().split():
            drawn[line] = drawn.get(line, 0) + 1
    print(json.dumps({"api": api, "held_out": held_out, "drawn_for_training": drawn,
                      "held_out_trained_on": any(h in drawn for h in held_out)}))


if __name__ == "__main__":
    main(make_folders(Path(tempfile.mkdtemp()) / "data"))
