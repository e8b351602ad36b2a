"""`sparseseg view`: look at a slide and its labels in neuroglancer, offline, from this machine only.

Two servers, both on 127.0.0.1: neuroglancer's own (from the ``neuroglancer`` wheel: its web client
and the viewer state), and a data server that serves the slide's OME-Zarr read-only under
``/data/`` (with CORS, nothing outside the slide) and the state as ``/state.json``. The state shows
the image at its physical scale (RGB slides in colour) and each label group as a segmentation layer.
"""

from __future__ import annotations

import json
import mimetypes
import threading
import urllib.parse
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import zarr

from sparseseg.errors import InputError
from sparseseg.io.labels import refuse_missing_chunks
from sparseseg.io.ngff import read_ome_attrs
from sparseseg.io.omezarr import open_omezarr_slide

#: Label groups shown as layers but switched off at first (they cover the whole image or are inputs).
HIDDEN_LABELS = ("tissue", "annotations", "foreground")
RGB_SHADER = ("void main() {\n  emitRGB(vec3(toNormalized(getDataValue(0)), toNormalized(getDataValue(1)), "
              "toNormalized(getDataValue(2))));\n}\n")


def label_groups(slide: Path) -> list[str]:
    """The label groups the slide registers in labels/.zattrs."""
    root = zarr.open_group(slide, mode="r")
    if "labels" not in root:
        return []
    return [str(n) for n in read_ome_attrs(root["labels"])[1].get("labels", [])]


def viewer_state(slide: Path, base_url: str, labels: list[str]) -> dict:
    """neuroglancer state: the image (colour for 8-bit RGB) and one segmentation layer per label group."""
    info = open_omezarr_slide(slide, fill_missing=True)  # metadata only
    zarr_format = zarr.open_group(slide, mode="r").metadata.zarr_format
    scheme = "zarr2" if zarr_format == 2 else "zarr3"
    image = {"type": "image", "name": slide.name, "source": f"{scheme}://{base_url}/data/"}
    if info.n_channels == 3 and str(info.dtype) == "uint8":
        image["shader"] = RGB_SHADER
    layers = [image] + [{"type": "segmentation", "name": name, "source": f"{scheme}://{base_url}/data/labels/{name}/",
                         "visible": name not in HIDDEN_LABELS} for name in labels]
    return {"layers": layers, "layout": "xy", "selectedLayer": {"layer": slide.name}}


@dataclass
class ViewerServer:
    server: ThreadingHTTPServer   # the data server
    slide: Path
    state: dict
    viewer: object = None         # the neuroglancer.Viewer

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        """The neuroglancer viewer (what a browser opens)."""
        return self.viewer.get_viewer_url()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    """GET only: the slide's files under /data/ (never anything outside it), and /state.json."""

    def __init__(self, *args, slide: Path, state: dict, **kwargs):
        self.slide, self.state = slide, state
        super().__init__(*args, **kwargs)

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format, *args) -> None:  # quiet: the terminal shows the URL, not every chunk
        pass

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/state.json":
            body = json.dumps(self.state).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path.startswith("/data/"):
            target = (self.slide / urllib.parse.unquote(path[len("/data/"):])).resolve()
            if self.slide.resolve() not in (target, *target.parents) or not target.is_file():
                self.send_error(404)
                return
            body = target.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", mimetypes.guess_type(target.name)[0] or "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_error(404)

    def do_POST(self) -> None:
        self.send_error(405)

    do_PUT = do_DELETE = do_POST


def serve(slide: str | Path, labels: list[str] | None = None, port: int = 0, fill_missing: bool = False
          ) -> ViewerServer:
    """Start serving ``slide`` (and ``labels``, default all its label groups) on 127.0.0.1 in a background thread.
    A label level with chunks missing on disk is refused unless ``fill_missing`` (shown as background)."""
    slide = Path(slide).absolute()
    open_omezarr_slide(slide, fill_missing=True)  # an OME-Zarr image, or one clear error
    available = label_groups(slide)
    chosen = available if labels is None else list(labels)
    missing = [name for name in chosen if name not in available]
    if missing:
        raise InputError(slide, f"has no label group {missing[0]!r} (label groups: {', '.join(available) or 'none'})")
    if not fill_missing:
        for name in chosen:
            for level, array in sorted(zarr.open_group(slide / "labels" / name, mode="r").arrays()):
                refuse_missing_chunks(slide / "labels" / name, array, level)
    import neuroglancer

    state: dict = {}
    handler = partial(_Handler, slide=slide, state=state)
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        raise InputError(None, f"--port {port}: cannot listen on 127.0.0.1 ({exc.strerror})") from None
    served = ViewerServer(server, slide, state)
    state.update(viewer_state(slide, served.base_url, chosen))
    threading.Thread(target=server.serve_forever, name="sparseseg-view", daemon=True).start()
    neuroglancer.set_server_bind_address("127.0.0.1")
    served.viewer = neuroglancer.Viewer()
    served.viewer.set_state(neuroglancer.ViewerState(state))
    return served
