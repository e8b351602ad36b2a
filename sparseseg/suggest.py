"""Where to annotate next: rank fixed-size regions of slides by how much annotating them should help the model.

Candidates are squares of ``size_um`` on a grid over each slide, mostly tissue and away from what is
already annotated. Each is scored, on Dask workers (one task per row of candidates), from the
model's own doubt in that square:

- *disagreement*: the distance and flow of the image against those of its mirror image (mapped back),
  mean absolute difference over the pixels either calls foreground (test-time augmentation);
- *flow error*: the mean squared difference between the predicted flow and the flow of the objects it
  makes (an object the flow does not explain);
- *near threshold*: the fraction of pixels whose distance lies within 0.5 px of the foreground threshold;
- *class doubt*: 1 - the most probable class, over the foreground (models with a class head).

With ``from_segmentation`` (``--from-segmentation NAME``) the three sums-based components come instead from
the doubt map a `segment` run saved beside ``labels/NAME`` (``instances.doubt``: the same definitions,
summed per cell of the whole-slide run): no network runs; the disagreement is that of the run's 8
test-time augmentation views (the standard deviations of distance and flow over them, summed) when it ran
with ``--tta``, and left out of the score otherwise.

The score is the mean percentile rank of the components over all candidates of the run. Diversity: the
best-scoring candidates are clustered by a descriptor (mean normalised colour, foreground fraction, class
mix) and the best of each cluster is proposed, so ten proposals are not ten copies of one tissue.
Outputs (``out``): ``<slide>.geojson`` with QuPath annotations of class "Annotate next" (rank and score as
measurements), thumbnails and ``index.html``. `annotations import` of that file with the objects drawn
inside makes every pixel of a proposal known: class "Annotate next" means background under the drawn
objects (docs/annotations.md).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import zarr
from scipy import ndimage as ndi
from scipy.cluster.vq import kmeans2
from scipy.stats import rankdata

from sparseseg.cluster import dask_client, workers_spec
from sparseseg.errors import InputError
from sparseseg.files.atomic import staged_directory
from sparseseg.io.names import slide_stem
from sparseseg.infer.predictor import Predictor
from sparseseg.instances.doubt import (OBJECTS, SUM_CHANNELS, UNCERTAINTY, class_mix, doubt_components, doubt_sums,
                                       foreground_fraction)
from sparseseg.instances.dynamics import flow_errors, flows_to_labels
from sparseseg.io.labels import check_label_name, coarse_label_level
from sparseseg.io.omezarr import open_omezarr_slide
from sparseseg.model.checkpoint import load_checkpoint
from sparseseg.model.grid import grid_scale
from sparseseg.model.normalize import Normalization, slide_normalization

CLASS_NAME = "Annotate next"
COLOUR = [255, 170, 0]
COMPONENTS = ("disagreement", "flow_error", "near_threshold", "class_doubt")
MARKER = ".sparseseg-suggest"  # in every output folder: --overwrite replaces only folders that hold it


@dataclass(frozen=True)
class SuggestOptions:
    regions: int = 10            # proposals per run (over all slides)
    size_um: float = 100.0       # edge of each proposed square
    min_tissue: float = 0.5      # fraction of a candidate that must be tissue (where labels/tissue exists)
    workers: int | None = None
    scheduler: str | None = None
    device: str | None = None
    overwrite: bool = False
    from_segmentation: str | None = None   # a label group whose saved doubt map is read instead of the network

    def __post_init__(self):
        if self.from_segmentation is not None:
            try:
                check_label_name(self.from_segmentation, reserved=False)
            except InputError:
                raise InputError(None, "--from-segmentation must name a label group (one folder name of letters, "
                                       f"digits, '_', '.' or '-'), got {self.from_segmentation!r}") from None
        if self.regions < 1:
            raise InputError(None, f"--regions must be at least 1, got {self.regions}")
        if not (math.isfinite(self.size_um) and self.size_um > 0):
            raise InputError(None, f"--size must be a positive number of um, got {self.size_um}")
        if not 0 <= self.min_tissue <= 1:
            raise InputError(None, f"--min-tissue must be between 0 and 1, got {self.min_tissue}")


@dataclass(frozen=True)
class CandidateRow:
    """One Dask task: the candidates of one row of one slide (level-0 windows, y0, x0 and the edge)."""

    slide: str
    checkpoint: str
    origins: tuple[tuple[int, int], ...]
    edge: int
    scale: float
    normalization: Normalization
    device: str | None


@dataclass
class Candidate:
    slide: str
    y: int
    x: int
    edge: int
    components: dict[str, float]
    descriptor: np.ndarray
    objects: int
    score: float = 0.0
    rank: int = 0


def expand_slides(paths: list[Path]) -> list[Path]:
    """The slides named, a folder holding OME-Zarr slides standing for all of them (an archive)."""
    slides = []
    for path in paths:
        path = Path(path)
        if path.is_dir() and not (path / ".zattrs").exists() and not (path / "zarr.json").exists():
            found = sorted(p for p in path.iterdir() if p.name.endswith(".ome.zarr"))
            if not found:
                raise InputError(path, "is a folder without OME-Zarr slides (*.ome.zarr)")
            slides += found
        else:
            slides.append(path)
    return slides


def _known_fraction(slide: Path, name: str, windows: list[tuple[int, int, int]]) -> np.ndarray | None:
    """Per window (y, x, edge), the fraction of pixels of label group ``name`` that are non-zero (None if absent)."""
    group_path = slide / "labels" / name
    if not group_path.is_dir():
        return None
    coarse, factor = coarse_label_level(zarr.open_group(group_path, mode="r"), 2048)
    out = np.zeros(len(windows))
    for i, (y, x, edge) in enumerate(windows):
        part = coarse[y // factor:-(-(y + edge) // factor), x // factor:-(-(x + edge) // factor)]
        out[i] = float((part > 0).mean()) if part.size else 0.0
    return out


def candidate_grid(slide: Path, shape: tuple[int, int], edge: int, min_tissue: float) -> list[tuple[int, int]]:
    """Level-0 origins of the squares on a grid that hold enough tissue and no annotation yet."""
    origins = [(y, x) for y in range(0, shape[0] - edge + 1, edge) for x in range(0, shape[1] - edge + 1, edge)]
    windows = [(y, x, edge) for y, x in origins]
    keep = np.ones(len(origins), bool)
    tissue = _known_fraction(slide, "tissue", windows)
    if tissue is not None:
        keep &= tissue >= min_tissue
    annotated = _known_fraction(slide, "annotations", windows)
    if annotated is not None:
        keep &= annotated == 0
    return [o for o, k in zip(origins, keep) if k]


def candidate_rows(origins: list[tuple[int, int]]) -> list[tuple[tuple[int, int], ...]]:
    """The candidates grouped by row, top to bottom (a row is one Dask task)."""
    return [tuple(o for o in origins if o[0] == y) for y in sorted({o[0] for o in origins})]


@lru_cache(maxsize=2)
def _predictor(checkpoint: str, device: str | None) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, device=device)


def _fields_and_mirror(predictor: Predictor, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fields of a canvas and of its left-right mirror image mapped back (x flow negated)."""
    plain = predictor.forward(canvas)
    mirror = predictor.forward(np.ascontiguousarray(canvas[:, :, ::-1]))[:, :, ::-1].copy()
    mirror[2] = -mirror[2]
    return plain, mirror


def region_descriptor(colour: np.ndarray, total: np.ndarray) -> np.ndarray:
    """What a region looks like, for diversity: mean normalised colour, foreground fraction, class mix."""
    return np.concatenate([colour, [foreground_fraction(total)], class_mix(total)]).astype(np.float64)


def score_row(row: CandidateRow) -> list[tuple[dict[str, float], np.ndarray, int]]:
    """(components, descriptor, objects) of each candidate of the row, from the network (and its mirror pass)."""
    predictor = _predictor(row.checkpoint, row.device)
    level0 = open_omezarr_slide(Path(row.slide), fill_missing=True).levels[0]
    halo = int(math.ceil(predictor.halo / row.scale))
    factor = predictor.downsampling
    threshold = predictor.params.distance_threshold
    out = []
    for y, x in row.origins:
        y0, x0 = max(0, y - halo), max(0, x - halo)
        y1, x1 = min(level0.shape[1], y + row.edge + halo), min(level0.shape[2], x + row.edge + halo)
        pixels = row.normalization.apply(np.asarray(level0[:, y0:y1, x0:x1].compute(scheduler="synchronous")))
        if row.scale != 1.0:
            pixels = ndi.zoom(pixels, (1, row.scale, row.scale), order=1)
        h, w = pixels.shape[1:]
        canvas = np.zeros((pixels.shape[0], -(-h // factor) * factor, -(-w // factor) * factor), np.float32)
        canvas[:, :h, :w] = pixels
        plain, mirror = _fields_and_mirror(predictor, canvas)
        top, left = round((y - y0) * row.scale), round((x - x0) * row.scale)
        size = max(1, round(row.edge * row.scale))
        core = (slice(None), slice(top, top + size), slice(left, left + size))
        plain, mirror, image = plain[core], mirror[core], canvas[core]
        distance, flow = plain[0], plain[1:3]
        foreground = (distance > threshold) | (mirror[0] > threshold)
        difference = np.abs(plain[:3] - mirror[:3]).sum(0)
        labels = flows_to_labels(distance, flow, predictor.params)
        total = doubt_sums(distance, labels, flow_errors(labels, flow), plain[3:], threshold,
                           max(distance.shape)).sum((1, 2), dtype=np.float64)  # one cell: the whole square
        components = {"disagreement": float(difference[foreground].mean()) if foreground.any() else 0.0,
                      **doubt_components(total)}
        out.append((components, region_descriptor(image.reshape(image.shape[0], -1).mean(1), total),
                    int(total[OBJECTS])))
    return out


def score_in_process(slide: Path, checkpoint: Path, origins: list[tuple[int, int]], edge: int, scale: float,
                     normalization: Normalization, device: str | None = None
                     ) -> list[tuple[dict[str, float], np.ndarray, int]]:
    """``score_row`` over every row of ``origins`` in this process (no Dask): to compare with the saved map."""
    return [scored for row in candidate_rows(origins) for scored in
            score_row(CandidateRow(str(slide), str(checkpoint), row, edge, scale, normalization, device))]


def saved_doubt(slide: Path, name: str) -> tuple[zarr.Array, dict]:
    """The doubt map a `segment` run saved in ``labels/<name>`` (``instances.doubt``) and its attributes."""
    group_path = slide / "labels" / name
    if not group_path.is_dir():
        raise InputError(slide, f"has no labels/{name}: run `sparseseg segment --name {name}` on it first")
    group = zarr.open_group(group_path, mode="r")
    if UNCERTAINTY not in group.array_keys():
        raise InputError(group_path, "holds no saved uncertainty (an older sparseseg or another tool wrote it): "
                                     "segment the slide again, or leave out --from-segmentation")
    array = group[UNCERTAINTY]
    attrs = dict(array.attrs.get("sparseseg", {}))
    if attrs.get("channels", [])[:len(SUM_CHANNELS)] != list(SUM_CHANNELS) or array.shape[0] != len(attrs["channels"]):
        raise InputError(group_path / UNCERTAINTY, f"has channels {attrs.get('channels')}, not sparseseg's doubt map")
    return array, attrs


def _colour_level(levels, edge: int) -> tuple[object, int]:
    """The coarsest pyramid level on which a candidate is still at least 16 px wide, and its downsampling."""
    chosen = (levels[0], 1)
    for level in levels[1:]:
        factor = round(levels[0].shape[2] / level.shape[2])
        if edge // factor >= 16:
            chosen = (level, factor)
    return chosen


def score_saved_rows(slide: Path, name: str, origins: list[tuple[int, int]], edge: int,
                     normalization: Normalization) -> list[tuple[dict[str, float], np.ndarray, int] | None]:
    """(components, descriptor, objects) of each candidate from a `segment` run's saved doubt map: no network.
    Row by row of candidates, a band of the map and of a coarse pyramid level at a time. None: a candidate
    the run did not look at (a skipped block)."""
    array, attrs = saved_doubt(slide, name)
    cell, scale = int(attrs["cell"]), float(attrs["scale"])
    level, factor = _colour_level(open_omezarr_slide(slide, fill_missing=True).levels, edge)

    def cells(start: int) -> tuple[int, np.ndarray]:
        """The first cell under [start, start + edge) of level 0 and each cell's share inside it (partial
        cells at the square's edges count by the part of them it covers)."""
        low, high = start * scale / cell, (start + edge) * scale / cell
        first = int(math.floor(low))
        bounds = np.arange(first, int(math.ceil(high)) + 1, dtype=np.float64)
        return first, np.clip(np.minimum(bounds[1:], high) - np.maximum(bounds[:-1], low), 0, 1)

    out = []
    for row in candidate_rows(origins):
        y = row[0][0]
        cy0, wy = cells(y)
        band = np.asarray(array[:, cy0:cy0 + len(wy), :], np.float64)
        wy = wy[:band.shape[1]]
        colours = np.asarray(level[:, y // factor: -(-(y + edge) // factor), :].compute(scheduler="synchronous"),
                             np.float64)
        for _, x in row:
            cx0, wx = cells(x)
            part = band[:, :, cx0:cx0 + len(wx)]
            total = np.einsum("cyx,y,x->c", part, wy, wx[:part.shape[2]])
            if total[0] == 0:
                out.append(None)
                continue
            colour = normalization.apply(colours[:, :, x // factor: -(-(x + edge) // factor)].reshape(
                colours.shape[0], -1).mean(1))
            out.append((doubt_components(total, bool(attrs.get("tta"))), region_descriptor(colour, total),
                        int(total[OBJECTS])))
    return out


def rank_candidates(candidates: list[Candidate]) -> None:
    """score = the mean percentile rank of the components over all candidates (higher: more doubt); the
    components every candidate has (a saved segmentation has no mirror-image disagreement)."""
    if not candidates:
        return
    keys = [k for k in COMPONENTS if all(k in c.components for c in candidates)]
    ranks = [rankdata([c.components[k] for c in candidates]) / len(candidates) for k in keys]
    for i, c in enumerate(candidates):
        c.score = float(np.mean([r[i] for r in ranks]))


def diverse_best(candidates: list[Candidate], n: int, seed: int = 0) -> list[Candidate]:
    """The best-scoring candidate of each of ``n`` clusters of the top candidates' descriptors, best first;
    topped up with the next best where clusters are fewer than ``n``."""
    order = sorted(candidates, key=lambda c: -c.score)
    pool = order[:max(5 * n, 50)]
    if len(pool) <= n:
        chosen = pool
    else:
        features = np.stack([c.descriptor for c in pool])
        spread = features.std(0)
        features = (features - features.mean(0)) / np.where(spread > 0, spread, 1)
        _, assignment = kmeans2(features, n, minit="++", seed=seed)
        chosen = []
        for cluster in range(n):
            members = [c for c, a in zip(pool, assignment) if a == cluster]
            if members:
                chosen.append(max(members, key=lambda c: c.score))
        chosen += [c for c in pool if c not in chosen][:n - len(chosen)]
    chosen = sorted(chosen, key=lambda c: -c.score)
    for rank, c in enumerate(chosen, 1):
        c.rank = rank
    return chosen


def proposals_geojson(proposals: list[Candidate], pixel_size_um: float) -> dict:
    """QuPath annotations (level-0 pixel coordinates), class "Annotate next", rank and score as measurements."""
    features = []
    for c in proposals:
        ring = [[c.x, c.y], [c.x + c.edge, c.y], [c.x + c.edge, c.y + c.edge], [c.x, c.y + c.edge], [c.x, c.y]]
        measurements = {"rank": c.rank, "score": round(c.score, 4),
                        **{k: round(v, 4) for k, v in c.components.items()}, "objects": c.objects}
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "annotation", "name": f"{CLASS_NAME} #{c.rank}",
                                        "classification": {"name": CLASS_NAME, "color": COLOUR},
                                        "measurements": measurements,
                                        "size_um": round(c.edge * pixel_size_um, 2)}})
    return {"type": "FeatureCollection", "features": features}


def _thumbnail(level0, c: Candidate) -> np.ndarray:
    """The proposal's pixels as an 8-bit image (1st-99.5th percentile stretch)."""
    crop = np.asarray(level0[:, c.y:c.y + c.edge, c.x:c.x + c.edge].compute(scheduler="synchronous"))
    crop = crop.astype(np.float32)
    low, high = np.percentile(crop, 1), np.percentile(crop, 99.5)
    crop = np.clip((crop - low) / max(high - low, 1e-6) * 255, 0, 255).astype(np.uint8)
    return crop[0] if crop.shape[0] == 1 else np.moveaxis(crop[:3], 0, -1)


def _index_html(rows: list[tuple[Candidate, str]]) -> str:
    cells = "\n".join(
        f"<figure><img src='{html.escape(src)}' width='192'><figcaption>#{c.rank} {html.escape(Path(c.slide).name)}"
        f" y {c.y} x {c.x}<br>score {c.score:.3f}: " + ", ".join(f"{k} {v:.3g}" for k, v in c.components.items())
        + "</figcaption></figure>" for c, src in rows)
    return ("<!doctype html><meta charset='utf-8'><title>sparseseg: annotate next</title>"
            "<style>body{font-family:sans-serif}figure{display:inline-block;width:200px;margin:8px;vertical-align:top;"
            "font-size:12px}</style><h1>Annotate next</h1><p>Regions where annotating should help the model most, "
            "best first (import each slide's GeoJSON into QuPath, draw every cell inside the squares, export, then "
            "<code>sparseseg annotations import</code>).</p>" + cells)


def suggest(slides: list[Path], model: Path | None, out: Path, options: SuggestOptions = SuggestOptions(),
            progress: bool = False) -> list[Candidate]:
    """Rank candidate regions of ``slides`` for ``model`` and write the proposals to ``out``; returns them.
    With ``options.from_segmentation`` the doubt a `segment` run saved is read instead (no model, no network)."""
    out = Path(out)
    if out.exists() and not options.overwrite:  # checked before any work; the write itself is staged
        raise InputError(out, "already exists (use --overwrite to replace it)")
    if out.exists() and not (out / MARKER).is_file():
        raise InputError(out, "is not a folder `sparseseg suggest` wrote; --overwrite replaces only those")
    if not out.absolute().parent.is_dir():
        raise InputError(out, f"folder {out.absolute().parent} does not exist")
    slides = expand_slides(slides)
    saved = options.from_segmentation
    model_um = None if saved else load_checkpoint(model).get("pixel_size_um")
    rows, meta, candidates = [], {}, []
    for slide in slides:
        info = open_omezarr_slide(slide)
        if info.pixel_size_um is None:
            raise InputError(slide, "records no pixel size; re-ingest it with --pixel-size UM")
        pixel_um = info.pixel_size_um[0]
        edge = max(8, round(options.size_um / pixel_um))
        shape = tuple(info.shape[1:])
        if edge > min(shape):
            raise InputError(slide, f"is smaller than one --size {options.size_um:g} um square ({edge} px)")
        normalization = slide_normalization(info.levels, source=slide)
        origins = candidate_grid(slide, shape, edge, options.min_tissue)
        meta[str(slide)] = pixel_um
        if saved:
            candidates += [Candidate(str(slide), y, x, edge, *scored) for (y, x), scored in
                           zip(origins, score_saved_rows(slide, saved, origins, edge, normalization))
                           if scored is not None]
            continue
        rows += [CandidateRow(str(slide), str(Path(model).resolve()), row, edge, grid_scale(pixel_um, model_um),
                              normalization, options.device) for row in candidate_rows(origins)]
    if not rows and not candidates:
        raise InputError(slides[0], "has no candidate region: no square holds enough tissue outside the annotations"
                         + (f" that labels/{saved} covers" if saved else ""))
    if rows:
        with dask_client(workers_spec(options.workers, options.scheduler, default_workers=2)) as client:
            results = client.gather(client.map(score_row, rows, pure=False))
        candidates = [Candidate(row.slide, y, x, row.edge, components, descriptor, objects)
                      for row, scored in zip(rows, results) for (y, x), (components, descriptor, objects)
                      in zip(row.origins, scored)]
    rank_candidates(candidates)
    proposals = diverse_best(candidates, options.regions)
    with staged_directory(out, overwrite=options.overwrite) as tmp:
        (tmp / "thumbnails").mkdir(parents=True)
        (tmp / MARKER).write_text("written by sparseseg suggest\n")
        thumbs = []
        for slide in slides:
            mine = [c for c in proposals if c.slide == str(slide)]
            stem = slide_stem(slide)  # dots inside a name stay: two slides never share an output
            level0 = open_omezarr_slide(slide, fill_missing=True).levels[0]
            (tmp / f"{stem}.geojson").write_text(json.dumps(proposals_geojson(mine, meta[str(slide)]), indent=1))
            for c in mine:
                name = f"thumbnails/{stem}_{c.rank:03d}.png"
                iio.imwrite(tmp / name, _thumbnail(level0, c))
                thumbs.append((c, name))
        (tmp / "index.html").write_text(_index_html(sorted(thumbs, key=lambda t: t[0].rank)))
    return proposals
