"""``prepare``: per-video annotation exports (or one merged COCO file) -> train/val/test, split by video."""

from __future__ import annotations

from seizure_mlflow.commands.requests import PrepareRequest


def run_command(request: PrepareRequest) -> int:
    from seizure_mlflow.data.prepare import discover_videos, format_report, prepare_dataset, split_merged
    from seizure_mlflow.tracking.datasets import log_prepared

    if request.merged:
        videos = split_merged(request.merged, request.input, video_key=request.video_key,
                              video_regex=request.video_regex or None)
    else:
        videos = discover_videos(request.input)
    result = prepare_dataset(videos, request.output, ratios=request.split_ratios, seed=request.seed,
                             patient_map=request.patient_map or None, every=request.every, force=request.force,
                             merge_category_spellings=request.merge_category_spellings)
    print(format_report(result.report))
    print(f"Wrote {result.output}: train.json, val.json, test.json, images/, split.json, report.json")
    if request.uses_tracking_server:
        log_prepared(result)
    return 0
