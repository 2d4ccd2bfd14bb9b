"""Batched Mask R-CNN inference to COCO-style results.

``Detector`` wraps a Detectron2 model in eval mode. ``predict(images)`` takes BGR ``uint8`` arrays (any
sizes), runs them in batches with test-time resizing, and returns one list per image of
``{"category_id", "category_name", "bbox": [x, y, w, h], "score", "segmentation": {"size", "counts"}}`` in
that image's pixel coordinates. Category ids are the dataset's (COCO) ids, not Detectron2's contiguous ones.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from detectron2.data import transforms as T
from seizure_mlflow.data.frames import read_frame, read_header
from seizure_mlflow.data.masks import mask_to_coco

from seizure_mlflow.errors import UserError
from seizure_mlflow.lazy.network import build_network


class Detector:
    def __init__(self, cfg, state_dict: dict[str, torch.Tensor], categories: Sequence[dict], batch_size: int = 4) -> None:
        self.cfg = cfg
        self.model = build_network(cfg)
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise ValueError(f"weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.model.eval()
        self.categories = list(categories)  # contiguous id -> {"id", "name"}
        self.batch_size = batch_size
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT

    def to(self, device: str) -> "Detector":
        """Move the model (Detectron2 moves each batch to the model's device)."""
        self.model.to(device)
        return self

    @torch.inference_mode()
    def predict_instances(self, images_bgr: Sequence[np.ndarray]) -> list:
        """Detectron2 ``Instances`` (on the CPU, in each image's coordinates), one per image."""
        instances = []
        for start in range(0, len(images_bgr), self.batch_size):
            batch = images_bgr[start:start + self.batch_size]
            outputs = self.model([self._prepare(img) for img in batch])
            instances.extend(out["instances"].to("cpu") for out in outputs)
        return instances

    def predict(self, images_bgr: Sequence[np.ndarray]) -> list[list[dict]]:
        return [self._to_coco(instances) for instances in self.predict_instances(images_bgr)]

    def _prepare(self, image_bgr: np.ndarray) -> dict:
        height, width = image_bgr.shape[:2]
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        image = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))
        return {"image": tensor.to(self.cfg.MODEL.DEVICE), "height": height, "width": width}

    def _to_coco(self, instances) -> list[dict]:
        boxes = instances.pred_boxes.tensor.numpy() if instances.has("pred_boxes") else np.zeros((0, 4))
        scores = instances.scores.numpy().tolist()
        classes = instances.pred_classes.numpy().tolist()
        masks = instances.pred_masks.numpy() if instances.has("pred_masks") else None
        results = []
        for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            category = self.categories[classes[k]]
            result = {"category_id": int(category["id"]), "category_name": category["name"],
                      "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(scores[k])}
            if masks is not None:
                result["segmentation"] = mask_to_coco(masks[k])
            results.append(result)
        return results


def decode_image(data: bytes, where: str = "image") -> np.ndarray:
    """Encoded PNG/JPEG bytes to a BGR ``uint8`` array, read as training read its frames
    (:func:`seizure_mlflow.data.frames.read_frame`); a clear error otherwise."""
    if not data:
        raise UserError(f"{where}: not a decodable image (expected PNG or JPEG bytes, got 0 bytes)")
    read_header(data, where=where)  # a cut-short file is refused, not half-decoded
    return read_frame(data, where=where)
