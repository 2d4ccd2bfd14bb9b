"""A sweep: trials of ``main``'s training as child runs of one parent run, in an Optuna study.

Any number of workers, on any machines, work on it (:class:`Sweep`, a
:class:`~seizure_mlflow.sweeps.shared_study.ChildRunStudy`) against the same storage and study name: each
asks the study for the next trial (a retried one first), trains it through the same
:func:`~seizure_mlflow.commands.train.run_training` path as ``main`` as a child run of the study's parent run,
reports the ``monitor`` metric (``val/total_loss`` unless set; see :class:`~seizure_mlflow.metrics.monitor.Monitor`)
at every validation to the pruner, and tells the study its best value (or PRUNED, or FAIL when the loss diverged);
the study minimises a loss and maximises an AP. A worker stops when the study holds ``trials`` finished
trials; it then closes the sweep (:func:`close_sweep`): the comparison table and plots on the parent run, and the best
trial's checkpoint registered (once per sweep) with ``challenger``/``champion`` as in ``main``.

Order of a sweep: :func:`plan_sweep` (every check, before anything starts) -> the parent run (made once per study,
its id kept in the study) -> trials -> :func:`close_sweep` (see :func:`~seizure_mlflow.sweeps.shared_study.work`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Param

from seizure_mlflow.commands.requests import SweepRequest
from seizure_mlflow.metrics.names import BEST_TRIAL, sweep_best
from seizure_mlflow.metrics.monitor import Monitor
from seizure_mlflow.engine.stopping import DIVERGED, PRUNED
from seizure_mlflow.errors import UserError
from seizure_mlflow.sweeps.shared_study import (SharedStudy, close_lost_runs, end_parent, fixed_validation_sample,
                                                optimize_one, run_study_command)
from seizure_mlflow.sweeps.space import Dimension, apply, check_every_edge, read_space
from seizure_mlflow.sweeps.storage import open_storage, redacted, storage_url

logger = logging.getLogger(__name__)

VERSION_ATTR = "registered_version"
SWEEP_TAG = "seizure.sweep"
TRIAL_TAG = "seizure.trial"


@dataclass
class SweepPlan:
    request: SweepRequest
    study_name: str
    dimensions: list[Dimension]
    storage_url: str
    monitor: Monitor = field(default_factory=Monitor)  # what every trial is judged by (the base config's)

    @property
    def shared(self) -> SharedStudy:
        return SharedStudy(self.study_name, self.storage_url, self.request.trials, self.request.heartbeat_s)


def plan_sweep(request: SweepRequest) -> SweepPlan:
    """Check everything before a trial starts: the space (a config built at every dimension's edges), the numbers,
    the sampler and pruner, the data and the tracking server (as ``main`` checks them), then the storage (it must
    answer). Nothing exists before every check passed: no study, no storage file, no run."""
    from seizure_mlflow.config import load_base_config
    from seizure_mlflow.commands.train import plan_run

    if request.base.num_processes != 1:
        raise UserError("each trial runs in one process; for several GPUs run several workers (--workers N)",
                        param="num_processes")
    dimensions = read_space(request.space_file, load_base_config(request.base.config))
    if request.sampler == "grid":
        for d in dimensions:
            d.grid()
    base = plan_run(request.base)
    check_every_edge(request.space_file, request.base, dimensions, num_classes=len(base.categories))
    url = storage_url(request.storage)
    open_storage(url, request.heartbeat_s, request.grace_s)  # creates a SQLite file: after every check
    name = request.study or datetime.now().strftime("sweep-%Y%m%d-%H%M%S")
    return SweepPlan(request, name, dimensions, url, Monitor(base.cfg.VALIDATION.MONITOR))


class Sweep:
    """``tune`` as a :class:`~seizure_mlflow.sweeps.shared_study.ChildRunStudy`: a unit is a trial."""

    command, label = "tune", "sweep"

    @staticmethod
    def load_study(plan: SweepPlan):
        import optuna

        request = plan.request
        if request.sampler == "grid":
            sampler = optuna.samplers.GridSampler({d.name: d.grid() for d in plan.dimensions}, seed=request.sampler_seed)
        elif request.sampler == "random":
            sampler = optuna.samplers.RandomSampler(seed=request.sampler_seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=request.sampler_seed, n_startup_trials=min(5, request.trials))
        eval_period = request.base.eval_period
        pruner = {"none": optuna.pruners.NopPruner(),
                  "median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=eval_period),
                  "hyperband": optuna.pruners.HyperbandPruner(min_resource=eval_period,
                                                              max_resource=request.base.max_iter)}[request.pruner]
        storage = open_storage(plan.storage_url, request.heartbeat_s, request.grace_s)
        return optuna.create_study(study_name=plan.study_name, storage=storage, sampler=sampler, pruner=pruner,
                                   direction=plan.monitor.direction, load_if_exists=True)

    @staticmethod
    def describe_parent(study, plan: SweepPlan, run_id: str, client: MlflowClient) -> None:
        """The sweep's settings as params and its space as an artifact."""
        request = plan.request
        client.set_tag(run_id, SWEEP_TAG, plan.study_name)
        for key, value in {"study": plan.study_name, "storage": redacted(plan.storage_url).split("://")[0],
                           "sampler": request.sampler, "pruner": request.pruner, "trials": request.trials,
                           "space": ", ".join(d.name for d in plan.dimensions)}.items():
            client.log_param(run_id, f"sweep.{key}", value)
        client.log_text(run_id, Path(request.space_file).read_text(), "sweep/space.yaml")

    @staticmethod
    def check_parent(study, plan: SweepPlan) -> None:
        return None

    @staticmethod
    def run_unit(study, plan: SweepPlan, parent: str, claim) -> None:
        optimize_one(study, lambda trial: _objective(trial, plan, parent))

    @staticmethod
    def close(study, plan: SweepPlan, parent: str) -> None:
        close_sweep(study, plan, parent)


def _objective(trial, plan: SweepPlan, parent: str) -> float:
    import optuna

    from seizure_mlflow.sweeps.pruning import ReportToTrial
    from seizure_mlflow.commands.train import run_training
    from seizure_mlflow.sweeps.trial import TrialFinish

    values = {d.name: d.suggest(trial) for d in plan.dimensions}
    base = plan.request.base
    output = Path(base.output_dir or "output") / "sweeps" / plan.study_name / f"trial_{trial.number:03d}"
    params = apply(base, plan.dimensions, values).replace(run_name=f"trial {trial.number}", output_dir=str(output))
    started = time.perf_counter()
    finish = TrialFinish(parent_run_id=parent, hooks=lambda: [ReportToTrial(trial, plan.monitor)],
                         trial_tags={SWEEP_TAG: plan.study_name, TRIAL_TAG: str(trial.number)},
                         on_start=lambda run_id: _started(trial, run_id, values, plan.dimensions))
    try:
        result = run_training(params, finish=finish)
    except FloatingPointError as exc:
        trial.set_user_attr("stop_reason", DIVERGED)
        trial.set_user_attr("wall_s", round(time.perf_counter() - started, 1))
        logger.warning("Trial %d diverged (%s); the sweep goes on", trial.number, str(exc).splitlines()[0])
        raise
    for key, value in {"run_id": result.run_id, "stop_reason": result.stop_reason, "stopped_at": result.stopped_at,
                       "best_value": result.best_value, "monitor": result.monitor, "best_iteration": result.best_iteration,
                       "model_uri": result.model_uri, "wall_s": round(time.perf_counter() - started, 1)}.items():
        trial.set_user_attr(key, value)
    if result.stop_reason == PRUNED:
        raise optuna.TrialPruned()
    return result.best_value


def _started(trial, run_id: str, values: dict, dimensions: list[Dimension]) -> None:
    """The trial's run exists: remember it (to close it if this worker dies) and give it the trial's values
    of ``main`` parameters as params (config keys reach it through its logged config)."""
    trial.set_user_attr("run_id", run_id)
    MlflowClient().log_batch(run_id, params=[Param(d.name, str(values[d.name])) for d in dimensions
                                             if not d.is_config_key])


def close_sweep(study, plan: SweepPlan, parent: str) -> None:
    """The parent run's table, plots and best params; the best trial registered (once); runs of trials
    lost with a killed worker marked KILLED; the parent ended when this command made it."""
    from optuna.trial import TrialState

    from seizure_mlflow.sweeps.report import log_report

    client = MlflowClient()
    trials = study.get_trials(deepcopy=False)
    close_lost_runs(client, trials)
    log_report(study, parent, plan)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        monitor = plan.monitor
        best = (max if monitor.higher_is_better else min)(complete, key=lambda t: t.value)
        client.log_metric(parent, sweep_best(monitor.key), best.value)
        client.log_metric(parent, BEST_TRIAL, best.number)
        for name, value in best.params.items():
            client.log_param(parent, f"best.{name}", value)
        _register_best(client, study, plan, best, parent)
    end_parent(client, study, parent)


def _register_best(client: MlflowClient, study, plan: SweepPlan, best, parent: str) -> None:
    from seizure_mlflow.commands.finish import best_tags
    from seizure_mlflow.registry.register import register

    if study.user_attrs.get(VERSION_ATTR):
        return
    model_name = plan.request.base.model_name
    existing = client.search_model_versions(f"name = '{model_name}' and tags.`{SWEEP_TAG}` = '{plan.study_name}'")
    if existing or not best.user_attrs.get("model_uri"):
        return
    version = register(best.user_attrs["model_uri"], model_name, {
        **best_tags(plan.monitor.metric, best.value), "best_iteration": str(best.user_attrs.get("best_iteration")),
        "run_id": best.user_attrs["run_id"], "config": plan.request.base.config, SWEEP_TAG: plan.study_name,
        "sweep_parent_run_id": parent, TRIAL_TAG: str(best.number)})
    study.set_user_attr(VERSION_ATTR, str(version.version))
    client.set_tag(parent, "seizure.registered_version", f"{model_name}/{version.version}")
    logger.info("Registered trial %d's best checkpoint as %s version %s", best.number, model_name, version.version)


def run_command(request: SweepRequest) -> int:
    """``seizure-mlflow tune``: plan the sweep, then work on it here or in ``--workers`` processes."""
    plan = plan_sweep(request.replace(base=fixed_validation_sample(request.base)))
    return run_study_command(Sweep(), plan, f"{request.trials} trials", "Sweep")
