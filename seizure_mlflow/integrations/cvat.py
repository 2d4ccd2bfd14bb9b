"""A CVAT auto-annotation function that pre-labels a task with a registered model (the ``cvat`` extra).

    pip install 'seizure-mlflow[cvat]'
    cvat-cli --server-host https://cvat.example.org task auto-annotate TASK_ID \\
        --function-module seizure_mlflow.integrations.cvat -p model_uri=str:models:/seizure-patient-detector@champion

``cvat-cli`` calls :func:`create` with the ``-p`` parameters; the object it returns follows ``cvat_sdk``'s
detection-function protocol: ``spec`` names the model's labels (masks), ``detect(context, image)`` returns the
model's masks on one frame as CVAT shapes (polygons when CVAT asks for them: ``--conv-mask-to-poly``), those below
the task's confidence threshold left out (or below ``min_score`` when CVAT gives none). The model runs here: the
frames come from the CVAT server this machine already talks to, and nothing goes anywhere else. The model URI is
resolved by the tracking server in ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from seizure_mlflow.data.masks import decode_segmentation, mask_to_polygons

DEFAULT_MODEL_URI = "models:/seizure-patient-detector@champion"


class SeizureDetectionFunction:
    """``cvat_sdk.auto_annotation.DetectionFunction`` over a :class:`~seizure_mlflow.inference.predictor.Detector`."""

    def __init__(self, detector, min_score: float = 0.5) -> None:
        self.detector = detector
        self.min_score = min_score

    @cached_property
    def spec(self):
        import cvat_sdk.auto_annotation as cvataa

        return cvataa.DetectionFunctionSpec(labels=[cvataa.label_spec(c["name"], int(c["id"]), type="mask")
                                                    for c in self.detector.categories])

    def detect(self, context, image) -> list:
        """The model's shapes on ``image`` (a PIL image), in CVAT's terms."""
        import cvat_sdk.auto_annotation as cvataa
        from cvat_sdk.masks import encode_mask

        rgb = np.asarray(image.convert("RGB"))
        height, width = rgb.shape[:2]
        threshold = context.conf_threshold if context.conf_threshold is not None else self.min_score
        shapes = []
        for d in self.detector.predict([np.ascontiguousarray(rgb[:, :, ::-1])])[0]:
            if d["score"] < threshold or "segmentation" not in d:
                continue
            mask = decode_segmentation(d["segmentation"], height, width)
            if not mask.any():
                continue
            if context.conv_mask_to_poly:
                shapes += [cvataa.polygon(int(d["category_id"]), polygon) for polygon in mask_to_polygons(mask)]
            else:
                ys, xs = np.nonzero(mask)
                box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
                shapes.append(cvataa.mask(int(d["category_id"]), encode_mask(mask, box)))
        return shapes


def create(model_uri: str = DEFAULT_MODEL_URI, min_score: float = 0.5) -> SeizureDetectionFunction:
    """What ``cvat-cli task auto-annotate --function-module seizure_mlflow.integrations.cvat`` calls: the registered
    model at ``model_uri`` (an alias, a version, a run's model) as a CVAT detection function."""
    from seizure_mlflow.registry.uris import detector_from_uri

    return SeizureDetectionFunction(detector_from_uri(model_uri), min_score=min_score)
