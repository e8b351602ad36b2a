"""Training: DDP on Dask equals one process and holds out the same images, lost workers fail cleanly and
resume, real data learns."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import imageio.v3 as iio
import pytest
import tifffile
import torch
from conftest import DSB
from distributed import Client, LocalCluster
from helpers import matched_at

from sparseseg.errors import InputError
from sparseseg.infer.predictor import Predictor
from sparseseg.model import UNet, UNetConfig
from sparseseg.model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from sparseseg.train.distributed import train_on_dask
from sparseseg.train.loop import TrainConfig, train
from sparseseg.train.data import validation_split
from sparseseg.train.request import DataSpec, TrainRequest, run_training

HELD_OUT = "fluo_ed8c31b0"
SMALL = UNetConfig(in_channels=1, depth=2, width=8)


@pytest.fixture(scope="module")
def data(fluo_training_folders) -> DataSpec:
    return DataSpec(images=fluo_training_folders["images"], annotations=fluo_training_folders["annotations"])


def request(data: DataSpec, out, **values) -> TrainRequest:
    return TrainRequest(data=data, out=out, model=SMALL, calibrate=False, **values)


def test_ddp_on_two_dask_workers_equals_one_process(data, tmp_path):
    config = TrainConfig(batch=4, steps=3, patch=64, margin=16, val_patches=4, seed=3)
    single = train(data.open(), tmp_path / "single.pt", SMALL, config, progress=False)
    ddp = train_on_dask(request(data, tmp_path / "ddp.pt", config=config, workers=2))
    a = load_checkpoint(tmp_path / "single.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "ddp.pt")["state_dict"]
    difference = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert difference < 1e-5  # float32 sums in a different order (batch norm statistics synced over ranks)
    for x, y in zip(single["history"], ddp["history"]):  # the logged loss is the global-batch loss
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)


def test_ddp_never_trains_on_the_held_out_images(fluo_training_folders, tmp_path):
    """With 6 images the 5th is held out, on every rank as in one process (it used to be trained on)."""
    images, annotations = tmp_path / "images", tmp_path / "annotations"
    shutil.copytree(fluo_training_folders["images"], images)
    shutil.copytree(fluo_training_folders["annotations"], annotations)
    for k in range(4):  # six images in all: copies under other names
        for folder, suffix in ((images, ".png"), (annotations, ".tif")):
            source = sorted(folder.glob(f"*{suffix}"))[k % 2]
            shutil.copy(source, folder / f"copy{k}{suffix}")
    spec = DataSpec(images=str(images), annotations=str(annotations))
    names = sorted(p.stem for p in images.glob("*.png"))
    held_out = [names[i] for i in validation_split(len(names))[1]]
    assert held_out == [names[4]]
    config = TrainConfig(batch=4, steps=6, patch=64, margin=16, val_patches=4, checkpoint_every=3)
    run_training(request(spec, tmp_path / "ddp.pt", config=config, epochs=0.05, workers=2))
    drawn = load_checkpoint(tmp_path / "ddp.pt")["data"]
    assert drawn["validation"] == held_out and held_out[0] not in drawn["train"]
    assert sum(drawn["train"].values()) == 4 * load_checkpoint(tmp_path / "ddp.pt")["step"]  # every patch counted


def test_lost_worker_fails_cleanly_and_training_resumes(data, tmp_path):
    out = tmp_path / "model.pt"
    config = TrainConfig(batch=2, steps=400, patch=64, margin=16, val_patches=2, val_every=1000,
                         checkpoint_every=2, seed=0)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        errors = []

        def run():
            try:
                train_on_dask(TrainRequest(data=data, out=out, model=SMALL, config=config,
                                           scheduler=cluster.scheduler_address), timeout_s=20)
            except InputError as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 120
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert out.exists()
        pids = client.run(os.getpid)
        os.kill(pids[sorted(pids)[-1]], signal.SIGKILL)  # lose rank 1 mid-run
        thread.join(timeout=180)
    assert not thread.is_alive()
    assert errors and "distributed training failed" in errors[0] and "resume with --resume" in errors[0]
    saved_step = load_checkpoint(out)["step"]
    assert 2 <= saved_step < 400
    resumed = train(data.open(), out, SMALL, TrainConfig(**{**config.__dict__, "steps": saved_step + 3}),
                    resume=True, progress=False)
    assert resumed["step"] == saved_step + 3
    assert [h["step"] for h in resumed["history"] if "loss" in h][-3:] == [saved_step + 1, saved_step + 2,
                                                                           saved_step + 3]


def test_short_training_on_real_data_lowers_the_loss_and_yields_nuclei(fluo_model):
    state = load_checkpoint(fluo_model)
    val = [h["val_loss"] for h in state["history"] if "val_loss" in h]
    assert val[-1] < 0.6 * val[0]
    assert state["pixel_size_um"] == 0.5 and state["halo"] == 28 and state["command"].startswith("sparseseg train")
    assert state["normalization"]["method"] == "percentile"
    image = iio.imread(DSB / "images" / f"{HELD_OUT}.png")[None]
    labels = Predictor.from_checkpoint(fluo_model, device="cpu").instances(image)
    truth = tifffile.imread(DSB / "labels" / f"{HELD_OUT}.tif")
    matched = matched_at(truth, labels, 0.5)
    f1 = 2 * matched / (truth.max() + labels.max())
    assert labels.max() >= 20 and f1 >= 0.25, (labels.max(), f1)


def test_checkpoints_load_safely_and_refuse_bad_files(tmp_path, data):
    model = model_from_checkpoint({"config": SMALL.to_dict(), "state_dict": UNet(SMALL).state_dict()})
    save_checkpoint(tmp_path / "m.pt", model, None, step=0)
    state = torch.load(tmp_path / "m.pt", weights_only=True)  # no arbitrary pickle needed
    assert state["halo"] == 28 and state["downsampling"] == 4
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a loadable sparseseg checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    rgb = UNetConfig(in_channels=3, depth=2, width=8)
    with pytest.raises(InputError, match="expects 1 input channels, the data has 3"):
        train(data.open(), tmp_path / "x.pt", rgb, TrainConfig(steps=1), init=tmp_path / "m.pt", progress=False)


def test_checkpoints_of_the_unnormalised_network_still_load(tmp_path):
    """Checkpoints from before batch norm (config without 'norm', convs with biases) load as norm-free nets."""
    legacy = UNet(UNetConfig(in_channels=3, depth=2, width=8, norm="none"))
    save_checkpoint(tmp_path / "legacy.pt", legacy, None, pixel_size_um=0.5)
    state = torch.load(tmp_path / "legacy.pt", weights_only=True)
    del state["config"]["norm"]
    torch.save(state, tmp_path / "legacy.pt")
    model = model_from_checkpoint(load_checkpoint(tmp_path / "legacy.pt")).eval()
    assert model.config.norm == "none"
    image = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(model(image), legacy.eval()(image), rtol=0, atol=0)


def test_train_starts_from_the_bundled_model_when_the_data_has_its_channels(fluo_training_folders, tmp_path, capsys):
    """No --init on RGB data: the first line says it fine-tunes the bundled model, whose weights it starts from;
    `--init none` trains from scratch; data with other channels (fluorescence) trains from scratch and says why."""
    from sparseseg.annotations.model import encode_dense
    from sparseseg.cli import main
    from sparseseg.model.registry import resolve_model

    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    shutil.copy(DSB / "images" / "he_65c8527c.png", tmp_path / "images")
    tifffile.imwrite(tmp_path / "annotations" / "he_65c8527c.tif",
                     encode_dense(tifffile.imread(DSB / "labels" / "he_65c8527c.tif")))
    common = ["--images", str(tmp_path / "images"), "--annotations", str(tmp_path / "annotations"), "--epochs", "0.05",
              "--no-calibrate", "-q", "--pixel-size", "0.5"]
    bundled = load_checkpoint(resolve_model("nuclei_he"))["state_dict"]

    def distance(out) -> float:
        """Relative L2 distance of a checkpoint's weights to the bundled model's (shared shapes)."""
        state = load_checkpoint(out)["state_dict"]
        keys = [k for k, v in bundled.items() if v.is_floating_point() and k in state and state[k].shape == v.shape]
        diff = torch.cat([(state[k] - bundled[k]).flatten() for k in keys])
        return float(diff.norm() / torch.cat([bundled[k].flatten() for k in keys]).norm())

    assert main(["train", *common, "--out", str(tmp_path / "tuned.pt")]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("starting from the bundled model nuclei_he")
    assert main(["train", *common, "--out", str(tmp_path / "scratch.pt"), "--init", "none"]) == 0
    assert "bundled" not in capsys.readouterr().out
    assert distance(tmp_path / "tuned.pt") < 0.2 < distance(tmp_path / "scratch.pt")
    assert main(["train", "--images", fluo_training_folders["images"], "--annotations",
                 fluo_training_folders["annotations"], "--epochs", "0.02", "--no-calibrate", "-q", "--out",
                 str(tmp_path / "fluo.pt")]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("training from scratch (no bundled model takes")
