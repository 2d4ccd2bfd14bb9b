"""Masks and COCO segmentations: the one place that turns polygons, uncompressed and compressed RLE and boolean
masks into each other (pycocotools underneath). Part of a registered model's code: imports nothing of the
package."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_util


def segmentation_to_rle(segmentation, height: int, width: int) -> dict:
    """A COCO ``segmentation`` (polygons, uncompressed RLE with list counts, or compressed RLE) as one compressed
    RLE of an image ``height`` x ``width``; polygons of one instance are merged."""
    if isinstance(segmentation, list):
        return mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_util.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` as a boolean mask."""
    return mask_util.decode(segmentation_to_rle(segmentation, height, width)).astype(bool)


def mask_to_rle(mask: np.ndarray) -> dict:
    """A boolean (or 0/1) mask as pycocotools' compressed RLE (``counts`` as bytes)."""
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))


def mask_to_coco(mask: np.ndarray) -> dict:
    """A mask as a JSON-ready COCO RLE: ``{"size": [h, w], "counts": str}``."""
    rle = mask_to_rle(mask)
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """A boolean mask as COCO polygons, one per outer contour (holes are not kept: COCO polygons have none).

    The contours are traced at twice the resolution, so that they run along the pixels' edges rather than
    through their centres: the polygons rasterize back to the same mask (pycocotools' rule), not to one pixel
    thinner on every side. Pieces under 3 points are left out.
    """
    import cv2

    doubled = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(doubled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [[round(float(v), 2) for v in ((contour.reshape(-1).astype(float) + 0.5) / 2)]
            for contour in contours if len(contour) >= 3]
