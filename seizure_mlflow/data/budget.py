"""Nested subsets of a training set: the cells of an annotation-budget grid (frames per video x training videos).

The training videos are put in one seeded order, and each video's frames in one order that spreads any prefix
evenly in time (:func:`spread_order`). A cell with ``k`` videos and a share ``f`` of frames holds the first ``k``
videos and, of each, the first ``round(f x frames)`` frames of that order; so every smaller cell is contained in
each larger one of its row and column, and a difference between cells is about the amount alone. Described
outside this machine by counts and digests only.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from seizure_mlflow.data.folds import Pool, video_set_digest
from seizure_mlflow.errors import UserError


def spread_order(n: int) -> list[int]:
    """Positions ``0..n-1`` in an order whose every prefix is spread evenly over the range: the middle first, then
    the middles of the halves, of the quarters, ... (van der Corput's sequence), each taken once."""
    order, seen, k = [], set(), 1
    while len(order) < n:
        x, denominator, value = k, 1.0, 0.0
        while x:
            denominator *= 2
            value += (x % 2) / denominator
            x //= 2
        position = min(n - 1, int(value * n))
        if position not in seen:
            seen.add(position)
            order.append(position)
        k += 1
        if k > 64 * max(n, 1):  # every position is reached long before; a guard, not a path
            order += [p for p in range(n) if p not in seen]
    return order


@dataclass(frozen=True)
class Cell:
    """``videos`` training videos, a share ``frames`` of each one's frames."""

    videos: int
    frames: float

    @property
    def label(self) -> str:
        return f"{self.videos} videos x {self.frames:g} of frames"


@dataclass(frozen=True)
class BudgetGrid:
    pool: Pool
    video_order: tuple[str, ...]
    video_counts: tuple[int, ...]  # ascending
    frame_shares: tuple[float, ...]  # ascending

    @property
    def cells(self) -> list[Cell]:
        return [Cell(v, f) for v in self.video_counts for f in self.frame_shares]

    def frames_of(self, video: str, share: float) -> list[dict]:
        frames = [image for image in self.pool.images if image["video_id"] == video]
        keep = sorted(spread_order(len(frames))[:round(share * len(frames))])
        return [frames[k] for k in keep]

    def images(self, cell: Cell) -> list[dict]:
        return [image for video in self.video_order[:cell.videos] for image in self.frames_of(video, cell.frames)]

    def subset(self, cell: Cell) -> dict:
        images = self.images(cell)
        ids = {image["id"] for image in images}
        return {"images": images, "annotations": [a for a in self.pool.annotations if a["image_id"] in ids],
                "categories": self.pool.categories}

    def write(self, cell: Cell, folder: str | os.PathLike) -> str:
        """The cell's training COCO file in ``folder`` (paths relative to the pool's ``image_root``)."""
        path = Path(folder) / "train.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.subset(cell)))
        return str(path)

    def membership(self, cell: Cell) -> dict:
        """Counts and digests of a cell (never names): videos, frames, masks and the digest of its videos."""
        subset = self.subset(cell)
        return {"videos": cell.videos, "frame_share": cell.frames, "frames": len(subset["images"]),
                "masks": len(subset["annotations"]), "digest": video_set_digest(list(self.video_order[:cell.videos]))}


def video_counts(values: tuple[float, ...], available: int) -> tuple[int, ...]:
    """Numbers of training videos from ``values``: a share (0 < v <= 1) of ``available``, or a count (> 1)."""
    counts = []
    for v in values:
        if not v > 0 or (v > 1 and v != int(v)):
            raise UserError(f"{v:g} is neither a share of the videos (0 < v <= 1) nor a number of videos",
                            param="videos")
        count = round(v * available) if v <= 1 else int(v)
        if count < 1:
            raise UserError(f"{v:g} of {available} training videos is no video; give a larger share", param="videos")
        if count > available:
            raise UserError(f"{count} videos asked for, but the training set holds {available}", param="videos")
        counts.append(count)
    return tuple(sorted(set(counts)))


def make_grid(pool: Pool, frame_shares: tuple[float, ...], videos: tuple[float, ...], seed: int) -> BudgetGrid:
    """The grid, checked before anything is trained: every share of frames leaves each video at least one frame,
    and every number of videos is one the training set has."""
    for share in frame_shares:
        if not 0 < share <= 1:
            raise UserError(f"{share:g} is no share of a video's frames (0 < share <= 1)", param="frames")
    order = pool.videos
    random.Random(seed).shuffle(order)
    grid = BudgetGrid(pool, tuple(order), video_counts(videos, len(order)), tuple(sorted(set(frame_shares))))
    for video in order:
        frames = sum(1 for image in pool.images if image["video_id"] == video)
        if round(min(grid.frame_shares) * frames) < 1:
            raise UserError(f"{min(grid.frame_shares):g} of the frames leaves a training video of {frames} frames with "
                            f"none; the smallest share here is {1 / frames:.3g} (or annotate more frames of it)",
                            param="frames")
    return grid
