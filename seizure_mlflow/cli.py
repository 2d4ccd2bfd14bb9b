"""Command line: ``seizure-mlflow SUBCOMMAND`` (also ``python -m seizure_mlflow``).

A thin layer: it parses arguments, calls one plain function per subcommand, and maps errors to exit
codes: 0 success, 1 a failure during work (with its message), 2 bad input found before any work started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from seizure_mlflow.errors import UserError

logger = logging.getLogger("seizure_mlflow")

def _add_train(sub) -> None:
    from seizure_mlflow.config import DEFAULT_CONFIG, DEFAULT_MODEL_NAME, TrainParams

    d = TrainParams()
    p = sub.add_parser("train", help="train the hooked Mask R-CNN, log to MLflow, register the best checkpoint",
                       description="Train on COCO files (default: the synthetic sample data), log params, losses and "
                                   "plots to MLflow, and register the checkpoint with the lowest validation loss.")
    p.add_argument("--train-json", default="", help="training COCO file (empty: the sample data)")
    p.add_argument("--train-images", default="", help="folder the training file_name entries are relative to")
    p.add_argument("--val-json", default="", help="validation COCO file")
    p.add_argument("--val-images", default="", help="validation image folder")
    p.add_argument("--test-json", default="", help="test COCO file: if given, the best checkpoint's COCO AP is "
                                                  "logged and champion/challenger promotion runs")
    p.add_argument("--test-images", default="", help="test image folder")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="model-zoo name (e.g. COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml) or YAML path "
                        f"(default: the bundled {DEFAULT_CONFIG})")
    p.add_argument("--weights", default="", help="'' from scratch, a path, a URL, or 'model-zoo'")
    p.add_argument("--lr", default=str(d.lr), help=f"base learning rate (default {d.lr})")
    p.add_argument("--ims-per-batch", default=str(d.ims_per_batch), help="images per batch, all processes")
    p.add_argument("--max-iter", default=str(d.max_iter), help="training iterations")
    p.add_argument("--eval-period", default=str(d.eval_period), help="validation loss every N iterations")
    p.add_argument("--min-size", default=str(d.min_size), help="shorter image side in pixels, train and test")
    p.add_argument("--num-workers", default=str(d.num_workers), help="data-loader worker processes")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--seed", default=str(d.seed), help="random seed")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="registered model name")
    p.add_argument("--opts", default="", help="extra Detectron2 overrides 'KEY VALUE ...', applied last")
    p.add_argument("--output-dir", default="", help="checkpoint folder (default: output/RUN_ID)")
    p.add_argument("--log-images", nargs="?", const="true", default="false", choices=("true", "false"),
                   help="also upload a few validation frames with the best model's detections drawn (patient data: "
                        "off unless asked for)")
    p.add_argument("--resume", nargs="?", const="true", default="false", choices=("true", "false"),
                   help="continue the run whose checkpoints are in --output-dir from its last checkpoint, "
                        "in the same MLflow run")
    p.add_argument("--num-processes", default="1",
                   help="training processes on this machine (one per GPU; Detectron2's launch)")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from seizure_mlflow.config import TrainParams, parse_float, parse_int
    from seizure_mlflow.training import run_training

    params = TrainParams(
        train_json=args.train_json, train_images=args.train_images,
        val_json=args.val_json, val_images=args.val_images,
        test_json=args.test_json, test_images=args.test_images,
        config=args.config, weights=args.weights,
        lr=parse_float("lr", args.lr),
        ims_per_batch=parse_int("ims_per_batch", args.ims_per_batch),
        max_iter=parse_int("max_iter", args.max_iter),
        eval_period=parse_int("eval_period", args.eval_period),
        min_size=parse_int("min_size", args.min_size),
        num_workers=parse_int("num_workers", args.num_workers),
        device=args.device, seed=parse_int("seed", args.seed), model_name=args.model_name,
        opts=tuple(shlex.split(args.opts)), output_dir=args.output_dir, log_images=args.log_images == "true",
    )
    try:
        result = run_training(params, num_processes=parse_int("num_processes", args.num_processes), resume=args.resume == "true")
    except KeyboardInterrupt as exc:
        logger.error("Training interrupted (%s); the MLflow run is KILLED. Continue with: seizure-mlflow train "
                     "--resume --output-dir %s (and the same parameters)", exc or "Ctrl-C", params.output_dir or "output/RUN_ID")
        return 130
    except FloatingPointError as exc:
        logger.error("Training stopped: %s\nCheckpoints saved before this point are kept; try a lower --lr.",
                     str(exc).splitlines()[0])
        return 1
    print(f"Run {result.run_id}: best val/total_loss {result.best_val_total_loss:.4f} at iteration "
          f"{result.best_iteration}; registered models:/{result.model_name}/{result.model_version} "
          f"(@{result.model_alias})")
    return 0


def _add_sample_data(sub) -> None:
    from seizure_mlflow.data.sample import DEFAULT_SAMPLE_DIR, SampleSpec

    d = SampleSpec()
    p = sub.add_parser("sample-data", help="write the synthetic sample dataset (COCO files + frames, split by video)",
                       description="Write a deterministic synthetic seizure-monitoring dataset: frames of "
                                   "videos of a patient on a bed, COCO polygons, train/val/test split by video.")
    p.add_argument("--output", default=DEFAULT_SAMPLE_DIR, help=f"folder to write (default {DEFAULT_SAMPLE_DIR})")
    p.add_argument("--num-videos", type=int, default=d.num_videos)
    p.add_argument("--frames-per-video", type=int, default=d.frames_per_video)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--force", action="store_true", help="rewrite even if the folder holds the same dataset")
    p.add_argument("--format", choices=("coco", "per-video"), default="coco",
                   help="coco: frames + train/val/test COCO files (default); per-video: NAME.mp4 + NAME.json "
                        "per video, the input of `prepare`")
    p.set_defaults(func=cmd_sample_data)


def cmd_sample_data(args) -> int:
    from seizure_mlflow.data.sample import SampleSpec, write_sample_dataset

    spec = SampleSpec(num_videos=args.num_videos, frames_per_video=args.frames_per_video,
                      width=args.width, height=args.height, seed=args.seed)
    if args.format == "per-video":
        from seizure_mlflow.data.sample import write_sample_exports

        root = write_sample_exports(args.output, spec)
        print(f"Sample videos in per-video export form in {root}: NAME.mp4 + NAME.json for {spec.num_videos} videos")
        return 0
    root = write_sample_dataset(args.output, spec, force=args.force)
    print(f"Sample data in {root}: train.json, val.json, test.json, images/")
    return 0


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="per-video COCO exports (+ frames or videos) -> train/val/test, split by video",
                       description="Merge per-video annotation exports (NAME.json with a NAME/ frame folder or a "
                                   "NAME.mp4|.avi|.mov|.mkv video) or one merged COCO file into train/val/test COCO "
                                   "files, split by video (or by patient), extracting the annotated frames.")
    p.add_argument("--input", required=True, help="folder of per-video exports, or with --merged the image root")
    p.add_argument("--output", required=True, help="new folder for train/val/test.json, images/, split.json, report.json")
    p.add_argument("--ratios", nargs="+", default=["0.6", "0.2", "0.2"], metavar="R",
                   help="train val test shares (three numbers, or one string '0.6 0.2 0.2'); default 0.6 0.2 0.2")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--patient-map", default="", help="CSV video,patient: all videos of a patient share a split")
    p.add_argument("--merged", default="", help="one merged COCO file instead of per-video exports")
    p.add_argument("--video-key", default="video_id", help="with --merged: the image field naming the video")
    p.add_argument("--video-regex", default="", help="with --merged: regex over file_name whose group is the video")
    p.add_argument("--every", type=int, default=0, help="also extract every N-th unannotated frame (images only)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --output folder")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow even under `mlflow run`")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    from seizure_mlflow.data.prepare import (discover_videos, format_report, log_to_mlflow, prepare_dataset,
                                             split_merged)

    try:
        ratios = tuple(float(r) for r in " ".join(args.ratios).replace(",", " ").split())
    except ValueError:
        raise UserError(f"--ratios needs three numbers (train val test); got {' '.join(args.ratios)!r}") from None
    if len(ratios) != 3:
        raise UserError(f"--ratios needs three numbers (train val test); got {' '.join(args.ratios)!r}")
    if args.merged:
        videos = split_merged(args.merged, args.input, video_key=args.video_key, video_regex=args.video_regex or None)
    else:
        videos = discover_videos(args.input)
    result = prepare_dataset(videos, args.output, ratios=ratios, seed=args.seed,
                             patient_map=args.patient_map or None, every=args.every, force=args.force)
    print(format_report(result.report))
    print(f"Wrote {result.output}: train.json, val.json, test.json, images/, split.json, report.json")
    if os.environ.get("MLFLOW_RUN_ID") and not args.no_mlflow:
        log_to_mlflow(result)
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="COCO AP (boxes and masks) of a model URI on a test set, logged to MLflow",
                       description="Evaluate models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/model on a COCO test "
                                   "set (default: the sample test split) with Detectron2's COCOEvaluator; log metrics, "
                                   "predictions.json, per-category AP and a precision-recall plot; tag the version.")
    p.add_argument("--model-uri", required=True)
    p.add_argument("--test-json", default="", help="test COCO file (default: the sample test split)")
    p.add_argument("--test-images", default="", help="test image folder")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from seizure_mlflow.data.checks import file_digest
    from seizure_mlflow.evaluation import detector_from_uri, evaluate_and_record, registered_version, summary_line
    from seizure_mlflow.tracking.run import active_run
    from seizure_mlflow.training import check_test_set

    _require_test_pair(args)
    test = check_test_set(args.test_json, args.test_images)
    detector = detector_from_uri(args.model_uri)
    version = registered_version(args.model_uri)
    tags = {"seizure.evaluation": "true", "seizure.model_uri": args.model_uri, "seizure.test_digest": file_digest(test.json_path)}
    if version:
        tags.update({"seizure.model_name": version[0], "seizure.model_version": version[1]})
    with active_run(run_name="evaluate", tags=tags) as run:
        result = evaluate_and_record(detector, test, run.info.run_id, version)
    print(f"{args.model_uri}: {summary_line(result)} (run {run.info.run_id})")
    return 0


def _require_test_pair(args) -> None:
    if bool(args.test_json) != bool(args.test_images):
        raise UserError("--test-json and --test-images go together: give both, or neither")


def _add_promote(sub) -> None:
    from seizure_mlflow.registry.promote import DEFAULT_METRIC

    p = sub.add_parser("promote", help="move @champion to @challenger if it is better on a test metric",
                       description="Compare the challenger with the champion on one test set and move the champion "
                                   "alias only if the challenger is strictly better. Without --test-json the values "
                                   "recorded by earlier evaluations are compared (only if from the same test set).")
    p.add_argument("--model-name", required=True)
    p.add_argument("--metric", default=DEFAULT_METRIC)
    p.add_argument("--test-json", default="")
    p.add_argument("--test-images", default="")
    p.set_defaults(func=cmd_promote)


def cmd_promote(args) -> int:
    from seizure_mlflow.data.checks import check_coco
    from seizure_mlflow.registry.promote import promote

    _require_test_pair(args)
    test = check_coco(args.test_json, args.test_images) if args.test_json else None
    decision = promote(args.model_name, test, args.metric)
    print(decision.message(args.model_name))
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="run a model URI on images, a folder or a video; write COCO-style results",
                       description="Load a registered detector (models:/NAME@ALIAS, models:/NAME/VERSION, "
                                   "runs:/ID/model) and write its detections as COCO results JSON. A video is decoded "
                                   "as a stream; its results carry frame_index and timestamp.")
    p.add_argument("--model-uri", required=True)
    p.add_argument("--input", required=True, help="an image, a folder of PNG/JPEG images, or a video file")
    p.add_argument("--output", required=True, help="results JSON to write")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--overlay", default="", help="with a video input: also write this video with detections drawn")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from seizure_mlflow.evaluation import detector_from_uri
    from seizure_mlflow.inference.files import is_video, list_images, predict_images, predict_video

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    video = is_video(args.input)
    if args.overlay and not video:
        raise UserError("--overlay needs a video --input")
    images = [] if video else list_images(args.input)
    detector = detector_from_uri(args.model_uri)
    if video:
        results = predict_video(detector, Path(args.input), args.batch_size, overlay=args.overlay or None)
        what = f"{len({r['frame_index'] for r in results})} frames with detections"
    else:
        root = Path(args.input) if Path(args.input).is_dir() else Path(args.input).parent
        results = predict_images(detector, images, root, args.batch_size)
        what = f"{len(images)} images"
    write_json_atomically(args.output, results)
    print(f"{len(results)} detections in {what} -> {args.output}")
    return 0


def write_json_atomically(path: str, data) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seizure-mlflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    _add_train(sub)
    _add_sample_data(sub)
    _add_prepare(sub)
    _add_evaluate(sub)
    _add_promote(sub)
    _add_predict(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
