"""``sample-data``: the synthetic sample dataset (COCO frames split by video, per-video exports, or trace videos)."""

from __future__ import annotations

from seizure_mlflow.commands.requests import SampleDataRequest


def run_command(request: SampleDataRequest) -> int:
    from seizure_mlflow.outputs.staging import check_output_folder
    from seizure_mlflow.sample.scenes import (SampleSpec, TraceSpec, write_sample_dataset, write_sample_exports,
                                              write_trace_sample)

    given = {k: v for k, v in {"num_videos": request.num_videos, "width": request.width, "height": request.height,
                               "seed": request.seed}.items() if v is not None}
    check_output_folder(request.output, "output")
    if request.format == "trace":
        trace_spec = TraceSpec(**given, **({"seconds": request.seconds} if request.seconds is not None else {}),
                               camera=request.camera_motion)
        root = write_trace_sample(request.output, trace_spec)
        print(f"{trace_spec.num_videos} trace videos in {root}/videos, their true masks in {root}/masks and the "
              f"seizure intervals in {root}/truth.json")
        return 0
    spec = SampleSpec(frames_per_video=request.frames_per_video, **given)
    if request.format == "per-video":
        root = write_sample_exports(request.output, spec)
        print(f"Sample videos in per-video export form in {root}: NAME.mp4 + NAME.json for {spec.num_videos} videos")
        return 0
    root = write_sample_dataset(request.output, spec, force=request.force)
    print(f"Sample data in {root}: train.json, val.json, test.json, images/")
    return 0
