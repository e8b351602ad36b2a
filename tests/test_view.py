"""`sparseseg view`: neuroglancer on 127.0.0.1 with the image at its physical scale and the labels as segmentations."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request

import pytest
from conftest import SVS

from sparseseg.cli import main
from sparseseg.errors import InputError
from sparseseg.view import serve


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    out = tmp_path_factory.mktemp("view") / "cmu.ome.zarr"
    assert main(["ingest", str(SVS), str(out), "-q"]) == 0
    return out


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def test_view_serves_the_state_the_metadata_and_the_client(slide):
    served = serve(slide)
    try:
        state = json.loads(get(f"{served.base_url}/state.json"))
        image, tissue = state["layers"]
        assert image["type"] == "image" and "emitRGB" in image["shader"]
        assert image["source"] == f"zarr2://{served.base_url}/data/"
        assert tissue["type"] == "segmentation" and tissue["source"].endswith("/data/labels/tissue/")
        assert tissue["visible"] is False  # a tissue mask would tint the whole slide
        attrs = json.loads(get(f"{served.base_url}/data/.zattrs"))
        scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
        assert scale[-2:] == pytest.approx([0.499, 0.499])
        assert attrs["multiscales"][0]["axes"][-1]["unit"] == "micrometer"
        label_attrs = json.loads(get(f"{served.base_url}/data/labels/tissue/.zattrs"))
        label_scale = label_attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
        assert label_scale == pytest.approx(scale[-2:])
        assert b"<html" in get(served.url).lower()  # neuroglancer's client, from the wheel
        with pytest.raises(urllib.error.HTTPError):  # nothing outside the slide
            get(f"{served.base_url}/data/../../../etc/passwd")
        assert served.base_url.startswith("http://127.0.0.1:") and served.url.startswith("http://127.0.0.1:")
    finally:
        served.close()


def test_view_command_prints_the_url(slide):
    process = subprocess.Popen([sys.executable, "-m", "sparseseg.cli", "view", str(slide), "--no-browser"],
                               stdout=subprocess.PIPE, text=True)
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        url = lines[1].split("neuroglancer: ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and b"<html" in get(url).lower()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_view_refuses_a_label_level_with_missing_chunks_unless_told_to_fill_them(slide, tmp_path):
    damaged = tmp_path / "damaged.ome.zarr"
    shutil.copytree(slide, damaged)
    (damaged / "labels" / "tissue" / "1" / "0" / "0").unlink()  # a coarser level: neuroglancer reads them all
    with pytest.raises(InputError, match="label level 1 is missing 1 of"):
        serve(damaged)
    served = serve(damaged, fill_missing=True)
    try:
        assert json.loads(get(f"{served.base_url}/state.json"))["layers"][1]["name"] == "tissue"
    finally:
        served.close()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (apt-get install chromium)")
def test_a_browser_renders_the_slide_in_colour(slide):
    served = serve(slide)
    browser = subprocess.Popen(["chromium", "--headless=new", "--no-sandbox", "--use-angle=swiftshader",
                                "--enable-unsafe-swiftshader", "--window-size=800,600", served.url],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pixels = served.viewer.screenshot(size=[640, 480]).screenshot.image_pixels[..., :3].astype(float)
    finally:
        browser.kill()
        served.close()
    assert pixels.std() > 20  # tissue, not a blank canvas
    red, green, blue = pixels.reshape(-1, 3).mean(0)
    assert red > blue  # H&E in colour: pink/purple, not a grey or blue-tinted rendering
