"""Where each frame's people come from: the registered model, or true masks (to test the signal chain
without the detector).

A source is called with a batch of ``(frame_index, bgr)`` and returns one list of
:class:`~.track.Instance` per frame.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from seizure_mlflow.data.masks import decode_segmentation

from seizure_mlflow.errors import UserError
from seizure_mlflow.motion.patient_track import PATIENT, Instance


class ModelSource:
    """Batched inference with a loaded :class:`~seizure_mlflow.inference.predictor.Detector`."""

    def __init__(self, detector) -> None:
        names = [c["name"] for c in detector.categories]
        if PATIENT not in names:
            raise UserError(f"the model has no {PATIENT!r} category (it has {names}); trace needs a patient detector",
                            param="model_uri")
        self.detector = detector
        self.names = names

    def __call__(self, frames: list[tuple[int, np.ndarray]]) -> list[list[Instance]]:
        out = []
        for instances in self.detector.predict_instances([bgr for _, bgr in frames]):
            masks = instances.pred_masks.numpy() if instances.has("pred_masks") else []
            out.append([Instance(self.names[int(c)], float(s), m.astype(bool))
                        for c, s, m in zip(instances.pred_classes.tolist(), instances.scores.tolist(), masks)])
        return out


class TrueMaskSource:
    """Masks from a COCO file whose images carry the video's ``frame_id`` (or ``frame_index``): the
    per-video export form, as ``sample-data --format trace`` writes it."""

    def __init__(self, path: str | Path) -> None:
        from seizure_mlflow.user_files import read_json

        self.path = Path(path)
        coco = read_json(self.path, param="masks")
        try:
            names = {c["id"]: c["name"] for c in coco["categories"]}
            self._frame_of, self._size = {}, {}
            for image in coco["images"]:
                frame = image.get("frame_id", image.get("frame_index"))
                if frame is None:
                    raise UserError(f"{self.path}: image {image.get('id')} has no frame_id (the video frame it shows); "
                                    "masks files need one per image", param="masks")
                self._frame_of[image["id"]] = int(frame)
                self._size[image["id"]] = (int(image["height"]), int(image["width"]))
            self._anns = defaultdict(list)
            for ann in coco["annotations"]:
                self._anns[self._frame_of[ann["image_id"]]].append(
                    (names[ann["category_id"]], ann["segmentation"], self._size[ann["image_id"]]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{self.path}: not a usable COCO masks file ({type(exc).__name__}: {exc})",
                            param="masks") from None

    def check_video(self, video: str | Path) -> None:
        """Before any work: these masks can be this video's, their images of its frame size and their frames
        within its length (masks of another camera or another night are refused, not traced)."""
        from seizure_mlflow.data.video import frame_count, frame_size

        width, height = frame_size(video)
        other = sorted({(w, h) for h, w in self._size.values()} - {(width, height)})
        if other:
            raise UserError(f"{self.path}: its masks are {other[0][0]}x{other[0][1]}, but the frames of {video} are "
                            f"{width}x{height}; are these the masks of another video?", param="masks")
        declared = frame_count(video)
        beyond = sorted(f for f in self._frame_of.values() if f < 0 or (declared is not None and f >= declared))
        if beyond:
            raise UserError(f"{self.path}: frame_id {beyond[-1]} is outside {video}, which has {declared} frames "
                            f"(0-{(declared or 1) - 1}); are these the masks of another video?", param="masks")

    def __call__(self, frames: list[tuple[int, np.ndarray]]) -> list[list[Instance]]:
        return [[Instance(name, 1.0, decode_segmentation(segmentation, *size)) for name, segmentation, size in self._anns.get(index, [])]
                for index, _ in frames]


