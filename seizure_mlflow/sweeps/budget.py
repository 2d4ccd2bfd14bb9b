"""The annotation-budget curve: what the next annotation hour buys.

One parent run and one child run per cell of a grid (shares of each training video's frames x numbers of
training videos) and seed, each trained through the same :func:`~seizure_mlflow.commands.train.run_training` path
as ``main`` on a nested subset of the training set (:mod:`seizure_mlflow.data.budget`), validated on the same
validation set with the same ``monitor``, and evaluated on the test videos: pooled test AP with its bootstrap
interval over videos, and AP per video. The cells are units of work of a :mod:`shared study
<seizure_mlflow.sweeps.shared_study>`, as a sweep's trials and cross-validation's folds are.

The worker that closes the study puts on the parent run the table of cells, the curve (test mask AP against masks
annotated, one line per number of videos, intervals shown) and the answer (:func:`answer`): at the largest budget,
do the last masks buy more as new videos or as more frames of the same videos? Paired over test videos.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from seizure_mlflow.commands.requests import BudgetRequest
from seizure_mlflow.data.budget import BudgetGrid, Cell, make_grid
from seizure_mlflow.data.checks import CocoSummary
from seizure_mlflow.data.folds import pool_datasets
from seizure_mlflow.engine.stopping import DIVERGED
from seizure_mlflow.errors import UserError
from seizure_mlflow.metrics.monitor import Monitor
from seizure_mlflow.metrics.names import CI_HIGH, CI_LOW, test_metric
from seizure_mlflow.sweeps.shared_study import (Claim, SharedStudy, claim_once, close_lost_runs, end_parent,
                                                fixed_validation_sample, run_claimed, run_study_command)
from seizure_mlflow.sweeps.storage import open_storage, redacted, storage_url
from seizure_mlflow.sweeps.trial import TrialFinish

logger = logging.getLogger(__name__)

BUDGET_TAG = "seizure.budget"
CELL_TAG = "seizure.budget_cell"
GRID_ATTR = "grid_digest"
CELLS_CSV = "cells.csv"
CURVE_PNG = "curve.png"
ANSWER_MD = "answer.md"
ARTIFACTS = "budget"
AP = test_metric("segm", "AP")
RESAMPLES, BOOTSTRAP_SEED = 1000, 0


@dataclass
class BudgetPlan:
    request: BudgetRequest
    study_name: str
    storage_url: str
    grid: BudgetGrid
    val: CocoSummary
    test: CocoSummary
    monitor: Monitor

    @property
    def units(self) -> list[tuple[Cell, int]]:
        """Every (cell, seed) to train, smallest cells first."""
        return [(cell, seed) for cell in self.grid.cells for seed in range(self.request.seeds)]

    @property
    def shared(self) -> SharedStudy:
        return SharedStudy(self.study_name, self.storage_url, len(self.units), self.request.heartbeat_s)

    @property
    def folder(self) -> Path:
        return Path(self.request.base.output_dir or "output") / "budget" / self.study_name

    @property
    def grid_digest(self) -> str:
        import hashlib

        described = [self.grid.membership(cell) for cell in self.grid.cells] + [self.request.seeds, self.test.digest]
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:12]


def plan_budget(request: BudgetRequest) -> BudgetPlan:
    """Every check before a cell trains: the parameters and data (as ``main`` checks them), a test set, the grid
    (every share leaves each video a frame; no more videos than there are), then the storage."""
    from seizure_mlflow.commands.train import plan_run
    from seizure_mlflow.sample.datasets import check_test_set

    if request.base.num_processes != 1:
        raise UserError("each cell trains in one process; for several GPUs run several workers (--workers N)",
                        param="num_processes")
    if request.base.resume:
        raise UserError("cells always start afresh; to go on with a study, start budget again with its --study",
                        param="resume")
    base = plan_run(request.base)
    if base.test is None and not base.datasets.is_sample:
        raise UserError("the budget curve is measured on test videos: give --test-json and --test-images",
                        param="test_json")
    test = base.test or check_test_set()
    grid = make_grid(pool_datasets([base.datasets.train]), request.frame_shares, request.video_values,
                     request.grid_seed)
    url = storage_url(request.storage)
    open_storage(url, request.heartbeat_s, request.grace_s)  # creates a SQLite file: after every check
    name = request.study or datetime.now().strftime("budget-%Y%m%d-%H%M%S")
    return BudgetPlan(request, name, url, grid, base.datasets.val, test, Monitor(base.cfg.VALIDATION.MONITOR))


class AnnotationBudget:
    """``budget`` as a :class:`~seizure_mlflow.sweeps.shared_study.ChildRunStudy`: a unit is a cell and a seed."""

    command, label = "budget", "budget"

    @staticmethod
    def load_study(plan: BudgetPlan):
        import optuna

        storage = open_storage(plan.storage_url, plan.request.heartbeat_s, plan.request.grace_s)
        return optuna.create_study(study_name=plan.study_name, storage=storage, direction="maximize",
                                   sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner(),
                                   load_if_exists=True)

    @staticmethod
    def describe_parent(study, plan: BudgetPlan, run_id: str, client: MlflowClient) -> None:
        """The grid as params (shares, numbers of videos, seeds) and each cell's counts and digest as an
        artifact."""
        study.set_user_attr(GRID_ATTR, plan.grid_digest)
        client.set_tag(run_id, BUDGET_TAG, plan.study_name)
        grid = plan.grid
        for key, value in {"study": plan.study_name, "storage": redacted(plan.storage_url).split("://")[0],
                           "frame_shares": " ".join(f"{f:g}" for f in grid.frame_shares),
                           "videos": " ".join(str(v) for v in grid.video_counts), "seeds": plan.request.seeds,
                           "training_videos": len(grid.video_order), "test_digest": plan.test.digest,
                           "monitor": plan.monitor.metric}.items():
            client.log_param(run_id, f"budget.{key}", value)
        client.log_text(run_id, json.dumps([grid.membership(c) for c in grid.cells], indent=2),
                        f"{ARTIFACTS}/cells.json")

    @staticmethod
    def check_parent(study, plan: BudgetPlan) -> None:
        recorded = study.user_attrs.get(GRID_ATTR)
        if recorded != plan.grid_digest:
            raise UserError(f"study {plan.study_name} holds another grid than this worker's (digest {recorded} there, "
                            f"{plan.grid_digest} here): give every worker the same data, --frames, --videos, --seeds "
                            "and --grid-seed, or use a new --study", param="study")

    @staticmethod
    def run_unit(study, plan: BudgetPlan, parent: str, claim: Claim) -> None:
        run_claimed(study, claim, lambda trial: _objective(trial, plan, parent), "unit")

    @staticmethod
    def close(study, plan: BudgetPlan, parent: str) -> None:
        close_budget(study, plan, parent)


class EvaluatedTrial(TrialFinish):
    """A cell's finish: the child run's record (as a trial's), then its best checkpoint evaluated on the test set
    and recorded in the same run (pooled AP, interval, per-video AP); the evaluation is kept in ``evaluation``."""

    def __init__(self, test: CocoSummary, **kwargs) -> None:
        super().__init__(**kwargs, log_model=False)
        self.test = test
        self.evaluation = None

    def __call__(self, run, stop, best):
        from seizure_mlflow.inference.predictor import Detector
        from seizure_mlflow.registry.evaluate import evaluate_and_record

        result = super().__call__(run, stop, best)
        detector = Detector(run.cfg, best.weights, run.plan.categories)
        self.evaluation = evaluate_and_record(detector, self.test, run.run_id)
        return result


def _objective(trial, plan: BudgetPlan, parent: str) -> float:
    from seizure_mlflow.commands.train import run_training

    k = trial.suggest_int("unit", 0, len(plan.units) - 1)
    cell, seed = plan.units[k]
    folder = plan.folder / f"unit_{k:03d}" / f"trial_{trial.number:03d}"  # a retried unit trains into a new folder
    base = plan.request.base
    params = base.replace(train_json=plan.grid.write(cell, folder / "data"), train_images=plan.grid.pool.image_root,
                          val_json=plan.val.json_path, val_images=plan.val.image_root, test_json="", test_images="",
                          seed=base.seed + seed, run_name=f"budget {cell.label} seed {seed}",
                          output_dir=str(folder / "run"))
    membership = plan.grid.membership(cell)
    finish = EvaluatedTrial(plan.test, parent_run_id=parent,
                            trial_tags={BUDGET_TAG: plan.study_name, CELL_TAG: f"{cell.videos}x{cell.frames:g}"},
                            on_start=lambda run_id: _started(trial, run_id, membership, seed))
    started = time.perf_counter()
    try:
        result = run_training(params, finish=finish)
    except FloatingPointError as exc:
        trial.set_user_attr("stop_reason", DIVERGED)
        logger.warning("Cell %s diverged (%s); the budget curve goes on", cell.label, str(exc).splitlines()[0])
        raise
    finally:
        trial.set_user_attr("wall_s", round(time.perf_counter() - started, 1))
    evaluation = finish.evaluation
    per_video = dict(zip(evaluation.per_video["video"], evaluation.per_video["segm_AP"])) if len(
        evaluation.per_video) else {}
    for key, value in {**membership, "seed": seed, "run_id": result.run_id, "best_value": result.best_value,
                       "test_ap": evaluation.metrics[AP], "ci_low": evaluation.metrics.get(test_metric("segm", CI_LOW)),
                       "ci_high": evaluation.metrics.get(test_metric("segm", CI_HIGH)),
                       "per_video_ap": per_video}.items():
        trial.set_user_attr(key, value)
    return evaluation.metrics[AP]


def _started(trial, run_id: str, membership: dict, seed: int) -> None:
    """The cell's run exists: remember it (to close it if this worker dies) and give it the cell's counts."""
    trial.set_user_attr("run_id", run_id)
    MlflowClient().log_batch(run_id, params=[Param(f"budget.{key}", str(value)) for key, value in
                                             {**membership, "seed": seed}.items()])


def cell_table(study) -> pd.DataFrame:
    """One row per trained unit: the cell's counts, its seed, test AP with interval, the monitored value."""
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if "masks" not in attrs:
            continue
        rows.append({"videos": attrs["videos"], "frame_share": attrs["frame_share"], "seed": attrs.get("seed"),
                     "frames": attrs["frames"], "masks": attrs["masks"], "state": t.state.name,
                     "test_segm_AP": attrs.get("test_ap") if t.state == TrialState.COMPLETE else None,
                     "ci_low": attrs.get("ci_low"), "ci_high": attrs.get("ci_high"),
                     "best_monitor": attrs.get("best_value"), "run_id": attrs.get("run_id"),
                     "digest": attrs["digest"]})
    columns = ["videos", "frame_share", "seed", "frames", "masks", "state", "test_segm_AP", "ci_low", "ci_high",
               "best_monitor", "run_id", "digest"]
    return pd.DataFrame(rows, columns=columns).sort_values(["videos", "frame_share", "seed"]).reset_index(drop=True)


def _per_video(study, videos: int, share: float) -> dict[str, float]:
    """A cell's AP per test video, averaged over its seeds."""
    found: dict[str, list[float]] = {}
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if a.get("videos") == videos and a.get("frame_share") == share and a.get("per_video_ap"):
            for video, value in a["per_video_ap"].items():
                found.setdefault(video, []).append(value)
    return {video: float(np.mean(values)) for video, values in found.items()}


def _interval(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    means = [float(values[rng.integers(0, len(values), len(values))].mean()) for _ in range(RESAMPLES)]
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def answer(study, grid: BudgetGrid, table: pd.DataFrame) -> tuple[str, dict[str, float]]:
    """The sentence, and its numbers as metrics: at the largest cell A (most videos, all the largest share of
    frames), the gain in test mask AP per 100 masks of its last masks added as new videos (from the next smaller
    number of videos, B) and as more frames of the same videos (from the next smaller share, C), each a mean over
    test videos with a bootstrap interval, and their paired difference: it decides only when its interval
    excludes zero."""
    if len(grid.video_counts) < 2 or len(grid.frame_shares) < 2:
        return ("The answer needs at least two numbers of videos and two shares of frames in the grid.", {})
    top_v, top_f = grid.video_counts[-1], grid.frame_shares[-1]
    cells = {"A": (top_v, top_f), "B": (grid.video_counts[-2], top_f), "C": (top_v, grid.frame_shares[-2])}
    masks = {k: int(table[(table.videos == v) & (table.frame_share == f)]["masks"].max()) for k, (v, f) in
             cells.items() if len(table[(table.videos == v) & (table.frame_share == f)])}
    aps = {k: _per_video(study, *cell) for k, cell in cells.items()}
    videos = sorted(set(aps["A"]) & set(aps["B"]) & set(aps["C"]))
    if len(masks) < 3 or len(videos) < 2 or masks["A"] in (masks["B"], masks["C"]):
        return ("The data cannot tell: the answer needs the three largest cells complete and at least two test "
                "videos.", {})
    per_100 = {k: np.array([(aps["A"][v] - aps[k][v]) * 100 / (masks["A"] - masks[k]) for v in videos])
               for k in ("B", "C")}
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    new_videos, more_frames = _interval(per_100["B"], rng), _interval(per_100["C"], rng)
    difference = _interval(per_100["B"] - per_100["C"], rng)
    if difference[1] > 0:
        verdict = "the next masks buy more as new videos"
    elif difference[2] < 0:
        verdict = "the next masks buy more as more frames of the same videos"
    else:
        verdict = "the data cannot tell which buys more"
    sentence = (f"At the largest budget ({masks['A']} masks, {top_v} videos), the last {masks['A'] - masks['B']} masks "
                f"added as new videos raised test mask AP by {new_videos[0]:.2f} per 100 masks (95% interval "
                f"{new_videos[1]:.2f} to {new_videos[2]:.2f}, over {len(videos)} test videos), the last "
                f"{masks['A'] - masks['C']} added as more frames of the same videos by {more_frames[0]:.2f} "
                f"({more_frames[1]:.2f} to {more_frames[2]:.2f}); paired difference {difference[0]:.2f} "
                f"({difference[1]:.2f} to {difference[2]:.2f}): {verdict}.")
    metrics = {"budget/gain_new_videos_per_100_masks": new_videos[0],
               "budget/gain_more_frames_per_100_masks": more_frames[0],
               "budget/difference_ci_low": difference[1], "budget/difference_ci_high": difference[2]}
    return sentence, metrics


def plot_curve(table: pd.DataFrame, path: Path) -> None:
    """Test mask AP against masks annotated, one line per number of videos, each cell's mean interval as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = table.dropna(subset=["test_segm_AP"])
    fig, ax = plt.subplots(figsize=(8, 5))
    for videos, rows in done.groupby("videos"):
        cells = rows.groupby("frame_share").agg(masks=("masks", "max"), ap=("test_segm_AP", "mean"),
                                                low=("ci_low", "mean"), high=("ci_high", "mean")).sort_values("masks")
        errors = np.vstack([(cells.ap - cells.low).clip(lower=0).fillna(0), (cells.high - cells.ap).clip(lower=0).fillna(0)])
        ax.errorbar(cells.masks, cells.ap, yerr=errors, marker="o", capsize=3, label=f"{videos} videos")
    ax.set_xlabel("masks annotated (training set)")
    ax.set_ylabel("test mask AP (%)")
    ax.set_title("What the annotation budget buys (95% intervals over test videos)")
    ax.grid(alpha=0.3)
    if len(done):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def close_budget(study, plan: BudgetPlan, parent: str) -> None:
    """Once per study (the first worker to get here): the parent's table, curve, answer and metrics; the parent
    ended."""
    from seizure_mlflow.sweeps.report import log_tables

    client = MlflowClient()
    close_lost_runs(client, study.get_trials(deepcopy=False))
    if not claim_once(plan.shared, "finish"):
        return
    table = cell_table(study)
    sentence, metrics = answer(study, plan.grid, table)

    def draw(folder: Path) -> None:
        plot_curve(table, folder / CURVE_PNG)
        (folder / ANSWER_MD).write_text(sentence + "\n")

    log_tables(parent, ARTIFACTS, {CELLS_CSV: table.drop(columns=["run_id"])}, draw)
    now = int(time.time() * 1000)
    metrics = {**metrics, "budget/cells_complete": float((table["state"] == "COMPLETE").sum())}
    client.log_batch(parent, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if math.isfinite(v)])
    client.set_tag(parent, "mlflow.note.content", sentence)
    logger.info("Annotation budget %s:\n%s\n%s", plan.study_name, table.drop(columns=["run_id", "digest"]).to_string(),
                sentence)
    end_parent(client, study, parent)


def run_command(request: BudgetRequest) -> int:
    """``seizure-mlflow budget``: plan the grid, then work on it here or in ``--workers`` processes."""
    plan = plan_budget(request.replace(base=fixed_validation_sample(request.base)))
    return run_study_command(AnnotationBudget(), plan, f"{len(plan.units)} cells x seeds", "Annotation budget")
