"""Cross-validation by video (or patient): one parent run, one child run per fold, each trained through the
same :func:`~seizure_mlflow.commands.train.run_training` path as ``main`` with its held-out videos as its
validation set and every other parameter unchanged (``monitor`` included).

The folds are units of work of a :mod:`shared study <seizure_mlflow.sweeps.shared_study>`, as a sweep's trials
are: any number of workers, on any machines, join with the same ``--study`` and storage; each claims a fold,
trains it, and the study records its values. The worker that finishes (once per study) puts on the parent run
the per-fold table, the mean, standard deviation and 95% interval of every validation metric, every fold's
curve on one chart, and which videos each fold held out (counts and digests). ``cv`` registers nothing, unless
``register_final``: then the same worker trains once more on every video and registers that model, tagged with
the cross-validated estimate.

Order: :func:`plan_cv` (every check, before anything starts) -> the parent run -> folds -> :func:`close_cv` (see
:class:`CrossValidation` and :func:`~seizure_mlflow.sweeps.shared_study.work`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from seizure_mlflow.commands.requests import CvRequest
from seizure_mlflow.config import TrainParams
from seizure_mlflow.data.folds import Folds, make_folds, pool_datasets, video_set_digest
from seizure_mlflow.engine.stopping import DIVERGED
from seizure_mlflow.errors import UserError
from seizure_mlflow.metrics.monitor import Monitor
from seizure_mlflow.sweeps.shared_study import (Claim, SharedStudy, claim_once, close_lost_runs, end_parent,
                                                fixed_validation_sample, progress, run_claimed,
                                                run_study_command)
from seizure_mlflow.sweeps.storage import open_storage, redacted, storage_url
from seizure_mlflow.metrics.names import CV_FOLDS_COMPLETE, LAST_VAL, VAL, cv_summary, is_standard_error

logger = logging.getLogger(__name__)

CV_TAG = "seizure.cv"
FOLD_TAG = "seizure.fold"
MEMBERSHIP_ATTR = "membership_digest"
FOLDS_CSV = "cv/folds.csv"
FOLDS_MD = "cv/folds.md"
SUMMARY_CSV = "cv/summary.csv"
MEMBERSHIP_JSON = "cv/membership.json"
CURVES_PNG = "cv/val_curves.png"
CONFIDENCE = 0.95


@dataclass
class CvPlan:
    request: CvRequest
    study_name: str
    storage_url: str
    folds: Folds
    monitor: Monitor

    @property
    def shared(self) -> SharedStudy:
        return SharedStudy(self.study_name, self.storage_url, len(self.folds.parts), self.request.heartbeat_s)

    @property
    def folder(self) -> Path:
        return Path(self.request.base.output_dir or "output") / "cv" / self.study_name

    @property
    def membership_digest(self) -> str:
        return video_set_digest([m["digest"] for m in self.folds.membership])


def plan_cv(request: CvRequest) -> CvPlan:
    """Check everything before a fold starts: the numbers, the data, the parameters and the tracking server
    (as ``main`` checks them), the folds (enough videos or patients, every video known), then the storage."""
    from seizure_mlflow.commands.train import plan_run

    if request.base.num_processes != 1:
        raise UserError("each fold runs in one process; for several GPUs run several workers (--workers N)",
                        param="num_processes")
    if request.base.resume:
        raise UserError("folds always start afresh (a killed worker's fold is retried by another worker); to go on "
                        "with a study, start cv again with its --study", param="resume")
    base = plan_run(request.base)
    pool = pool_datasets([base.datasets.train, base.datasets.val])
    folds = make_folds(pool, request.folds, request.fold_seed, request.patient_map)
    url = storage_url(request.storage)
    open_storage(url, request.heartbeat_s, request.grace_s)  # creates a SQLite file: after every check
    name = request.study or datetime.now().strftime("cv-%Y%m%d-%H%M%S")
    return CvPlan(request, name, url, folds, Monitor(base.cfg.VALIDATION.MONITOR))


class CrossValidation:
    """``cv`` as a :class:`~seizure_mlflow.sweeps.shared_study.ChildRunStudy`: a unit is a fold."""

    command, label = "cv", "cv"

    @staticmethod
    def load_study(plan: CvPlan):
        import optuna

        storage = open_storage(plan.storage_url, plan.request.heartbeat_s, plan.request.grace_s)
        return optuna.create_study(study_name=plan.study_name, storage=storage, direction=plan.monitor.direction,
                                   sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner(),
                                   load_if_exists=True)

    @staticmethod
    def describe_parent(study, plan: CvPlan, run_id: str, client: MlflowClient) -> None:
        """The folds' settings as params and their membership as an artifact."""
        request, folds = plan.request, plan.folds
        study.set_user_attr(MEMBERSHIP_ATTR, plan.membership_digest)
        client.set_tag(run_id, CV_TAG, plan.study_name)
        for key, value in {"study": plan.study_name, "storage": redacted(plan.storage_url).split("://")[0],
                           "folds": len(folds.parts), "grouped_by": folds.grouped_by, "groups": folds.groups,
                           "videos": len(folds.pool.videos), "frames": len(folds.pool.images),
                           "fold_seed": request.fold_seed, "monitor": plan.monitor.metric,
                           "register_final": request.register_final}.items():
            client.log_param(run_id, f"cv.{key}", value)
        client.log_text(run_id, json.dumps(folds.membership, indent=2), MEMBERSHIP_JSON)

    @staticmethod
    def check_parent(study, plan: CvPlan) -> None:
        """A worker whose folds differ from the study's (other data, another ``fold_seed`` or patient map) is
        refused."""
        recorded = study.user_attrs.get(MEMBERSHIP_ATTR)
        if recorded != plan.membership_digest:
            raise UserError(f"study {plan.study_name} holds other folds than this worker's (fold digest {recorded} "
                            f"there, {plan.membership_digest} here): give every worker the same data, --folds, "
                            "--fold-seed and --patient-map, or use a new --study", param="study")

    @staticmethod
    def run_unit(study, plan: CvPlan, parent: str, claim: Claim) -> None:
        run_claimed(study, claim, lambda trial: _objective(trial, plan, parent), "fold")
        done, total = progress(study)[0], plan.shared.total
        walls = [t.user_attrs["wall_s"] for t in study.get_trials(deepcopy=False) if "wall_s" in t.user_attrs]
        left = (total - done) * sum(walls) / len(walls) if walls else float("nan")
        logger.info("%d of %d folds done; about %.0f s of fold training left, all workers together", done, total, left)

    @staticmethod
    def close(study, plan: CvPlan, parent: str) -> None:
        close_cv(study, plan, parent)


def _objective(trial, plan: CvPlan, parent: str) -> float:
    from seizure_mlflow.commands.train import run_training
    from seizure_mlflow.sweeps.trial import TrialFinish

    k = trial.suggest_int("fold", 0, len(plan.folds.parts) - 1)
    folder = plan.folder / f"fold_{k}" / f"trial_{trial.number:03d}"  # a retried fold trains into a new folder
    train_json, val_json = plan.folds.write(k, folder / "data")
    root = plan.folds.pool.image_root
    params = plan.request.base.replace(train_json=train_json, train_images=root, val_json=val_json, val_images=root,
                                       test_json="", test_images="", run_name=f"fold {k}",
                                       output_dir=str(folder / "run"))
    membership = plan.folds.membership[k]
    finish = TrialFinish(parent_run_id=parent, trial_tags={CV_TAG: plan.study_name, FOLD_TAG: str(k)},
                         on_start=lambda run_id: _started(trial, run_id, membership), log_model=False)
    started = time.perf_counter()
    try:
        result = run_training(params, finish=finish)
    except FloatingPointError as exc:
        trial.set_user_attr("stop_reason", DIVERGED)
        logger.warning("Fold %d diverged (%s); cross-validation goes on", k, str(exc).splitlines()[0])
        raise
    finally:
        trial.set_user_attr("wall_s", round(time.perf_counter() - started, 1))
    values, last = _values_at(result.run_id, result.best_iteration, plan.monitor)
    for key, value in {"run_id": result.run_id, "stop_reason": result.stop_reason, "stopped_at": result.stopped_at,
                       "best_value": result.best_value, "best_iteration": result.best_iteration,
                       "values": values, "last_value": last}.items():
        trial.set_user_attr(key, value)
    return result.best_value


def _started(trial, run_id: str, membership: dict) -> None:
    """The fold's run exists: remember it (to close it if this worker dies) and give it the fold's membership."""
    trial.set_user_attr("run_id", run_id)
    MlflowClient().log_batch(run_id, params=[
        Param("cv.fold", str(membership["fold"])), Param("cv.fold_videos", str(membership["videos"])),
        Param("cv.fold_frames", str(membership["frames"])), Param("cv.fold_digest", membership["digest"])])


def _values_at(run_id: str, iteration: int, monitor: Monitor) -> tuple[dict[str, float], float]:
    """Every validation metric of the run at ``iteration`` (its best checkpoint), and ``monitor``'s last value."""
    from seizure_mlflow.tracking.run import metric_table

    keys = sorted(k for k in MlflowClient().get_run(run_id).data.metrics
                  if k.startswith(VAL) and not is_standard_error(k))
    table = metric_table(run_id, keys)
    at = table[table["iteration"] == iteration]
    values = {k: float(at[k].iloc[0]) for k in keys if len(at) and not math.isnan(at[k].iloc[0])}
    history = table[monitor.metric].dropna() if monitor.metric in table else []
    return values, float(history.iloc[-1]) if len(history) else float("nan")


def fold_table(study, plan: CvPlan) -> pd.DataFrame:
    """One row per fold trial: its membership (counts, digest), how it ended, and its validation metrics at
    its best checkpoint (``last_<monitor>``: at its last validation)."""
    membership = plan.folds.membership
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: (t.params.get("fold", -1), t.number)):
        if "fold" not in t.params:
            continue
        m, attrs = membership[t.params["fold"]], t.user_attrs
        rows.append({"fold": m["fold"], "videos": m["videos"], "frames": m["frames"], "digest": m["digest"],
                     "state": t.state.name, "best_iteration": attrs.get("best_iteration"),
                     "stop_reason": attrs.get("stop_reason", "lost" if t.state.name == "FAIL" else ""),
                     "stopped_at": attrs.get("stopped_at"), "wall_s": attrs.get("wall_s"),
                     **attrs.get("values", {}), f"last_{plan.monitor.metric}": attrs.get("last_value"),
                     "run_id": attrs.get("run_id")})
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per validation metric, over the complete folds: ``folds``, ``mean``, ``sd`` (n-1) and the
    ``confidence`` interval of the mean (Student's t with folds-1 degrees of freedom; none for one fold)."""
    from scipy import stats

    complete = table[table["state"] == "COMPLETE"] if len(table) else table
    rows = []
    for metric in [c for c in table.columns if c.startswith((VAL, LAST_VAL))]:
        values = pd.to_numeric(complete[metric], errors="coerce").dropna()
        n = len(values)
        if n == 0:
            continue
        mean, sd = float(values.mean()), float(values.std(ddof=1)) if n > 1 else float("nan")
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n) if n > 1 else float("nan")
        rows.append({"metric": metric, "folds": n, "mean": mean, "sd": sd, "ci_low": mean - half,
                     "ci_high": mean + half})
    return pd.DataFrame(rows, columns=["metric", "folds", "mean", "sd", "ci_low", "ci_high"])


def summary_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """``cv/<metric>_mean``, ``_sd``, ``_ci_low``, ``_ci_high`` (e.g. ``cv/val/total_loss_mean``)."""
    return {cv_summary(row.metric, stat): float(getattr(row, stat)) for row in summary.itertuples(index=False)
            for stat in ("mean", "sd", "ci_low", "ci_high") if not math.isnan(getattr(row, stat))}


def close_cv(study, plan: CvPlan, parent: str) -> None:
    """Once per study (the first worker to get here): the parent's table, summary, curves and metrics; with
    ``register_final`` the final model; the parent ended."""
    from seizure_mlflow.sweeps.report import log_tables, plot_run_curves

    client = MlflowClient()
    close_lost_runs(client, study.get_trials(deepcopy=False))
    if not claim_once(plan.shared, "finish"):
        return
    table, monitor = fold_table(study, plan), plan.monitor
    summary = summarize(table)

    def curves(folder: Path) -> None:
        runs = [(f"fold {r.fold} ({r.videos} videos)", r.run_id, r.state != "COMPLETE")
                for r in table.itertuples(index=False) if isinstance(r.run_id, str)]
        plot_run_curves(runs, monitor.metric, folder / Path(CURVES_PNG).name,
                        f"{monitor.metric} of every fold, on its held-out videos")

    log_tables(parent, "cv", {Path(FOLDS_CSV).name: table, Path(SUMMARY_CSV).name: summary}, curves)
    metrics = {**summary_metrics(summary), CV_FOLDS_COMPLETE: int((table["state"] == "COMPLETE").sum())}
    now = int(time.time() * 1000)
    client.log_batch(parent, metrics=[Metric(key, value, now, 0) for key, value in metrics.items()])
    logger.info("Cross-validated %s over %d folds:\n%s", monitor.metric, len(plan.folds.parts),
                summary.to_string(index=False))
    if plan.request.register_final:
        train_final(plan, parent, table, summary)
    end_parent(client, study, parent)


def final_iterations(table: pd.DataFrame, params: TrainParams) -> int:
    """How long the final model trains: the median of the folds' best iterations, rounded up to a validation
    period, within [eval_period, max_iter] (``max_iter`` when no fold completed)."""
    best = pd.to_numeric(table.loc[table["state"] == "COMPLETE", "best_iteration"], errors="coerce").dropna()
    if best.empty:
        return params.max_iter
    periods = math.ceil(float(best.median()) / params.eval_period)
    return max(params.eval_period, min(params.max_iter, periods * params.eval_period))


def train_final(plan: CvPlan, parent: str, table: pd.DataFrame, summary: pd.DataFrame):
    """Train on every video with the folds' settings, for :func:`final_iterations`, as a child of the parent, and
    register the model as ``main`` does (its tags carry the cross-validated estimate of ``monitor``)."""
    from seizure_mlflow.commands.finish import RegisterModel
    from seizure_mlflow.commands.train import run_training

    base, monitor = plan.request.base, plan.monitor
    iterations = final_iterations(table, base)
    all_json = plan.folds.write_all(plan.folder / "final" / "data")
    root = plan.folds.pool.image_root
    # Nothing is held out: its validation set is its training set (a sample of it), which only draws the curves.
    params = base.replace(train_json=all_json, train_images=root, val_json=all_json, val_images=root,
                          val_on_training_frames=True,  # no video is left to hold out
                          max_iter=iterations, patience=0, val_max_images="auto", run_name="final (every video)",
                          output_dir=str(plan.folder / "final" / "run"))
    row = summary[summary["metric"] == monitor.metric]
    estimate = {f"cv_{monitor.key}_{stat}": f"{float(row[stat].iloc[0]):.6g}"
                for stat in ("mean", "sd", "ci_low", "ci_high") if len(row)}
    version_tags = {CV_TAG: plan.study_name, "cv_parent_run_id": parent, "cv_folds": str(len(plan.folds.parts)),
                    "cv_final_max_iter": str(iterations), **estimate}
    result = run_training(params, finish=RegisterModel(tags={MLFLOW_PARENT_RUN_ID: parent, CV_TAG: plan.study_name},
                                                       version_tags=version_tags))
    MlflowClient().set_tag(parent, "seizure.registered_version", f"{result.model_name}/{result.model_version}")
    logger.info("Trained the final model on every video for %d iterations: %s version %s", iterations,
                result.model_name, result.model_version)
    return result


def run_command(request: CvRequest) -> int:
    """``seizure-mlflow cv``: plan the folds, then work on them here or in ``--workers`` processes. Every fold is
    measured on all of its held-out videos."""
    plan = plan_cv(request.replace(base=fixed_validation_sample(request.base)))
    return run_study_command(CrossValidation(), plan, f"{len(plan.folds.parts)} folds of {plan.folds.grouped_by}",
                             "Cross-validation")
