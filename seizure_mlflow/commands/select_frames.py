"""``select-frames``: plan (videos readable, output writable, the model when it chooses) -> score and choose each
video's frames -> write the frames, their list and ``selection.csv`` into a staged folder -> record the choice in
MLflow by digest (which model, strategy, budget; never a file name)."""

from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path

from seizure_mlflow.commands.requests import SelectFramesRequest

logger = logging.getLogger(__name__)

COMMAND = "select-frames"
FRAMES_DIR, FRAME_LIST, SELECTION_CSV, SELECTION_JSON = "frames", "frames.txt", "selection.csv", "selection.json"


def video_digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()[:16]


def run_command(request: SelectFramesRequest) -> int:
    from seizure_mlflow.data.video import check_video_readable, list_videos
    from seizure_mlflow.outputs.staging import check_output_folder, check_replaceable

    videos = list_videos(request.input)
    for video in videos:
        check_video_readable(video)
    check_replaceable(request.output, COMMAND, force=request.force)
    check_output_folder(request.output, "output")
    detector, version = None, None
    if request.strategy == "uncertainty":
        from seizure_mlflow.commands.pre_annotate import model_version_of
        from seizure_mlflow.registry.uris import detector_from_uri

        detector, version = detector_from_uri(request.model_uri), model_version_of(request.model_uri)
    chosen = {video: choose_frames(video, request, detector) for video in videos}
    write_selection(chosen, request)
    if not request.no_mlflow:
        record_selection(chosen, request, version)
    total = sum(len(c) for c in chosen.values())
    print(f"{total} frames of {len(videos)} video(s) ({request.strategy}, at most {request.budget} per video, "
          f"{request.window:g} s apart) -> {request.output}/{FRAMES_DIR}/, {FRAME_LIST}, {SELECTION_CSV}")
    return 0


def choose_frames(video: Path, request: SelectFramesRequest, detector) -> list:
    """The chosen frames of one video (:class:`~seizure_mlflow.annotation.selection.Candidate`, in time order)."""
    from tqdm import tqdm

    from seizure_mlflow.annotation.selection import Candidate, choose, score_frames
    from seizure_mlflow.data.video import frame_rate, iter_frames

    stream, expected, fps = iter_frames(video, accept_short=request.accept_short_video, lazy=True)
    wanted = ((index, bgr) for index, _, bgr in tqdm(stream, total=expected, desc=f"{COMMAND} {video.name}",
                                                     unit="frame") if index % request.every == 0)
    if detector is not None:
        candidates = score_frames(detector, ((index, bgr()) for index, bgr in wanted), request.min_score)
    else:
        candidates = [Candidate(index) for index, _ in wanted]
    window = int(round(request.window * (fps or frame_rate(video))))
    chosen = choose(candidates, request.budget, max(1, window), request.strategy, request.seed)
    if len(chosen) < min(request.budget, len(candidates)):
        logger.warning("%s: only %d frames fit %g s apart (budget %d)", video.name, len(chosen), request.window,
                       request.budget)
    return chosen


def write_selection(chosen: dict, request: SelectFramesRequest) -> None:
    from seizure_mlflow.annotation.sources import frame_file_name
    from seizure_mlflow.data.video import extract_frames, write_png
    from seizure_mlflow.outputs.staging import staged_folder

    with staged_folder(request.output, COMMAND, force=request.force) as tmp:
        rows, listed = [], []
        for video, frames in chosen.items():
            folder = Path(tmp) / FRAMES_DIR / video.stem
            folder.mkdir(parents=True)
            extract_frames(video, [c.frame for c in frames],
                           lambda index, bgr, folder=folder: write_png(folder / frame_file_name(index), bgr))
            for c in frames:
                listed.append(f"{FRAMES_DIR}/{video.stem}/{frame_file_name(c.frame)}")
                rows.append({"video": video.stem, "frame": c.frame, "uncertainty": round(c.uncertainty, 4)})
        (Path(tmp) / FRAME_LIST).write_text("\n".join(listed) + "\n")
        with open(Path(tmp) / SELECTION_CSV, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["video", "frame", "uncertainty"])
            writer.writeheader()
            writer.writerows(rows)


def record_selection(chosen: dict, request: SelectFramesRequest, version: str | None) -> None:
    """The choice in an MLflow run: which model (name and version), strategy, budget and window as params; counts
    and uncertainty as metrics; each video by the digest of its content with its chosen frame numbers as
    ``selection.json``. No file name, no path, no frame."""
    import mlflow

    from seizure_mlflow.tracking.run import active_run

    by_digest = {video_digest(video): [c.frame for c in frames] for video, frames in chosen.items()}
    selection_digest = hashlib.sha256(repr(sorted(by_digest.items())).encode()).hexdigest()[:16]
    chosen_all = [c for frames in chosen.values() for c in frames]
    with active_run(run_name=COMMAND, tags={"seizure.selection": selection_digest}):
        mlflow.log_params({"strategy": request.strategy, "budget_per_video": request.budget,
                           "window_s": request.window, "candidate_every": request.every, "seed": request.seed,
                           "model": version or "none", "videos": len(chosen)})
        mlflow.log_metrics({"frames_selected": len(chosen_all),
                            "mean_uncertainty_selected": (sum(c.uncertainty for c in chosen_all) / len(chosen_all)
                                                          if chosen_all else 0.0)})
        mlflow.log_dict({"selection_digest": selection_digest, "videos": by_digest}, SELECTION_JSON)
