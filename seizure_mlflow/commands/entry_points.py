"""The commands: each one's request type, the function that runs it, and its MLproject entry point.

:data:`COMMANDS` is what the command line is built from (:mod:`seizure_mlflow.cli`) and what the ``MLproject``
file is written from (:func:`mlproject_text`; ``python -m seizure_mlflow.commands.entry_points > MLproject``
writes it again, and a test keeps the file equal to it). Adding an option to a command is one field of its
request type (:mod:`seizure_mlflow.commands.requests`); adding a command is one :class:`Command` here.
"""

from __future__ import annotations

import importlib
import textwrap
from dataclasses import dataclass, field
from typing import Any

from seizure_mlflow.config import TrainParams
from seizure_mlflow.options import mlproject_parameters
from seizure_mlflow.commands import requests as r

ENTRY_PREFIX = "bash scripts/install_detectron2.sh --only-in-env >&2 && python -m seizure_mlflow"
# The training parameters a sweep's or a cross-validation's entry point exposes (the others keep their defaults).
STUDY_TRAIN_PARAMS = ("train_json", "train_images", "val_json", "val_images", "config", "max_iter", "eval_period",
                      "min_size", "model_name", "opts", "monitor", "ap_period", "patience", "output_dir")
CV_TRAIN_PARAMS = ("train_json", "train_images", "val_json", "val_images", "test_json", "test_images", "config",
                   "weights", "lr", "ims_per_batch", "max_iter", "eval_period", "min_size", "seed", "model_name",
                   "opts", "monitor", "ap_period", "patience", "output_dir")


@dataclass(frozen=True)
class EntryPoint:
    """An MLproject entry point of a command: its name, the training parameters it exposes beside the request's
    own (``train_params``), defaults of its own (``defaults``) and options it always passes (``fixed``)."""

    name: str
    train_params: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    fixed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    """``seizure-mlflow NAME``: ``request`` made from its options, then ``run`` (``module:function``, imported
    when the command runs) called with it; it returns the exit status. ``train_options``: the command also takes
    every :class:`TrainParams` option, as the request's ``base``."""

    name: str
    request: type
    run: str
    help: str
    description: str
    train_options: bool = False
    entry_point: EntryPoint | None = None
    after_interrupt: str = "Run the command again."  # what the interrupted user can do (train says it itself)

    def runner(self):
        module, function = self.run.split(":")
        return getattr(importlib.import_module(module), function)


STUDY_CONTINUES = ("The study keeps every finished unit: the same command with --study NAME (the name printed "
                   "when it started) and the same storage continues it, and runs the interrupted unit again.")

COMMANDS: tuple[Command, ...] = (
    Command("train", TrainParams, "seizure_mlflow.commands.train:run_command",
            "train the hooked Mask R-CNN, log to MLflow, register the best checkpoint",
            "Train on COCO files (default: the synthetic sample data), log params, losses and plots to MLflow, and "
            "register the best checkpoint (lowest validation loss, or highest validation AP with --monitor "
            "val/segm/AP).", entry_point=EntryPoint("main")),
    Command("tune", r.SweepRequest, "seizure_mlflow.sweeps.tune:run_command",
            "a sweep: trials of `train` as child runs of one parent run (Optuna), pruned early, the best one "
            "registered",
            "Search the space in --space with Optuna; each trial trains like `train` (the options below are every "
            "trial's starting point) as a child run of one parent run, reports --monitor (val/total_loss unless set) "
            "to the pruner at every validation, and only the best trial is registered. Workers on other machines "
            "join with the same --study and storage ($SEIZURE_OPTUNA_STORAGE, or --storage).",
            train_options=True,
            entry_point=EntryPoint("tune", STUDY_TRAIN_PARAMS, {"max_iter": 300}, ("--system-metrics", "false")),
            after_interrupt=STUDY_CONTINUES),
    Command("cv", r.CvRequest, "seizure_mlflow.sweeps.cv:run_command",
            "cross-validation by video (or patient): one child run per fold, the estimate with its spread on one "
            "parent run",
            "Pool the training and validation videos, deal them (or the patients of --patient-map) into --folds "
            "groups, and train each fold like `train` (the options below, --monitor included) with its held-out "
            "group as the validation set, as a child run of one parent run. The parent gets the per-fold table, the "
            "mean, standard deviation and 95%% interval of every validation metric, and every fold's curve. Nothing "
            "is registered unless --register-final. Workers on other machines join with the same --study and "
            "storage ($SEIZURE_OPTUNA_STORAGE, or --storage).",
            train_options=True,
            entry_point=EntryPoint("cv", CV_TRAIN_PARAMS, {"max_iter": 300}, ("--system-metrics", "false")),
            after_interrupt=STUDY_CONTINUES),
    Command("budget", r.BudgetRequest, "seizure_mlflow.sweeps.budget:run_command",
            "the annotation-budget curve: child runs on nested subsets (frames per video x videos), test AP of each",
            "Train like `train` (the options below) on nested subsets of the training set: each share of --frames "
            "of each video (spread evenly in time) by each number of --videos, --seeds times, as child runs of one "
            "parent run, each evaluated on the test videos (AP with its bootstrap interval over videos). The parent "
            "holds the table, the curve (test AP against masks annotated, one line per number of videos) and the "
            "answer at the largest budget: whether the next masks buy more as new videos or as more frames of the "
            "same videos. Workers on other machines join with the same --study and storage.",
            train_options=True,
            entry_point=EntryPoint("budget", CV_TRAIN_PARAMS, {"max_iter": 300}, ("--system-metrics", "false")),
            after_interrupt=STUDY_CONTINUES),
    Command("sample-data", r.SampleDataRequest, "seizure_mlflow.commands.sample_data:run_command",
            "write the synthetic sample dataset (COCO files + frames, split by video)",
            "Write a deterministic synthetic seizure-monitoring dataset: frames of videos of a patient on a bed, "
            "COCO polygons, train/val/test split by video.", entry_point=EntryPoint("sample_data")),
    Command("prepare", r.PrepareRequest, "seizure_mlflow.commands.prepare:run_command",
            "per-video COCO exports (+ frames or videos) -> train/val/test, split by video",
            "Merge per-video annotation exports (NAME.json with a NAME/ frame folder or a NAME.mp4|.avi|.mov|.mkv "
            "video) or one merged COCO file into train/val/test COCO files, split by video (or by patient), "
            "extracting the annotated frames.", entry_point=EntryPoint("prepare")),
    Command("evaluate", r.EvaluateRequest, "seizure_mlflow.commands.evaluate:run_evaluate",
            "COCO AP (boxes and masks) of a model URI on a test set, logged to MLflow",
            "Evaluate models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/model on a COCO test set (default: the "
            "sample test split) with Detectron2's COCOEvaluator; log metrics, predictions.json, per-category AP and a "
            "precision-recall plot; tag the version.",
            entry_point=EntryPoint("evaluate", defaults={"model_uri": r.CHAMPION_URI})),
    Command("promote", r.PromoteRequest, "seizure_mlflow.commands.evaluate:run_promote",
            "move @champion to @challenger if it is better on a test metric",
            "Compare the challenger with the champion on the same test videos and move the champion alias only if "
            "the challenger is surely better: the 95%% interval of the difference (paired bootstrap over videos) "
            "must lie above --min-improvement. Without --test-json the values recorded by earlier evaluations are "
            "compared, unpaired (only if from the same test set)."),
    Command("predict", r.PredictRequest, "seizure_mlflow.commands.predict:run_command",
            "run a model URI on images, a folder or a video; write COCO-style results",
            "Load a registered detector (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model) and write its "
            "detections as COCO results JSON. A video is decoded as a stream; its results carry frame_index and "
            "timestamp.",
            entry_point=EntryPoint("predict", defaults={"model_uri": r.CHAMPION_URI, "output": "predictions.json"})),
    Command("trace", r.TraceRequest, "seizure_mlflow.commands.trace:run_command",
            "a video and a model -> the patient's motion trace, rhythm index and candidate seizure intervals",
            "Run a registered detector on a video (or a folder of videos), follow the patient, measure motion on the "
            "patient only (optical flow), and find intervals of rhythmic 2-6 Hz movement. Writes trace.csv, "
            "events.json and trace.png and records them in an MLflow run (never a frame or a file name).",
            entry_point=EntryPoint("trace", defaults={"output": "trace"})),
    Command("pre-annotate", r.PreAnnotateRequest, "seizure_mlflow.commands.pre_annotate:run_command",
            "a model's masks on a video, frames or a frame list -> COCO for CVAT and prepare, Label Studio tasks",
            "Run a registered model (the champion by default) on a new video, a frame folder or a frame list and write "
            "its masks as polygons with their scores: NAME.json (COCO 1.0, for CVAT's import and for prepare) beside "
            "the frames in NAME/, and label-studio/NAME.json (Label Studio tasks with the masks as predictions, "
            "carrying the model version). With --every K the model runs on every K-th frame of a video and the "
            "masks are carried by the optical flow in between (marked carried). Nothing leaves this machine."),
    Command("select-frames", r.SelectFramesRequest, "seizure_mlflow.commands.select_frames:run_command",
            "the frames of unlabelled videos worth drawing, within a budget per video",
            "Rank the frames of each video by how much a mask would teach the model (strategy uncertainty: low "
            "scores, masks the optical flow does not carry from the previous frame), or spread them evenly (the "
            "default) or at random, at most --budget per video and no two closer than --window seconds. Writes the "
            "frames (a CVAT task's images), their list (the input of pre-annotate) and selection.csv, and records "
            "in MLflow which model chose them, with what strategy and budget, by digest: never a file name.",
            entry_point=EntryPoint("select_frames")),
    Command("bundle", r.BundleRequest, "seizure_mlflow.commands.bundle:run_command",
            "a registered model and every wheel it needs, in one folder, for offline servers",
            "Write one folder with the model, the wheels of its whole environment (for this machine's Python and "
            "platform) and install.sh, which installs them with pip --no-index and serves the model."),
)


def command(name: str) -> Command:
    return next(c for c in COMMANDS if c.name == name)


def entry_point_parameters(c: Command) -> list[tuple[str, str, str | None]]:
    """``[(parameter, flag, default text or None)]`` of a command's entry point, in the order they are passed."""
    e = c.entry_point
    own = mlproject_parameters(c.request, defaults=e.defaults)
    if c.train_options:
        own += mlproject_parameters(TrainParams, only=e.train_params, defaults=e.defaults)
    return own


def _yaml_text(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mlproject_text() -> str:
    """The ``MLproject`` file: one entry point per command that has one, each passing every parameter to its
    option."""
    lines = ["# Written by `python -m seizure_mlflow.commands.entry_points > MLproject` from the commands' requests",
             "# (seizure_mlflow/commands/requests.py and TrainParams): change those, not this file.",
             "name: seizure-mlflow", "", "conda_env: conda.yaml", "", "entry_points:"]
    for c in COMMANDS:
        if c.entry_point is None:
            continue
        parameters = entry_point_parameters(c)
        lines += [f"  {c.entry_point.name}:", "    parameters:"]
        for name, _, default in parameters:
            spec = "{type: string}" if default is None else f"{{type: string, default: {_yaml_text(default)}}}"
            lines.append(f"      {name}: {spec}")
        words = [ENTRY_PREFIX, c.name] + [f"{flag} {{{name}}}" for name, flag, _ in parameters]
        words += list(c.entry_point.fixed)
        lines += ["    command: >-"] + textwrap.wrap(" ".join(words), 110, initial_indent="      ",
                                                       subsequent_indent="      ", break_on_hyphens=False,
                                                       break_long_words=False)
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(mlproject_text(), end="")
