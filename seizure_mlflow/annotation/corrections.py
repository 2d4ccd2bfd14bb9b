"""How much annotators changed a model's pre-labels: the pre-labels (``pre-annotate``'s COCO file) against the
corrected export of the same video that comes back through ``prepare``.

Frames are matched by frame number; on each frame, pre-labels and corrected masks of the same category are paired
greedily by mask IoU (highest first). A pre-label is *kept* when its pair overlaps it by at least ``KEPT_IOU`` (the
annotator kept it, perhaps moved its edge), *deleted* otherwise; a corrected mask with no pair was *added*. The
mean IoU of the kept ones says how far their edges were moved (1.0: untouched). Counts only: no names, no paths.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np
from pycocotools import mask as mask_util

from seizure_mlflow.data.masks import segmentation_to_rle

KEPT_IOU = 0.5


@dataclass
class Corrections:
    prelabels: int = 0
    kept: int = 0
    deleted: int = 0
    added: int = 0
    iou_sum: float = 0.0

    @property
    def kept_share(self) -> float | None:
        return self.kept / self.prelabels if self.prelabels else None

    @property
    def mean_iou_kept(self) -> float | None:
        return self.iou_sum / self.kept if self.kept else None

    def __add__(self, other: "Corrections") -> "Corrections":
        return Corrections(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

    def summary(self) -> dict[str, float | int | None]:
        """What ``prepare`` puts in its report (and logs): counts, the share kept and their mean IoU."""
        mean = self.mean_iou_kept
        share = self.kept_share
        return {"prelabels": self.prelabels, "kept": self.kept, "deleted": self.deleted, "added": self.added,
                "kept_share": None if share is None else round(share, 4),
                "mean_iou_kept": None if mean is None else round(mean, 4)}


def _masks_by_frame(document: dict, frame_of) -> dict[int, list[tuple[int, dict]]]:
    """``{frame number: [(category name, RLE)]}`` of a COCO document."""
    images = {img["id"]: img for img in document.get("images", [])}
    names = {c["id"]: str(c["name"]).strip().lower() for c in document.get("categories", [])}
    found: dict[int, list] = defaultdict(list)
    for ann in document.get("annotations", []):
        image = images.get(ann.get("image_id"))
        frame = frame_of(image) if image is not None else None
        if frame is None or not ann.get("segmentation"):
            continue
        rle = segmentation_to_rle(ann["segmentation"], image["height"], image["width"])
        found[frame].append((names.get(ann.get("category_id")), rle))
    return found


def compare(prelabels: dict, corrected: dict, frame_of) -> Corrections:
    """Pre-labels against their corrected version (two COCO documents of one video); ``frame_of(image)`` gives a
    COCO image's frame number. Frames the corrected file does not hold are not counted (not yet annotated)."""
    before, after = _masks_by_frame(prelabels, frame_of), _masks_by_frame(corrected, frame_of)
    corrected_frames = {frame_of(img) for img in corrected.get("images", [])}
    total = Corrections()
    for frame in sorted(set(before) & corrected_frames):
        total = total + _compare_frame(before[frame], after.get(frame, []))
    for frame in sorted(set(after) - set(before)):  # masks drawn on frames the model left empty
        total = total + Corrections(added=len(after[frame]))
    return total


def _compare_frame(before: list[tuple[str, dict]], after: list[tuple[str, dict]]) -> Corrections:
    result = Corrections(prelabels=len(before))
    pairs = []
    for i, (name_b, rle_b) in enumerate(before):
        for j, (name_a, rle_a) in enumerate(after):
            if name_a == name_b:
                pairs.append((float(np.asarray(mask_util.iou([rle_b], [rle_a], [0]))[0, 0]), i, j))
    used_b, used_a = set(), set()
    for iou, i, j in sorted(pairs, reverse=True):
        if iou < KEPT_IOU or i in used_b or j in used_a:
            continue
        used_b.add(i)
        used_a.add(j)
        result.kept += 1
        result.iou_sum += iou
    result.deleted = len(before) - len(used_b)
    result.added = len(after) - len(used_a)
    return result


def compare_exports(videos, prelabel_dir) -> dict:
    """Each video's corrected export against ``prelabel_dir/NAME.json`` (``pre-annotate``'s output) where there is
    one: the totals' :meth:`Corrections.summary` plus ``videos`` (how many were compared). A folder that holds
    none of the videos' pre-labels is refused."""
    import json
    from pathlib import Path

    from seizure_mlflow.data.prepare import frame_index
    from seizure_mlflow.errors import UserError

    folder = Path(prelabel_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder (give pre-annotate's output folder)", param="pre_labels")
    total, compared = Corrections(), 0
    for video in videos:
        path = folder / f"{video.name}.json"
        if not path.is_file():
            continue
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a COCO file ({exc})", param="pre_labels") from None
        total = total + compare(document, video.data, frame_index)
        compared += 1
    if not compared:
        raise UserError(f"{folder} holds no pre-labels of these videos (NAME.json for a video NAME)",
                        param="pre_labels")
    return {"videos": compared, **total.summary()}
