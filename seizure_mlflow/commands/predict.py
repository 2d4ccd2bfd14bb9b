"""``predict``: plan (every check, before the model is loaded) -> run the model -> write the results whole.

Outputs: the results JSON at ``output``, written to a temporary file and renamed (and, for a video, the
``overlay`` video); an existing file at either is replaced only with ``force`` (it may be the user's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from seizure_mlflow.commands.requests import PredictRequest
from seizure_mlflow.errors import UserError


@dataclass(frozen=True)
class PredictPlan:
    request: PredictRequest
    video: bool
    images: list


def plan_predict(request: PredictRequest) -> PredictPlan:
    """Check the batch size, the outputs (writable; not an existing file unless ``force``) and the input."""
    from seizure_mlflow.outputs.staging import check_output_file
    from seizure_mlflow.data.video import check_video_readable
    from seizure_mlflow.inference.files import check_images, is_video, list_images

    video = is_video(request.input)
    if request.overlay and not video:
        raise UserError("needs a video --input", param="overlay")
    for param, path in (("output", request.output), ("overlay", request.overlay)):
        if path:
            check_output_file(path, param)
            if Path(path).exists() and not request.force:
                raise UserError(f"{path} exists; give a new file name, or --force to replace it", param=param)
    if video:
        check_video_readable(request.input)
    images = [] if video else list_images(request.input)
    check_images(images)
    return PredictPlan(request, video, images)


def run_predict(plan: PredictPlan) -> tuple[list[dict], str]:
    """Load the model, predict, write the results; returns them and what was predicted, in words."""
    from seizure_mlflow.outputs.staging import write_atomically
    from seizure_mlflow.inference.files import predict_images, predict_video
    from seizure_mlflow.registry.uris import detector_from_uri

    request = plan.request
    detector = detector_from_uri(request.model_uri)
    if plan.video:
        results = predict_video(detector, Path(request.input), request.batch_size, overlay=request.overlay or None,
                                accept_short=request.accept_short_video)
        what = f"{len({r['frame_index'] for r in results})} frames with detections"
    else:
        root = Path(request.input) if Path(request.input).is_dir() else Path(request.input).parent
        results = predict_images(detector, plan.images, root, request.batch_size)
        what = f"{len(plan.images)} images"
    write_atomically(request.output, lambda fh: json.dump(results, fh), binary=False)
    return results, what


def run_command(request: PredictRequest) -> int:
    results, what = run_predict(plan_predict(request))
    print(f"{len(results)} detections in {what} -> {request.output}")
    return 0
