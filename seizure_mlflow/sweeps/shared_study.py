"""An Optuna study that any number of workers, on any machines, share: a sweep's trials (:mod:`.tune`) and
cross-validation's folds (:mod:`.cv`) both run on it.

What the workers agree on goes through the study's storage only:

* one parent run (:func:`elect_parent`): whoever creates the helper study ``NAME.parent`` makes it and records
  its id in the study; the others wait for the record;
* who runs what (:func:`claim_next`): each new unit of work K has a helper study ``NAME.trial-K``, each retry
  of a killed worker's trial N a helper ``NAME.retry-N``; a study name is unique in a storage, so exactly one
  worker creates each, and that worker runs it;
* who finishes (:func:`claim_once`): the helper ``NAME.<what>`` again, for work that must happen once;
* when it is over (:func:`progress`): finished units, a failed one that was retried counted once, through its
  retry. A killed worker's trial is failed by its lost heartbeat and retried once (see
  :func:`~seizure_mlflow.sweeps.storage.open_storage`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from seizure_mlflow.errors import UserError

PARENT_ATTR = "mlflow_parent_run_id"
PARENT_LOCK = "parent"  # the helper study NAME.parent
PARENT_WAIT_S = 300


@dataclass(frozen=True)
class SharedStudy:
    """``name`` in the storage at ``storage_url``; ``total`` units of work (trials, folds) in the whole study."""

    name: str
    storage_url: str
    total: int
    heartbeat_s: int


@dataclass(frozen=True)
class Claim:
    """What :func:`claim_next` gave this worker: a new unit ``number`` (0 to total-1), or the retry of trial
    ``number`` (already waiting in the study with its parameters)."""

    number: int
    retry: bool = False


def claim_once(shared: SharedStudy, what: str) -> bool:
    """True for exactly one of the workers that ask for ``what`` in this study."""
    import optuna

    try:
        optuna.create_study(study_name=f"{shared.name}.{what}", storage=shared.storage_url)
        return True
    except optuna.exceptions.DuplicatedStudyError:
        return False


def elect_parent(study, shared: SharedStudy, run_name: str, describe: Callable[[str, MlflowClient], None]) -> str:
    """The study's parent run: the one recorded in the study, else this command's (``mlflow run``), else a
    new one, named ``run_name``. Only the worker that makes it calls ``describe(run_id, client)`` (its tags and
    params), before the others see it."""
    from seizure_mlflow.tracking.run import remove_machine_context

    known = study.user_attrs.get(PARENT_ATTR)
    if known:
        return known
    if not claim_once(shared, PARENT_LOCK):
        deadline = time.time() + PARENT_WAIT_S
        while time.time() < deadline:
            if study.user_attrs.get(PARENT_ATTR):
                return study.user_attrs[PARENT_ATTR]
            time.sleep(1)
        raise UserError(f"another worker of study {shared.name} did not record its parent run within 5 "
                        f"minutes; if it died, delete the study {shared.name}.{PARENT_LOCK} or use a new --study",
                        param="study") from None
    client = MlflowClient()
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        from mlflow.tracking.fluent import _get_experiment_id

        run_id = client.create_run(_get_experiment_id(), run_name=run_name).info.run_id
    else:
        client.set_tag(run_id, MLFLOW_RUN_NAME, run_name)
    remove_machine_context(run_id, client)
    describe(run_id, client)
    study.set_user_attr(PARENT_ATTR, run_id)
    return run_id


def progress(study) -> tuple[int, int]:
    """(finished units, units running or waiting). A trial failed for a lost heartbeat and retried counts
    once, through its retry."""
    from optuna.storages import RetryFailedTrialCallback
    from optuna.trial import TrialState

    all_trials = study.get_trials(deepcopy=False)
    retried = {RetryFailedTrialCallback.retried_trial_number(t) for t in all_trials}
    done = sum(1 for t in all_trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and t.number not in retried))
    active = sum(1 for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING))
    return done, active


def claim_next(study, shared: SharedStudy) -> Claim | None:
    """The next unit this worker may run, or None when every unit is taken (see the module). Checking the count
    and then starting a trial would let two workers start the last one both, hence the helper studies. A retry
    waiting in the study is claimed first (Optuna's next trial is the waiting one)."""
    from optuna.storages import RetryFailedTrialCallback
    from optuna.trial import TrialState

    waiting = [RetryFailedTrialCallback.retried_trial_number(t) for t in study.get_trials(deepcopy=False)
               if t.state == TrialState.WAITING]
    candidates = [(f"retry-{n}", Claim(n, retry=True)) for n in waiting if n is not None]
    candidates += [(f"trial-{k}", Claim(k)) for k in range(shared.total)]
    for what, claim in candidates:
        if claim_once(shared, what):
            return claim
    return None


def run_until_done(study, shared: SharedStudy, run_one: Callable[[Claim], None]) -> None:
    """Run units (``run_one(claim)``) until the study holds ``total`` finished ones; wait for the ones that
    other workers run (or for their heartbeats to stop)."""
    from optuna.storages import fail_stale_trials

    while True:
        fail_stale_trials(study)
        done, _ = progress(study)
        if done >= shared.total:
            return
        claim = claim_next(study, shared)
        if claim is None:
            time.sleep(min(5, shared.heartbeat_s))
            continue
        run_one(claim)


def run_claimed(study, claim: Claim, objective, param: str) -> None:
    """The unit this worker claimed, as one trial of ``objective``: a new unit is enqueued with its number as the
    trial's ``param`` (a retry waits in the study with its own already)."""
    if not claim.retry:
        study.enqueue_trial({param: claim.number})
    optimize_one(study, objective)


def optimize_one(study, objective) -> None:
    """One trial of ``objective``; a diverged one (``FloatingPointError``) is a failed trial, and an interrupt
    fails the trial and goes on up (without Optuna's traceback of it)."""
    import logging

    trial_log = logging.getLogger("optuna.study._optimize")  # where Optuna says that a trial failed
    trial_log.addFilter(_no_interrupt_traceback)
    try:
        study.optimize(objective, n_trials=1, catch=(FloatingPointError,), gc_after_trial=True)
    finally:
        trial_log.removeFilter(_no_interrupt_traceback)


def _no_interrupt_traceback(record) -> bool:
    """Optuna logs a failed trial with its traceback; an interrupt's is noise (the command says what happened)."""
    if record.exc_info and record.exc_info[0] is not None and issubclass(record.exc_info[0], KeyboardInterrupt):
        record.exc_info, record.exc_text = None, None
    return True


def retry_interrupted(study, client: MlflowClient) -> None:
    """Queue a retry of each trial an interrupt failed (its run KILLED, or no run yet) that has none: a study that
    continues runs it again, as it does a killed worker's (whose lost heartbeat queues the retry)."""
    from optuna.storages import RetryFailedTrialCallback
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {RetryFailedTrialCallback.retried_trial_number(t) for t in trials}
    for t in trials:
        if t.state != TrialState.FAIL or t.number in retried:
            continue
        run_id = t.user_attrs.get("run_id")
        if not run_id or client.get_run(run_id).info.status == "KILLED":
            RetryFailedTrialCallback(max_retry=1)(study, t)


def close_lost_runs(client: MlflowClient, trials) -> None:
    """Runs of trials whose worker was killed: KILLED, not left RUNNING forever."""
    from optuna.trial import TrialState

    for t in trials:
        run_id = t.user_attrs.get("run_id")
        if t.state == TrialState.FAIL and run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")


def end_parent(client: MlflowClient, study, parent: str) -> None:
    """The last worker ends the parent (under ``mlflow run`` too: its run would end FINISHED with this command)."""
    if client.get_run(parent).info.status in ("RUNNING", "KILLED") and progress(study)[1] == 0:
        client.set_terminated(parent, "FINISHED")


def fixed_validation_sample(base):
    """Every trial's or fold's training parameters: ``val_max_images=auto`` becomes the whole validation set, since a
    sample sized by each child's own timing would differ between the children compared."""
    return base.replace(val_max_images="0") if base.val_max_images == "auto" else base


class ChildRunStudy(Protocol):
    """A study with one child run per unit of work: ``tune`` (a unit is a trial) and ``cv`` (a fold) differ only
    here. ``plan`` is the command's plan: its ``request`` (a
    :class:`~seizure_mlflow.commands.requests.SharedStudyOptions`), ``study_name``, ``storage_url`` and ``shared``.

    :func:`work` calls, in order: ``load_study``; ``describe_parent`` (once, by the worker that makes the parent
    run) and ``check_parent`` (by every worker); ``run_unit`` for each unit this worker claims; ``close`` when no
    unit is left (every worker calls it: what must happen once, it claims with :func:`claim_once`)."""

    command: str  # the subcommand: "tune", "cv"
    label: str  # the parent run's name: "<label> <study name>"

    def load_study(self, plan): ...

    def describe_parent(self, study, plan, run_id: str, client: MlflowClient) -> None: ...

    def check_parent(self, study, plan) -> None: ...

    def run_unit(self, study, plan, parent: str, claim: Claim) -> None: ...

    def close(self, study, plan, parent: str) -> None: ...


def parent_run(kind: ChildRunStudy, study, plan) -> str:
    """The study's parent run (:func:`elect_parent`), described by whoever makes it and checked by every worker."""
    parent = elect_parent(study, plan.shared, f"{kind.label} {plan.study_name}",
                          lambda run_id, client: kind.describe_parent(study, plan, run_id, client))
    kind.check_parent(study, plan)
    client = MlflowClient()
    if client.get_run(parent).info.status == "KILLED":  # an interrupted study, continued
        client.update_run(parent, status="RUNNING")
    return parent


def work(kind: ChildRunStudy, plan) -> str:
    """This worker's part of the study: units until none is left, then ``close``. Returns the parent run id.
    The child runs are runs of their own, so the ``mlflow run`` wrapper's run id is dropped from the environment
    (it names the parent, when ``mlflow run`` made it)."""
    study = kind.load_study(plan)
    parent = parent_run(kind, study, plan)
    os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        run_until_done(study, plan.shared, lambda claim: kind.run_unit(study, plan, parent, claim))
    except KeyboardInterrupt:  # the unit's run ended KILLED and its trial FAIL: queued again, for whoever continues
        client = MlflowClient()
        retry_interrupted(study, client)
        client.set_terminated(parent, "KILLED")
        raise
    kind.close(study, plan, parent)
    return parent


def run_study_command(kind: ChildRunStudy, plan, announce: str, title: str) -> int:
    """``tune``/``cv``/``budget`` after planning: say how other workers join (``announce``: what the study holds),
    work here or start ``--workers`` processes (:func:`work_here_or_start_workers`), then say where the parent run
    is (``title``: what the study is, in words). Returns the exit status: 1 when a worker failed."""
    print(f"Study {plan.study_name}: {announce}; other workers join with `seizure-mlflow {kind.command} --study "
          f"{plan.study_name}`, the same options and the same storage", flush=True)
    parent = work_here_or_start_workers(kind, plan)
    if parent is None:
        return 1
    print(f"{title} {plan.study_name} done: parent run {parent}")
    return 0


def work_here_or_start_workers(kind: ChildRunStudy, plan) -> str | None:
    """With one worker, work in this process; else make the parent run and start ``--workers`` processes of the
    same study (:func:`start_workers`). Returns the parent run id, None when a worker failed."""
    import logging

    if plan.request.workers == 1:
        return work(kind, plan)
    parent = parent_run(kind, kind.load_study(plan), plan)
    codes = start_workers(kind.command, plan)
    if any(codes):
        logging.getLogger(__name__).error("%d of %d workers failed", sum(1 for c in codes if c), len(codes))
        return None
    return parent


def worker_argv(command: str, request, study_name: str) -> list[str]:
    """The command line of one worker of ``request``'s study: every option as given (the training options too),
    the study named, one worker, and never the storage URL (it travels in the environment)."""
    import sys

    from seizure_mlflow.options import flag_of, option_fields, text_of

    argv = [sys.executable, "-m", "seizure_mlflow", command]
    given = {**{f.name: (f, getattr(request, f.name)) for f in option_fields(type(request))},
             **{f.name: (f, getattr(request.base, f.name)) for f in option_fields(type(request.base))},
             "study": (None, study_name), "workers": (None, 1)}
    for name, (f, value) in given.items():
        if name == "storage" or (name == "heartbeat" and value is None):
            continue
        argv += [flag_of(f) if f is not None else "--" + name, text_of(value)]
    return argv


def start_workers(command: str, plan) -> list[int]:
    """``--workers N``: N worker processes of the same study (``tune`` or ``cv``), one GPU each where there are
    GPUs. The storage URL travels in the environment, not on a command line."""
    import subprocess

    import torch

    from seizure_mlflow.sweeps.storage import STORAGE_ENV

    argv = worker_argv(command, plan.request, plan.study_name)
    gpus = torch.cuda.device_count()
    processes = []
    for k in range(plan.request.workers):
        env = {**os.environ, STORAGE_ENV: plan.storage_url}
        env.pop("MLFLOW_RUN_ID", None)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(k % gpus)
        processes.append(subprocess.Popen(argv, env=env))
    try:
        return [p.wait() for p in processes]
    except KeyboardInterrupt:  # each worker ends its runs (and the parent) KILLED
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            process.wait()
        raise
