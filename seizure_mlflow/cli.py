"""Command line: ``seizure-mlflow SUBCOMMAND`` (also ``python -m seizure_mlflow``).

A thin layer: it parses arguments, calls one plain function per subcommand, and maps errors to exit
codes: 0 success, 1 a failure during work (with its message), 2 bad input found before any work started.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from typing import Sequence

from seizure_mlflow.errors import UserError

logger = logging.getLogger("seizure_mlflow")

def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train the hooked Mask R-CNN, log to MLflow, register the best checkpoint",
                       description="Train on COCO files (default: the synthetic sample data), log params, losses and "
                                   "plots to MLflow, and register the best checkpoint (lowest validation loss, or "
                                   "highest validation AP with --monitor val/segm/AP).")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)


def _add_train_options(p) -> None:
    """One option per TrainParams field: the MLproject's `main` parameters."""
    from seizure_mlflow.config import default_text, param_fields, param_kind

    for f in param_fields():
        flag = cli_flag(f.name)
        if param_kind(f) == "bool":
            p.add_argument(flag, dest=f.name, nargs="?", const="true", default=default_text(f), help=f.metadata["help"])
        else:
            p.add_argument(flag, dest=f.name, default=default_text(f), help=f.metadata["help"],
                           choices=f.metadata.get("choices"))


def cli_flag(param: str) -> str:
    """The command-line option of a parameter: ``output_dir`` -> ``--output-dir``."""
    return "--" + param.replace("_", "-")


_OPTION_OF_PARAM = {"input_dir": "--input"}  # library parameter names whose option is not cli_flag(name)


def cli_option(param: str) -> str:
    """How the command line names a library function's parameter in an error message."""
    return _OPTION_OF_PARAM.get(param) or cli_flag(param)


def cmd_train(args) -> int:
    from seizure_mlflow.config import param_fields, params_from_text
    from seizure_mlflow.commands.train import run_training

    params = params_from_text({f.name: getattr(args, f.name) for f in param_fields()})
    try:
        result = run_training(params)
    except KeyboardInterrupt as exc:
        logger.error("Training interrupted (%s); the MLflow run is KILLED. Continue with: seizure-mlflow train "
                     "--resume --output-dir %s (and the same parameters)", exc or "Ctrl-C", params.output_dir or "output/RUN_ID")
        return 130
    except FloatingPointError as exc:
        logger.error("Training stopped: %s\nCheckpoints saved before this point are kept; try a lower --lr.",
                     str(exc).splitlines()[0])
        return 1
    if result is None:  # a process other than rank 0 of a job: rank 0 reports the run
        print("Training finished (this process is not rank 0: the MLflow run is rank 0's)")
        return 0
    print(f"Run {result.run_id}: best {result.monitor} {result.best_value:.4f} at iteration "
          f"{result.best_iteration}; registered models:/{result.model_name}/{result.model_version} "
          f"(@{result.model_alias})")
    return 0


def strict(kind):
    """An argparse type for ``int`` or ``float`` read by :func:`seizure_mlflow.config.read_number` (ASCII digits,
    finite values), as training's own parameters are."""
    from seizure_mlflow.config import read_number

    def parse(text: str):
        try:
            return read_number(kind, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = kind.__name__
    return parse


def registered_model_name(text: str) -> str:
    """An argparse type: a name MLflow's registry accepts (see :func:`seizure_mlflow.config.is_model_name`)."""
    from seizure_mlflow.config import MODEL_NAME

    if not MODEL_NAME(text):
        raise argparse.ArgumentTypeError(f"must be {MODEL_NAME.expected}, got {text!r}")
    return text


def _strict_numbers(parser: argparse.ArgumentParser) -> None:
    """Every ``type=int``/``type=float`` option of ``parser`` and its subcommands read by :func:`strict`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in dict.fromkeys(action.choices.values()):
                _strict_numbers(subparser)
        elif action.type in (int, float):
            action.type = strict(action.type)


def optional(kind):
    """An argparse type that reads an empty value (an MLproject parameter left at "") as None."""
    kind = strict(kind) if kind in (int, float) else kind

    def parse(text: str):
        return None if text.strip() == "" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _add_tune(sub) -> None:
    from seizure_mlflow.sweeps.space import BUNDLED_SPACE
    from seizure_mlflow.sweeps.tune import PRUNERS, SAMPLERS

    p = sub.add_parser("tune", help="a sweep: trials of `train` as child runs of one parent run (Optuna), pruned "
                                    "early, the best one registered",
                       description="Search the space in --space with Optuna; each trial trains like `train` (the "
                                   "options below are every trial's starting point) as a child run of one parent "
                                   "run, reports --monitor (val/total_loss unless set) to the pruner at every "
                                   "validation, and only the best "
                                   "trial is registered. Workers on other machines join with the same --study and "
                                   "storage ($SEIZURE_OPTUNA_STORAGE, or --storage).")
    p.add_argument("--space", default=str(BUNDLED_SPACE), help="YAML search space (default: the bundled lr and "
                                                             "ims_per_batch example)")
    p.add_argument("--trials", type=int, default=6, help="trials in the whole study, all workers together (default 6)")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="default tpe")
    p.add_argument("--pruner", default="median", help=f"one of {', '.join(PRUNERS)} (default median)")
    p.add_argument("--sampler-seed", type=int, default=0)
    _add_shared_study_options(p, "the sweep", "sweep")
    _add_train_options(p)
    p.set_defaults(func=cmd_tune)


def _add_shared_study_options(p, what: str, prefix: str) -> None:
    """``--study``, ``--storage``, ``--workers`` (and the hidden ``--heartbeat``) of a command whose workers share
    one study (``tune``, ``cv``)."""
    p.add_argument("--study", default="", help=f"study name; workers with the same name and storage share {what} "
                                             f"(default: a new one, {prefix}-DATE-TIME)")
    p.add_argument("--storage", default="", help="Optuna storage URL (default: $SEIZURE_OPTUNA_STORAGE, else "
                                               "sqlite:///optuna.db); never logged")
    p.add_argument("--workers", type=int, default=1, help="worker processes started here (one per GPU where there "
                                                        "are GPUs); default 1")
    p.add_argument("--heartbeat", type=int, default=None, help=argparse.SUPPRESS)  # seconds; tests shorten it


def cmd_tune(args) -> int:
    from seizure_mlflow.sweeps import tune
    from seizure_mlflow.sweeps.space import BUNDLED_SPACE

    base, beat = _shared_study_base(args)
    args.space = args.space or str(BUNDLED_SPACE)  # an MLproject parameter left at ""
    request = tune.SweepRequest(base=base, space=args.space, trials=args.trials, study=args.study,
                                storage=args.storage, sampler=args.sampler, pruner=args.pruner, workers=args.workers,
                                seed=args.sampler_seed, **beat)
    plan = tune.plan_sweep(request)
    print(f"Study {plan.study_name}: {request.trials} trials; other workers join with "
          f"`seizure-mlflow tune --study {plan.study_name}` and the same storage", flush=True)
    parent = _work_here_or_start_workers("tune", args, plan, tune, [
        "--space", args.space, "--trials", str(args.trials), "--sampler", args.sampler, "--pruner", args.pruner,
        "--sampler-seed", str(args.sampler_seed)])
    if parent is None:
        return 1
    print(f"Sweep {plan.study_name} done: parent run {parent}")
    return 0


def _shared_study_base(args):
    """The training parameters every trial or fold starts from, and the heartbeat (tests shorten it)."""
    from seizure_mlflow.config import param_fields, params_from_text

    base = params_from_text({f.name: getattr(args, f.name) for f in param_fields()})
    if base.val_max_images == "auto":  # a sample sized by each child's own timing would differ between children
        base = base.replace(val_max_images="0")
    return base, ({"heartbeat_s": args.heartbeat, "grace_s": 3 * args.heartbeat} if args.heartbeat else {})


def _work_here_or_start_workers(command: str, args, plan, study_module, extra: list[str]) -> str | None:
    """With one worker, work in this process; else make the parent run and start ``--workers`` processes
    (:func:`_start_workers`). Returns the parent run id, None when a worker failed."""
    if plan.request.workers == 1:
        return study_module.work(plan)
    parent = study_module.parent_run(study_module.load_study(plan), plan)
    codes = _start_workers(command, args, plan, extra)
    if any(codes):
        logger.error("%d of %d workers failed", sum(1 for c in codes if c), len(codes))
        return None
    return parent


def _add_cv(sub) -> None:
    p = sub.add_parser("cv", help="cross-validation by video (or patient): one child run per fold, the estimate "
                                  "with its spread on one parent run",
                       description="Pool the training and validation videos, deal them (or the patients of "
                                   "--patient-map) into --folds groups, and train each fold like `train` (the options "
                                   "below, --monitor included) with its held-out group as the validation set, as a "
                                   "child run of one parent run. The parent gets the per-fold table, the mean, "
                                   "standard deviation and 95%% interval of every validation metric, and every fold's "
                                   "curve. Nothing is registered unless --register-final. Workers on other machines "
                                   "join with the same --study and storage ($SEIZURE_OPTUNA_STORAGE, or --storage).")
    p.add_argument("--folds", type=int, default=5, help="groups of videos (or patients); as many as there are "
                                                      "groups is leave-one-out (default 5)")
    p.add_argument("--patient-map", default="", help="CSV with columns video,patient (as for prepare): a patient's "
                                                    "videos stay in one fold")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the deal into folds (default 0)")
    p.add_argument("--register-final", nargs="?", const="true", default="false",
                   help="then train once more on every video and register that model, tagged with the estimate")
    _add_shared_study_options(p, "the folds", "cv")
    _add_train_options(p)
    p.set_defaults(func=cmd_cv)


def cmd_cv(args) -> int:
    from seizure_mlflow.config import parse_bool
    from seizure_mlflow.sweeps import cv

    base, beat = _shared_study_base(args)  # every fold is measured on all of its held-out videos
    request = cv.CvRequest(base=base, folds=args.folds, patient_map=args.patient_map, fold_seed=args.fold_seed,
                           study=args.study, storage=args.storage, workers=args.workers,
                           register_final=parse_bool("register_final", args.register_final), **beat)
    plan = cv.plan_cv(request)
    print(f"Study {plan.study_name}: {len(plan.folds.parts)} folds of {plan.folds.grouped_by}; other workers join "
          f"with `seizure-mlflow cv --study {plan.study_name}`, the same options and the same storage", flush=True)
    parent = _work_here_or_start_workers("cv", args, plan, cv, [
        "--folds", str(args.folds), "--patient-map", args.patient_map, "--fold-seed", str(args.fold_seed),
        "--register-final", args.register_final])
    if parent is None:
        return 1
    print(f"Cross-validation {plan.study_name} done: parent run {parent}")
    return 0


def _start_workers(command: str, args, plan, extra: list[str]) -> list[int]:
    """``--workers N``: N worker processes of the same study (``tune`` or ``cv`` with ``extra`` options), one GPU
    each where there are GPUs. The storage URL travels in the environment, not on a command line."""
    import subprocess

    import torch

    from seizure_mlflow.config import param_fields
    from seizure_mlflow.sweeps.storage import STORAGE_ENV

    argv = [sys.executable, "-m", "seizure_mlflow", command, "--study", plan.study_name, "--workers", "1", *extra]
    if args.heartbeat:
        argv += ["--heartbeat", str(args.heartbeat)]
    for f in param_fields():
        argv += [cli_flag(f.name), str(getattr(args, f.name))]
    gpus = torch.cuda.device_count()
    processes = []
    for k in range(args.workers):
        env = {**os.environ, STORAGE_ENV: plan.storage_url}
        env.pop("MLFLOW_RUN_ID", None)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(k % gpus)
        processes.append(subprocess.Popen(argv, env=env))
    return [p.wait() for p in processes]


def _add_sample_data(sub) -> None:
    from seizure_mlflow.data.sample import DEFAULT_SAMPLE_DIR, SampleSpec

    d = SampleSpec()
    p = sub.add_parser("sample-data", help="write the synthetic sample dataset (COCO files + frames, split by video)",
                       description="Write a deterministic synthetic seizure-monitoring dataset: frames of "
                                   "videos of a patient on a bed, COCO polygons, train/val/test split by video.")
    p.add_argument("--output", default=DEFAULT_SAMPLE_DIR, help=f"folder to write (default {DEFAULT_SAMPLE_DIR})")
    p.add_argument("--num-videos", type=optional(int), default=None, help=f"default {d.num_videos} (trace: 4)")
    p.add_argument("--frames-per-video", type=int, default=d.frames_per_video)
    p.add_argument("--width", type=int, default=None, help=f"default {d.width} (trace: 160)")
    p.add_argument("--height", type=int, default=None, help=f"default {d.height} (trace: 120)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--force", action="store_true", help="rewrite even if the folder holds the same dataset")
    p.add_argument("--format", choices=("coco", "per-video", "trace"), default="coco",
                   help="coco: frames + train/val/test COCO files (default); per-video: NAME.mp4 + NAME.json "
                        "per video, the input of `prepare`; trace: 40 s videos at 25 frames/s with clonic "
                        "episodes and caregiver visits, every frame's true masks and truth.json, the input of "
                        "`trace` (sizes from --num-videos/--width/--height/--seconds when given)")
    p.add_argument("--seconds", type=float, default=None, help="with --format trace: length of each video")
    p.add_argument("--camera-motion", action="store_true", help="with --format trace: a camera that shakes at "
                                                               "2-6 Hz, pans and drifts (camera.json says when)")
    p.set_defaults(func=cmd_sample_data)


def cmd_sample_data(args) -> int:
    from seizure_mlflow.data.sample import (SampleSpec, TraceSpec, write_sample_dataset, write_sample_exports,
                                            write_trace_sample)
    from seizure_mlflow.data.staging import check_output_folder

    given = {k: v for k, v in {"num_videos": args.num_videos, "width": args.width, "height": args.height,
                               "seed": args.seed}.items() if v is not None}
    check_output_folder(args.output, "output")
    if args.format == "trace":
        trace_spec = TraceSpec(**given, **({"seconds": args.seconds} if args.seconds is not None else {}),
                               camera=args.camera_motion)
        root = write_trace_sample(args.output, trace_spec)
        print(f"{trace_spec.num_videos} trace videos in {root}/videos, their true masks in {root}/masks and the "
              f"seizure intervals in {root}/truth.json")
        return 0
    if args.seconds is not None or args.camera_motion:
        raise UserError("is for --format trace only", param="seconds" if args.seconds is not None else "camera_motion")
    spec = SampleSpec(frames_per_video=args.frames_per_video, **given)
    if args.format == "per-video":
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
    p.add_argument("--force", action="store_true", help="replace an earlier output of prepare (never any other folder)")
    p.add_argument("--merge-category-spellings", action="store_true",
                   help="make category names that differ only in case or spaces (patient, Patient) one class, with a "
                        "warning (default: an error listing the spellings)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow even under `mlflow run`")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    from seizure_mlflow.data.prepare import discover_videos, format_report, prepare_dataset, split_merged
    from seizure_mlflow.tracking.datasets import log_prepared

    try:
        ratios = tuple(float(r) for r in " ".join(args.ratios).replace(",", " ").split())
    except ValueError:
        raise UserError(f"needs three numbers (train val test); got {' '.join(args.ratios)!r}", param="ratios") from None
    if len(ratios) != 3:
        raise UserError(f"needs three numbers (train val test); got {' '.join(args.ratios)!r}", param="ratios")
    if args.merged:
        videos = split_merged(args.merged, args.input, video_key=args.video_key, video_regex=args.video_regex or None)
    else:
        videos = discover_videos(args.input)
    result = prepare_dataset(videos, args.output, ratios=ratios, seed=args.seed, patient_map=args.patient_map or None,
                             every=args.every, force=args.force, merge_category_spellings=args.merge_category_spellings)
    print(format_report(result.report))
    print(f"Wrote {result.output}: train.json, val.json, test.json, images/, split.json, report.json")
    if os.environ.get("MLFLOW_RUN_ID") and not args.no_mlflow:
        log_prepared(result)
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
    from seizure_mlflow.data.datasets import check_test_set
    from seizure_mlflow.evaluation import summary_line
    from seizure_mlflow.registry.evaluate import evaluate_and_record
    from seizure_mlflow.registry.uris import detector_from_uri, registered_version
    from seizure_mlflow.tracking.run import active_run

    _require_test_pair(args)
    test = check_test_set(args.test_json, args.test_images)
    detector = detector_from_uri(args.model_uri)
    version = registered_version(args.model_uri)
    tags = {"seizure.evaluation": "true", "seizure.model_uri": args.model_uri, "seizure.test_digest": test.digest}
    if version:
        tags.update({"seizure.model_name": version[0], "seizure.model_version": version[1]})
    with active_run(run_name="evaluate", tags=tags) as run:
        result = evaluate_and_record(detector, test, run.info.run_id, version)
    print(f"{args.model_uri}: {summary_line(result)} (run {run.info.run_id})")
    return 0


def _require_test_pair(args) -> None:
    if bool(args.test_json) != bool(args.test_images):
        raise UserError("--test-json and --test-images go together: give both, or neither", param="test_json")


def _add_promote(sub) -> None:
    from seizure_mlflow.registry.promote import DEFAULT_METRIC

    p = sub.add_parser("promote", help="move @champion to @challenger if it is better on a test metric",
                       description="Compare the challenger with the champion on the same test videos and move the "
                                   "champion alias only if the challenger is surely better: the 95%% interval of the "
                                   "difference (paired bootstrap over videos) must lie above --min-improvement. "
                                   "Without --test-json the values recorded by earlier evaluations are compared, "
                                   "unpaired (only if from the same test set).")
    p.add_argument("--model-name", required=True, type=registered_model_name)
    p.add_argument("--metric", default=DEFAULT_METRIC)
    p.add_argument("--min-improvement", type=float, default=0.0,
                   help="AP points the interval's lower end must exceed (default 0)")
    p.add_argument("--force", action="store_true", help="promote the challenger whatever the comparison says (recorded "
                                                       "as forced)")
    p.add_argument("--test-json", default="")
    p.add_argument("--test-images", default="")
    p.set_defaults(func=cmd_promote)


def cmd_promote(args) -> int:
    from seizure_mlflow.data.checks import check_coco
    from seizure_mlflow.registry.promote import promote

    _require_test_pair(args)
    test = check_coco(args.test_json, args.test_images) if args.test_json else None
    decision = promote(args.model_name, test, args.metric, min_improvement=args.min_improvement, force=args.force)
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
    p.add_argument("--force", action="store_true", help="replace an existing --output (or --overlay) file")
    p.add_argument("--accept-short-video", action="store_true", help="use a video that ends before the frames its container declares (cut short), with a warning")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from seizure_mlflow.commands.predict import PredictRequest, plan_predict, run_predict

    plan = plan_predict(PredictRequest(model_uri=args.model_uri, input=args.input, output=args.output,
                                       batch_size=args.batch_size, overlay=args.overlay, force=args.force,
                                       accept_short_video=args.accept_short_video))
    results, what = run_predict(plan)
    print(f"{len(results)} detections in {what} -> {args.output}")
    return 0


def _add_trace(sub) -> None:
    from seizure_mlflow.motion.carry import DEFAULT_DETECT_EVERY
    from seizure_mlflow.motion.rhythm import RhythmSettings

    r = RhythmSettings()
    p = sub.add_parser("trace", help="a video and a model -> the patient's motion trace, rhythm index and "
                                     "candidate seizure intervals",
                       description="Run a registered detector on a video (or a folder of videos), follow the "
                                   "patient, measure motion on the patient only (optical flow), and find intervals "
                                   "of rhythmic 2-6 Hz movement. Writes trace.csv, events.json and trace.png and "
                                   "records them in an MLflow run (never a frame or a file name).")
    p.add_argument("--model-uri", default="models:/seizure-patient-detector@champion")
    p.add_argument("--input", required=True, help="a video (any format PyAV decodes) or a folder of videos")
    p.add_argument("--output", required=True, help="new (or empty) folder to write")
    p.add_argument("--masks", default="", help="true masks instead of the model: a COCO file with frame_id per image "
                                             "(one video) or a folder of NAME.json (the signal chain without the detector)")
    p.add_argument("--truth", default="", help="JSON {video name: [{\"start\": s, \"end\": s}, ...]}: score the "
                                             "intervals (sensitivity, false alarms per hour, latency)")
    p.add_argument("--fps", type=optional(float), default=None, help="analyse at this frame rate (default: the video's; >= 25 "
                                                          "keeps the whole 0.5-12.5 Hz band)")
    p.add_argument("--method", choices=("flow", "diff"), default="flow",
                   help="flow: Farnebäck optical flow (default); diff: frame difference, cheaper")
    p.add_argument("--region", choices=("patient", "frame"), default="patient",
                   help="measure rhythm on the patient (default) or over the whole frame (the baseline of "
                        "whole-frame detectors)")
    p.add_argument("--threshold", type=float, default=r.threshold, help=f"rhythm index threshold (default {r.threshold})")
    p.add_argument("--min-duration", type=float, default=r.min_duration_s,
                   help=f"seconds the index must stay above the threshold (default {r.min_duration_s:g})")
    p.add_argument("--window", type=float, default=r.window_s, help=f"analysis window, s (default {r.window_s:g})")
    p.add_argument("--step", type=float, default=r.step_s, help=f"window step, s (default {r.step_s:g})")
    p.add_argument("--target-false-alarms-per-hour", type=optional(float), default=None,
                   help="with --truth: choose, off the threshold curve, the threshold with the highest sensitivity "
                        "at no more false alarms per hour than this (default: at zero false alarms)")
    p.add_argument("--min-score", type=float, default=0.5, help="detections below this score are ignored")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--overlay", action="store_true", help="also write overlay.mp4 (the video with the patient's mask "
                                                         "and the running index; kept local, never logged)")
    p.add_argument("--no-camera-compensation", action="store_true",
                   help="keep the camera's own motion in the flow (default: fitted on the background and removed)")
    p.add_argument("--detect-every", type=optional(int), default=None, metavar="K",
                   help=f"run the detector on every K-th analysed frame and carry the masks by the optical flow in "
                        f"between, re-detecting where carrying drifts (default {DEFAULT_DETECT_EVERY} with --method "
                        f"flow, 1 with diff; 1: every frame)")
    p.add_argument("--engine", choices=("serial", "ray"), default="serial",
                   help="serial: the videos one after another here (default); ray: videos, and long videos in "
                        "segments, on a Ray cluster (pip install 'seizure-mlflow[ray]')")
    p.add_argument("--ray-address", default="", help="with --engine ray: join this cluster (auto, ray://HOST:10001); "
                                                   "default: start a local one")
    p.add_argument("--ray-workers", type=int, default=0, help="with --engine ray: actors (default: one per GPU of "
                                                            "the cluster, else one per CPU)")
    p.add_argument("--segment-seconds", type=float, default=600.0,
                   help="with --engine ray: measure videos in segments of this many seconds (default 600)")
    p.add_argument("--no-mlflow", action="store_true", help="do not record an MLflow run")
    p.add_argument("--accept-short-video", action="store_true", help="use a video that ends before the frames its container declares (cut short), with a warning")
    p.set_defaults(func=cmd_trace)


def cmd_trace(args) -> int:
    from dataclasses import replace

    from seizure_mlflow.motion.carry import DEFAULT_DETECT_EVERY, CarryRules
    from seizure_mlflow.motion.pipeline import TraceOptions
    from seizure_mlflow.motion.rhythm import RhythmSettings
    from seizure_mlflow.commands.trace import TraceRequest, plan_trace, run_trace

    if args.batch_size < 1:
        raise UserError(f"must be >= 1, got {args.batch_size}", param="batch_size")
    target = args.target_false_alarms_per_hour
    if target is not None and not args.truth:
        raise UserError("needs --truth: the threshold is chosen by scoring against it",
                        param="target_false_alarms_per_hour")
    if target is not None and target < 0:
        raise UserError(f"must be >= 0, got {target}", param="target_false_alarms_per_hour")
    detect_every = args.detect_every  # frame differences carry no masks: there the detector sees every frame
    if detect_every is None:
        detect_every = DEFAULT_DETECT_EVERY if args.method == "flow" else 1
    rhythm = replace(RhythmSettings(), threshold=args.threshold, min_duration_s=args.min_duration,
                     window_s=args.window, step_s=args.step)
    options = TraceOptions(fps=args.fps, method=args.method, region=args.region, rhythm=rhythm,
                           min_score=args.min_score, batch_size=args.batch_size,
                           accept_short_video=args.accept_short_video,
                           compensate_camera=not args.no_camera_compensation,
                           carry=CarryRules(every=detect_every))
    request = TraceRequest(input=args.input, output=args.output, model_uri=args.model_uri, masks=args.masks,
                           truth=args.truth, options=options, overlay=args.overlay, log_to_mlflow=not args.no_mlflow,
                           target_false_alarms_per_hour=target, engine=args.engine, ray_address=args.ray_address,
                           ray_workers=args.ray_workers, segment_seconds=args.segment_seconds)
    summary = run_trace(plan_trace(request))
    events = sum(v["events"] for v in summary["videos"])
    print(f"{len(summary['videos'])} video(s), {sum(v['seconds'] for v in summary['videos']):.0f} s: {events} "
          f"candidate interval(s) -> {args.output}")
    if summary["scores"]:
        s = summary["scores"]
        sensitivity = "n/a" if s["sensitivity"] is None else f"{s['sensitivity']:.0%}"
        latency = "n/a" if s["mean_latency_s"] is None else f"{s['mean_latency_s']:.1f} s"
        print(f"sensitivity {sensitivity} ({s['detected']}/{s['events']}), {s['false_alarms']} false alarm(s) "
              f"({s['false_alarms_per_hour']:.1f}/h), mean latency {latency}")
        z, chosen = summary["szcore"], summary["thresholds"]["chosen"]
        print(f"SzCORE: sensitivity {z.get('sensitivity', float('nan')):.0%}, precision "
              f"{z.get('precision', float('nan')):.0%}, {z['fp_per_24h']:.1f} false detections per 24 h")
        print(f"threshold curve: {chosen['rule']}: " + (f"threshold {chosen['threshold']:g}" if chosen["threshold"]
                                                       is not None else "no threshold of the range meets it"))
    return 0


def _add_bundle(sub) -> None:
    p = sub.add_parser("bundle", help="a registered model and every wheel it needs, in one folder, for offline servers",
                       description="Write one folder with the model, the wheels of its whole environment (for this "
                                   "machine's Python and platform) and install.sh, which installs them with "
                                   "pip --no-index and serves the model.")
    p.add_argument("--model-uri", required=True)
    p.add_argument("--output", required=True, help="new folder to write")
    p.add_argument("--torch", choices=("pypi", "cpu"), default="pypi",
                   help="pypi: PyPI's torch builds (CUDA; they run on a CPU too); cpu: PyTorch's CPU-only builds "
                        "(a much smaller bundle; needs download.pytorch.org while bundling)")
    p.set_defaults(func=cmd_bundle)


def cmd_bundle(args) -> int:
    from seizure_mlflow.registry.bundle import write_bundle

    out = write_bundle(args.model_uri, args.output, torch=args.torch)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"Bundle in {out} ({size / 2**30:.1f} GiB): install and serve offline with `bash {out}/install.sh --serve`")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seizure-mlflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    _add_train(sub)
    _add_tune(sub)
    _add_cv(sub)
    _add_sample_data(sub)
    _add_prepare(sub)
    _add_evaluate(sub)
    _add_promote(sub)
    _add_predict(sub)
    _add_trace(sub)
    _add_bundle(sub)
    _strict_numbers(parser)
    return parser


REQUIRED_MODULES = ("torch", "detectron2", "mlflow", "cv2", "pycocotools", "av")


def missing_dependencies() -> list[str]:
    """The project's dependencies that this Python cannot import (found without importing them)."""
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def needs_tracking_server(args) -> bool:
    """Whether a command will talk to MLflow, so that a dead server stops it before any work (``train`` checks
    for itself, in :func:`~seizure_mlflow.commands.train.plan_run`)."""
    if args.command in ("evaluate", "promote", "bundle", "tune", "cv"):
        return True
    if args.command == "predict":
        return args.model_uri.startswith(("models:/", "runs:/"))
    if args.command == "trace":
        return not args.no_mlflow or (not args.masks and args.model_uri.startswith(("models:/", "runs:/")))
    if args.command == "prepare":
        return bool(os.environ.get("MLFLOW_RUN_ID")) and not args.no_mlflow
    return False


def main(argv: Sequence[str] | None = None) -> int:
    missing = missing_dependencies()
    if missing:
        print(f"error: this Python ({sys.executable}) cannot import {', '.join(missing)}: it is not the project's "
              "environment. Run `make setup`, then `source .venv/bin/activate` (or call .venv/bin/seizure-mlflow); "
              "`mlflow run . --env-manager local` runs its entry points with the `python` on PATH, so activate "
              "the venv first.", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage and the error (or --help): its status, returned
        return exc.code if isinstance(exc.code, int) else 2
    try:
        from seizure_mlflow.tracking.stores import bound_http_retries, check_tracking_server

        bound_http_retries()
        if needs_tracking_server(args):
            check_tracking_server()
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc.worded_for(cli_option)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
