"""The work folder's records: what each block found, and each candidate's outcome (written atomically).

A block record is also the sign that the block is done: ``--resume`` and a retried task skip it.
Objects travel between blocks and the driver as ``GlobalObjects`` (global model-grid pixel lists),
identified by ``object_keys``: anchor, size and a hash of the pixels, so "the owner kept exactly
this object" is a comparison of keys, never a prediction of what the owner would have done.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparseseg.files.atomic import staged_file

#: The layout of the work folder's records; part of the resume fingerprint, so a resume across a change
#: of layout starts afresh instead of misreading old records.
RECORD_FORMAT = 6

OBJECT_ARRAYS = ("anchors", "starts", "rows", "cols", "trimmed", "class_sums")
#: Class probabilities are summed over an object's pixels as integers in units of 1 / CLASS_SCALE: the sums of
#: bitwise-equal fields are then equal whatever the order the pixels are added in (tiled == whole per object).
CLASS_SCALE = 2**16


def class_sums(probabilities: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(K,) int64 sums of the class probabilities (K, H, W) over the pixels (rows, cols), quantised to
    1 / CLASS_SCALE: exact integers, so the sum does not depend on where or in what order it is taken."""
    if not len(probabilities):
        return np.zeros(0, np.int64)
    return np.rint(probabilities[:, rows, cols].astype(np.float64) * CLASS_SCALE).astype(np.int64).sum(1)


def pixel_hash(rows: np.ndarray, cols: np.ndarray, width: int) -> int:
    """A 63-bit hash of a pixel set (global model-grid rows and columns, in raster order)."""
    flat = np.ascontiguousarray(np.asarray(rows, np.int64) * width + np.asarray(cols, np.int64))
    return int.from_bytes(hashlib.blake2b(flat.tobytes(), digest_size=8).digest(), "little") >> 1


@dataclass
class GlobalObjects:
    """Whole objects as global model-grid pixel lists (raster order): per object its anchor (top-left of its
    box), its pixels ``rows``/``cols``, ``trimmed``: the pixels of its cluster cut away as smaller pieces, and
    ``class_sums`` (n, K): its class probabilities summed over its pixels (``class_sums``; K = 0 without classes)."""

    anchors: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    starts: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cols: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    trimmed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    class_sums: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))

    def __len__(self) -> int:
        return len(self.anchors)

    def pixels(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.rows[self.starts[k]: self.starts[k + 1]], self.cols[self.starts[k]: self.starts[k + 1]]

    def keys(self, width: int) -> np.ndarray:
        """(n, 4) int64 object keys: anchor y, anchor x, size, pixel hash (``width``: the model grid's)."""
        return np.array([[*self.anchors[k], self.starts[k + 1] - self.starts[k], pixel_hash(*self.pixels(k), width)]
                         for k in range(len(self))], np.int64).reshape(-1, 4)

    @classmethod
    def build(cls, items: list[tuple[np.ndarray, np.ndarray, int]], sums: list[np.ndarray] | None = None
              ) -> GlobalObjects:
        """From (rows, cols, trimmed pixels) per object, pixels in raster order, and its class sums if any."""
        if not items:
            return cls()
        n_classes = len(sums[0]) if sums else 0
        return cls(class_sums=np.array(sums, np.int64).reshape(len(items), n_classes) if sums
                   else np.zeros((len(items), 0), np.int64),
                   anchors=np.array([[r.min(), c.min()] for r, c, _ in items], np.int64).reshape(-1, 2),
                   starts=np.concatenate([[0], np.cumsum([len(r) for r, _, _ in items])]).astype(np.int64),
                   rows=np.concatenate([r for r, _, _ in items]).astype(np.int64),
                   cols=np.concatenate([c for _, c, _ in items]).astype(np.int64),
                   trimmed=np.array([t for *_, t in items], np.int64))

    @classmethod
    def concat(cls, parts: list[GlobalObjects]) -> GlobalObjects:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls()
        offsets = np.cumsum([0] + [len(p.rows) for p in parts[:-1]])
        return cls(anchors=np.concatenate([p.anchors for p in parts]),
                   starts=np.concatenate([[0]] + [p.starts[1:] + o for p, o in zip(parts, offsets)]).astype(np.int64),
                   rows=np.concatenate([p.rows for p in parts]), cols=np.concatenate([p.cols for p in parts]),
                   trimmed=np.concatenate([p.trimmed for p in parts]),
                   class_sums=np.concatenate([p.class_sums for p in parts]))

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_{k}": getattr(self, k) for k in OBJECT_ARRAYS}

    @classmethod
    def from_arrays(cls, data, prefix: str) -> GlobalObjects:
        return cls(**{k: np.asarray(data[f"{prefix}_{k}"]) for k in OBJECT_ARRAYS})


@dataclass
class BlockRecord:
    """What a block found: its kept objects (``labels`` on its context, ids 1..count in anchor order, and their
    ``kept_keys``), exact objects another block owns (``handed_on``: the owner may not have seen them whole),
    ``candidates``: for each cluster this block could not compute exactly, its seed pixels in the core, and
    what the grown windows made of them: ``grown`` (exact objects holding those seeds, for their owners) and
    ``too_large`` (boxes of clusters beyond the cap)."""

    count: int
    labels: np.ndarray
    handed_on: GlobalObjects
    candidates: GlobalObjects   # seed pixel sets (anchors: their first pixel; trimmed unused)
    kept_keys: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    kept_classes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))  # class sums of kept objects
    dropped: int = 0            # candidates dropped (policy "drop")
    trimmed_objects: int = 0    # kept objects that lost smaller pieces of their cluster
    trimmed_pixels: int = 0     # the pixels they lost
    tiles: int = 0              # network tiles this block ran (not read from cached outputs)
    grown: GlobalObjects = field(default_factory=GlobalObjects)
    too_large: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    large_work: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))  # windows, pixels, tiles
    doubt: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))  # the core's doubt sums per cell

    @classmethod
    def empty(cls) -> BlockRecord:
        return cls(0, np.zeros((0, 0), np.uint32), GlobalObjects(), GlobalObjects())

    def add_outcomes(self, outcomes: list[CandidateOutcome]) -> None:
        """Take in what the grown windows found for this block's candidates."""
        self.grown = GlobalObjects.concat([self.grown] + [o.objects for o in outcomes])
        self.too_large = np.concatenate([self.too_large] + [o.too_large for o in outcomes]).astype(np.int64)
        self.large_work = self.large_work + np.array([[o.windows, o.pixels, o.tiles] for o in outcomes],
                                                     np.int64).reshape(-1, 3).sum(0)

    def summary(self) -> BlockRecord:
        """The record without its label array, kept keys and candidate pixels: what travels back to the driver."""
        return BlockRecord(self.count, np.zeros((0, 0), np.uint32), self.handed_on, GlobalObjects(),
                           np.zeros((0, 4), np.int64), self.kept_classes, self.dropped, self.trimmed_objects, self.trimmed_pixels,
                           self.tiles, self.grown, self.too_large, self.large_work)


def block_record_path(work: str | Path, name: str) -> Path:
    return Path(work) / "blocks" / f"{name}.npz"


def write_block_record(path: Path, record: BlockRecord) -> None:
    """Atomically: the record is also the sign that the block is done."""
    with staged_file(path) as tmp:
        with open(tmp, "wb") as out:
            np.savez_compressed(out, count=np.int64(record.count), labels=record.labels, kept_keys=record.kept_keys,
                                kept_classes=record.kept_classes,
                                dropped=np.int64(record.dropped),
                                trimmed=np.array([record.trimmed_objects, record.trimmed_pixels]), tiles=np.int64(record.tiles),
                                too_large=record.too_large, large_work=record.large_work, doubt=record.doubt,
                                **record.grown.to_arrays("grown"),
                                **record.handed_on.to_arrays("handed"), **record.candidates.to_arrays("candidates"))


def read_block_record(path: Path, with_labels: bool = False) -> BlockRecord | None:
    """The record at ``path`` (None when the block is not done); the label array only on request."""
    if not path.exists():
        return None
    with np.load(path) as data:
        return BlockRecord(count=int(data["count"]),
                           labels=data["labels"] if with_labels else np.zeros((0, 0), np.uint32),
                           handed_on=GlobalObjects.from_arrays(data, "handed"),
                           candidates=GlobalObjects.from_arrays(data, "candidates"),
                           kept_keys=data["kept_keys"], kept_classes=data["kept_classes"], dropped=int(data["dropped"]),
                           trimmed_objects=int(data["trimmed"][0]), trimmed_pixels=int(data["trimmed"][1]),
                           tiles=int(data["tiles"]), grown=GlobalObjects.from_arrays(data, "grown"),
                           too_large=data["too_large"], large_work=data["large_work"])


def read_block_doubt(path: Path) -> np.ndarray:
    """The doubt sums of a finished block's core, (channels, cells, cells); empty for a skipped block."""
    with np.load(path) as data:
        return data["doubt"]


def read_kept_keys(path: Path) -> np.ndarray:
    """The keys of the objects a finished block kept (only that array is read)."""
    with np.load(path) as data:
        return data["kept_keys"]


@dataclass
class CandidateOutcome:
    """What the grown windows found for one candidate: the exact objects holding its seeds, and the
    boxes of clusters that grew beyond the cap (left out)."""

    objects: GlobalObjects
    too_large: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    windows: int = 0   # windows computed
    pixels: int = 0    # model-grid pixels labelled over all windows
    tiles: int = 0     # network tiles run


def write_outcome(path: Path, outcome: CandidateOutcome) -> None:
    with staged_file(path) as tmp:
        with open(tmp, "wb") as out:
            np.savez_compressed(out, too_large=outcome.too_large, windows=outcome.windows, pixels=outcome.pixels,
                                tiles=outcome.tiles,
                                **outcome.objects.to_arrays("object"))


def read_outcome(path: Path) -> CandidateOutcome | None:
    if not path.exists():
        return None
    with np.load(path) as data:
        return CandidateOutcome(GlobalObjects.from_arrays(data, "object"), data["too_large"],
                                int(data["windows"]), int(data["pixels"]), int(data["tiles"]))
