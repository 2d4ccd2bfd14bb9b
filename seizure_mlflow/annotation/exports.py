"""Pre-labels as the files annotation tools import.

* :class:`CocoExport`: a COCO file (CVAT's "COCO 1.0" import, and ``prepare``'s per-video export): one image per
  frame (``file_name``, ``frame_id``, ``width``, ``height``), each mask as polygons with its ``bbox``, ``area``,
  ``iscrowd`` 0, the model's ``score`` and ``attributes`` (``score``, ``carried``: CVAT shows them per shape).
* :func:`label_studio_task`: Label Studio's task list: one image task per frame, the masks as a prediction
  (``polygonlabels`` in percent of the image) carrying the model version and its score; a labelling config to
  match is :func:`label_studio_config`'s.
"""

from __future__ import annotations

from seizure_mlflow.annotation.prelabels import PreLabel
from seizure_mlflow.data.masks import mask_to_polygons

LABEL_STUDIO_FROM, LABEL_STUDIO_TO = "label", "image"


def label_studio_config(categories: list[dict]) -> str:
    """A Label Studio labelling config whose polygon labels are the model's categories."""
    labels = "".join(f'<Label value="{c["name"]}"/>' for c in categories)
    return (f'<View><Image name="{LABEL_STUDIO_TO}" value="$image"/>'
            f'<PolygonLabels name="{LABEL_STUDIO_FROM}" toName="{LABEL_STUDIO_TO}">{labels}</PolygonLabels></View>')


class CocoExport:
    """A COCO file built frame by frame (:meth:`add`; the masks are not kept), then :meth:`document`."""

    def __init__(self, categories: list[dict], model_version: str) -> None:
        self.categories, self.model_version = categories, model_version
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add(self, frame: PreLabel) -> None:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": frame.file_name, "frame_id": frame.frame_index,
                            "width": frame.width, "height": frame.height})
        for shape in frame.shapes:
            polygons = mask_to_polygons(shape.mask)
            if not polygons:
                continue
            self.annotations.append({
                "id": len(self.annotations) + 1, "image_id": image_id, "category_id": shape.category_id,
                "segmentation": polygons, "bbox": shape.bbox, "area": float(shape.area), "iscrowd": 0,
                "score": round(shape.score, 4),
                "attributes": {"score": round(shape.score, 4), "carried": shape.carried, "occluded": False}})

    def document(self) -> dict:
        return {"info": {"description": f"pre-labels of {self.model_version}", "model_version": self.model_version},
                "images": self.images, "annotations": self.annotations,
                "categories": [{"id": c["id"], "name": c["name"], "supercategory": ""} for c in self.categories]}


def label_studio_task(frame: PreLabel, model_version: str, image_url: str) -> dict:
    """A frame's task; ``image_url`` is the frames' URL prefix in Label Studio (a local-files or cloud-storage
    prefix) to which the frame's file name is appended."""
    results, scores = [], []
    for k, shape in enumerate(frame.shapes):
        for j, polygon in enumerate(mask_to_polygons(shape.mask)):
            points = [[round(100 * x / frame.width, 3), round(100 * y / frame.height, 3)]
                      for x, y in zip(polygon[0::2], polygon[1::2])]
            results.append({"id": f"f{frame.frame_index}-s{k}-p{j}", "from_name": LABEL_STUDIO_FROM,
                            "to_name": LABEL_STUDIO_TO, "type": "polygonlabels", "original_width": frame.width,
                            "original_height": frame.height, "image_rotation": 0, "score": round(shape.score, 4),
                            "value": {"points": points, "polygonlabels": [shape.category_name]},
                            "meta": {"text": ["carried" if shape.carried else "detected"]}})
        scores.append(shape.score)
    return {"data": {"image": image_url.rstrip("/") + "/" + frame.file_name, "frame_id": frame.frame_index},
            "predictions": [{"model_version": model_version, "result": results,
                             "score": round(sum(scores) / len(scores), 4) if scores else 0.0}]}
