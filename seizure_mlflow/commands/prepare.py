"""``prepare``: per-video annotation exports (or one merged COCO file) -> train/val/test, split by video."""

from __future__ import annotations

from seizure_mlflow.commands.requests import PrepareRequest


def run_command(request: PrepareRequest) -> int:
    from seizure_mlflow.data.prepare import discover_videos, format_report, prepare_dataset, split_merged
    from seizure_mlflow.annotation.corrections import compare_exports
    from seizure_mlflow.tracking.datasets import log_prepared

    if request.merged:
        videos = split_merged(request.merged, request.input, video_key=request.video_key,
                              video_regex=request.video_regex or None)
    else:
        videos = discover_videos(request.input)
    corrections = compare_exports(videos, request.pre_labels) if request.pre_labels else None
    result = prepare_dataset(videos, request.output, ratios=request.split_ratios, seed=request.seed,
                             patient_map=request.patient_map or None, every=request.every, force=request.force,
                             merge_category_spellings=request.merge_category_spellings,
                             report_extra={"corrections": corrections} if corrections else None)
    print(format_report(result.report))
    if corrections:
        print(correction_line(corrections))
    print(f"Wrote {result.output}: train.json, val.json, test.json, images/, split.json, report.json")
    if request.uses_tracking_server:
        log_prepared(result)
    return 0


def correction_line(c: dict) -> str:
    """How much annotators changed the pre-labels, in one line."""
    share = "n/a" if c["kept_share"] is None else f"{c['kept_share']:.0%}"
    iou = "n/a" if c["mean_iou_kept"] is None else f"{c['mean_iou_kept']:.2f}"
    return (f"Pre-labels of {c['videos']} video(s): {c['kept']} of {c['prelabels']} masks kept ({share}), mean IoU of "
            f"the kept {iou}; {c['deleted']} deleted, {c['added']} added by the annotators")
