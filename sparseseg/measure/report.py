"""A self-contained HTML report (+ PNGs) of a measured slide: open the file, no server needed."""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from sparseseg.measure.regions import Regions  # noqa: E402


OUTLINE_RGB = (0.0, 1.0, 0.2)


def display_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) pixels as an (H, W, 3) float image in [0, 1], stretched between the 0.5 / 99.5 percentiles."""
    rgb = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    rgb = rgb.transpose(1, 2, 0).astype(np.float32)
    low, high = np.percentile(rgb, [0.5, 99.5])
    return np.clip((rgb - low) / max(high - low, 1e-6), 0, 1)


def with_outlines(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A copy of ``rgb`` with each object's inner outline in green."""
    outlined = rgb.copy()
    outlined[find_boundaries(labels, mode="inner")] = OUTLINE_RGB
    return outlined


def thumbnail_with_labels(image_level: np.ndarray, labels_level: np.ndarray, out: Path) -> None:
    """RGB thumbnail (from the image's coarsest level) with object outlines in green."""
    plt.imsave(out, with_outlines(display_rgb(image_level), labels_level))


def densest_window(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], size: int) -> tuple[slice, slice]:
    """The ``size`` x ``size`` window (clipped to ``shape``) centred on the most crowded place of the
    object centroids: where a reader of the report can judge the outlines at full resolution."""
    height, width = min(size, shape[0]), min(size, shape[1])
    if len(rows) == 0:
        top, left = (shape[0] - height) // 2, (shape[1] - width) // 2
    else:
        step = max(size // 2, 1)
        counts, row_edges, col_edges = np.histogram2d(
            rows, cols, bins=(max(1, -(-shape[0] // step)), max(1, -(-shape[1] // step))),
            range=((0, max(shape[0], 1)), (0, max(shape[1], 1))))
        i, j = np.unravel_index(np.argmax(counts), counts.shape)
        centre_row, centre_col = (row_edges[i] + row_edges[i + 1]) / 2, (col_edges[j] + col_edges[j + 1]) / 2
        top = int(np.clip(round(centre_row - height / 2), 0, shape[0] - height))
        left = int(np.clip(round(centre_col - width / 2), 0, shape[1] - width))
    return slice(top, top + height), slice(left, left + width)


def overlay_crop(image_crop: np.ndarray, labels_crop: np.ndarray, out: Path, before: np.ndarray | None = None
                 ) -> None:
    """A full-resolution crop side by side: the image | the image with each object's outline; with ``before``
    (another segmentation of the crop), image | its outlines | these."""
    rgb = display_rgb(image_crop)
    gap = np.ones((rgb.shape[0], 8, 3), np.float32)
    panels = [rgb] + [part for labels in ([before] if before is not None else []) + [labels_crop]
                      for part in (gap, with_outlines(rgb, labels))]
    plt.imsave(out, np.concatenate(panels, axis=1))


def class_overlay_crop(image_crop: np.ndarray, labels_crop: np.ndarray, class_of: np.ndarray,
                       colours: list[tuple[int, int, int]], out: Path) -> None:
    """A full-resolution crop: the image | the image with each object's outline in its cell class' colour.
    ``class_of``: the class index of each label id."""
    rgb = display_rgb(image_crop)
    typed = rgb.copy()
    edges = find_boundaries(labels_crop, mode="inner")
    palette = np.asarray(colours, np.float32) / 255.0
    typed[edges] = palette[class_of[labels_crop[edges]]]
    gap = np.ones((rgb.shape[0], 8, 3), np.float32)
    plt.imsave(out, np.concatenate([rgb, gap, typed], axis=1))


def density_heatmap(table: pd.DataFrame, regions: Regions, out: Path, column: str = "density_per_mm2",
                    what: str = "cells") -> None:
    fig, ax = plt.subplots(figsize=(6, 5))
    if regions.grid_shape is not None:
        n_rows, n_cols = regions.grid_shape
        grid = np.full((n_rows, n_cols), np.nan)
        for region, density in zip(table["region"], table[column]):
            grid[(region - 1) // n_cols, (region - 1) % n_cols] = density
        im = ax.imshow(grid, cmap="magma")
        ax.set_title(f"{what} per mm\u00b2 of tissue ({regions.kind})")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        im = None
        ax.bar(table["name"].astype(str), table[column].fillna(0))
        ax.set_ylabel(f"{what} per mm\u00b2 of tissue")
        ax.tick_params(axis="x", rotation=60)
    if im is not None:
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def accuracy_curve(table: pd.DataFrame, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(table["threshold"], table["f1"], "o-", label="F1")
    ax.plot(table["threshold"], table["accuracy"], "s-", label="DSB AP")
    ax.plot(table["threshold"], table["panoptic_quality"], "^-", label="PQ")
    ax.set_xlabel("IoU threshold")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _compare_parts(summary: dict) -> list[str]:
    """The before/after section: the same crop outlined by two segmentations, with their object counts."""
    compare = summary.get("compare")
    if not compare:
        return []
    before, after = html.escape(compare["before"]), html.escape(compare["after"])
    return [f"<h2>Before / after</h2><p>image | {before} ({compare['before_objects_in_crop']} objects in this crop) | "
            f"{after} ({compare['after_objects_in_crop']} objects)</p>"
            '<img src="before_after.png" style="max-width:100%">']


def _class_parts(out_dir: Path, summary: dict) -> list[str]:
    """The cell-type sections: class composition, class-coloured overlay, one density map per class."""
    classes = summary.get("classes")
    if not classes:
        return []
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{v['cells']}</td><td>{(v['fraction'] or 0) * 100:.1f} %"
                   f"</td><td>{v['density_per_mm2'] or 0:.0f}</td></tr>" for name, v in classes.items())
    parts = ["<h2>Cell types</h2><table><tr><th>class</th><th>cells</th><th>fraction</th><th>per mm\u00b2 of tissue"
             f"</th></tr>{rows}</table>",
             '<p><a href="class_overlay.png">class_overlay.png</a>: image | outlines coloured by cell type</p>'
             '<img src="class_overlay.png" style="max-width:100%">']
    for name in classes:
        if (out_dir / f"density_{name}.png").exists():
            parts.append(f'<h3>{html.escape(name)} per mm\u00b2</h3><img src="density_{html.escape(name)}.png">')
    return parts


def write_report(out_dir: Path, slide: Path, summary: dict, region_table: pd.DataFrame,
                 accuracy: pd.DataFrame | None, accuracy_summary: dict | None,
                 accuracy_regions: pd.DataFrame | None) -> Path:
    """report.html next to the PNGs it embeds by relative path."""
    parts = [f"<h1>sparseseg report: {html.escape(slide.name)}</h1>",
             f"<pre>{html.escape(json.dumps(summary, indent=2))}</pre>",
             '<h2>Slide and segmentation</h2><img src="thumbnail.png" style="max-width:100%">',
             '<h2>Full resolution, most crowded place</h2><p><a href="overlay.png">overlay.png</a>: '
             'image | image + outlines</p><img src="overlay.png" style="max-width:100%">',
             '<h2>Density per region</h2><img src="density.png">',
             *_compare_parts(summary),
             *_class_parts(out_dir, summary),
             "<h2>Regions</h2>", region_table.to_html(index=False, float_format=lambda v: f"{v:.4g}")]
    if accuracy is not None:
        parts += ["<h2>Accuracy against ground truth</h2>",
                  f"<pre>{html.escape(json.dumps(accuracy_summary, indent=2))}</pre>",
                  '<img src="accuracy.png">', accuracy.to_html(index=False, float_format=lambda v: f"{v:.4f}")]
        if accuracy_regions is not None:
            parts += ["<h3>Per region (IoU 0.5)</h3>",
                      accuracy_regions.to_html(index=False, float_format=lambda v: f"{v:.4f}")]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>sparseseg report</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1100px} table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>" + "\n".join(parts) + "</body></html>")
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
