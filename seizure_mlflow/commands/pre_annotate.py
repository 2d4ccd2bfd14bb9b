"""``pre-annotate``: plan (the input's frames readable, the output writable, the model loadable) -> pre-label every
frame -> write the COCO file, the frames and the Label Studio tasks into a staged folder, moved into place whole.

Nothing is sent anywhere: the frames, the masks and the files stay on this machine (no MLflow run is made).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from seizure_mlflow.commands.requests import PreAnnotateRequest
from seizure_mlflow.errors import UserError

logger = logging.getLogger(__name__)

COMMAND = "pre-annotate"
LABEL_STUDIO_DIR = "label-studio"
LABEL_STUDIO_CONFIG_FILE = "config.xml"


def model_version_of(model_uri: str) -> str:
    """``NAME/VERSION`` for a registered model (what Label Studio's predictions and the COCO file carry), else the
    URI itself."""
    from seizure_mlflow.registry.uris import registered_version

    version = registered_version(model_uri) if model_uri.startswith(("models:/", "runs:/")) else None
    return f"{version[0]}/{version[1]}" if version else model_uri


def run_command(request: PreAnnotateRequest) -> int:
    from seizure_mlflow.annotation.sources import frame_source
    from seizure_mlflow.outputs.staging import check_output_folder, check_replaceable
    from seizure_mlflow.registry.uris import detector_from_uri

    source = frame_source(request.input)
    if request.every > 1 and not source.consecutive:
        raise UserError(f"carries masks between neighbouring frames of a video; {source.path} is a {source.kind} of "
                        "frames (use --every 1)", param="every")
    check_replaceable(request.output, COMMAND, force=request.force)
    check_output_folder(request.output, "output")
    detector = detector_from_uri(request.model_uri)
    counts = write_prelabels(detector, source, request, model_version_of(request.model_uri))
    print(f"{counts['frames']} frames ({counts['detected']} detected, {counts['frames'] - counts['detected']} "
          f"carried), {counts['masks']} masks -> {request.output}/{source.name}.json (COCO, for CVAT and prepare), "
          f"{source.name}/ (frames), {LABEL_STUDIO_DIR}/{source.name}.json (Label Studio)")
    return 0


def write_prelabels(detector, source, request: PreAnnotateRequest, model_version: str) -> dict[str, int]:
    """Pre-label every frame of ``source`` and write the files into a staged copy of ``request.output``."""
    from tqdm import tqdm

    from seizure_mlflow.annotation.exports import CocoExport, label_studio_config, label_studio_task
    from seizure_mlflow.annotation.prelabels import prelabel
    from seizure_mlflow.data.video import write_png
    from seizure_mlflow.outputs.staging import staged_folder

    frames_of: dict[int, object] = {}

    def frames():  # each frame is written as it passes, so that a night's video is never held whole
        for index, name, bgr in source.frames(accept_short=request.accept_short_video):
            frames_of[index] = bgr
            yield index, name, bgr

    coco = CocoExport(detector.categories, model_version)
    counts = {"frames": 0, "detected": 0, "masks": 0}
    with staged_folder(request.output, COMMAND, force=request.force) as tmp:
        folder, tasks = Path(tmp) / source.name, []
        folder.mkdir(parents=True)
        for frame in tqdm(prelabel(detector, frames(), every=request.every, min_score=request.min_score,
                                   batch_size=request.batch_size), total=len(source) or None, desc=COMMAND,
                          unit="frame"):
            write_png(folder / frame.file_name, frames_of.pop(frame.frame_index))
            coco.add(frame)
            tasks.append(label_studio_task(frame, model_version, f"{request.image_url}{source.name}"))
            counts["frames"] += 1
            counts["detected"] += frame.detected
        document = coco.document()
        counts["masks"] = len(document["annotations"])
        (Path(tmp) / f"{source.name}.json").write_text(json.dumps(document))
        studio = Path(tmp) / LABEL_STUDIO_DIR
        studio.mkdir()
        (studio / f"{source.name}.json").write_text(json.dumps(tasks))
        (studio / LABEL_STUDIO_CONFIG_FILE).write_text(label_studio_config(detector.categories))
    return counts
