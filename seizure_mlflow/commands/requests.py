"""Every command's request: its options, declared once (see :mod:`seizure_mlflow.options`).

Each field is an option of ``seizure-mlflow COMMAND`` and, unless ``mlproject=False``, a parameter of the
command's MLproject entry point (:mod:`seizure_mlflow.commands.entry_points` writes the ``MLproject`` file
from these). ``train``'s request is :class:`~seizure_mlflow.config.TrainParams`; ``tune`` and ``cv`` take its
options too, as every trial's or fold's starting point. A field's rule is checked when the request is made,
from the command line or from Python. Light imports only: the command line is built from this module before
torch or MLflow loads.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from seizure_mlflow.config import BUNDLED_CONFIG_DIR, DEFAULT_MODEL_NAME, MODEL_NAME, TrainParams
from seizure_mlflow.errors import UserError
from seizure_mlflow.metrics.names import DEFAULT_TEST_METRIC, TEST_METRICS
from seizure_mlflow.motion.carry import DEFAULT_DETECT_EVERY
from seizure_mlflow.sample.scenes import DEFAULT_SAMPLE_DIR
from seizure_mlflow.options import (NON_NEGATIVE_INT, NON_NEGATIVE_NUMBER, POSITIVE_INT, POSITIVE_NUMBER, SCORE,
                                    SEED, Rule, at_least, check_options, option)

CHAMPION_URI = f"models:/{DEFAULT_MODEL_NAME}@champion"

BUNDLED_SPACE = BUNDLED_CONFIG_DIR / "sweep_lr_batch.yaml"
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none", "hyperband")
HEARTBEAT_S = 30  # a shared study's trial whose worker has not beaten for GRACE_S is failed and retried once
GRACE_S = 120
REGISTRY_SCHEMES = ("models:/", "runs:/")  # model URIs that the tracking server resolves
SHORT_VIDEO_HELP = "use a video that ends before the frames its container declares (cut short), with a warning"


class Request:
    """A command's request: every option field checked when it is made (:func:`check_options`).

    ``uses_tracking_server``: whether the command will talk to MLflow, so that a dead server stops it before any
    work (``train`` checks for itself, in :func:`~seizure_mlflow.commands.train.plan_run`)."""

    uses_tracking_server = False

    def __post_init__(self) -> None:
        check_options(self)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


# A study's name is a folder under output_dir (sweeps/NAME, cv/NAME): one plain folder name, nothing that climbs out.
STUDY_NAME = Rule(lambda v: v == "" or (isinstance(v, str) and len(v) <= 200 and v not in (".", "..")
                                        and all(c.isalnum() or c in "-_.+@" for c in v)),
                  "a plain name (letters, digits and - _ . + @; not . or ..), which names a folder")


@dataclass(frozen=True)
class SharedStudyOptions(Request):
    """The options of a command whose workers share one study (``tune``, ``cv``); ``base`` is every trial's or
    fold's :class:`TrainParams`."""

    uses_tracking_server = True

    base: TrainParams = field(default_factory=TrainParams)
    study: str = option("", "study name; workers with the same name and storage share it (default: a new one, "
                            "named after the date and time); it names a folder under the output folder",
                        rule=STUDY_NAME)
    storage: str = option("", "Optuna storage URL (default: $SEIZURE_OPTUNA_STORAGE, else sqlite:///optuna.db); "
                              "never logged", mlproject=False)
    workers: int = option(1, "worker processes started here (one per GPU where there are GPUs); default 1",
                          rule=at_least(1))
    heartbeat: int | None = option(None, "seconds between a worker's heartbeats (tests shorten it)", hidden=True,
                                   mlproject=False, rule=POSITIVE_INT)

    @property
    def heartbeat_s(self) -> int:
        return self.heartbeat or HEARTBEAT_S

    @property
    def grace_s(self) -> int:
        return 3 * self.heartbeat if self.heartbeat else GRACE_S


@dataclass(frozen=True)
class SweepRequest(SharedStudyOptions):
    """``tune``: a sweep over ``space``, ``trials`` trials in the whole study."""

    trials: int = option(6, "trials in the whole study, all workers together (default 6)", rule=at_least(1))
    space: str = option("", f"YAML search space (default: the bundled lr and ims_per_batch example, "
                            f"{BUNDLED_SPACE.name})")
    sampler: str = option("tpe", "default tpe", choices=SAMPLERS)
    pruner: str = option("median", f"one of {', '.join(PRUNERS)} (default median)", choices=PRUNERS)
    sampler_seed: int = option(0, "seed of the sampler (default 0)", rule=SEED)

    @property
    def space_file(self) -> str:
        return self.space or str(BUNDLED_SPACE)


@dataclass(frozen=True)
class CvRequest(SharedStudyOptions):
    """``cv``: cross-validation by video (or patient), ``folds`` folds."""

    folds: int = option(5, "groups of videos (or patients); as many as there are groups is leave-one-out "
                           "(default 5)")
    patient_map: str = option("", "CSV with columns video,patient (as for prepare): a patient's videos stay in one "
                                  "fold")
    fold_seed: int = option(0, "seed of the deal into folds (default 0)", rule=SEED)
    register_final: bool = option(False, "then train once more on every video and register that model, tagged "
                                         "with the estimate")


def _numbers(words: tuple[str, ...]) -> tuple[float, ...]:
    """Numbers from words that may each hold several, spaces or commas between (``"0.6 0.2" "0.2"``); () when
    one is no number."""
    from seizure_mlflow.options import read_number

    try:
        return tuple(read_number(float, w) for w in " ".join(words).replace(",", " ").split())
    except ValueError:
        return ()


NUMBERS = Rule(lambda v: len(_numbers(v)) > 0, "one or more numbers")


@dataclass(frozen=True)
class BudgetRequest(SharedStudyOptions):
    """``budget``: the annotation-budget curve, one child run per cell of the grid (and seed)."""

    frames: tuple[str, ...] = option(("1", "0.5", "0.2"), "shares of each training video's frames (default 1 0.5 "
                                                           "0.2), spread evenly in time and nested", rule=NUMBERS,
                                     metavar="SHARE")
    videos: tuple[str, ...] = option(("1", "0.67", "0.33"), "numbers of training videos: shares of them (<= 1) or "
                                                             "counts (default 1 0.67 0.33), nested", rule=NUMBERS,
                                     metavar="N")
    seeds: int = option(1, "training seeds per cell (default 1)", rule=at_least(1))
    grid_seed: int = option(0, "seed of the order in which videos join the grid (default 0)", rule=SEED)

    @property
    def frame_shares(self) -> tuple[float, ...]:
        return _numbers(self.frames)

    @property
    def video_values(self) -> tuple[float, ...]:
        return _numbers(self.videos)


@dataclass(frozen=True)
class SampleDataRequest(Request):
    output: str = option(DEFAULT_SAMPLE_DIR, f"folder to write (default {DEFAULT_SAMPLE_DIR})")
    format: str = option("coco", "coco: frames + train/val/test COCO files (default); per-video: NAME.mp4 + "
                                 "NAME.json per video, the input of `prepare`; trace: 40 s videos at 25 frames/s with "
                                 "clonic episodes and caregiver visits, every frame's true masks and truth.json, the "
                                 "input of `trace` (sizes from --num-videos/--width/--height/--seconds when given)",
                         choices=("coco", "per-video", "trace"))
    num_videos: int | None = option(None, "default 15 (trace: 4)")
    frames_per_video: int = option(8, "default 8")
    width: int | None = option(None, "default 192 (trace: 160)", mlproject=False)
    height: int | None = option(None, "default 144 (trace: 120)", mlproject=False)
    seed: int = option(0, "default 0", rule=SEED)
    force: bool = option(False, "rewrite even if the folder holds the same dataset", mlproject=False)
    seconds: float | None = option(None, "with --format trace: length of each video", mlproject=False)
    camera_motion: bool = option(False, "with --format trace: a camera that shakes at 2-6 Hz, pans and drifts "
                                        "(camera.json says when)", mlproject=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format != "trace" and (self.seconds is not None or self.camera_motion):
            raise UserError("is for --format trace only", param="seconds" if self.seconds is not None else "camera_motion")


RATIOS = Rule(lambda v: len(_numbers(v)) == 3, "three numbers (train val test)")


@dataclass(frozen=True)
class PrepareRequest(Request):
    input: str = option("", "folder of per-video exports, or with --merged the image root", required=True)
    output: str = option("", "new folder for train/val/test.json, images/, split.json, report.json", required=True)
    ratios: tuple[str, ...] = option(("0.6", "0.2", "0.2"), "train val test shares (three numbers, or one string "
                                                            "'0.6 0.2 0.2'); default 0.6 0.2 0.2", rule=RATIOS,
                                     metavar="R")
    seed: int = option(0, "seed of the split (default 0)", rule=SEED)
    patient_map: str = option("", "CSV video,patient: all videos of a patient share a split")
    merged: str = option("", "one merged COCO file instead of per-video exports", mlproject=False)
    video_key: str = option("video_id", "with --merged: the image field naming the video", mlproject=False)
    video_regex: str = option("", "with --merged: regex over file_name whose group is the video", mlproject=False)
    every: int = option(0, "also extract every N-th unannotated frame (images only)", mlproject=False,
                        rule=at_least(0))
    force: bool = option(False, "replace an earlier output of prepare (never any other folder)", mlproject=False)
    merge_category_spellings: bool = option(False, "make category names that differ only in case or spaces "
                                                   "(patient, Patient) one class, with a warning (default: an error "
                                                   "listing the spellings)", mlproject=False)
    no_mlflow: bool = option(False, "do not log to MLflow even under `mlflow run`", mlproject=False)
    pre_labels: str = option("", "pre-annotate's output folder: compare each video's corrected export with the "
                                 "pre-labels it came from (NAME.json) and report how much the annotators changed "
                                 "(share of masks kept, mean IoU of the kept ones, masks deleted and added)")

    @property
    def uses_tracking_server(self) -> bool:  # under `mlflow run`, the prepared split is logged to its run
        return bool(os.environ.get("MLFLOW_RUN_ID")) and not self.no_mlflow

    @property
    def split_ratios(self) -> tuple[float, float, float]:
        return _numbers(self.ratios)  # type: ignore[return-value]


@dataclass(frozen=True)
class TestSetOptions(Request):
    """A test set given as a COCO file and its image folder, together or not at all."""

    test_json: str = option("", "test COCO file (default: the sample test split)")
    test_images: str = option("", "test image folder")

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.test_json) != bool(self.test_images):
            raise UserError("--test-json and --test-images go together: give both, or neither", param="test_json")


@dataclass(frozen=True)
class EvaluateRequest(TestSetOptions):
    uses_tracking_server = True

    model_uri: str = option("", "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/model", required=True)


@dataclass(frozen=True)
class PromoteRequest(TestSetOptions):
    uses_tracking_server = True

    model_name: str = option("", "the registered model whose challenger may become champion", required=True,
                             rule=MODEL_NAME)
    metric: str = option(DEFAULT_TEST_METRIC, "the test metric compared (default %(default)s)", choices=TEST_METRICS)
    min_improvement: float = option(0.0, "AP points the interval's lower end must exceed (default 0)",
                                    rule=NON_NEGATIVE_NUMBER)
    force: bool = option(False, "promote the challenger whatever the comparison says (recorded as forced)")


@dataclass(frozen=True)
class PredictRequest(Request):
    model_uri: str = option("", "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/model", required=True)
    input: str = option("", "an image, a folder of PNG/JPEG images, or a video file", required=True)
    output: str = option("", "results JSON to write", required=True)
    batch_size: int = option(8, "images per forward pass (default 8)", rule=at_least(1))
    overlay: str = option("", "with a video input: also write this video with detections drawn")
    force: bool = option(False, "replace an existing --output (or --overlay) file", mlproject=False)
    accept_short_video: bool = option(False, SHORT_VIDEO_HELP, mlproject=False)

    @property
    def uses_tracking_server(self) -> bool:
        return self.model_uri.startswith(REGISTRY_SCHEMES)


@dataclass(frozen=True)
class TraceRequest(Request):
    """``trace``: a video (or a folder of videos) and a model (or true masks) -> motion trace and intervals."""

    model_uri: str = option(CHAMPION_URI, "the detector (default %(default)s)")
    input: str = option("", "a video (any format PyAV decodes) or a folder of videos", required=True)
    output: str = option("", "new (or empty) folder to write", required=True)
    masks: str = option("", "true masks instead of the model: a COCO file with frame_id per image (one video) or a "
                            "folder of NAME.json (the signal chain without the detector)")
    truth: str = option("", "JSON {video name: [{\"start\": s, \"end\": s}, ...]}: score the intervals "
                            "(sensitivity, false alarms per hour, latency)")
    fps: float | None = option(None, "analyse at this frame rate (default: the video's; >= 25 keeps the whole "
                                     "0.5-12.5 Hz band)", rule=POSITIVE_NUMBER)
    method: str = option("flow", "flow: Farnebäck optical flow (default); diff: frame difference, cheaper",
                         choices=("flow", "diff"))
    region: str = option("patient", "measure rhythm on the patient (default) or over the whole frame (the "
                                    "baseline of whole-frame detectors)", choices=("patient", "frame"))
    threshold: float = option(0.6, "rhythm index threshold (default %(default)s)")
    min_duration: float = option(2.0, "seconds the index must stay above the threshold (default %(default)s)",
                                 rule=NON_NEGATIVE_NUMBER)
    window: float = option(4.0, "analysis window, s (default %(default)s)", mlproject=False)
    step: float = option(0.5, "window step, s (default %(default)s)", mlproject=False)
    min_score: float = option(0.5, "detections below this score are ignored (default %(default)s)", rule=SCORE)
    target_false_alarms_per_hour: float | None = option(
        None, "with --truth: choose, off the threshold curve, the threshold with the highest sensitivity at no "
              "more false alarms per hour than this (default: at zero false alarms)", rule=NON_NEGATIVE_NUMBER)
    detect_every: int | None = option(None, f"run the detector on every K-th analysed frame and carry the masks by "
                                            f"the optical flow in between, re-detecting where carrying drifts "
                                            f"(default {DEFAULT_DETECT_EVERY} with --method flow, 1 with diff; 1: "
                                            f"every frame)", metavar="K", rule=POSITIVE_INT)
    engine: str = option("serial", "serial: the videos one after another here (default); ray: videos, and long "
                                   "videos in segments, on a Ray cluster (pip install 'seizure-mlflow[ray]')",
                         choices=("serial", "ray"))
    ray_address: str = option("", "with --engine ray: join this cluster (auto, ray://HOST:10001); default: start "
                                  "a local one")
    ray_workers: int = option(0, "with --engine ray: actors (default: one per GPU of the cluster, else one per CPU)",
                              mlproject=False, rule=NON_NEGATIVE_INT)
    segment_seconds: float = option(600.0, "with --engine ray: measure videos in segments of this many seconds "
                                           "(default 600)", mlproject=False, rule=POSITIVE_NUMBER)
    batch_size: int = option(8, "frames per forward pass (default 8)", rule=at_least(1), mlproject=False)
    overlay: bool = option(False, "also write overlay.mp4 (the video with the patient's mask and the running index; "
                                  "kept local, never logged)", mlproject=False)
    no_camera_compensation: bool = option(False, "keep the camera's own motion in the flow (default: fitted on the "
                                                 "background and removed)", mlproject=False)
    no_mlflow: bool = option(False, "do not record an MLflow run", mlproject=False)
    accept_short_video: bool = option(False, SHORT_VIDEO_HELP, mlproject=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_false_alarms_per_hour is not None and not self.truth:
            raise UserError("needs --truth: the threshold is chosen by scoring against it",
                            param="target_false_alarms_per_hour")

    @property
    def log_to_mlflow(self) -> bool:
        return not self.no_mlflow

    @property
    def uses_tracking_server(self) -> bool:
        return self.log_to_mlflow or (not self.masks and self.model_uri.startswith(REGISTRY_SCHEMES))

    @property
    def options(self):
        """The trace's analysis settings (:class:`~seizure_mlflow.motion.pipeline.TraceOptions`)."""
        from dataclasses import replace

        from seizure_mlflow.motion.carry import CarryRules
        from seizure_mlflow.motion.pipeline import TraceOptions
        from seizure_mlflow.motion.rhythm import RhythmSettings

        every = self.detect_every  # frame differences carry no masks: there the detector sees every frame
        if every is None:
            every = DEFAULT_DETECT_EVERY if self.method == "flow" else 1
        rhythm = replace(RhythmSettings(), threshold=self.threshold, min_duration_s=self.min_duration,
                         window_s=self.window, step_s=self.step)
        return TraceOptions(fps=self.fps, method=self.method, region=self.region, rhythm=rhythm,
                            min_score=self.min_score, batch_size=self.batch_size,
                            accept_short_video=self.accept_short_video,
                            compensate_camera=not self.no_camera_compensation, carry=CarryRules(every=every))


@dataclass(frozen=True)
class PreAnnotateRequest(Request):
    """``pre-annotate``: a model's masks on a video, a frame folder or a frame list, as files annotators import."""

    model_uri: str = option(CHAMPION_URI, "the model that pre-labels (default %(default)s)")
    input: str = option("", "a video, a folder of frames, or a frame list (.txt, one image path per line, as "
                            "select-frames writes it)", required=True)
    output: str = option("", "new folder: NAME.json (COCO, for CVAT's COCO 1.0 import and for prepare), NAME/ "
                             "(the frames), label-studio/NAME.json (Label Studio tasks with the masks as predictions)",
                         required=True)
    every: int = option(1, "with a video: detect on every K-th frame and carry the masks by the optical flow in "
                           "between, marked carried (default 1: detect on every frame)", rule=at_least(1),
                        metavar="K")
    min_score: float = option(0.5, "masks below this score are left out (default %(default)s)", rule=SCORE)
    image_url: str = option("/data/local-files/?d=", "Label Studio's URL prefix of the frames; NAME/FILE is "
                                                     "appended (default: Label Studio's local files, %(default)s)")
    batch_size: int = option(8, "frames per forward pass (default 8)", rule=at_least(1), mlproject=False)
    force: bool = option(False, "replace an earlier output of pre-annotate (never any other folder)", mlproject=False)
    accept_short_video: bool = option(False, SHORT_VIDEO_HELP, mlproject=False)

    @property
    def uses_tracking_server(self) -> bool:
        return self.model_uri.startswith(REGISTRY_SCHEMES)


@dataclass(frozen=True)
class SelectFramesRequest(Request):
    """``select-frames``: the frames of unlabelled videos worth drawing, within a budget per video."""

    model_uri: str = option(CHAMPION_URI, "the model whose uncertainty chooses (strategy uncertainty; default "
                                          "%(default)s)")
    input: str = option("", "a video, or a folder of videos", required=True)
    output: str = option("", "new folder: frames/NAME/frame_NNNNNN.png (a CVAT task's images), frames.txt (the list, "
                             "the input of pre-annotate), selection.csv", required=True)
    budget: int = option(20, "frames to draw per video (default %(default)s)", rule=at_least(1))
    window: float = option(1.0, "seconds: no two chosen frames of a video closer than this (default %(default)s)",
                           rule=NON_NEGATIVE_NUMBER)
    strategy: str = option("even", "even: spread evenly in time (the default); uncertainty: where the model is "
                                   "least sure (low scores, masks the flow does not carry), spread by the window; "
                                   "random: a baseline", choices=("even", "random", "uncertainty"))
    every: int = option(1, "candidates: every K-th frame (default 1: every frame)", rule=at_least(1), metavar="K")
    seed: int = option(0, "seed of the random strategy (default 0)", rule=SEED)
    min_score: float = option(0.05, "detections below this score are not looked at (default %(default)s)",
                              rule=SCORE, mlproject=False)
    force: bool = option(False, "replace an earlier output of select-frames (never any other folder)",
                         mlproject=False)
    no_mlflow: bool = option(False, "do not record an MLflow run", mlproject=False)
    accept_short_video: bool = option(False, SHORT_VIDEO_HELP, mlproject=False)

    @property
    def uses_tracking_server(self) -> bool:
        return not self.no_mlflow or (self.strategy == "uncertainty" and self.model_uri.startswith(REGISTRY_SCHEMES))


@dataclass(frozen=True)
class BundleRequest(Request):
    uses_tracking_server = True

    model_uri: str = option("", "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/model", required=True)
    output: str = option("", "new folder to write", required=True)
    torch: str = option("pypi", "pypi: PyPI's torch builds (CUDA; they run on a CPU too); cpu: PyTorch's CPU-only "
                                "builds (a much smaller bundle; needs download.pytorch.org while bundling)",
                        choices=("pypi", "cpu"))

