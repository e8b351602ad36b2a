"""Any channel: a one-channel nuclei model runs on the DAPI channel of a multiplex slide via --channels."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pyarrow.parquet as pq
import tifffile
import zarr
from conftest import DSB

from sparseseg.cli import main
from sparseseg.info import describe_slide

CHANNELS = ["CD3", "DAPI", "PanCK", "CD8"]


def test_a_nuclei_model_segments_the_dapi_channel_of_a_four_channel_slide(fluo_model, tmp_path, capsys):
    dapi = iio.imread(DSB / "images" / "fluo_0402a81e.png")
    others = [iio.imread(DSB / "images" / f"{n}.png")[:dapi.shape[0], :dapi.shape[1]] for n in ("fluo_9586e48a",
                                                                                                "fluo_ed8c31b0")]
    others = [np.pad(o, ((0, dapi.shape[0] - o.shape[0]), (0, dapi.shape[1] - o.shape[1]))) for o in others]
    noise = np.random.default_rng(0).integers(0, 60, dapi.shape).astype(np.uint8)
    stack = np.stack([others[0], dapi, others[1], noise])  # DAPI is the second channel, as in many panels
    tifffile.imwrite(tmp_path / "plex.ome.tif", stack, ome=True, photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": CHANNELS}, "PhysicalSizeX": 0.5,
                               "PhysicalSizeY": 0.5})
    tifffile.imwrite(tmp_path / "dapi.tif", dapi, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    plex, alone = tmp_path / "plex.ome.zarr", tmp_path / "dapi.ome.zarr"
    assert main(["ingest", str(tmp_path / "plex.ome.tif"), str(plex), "-q"]) == 0
    assert main(["ingest", str(tmp_path / "dapi.tif"), str(alone), "-q", "--tissue", "none"]) == 0
    assert describe_slide(plex)["channels"] == CHANNELS
    capsys.readouterr()
    assert main(["segment", str(plex), "--model", str(fluo_model), "-q"]) == 2  # 4 channels for a 1-channel model
    assert "--channels" in capsys.readouterr().err
    assert main(["segment", str(plex), "--model", str(fluo_model), "--channels", "DAPI", "-q"]) == 0
    assert main(["segment", str(alone), "--model", str(fluo_model), "-q"]) == 0
    on_plex = zarr.open_group(plex, mode="r")["labels/cells/0"][...]
    np.testing.assert_array_equal(on_plex, zarr.open_group(alone, mode="r")["labels/cells/0"][...])
    assert on_plex.max() > 50
    assert main(["measure", str(plex), "--out", str(tmp_path / "m"), "-q", "--no-report"]) == 0
    columns = pq.read_schema(tmp_path / "m" / "objects.parquet").names
    assert [c for c in columns if c.startswith("mean_")] == [f"mean_{c}" for c in CHANNELS]
    assert main(["measure", str(plex), "--out", str(tmp_path / "m2"), "--channels", "DAPI,CD8", "-q",
                 "--no-report"]) == 0
    table = pq.read_table(tmp_path / "m2" / "objects.parquet").to_pandas()
    assert [c for c in table.columns if c.startswith("mean_")] == ["mean_DAPI", "mean_CD8"]
    full = pq.read_table(tmp_path / "m" / "objects.parquet").to_pandas()
    np.testing.assert_allclose(table["mean_DAPI"], full["mean_DAPI"])
