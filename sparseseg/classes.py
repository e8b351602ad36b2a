"""Cell class names and their display colours, shared by the class pyramid, the tables and the GeoJSON export."""

from __future__ import annotations

import numpy as np

#: The per-object array in a label group with classes: (objects + 1, K) float32 mean class probabilities (row k:
#: object k), its ``classes`` attribute the class names.
OBJECT_CLASSES = "object_classes"

#: QuPath's colours for its standard classes (so typed cells look as QuPath users expect), by common names.
KNOWN_COLOURS = {
    "tumour": (200, 0, 0), "tumor": (200, 0, 0), "epithelial": (200, 0, 0), "neoplastic": (200, 0, 0),
    "stromal": (150, 200, 150), "stroma": (150, 200, 150), "spindle": (150, 200, 150),
    "lymphocyte": (160, 90, 160), "immune": (160, 90, 160), "inflammatory": (160, 90, 160),
    "necrosis": (50, 50, 50), "other": (255, 200, 0), "miscellaneous": (255, 200, 0),
}
#: Colours of other classes, in order (distinct from the known ones).
PALETTE = ((0, 160, 255), (255, 120, 0), (0, 200, 120), (240, 60, 200), (120, 120, 255), (180, 140, 0))


def most_probable_class(probabilities: np.ndarray) -> np.ndarray:
    """uint8 per label id: 1 + the most probable class of each object (rows of mean class probabilities, row k
    object k), 0 for row 0 (background)."""
    ids = np.zeros(len(probabilities), np.uint8)
    if len(probabilities) > 1:
        ids[1:] = probabilities[1:].argmax(1) + 1
    return ids


def class_colours(names: tuple[str, ...] | list[str]) -> list[tuple[int, int, int]]:
    """An RGB colour per class: QuPath's for the names it knows, then a fixed palette."""
    out, spare = [], iter(PALETTE * (1 + len(names) // len(PALETTE)))
    for name in names:
        out.append(KNOWN_COLOURS.get(name.strip().lower()) or next(spare))
    return out
