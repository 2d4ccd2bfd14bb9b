"""`tune`: a sweep of `main`'s training as child runs of one parent run, pruned by Optuna, the best registered;
workers that share a study; bad input refused before anything starts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO, TINY_OPTS, private_tracking_store, venv_env
from seizure_mlflow.cli import main
from seizure_mlflow.errors import UserError

TINY = ["--max-iter", "6", "--eval-period", "2", "--min-size", "64", "--system-metrics", "false",
        "--model-name", "sweep-detector", "--opts", " ".join(TINY_OPTS)]


def _data(tiny_data) -> list[str]:
    (tj, ti), (vj, vi) = tiny_data["train"], tiny_data["val"]
    return ["--train-json", tj, "--train-images", ti, "--val-json", vj, "--val-images", vi]


def _space(tmp_path: Path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def _runs() -> list:
    client = MlflowClient()
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize("space, message", [
    ("learning_rate: {type: loguniform, low: 0.001, high: 0.1}", "'learning_rate' is not a main parameter"),
    ("lr: {type: uniform, low: 0.1, high: 0.1}", "lr: empty range (low 0.1 is not below high 0.1)"),
    ("lr: {type: loguniform, low: 0, high: 0.1}", "lr: a log-uniform range must be positive"),
    ("ims_per_batch: {type: categorical, choices: []}", "categorical needs a non-empty list"),
    ("SOLVER.NO_SUCH_KEY: {type: uniform, low: 0, high: 1}", "SOLVER.NO_SUCH_KEY is not a key of the Detectron2 config"),
    ("train_json: {type: categorical, choices: [a.json]}", "train_json cannot be searched over"),
    ("lr: {type: gaussian, low: 0, high: 1}", "lr needs a type, one of loguniform, uniform, int, categorical"),
    ("num_machines: {type: categorical, choices: [1, 2]}", "num_machines cannot be searched over"),
    ("dist_url: {type: categorical, choices: [auto]}", "dist_url cannot be searched over"),
    pytest.param("device: {type: categorical, choices: [cpu, cuda]}",
                 "device='cuda' cannot be trained with: device=cuda was asked for, but no CUDA GPU is available",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")),
    ("ims_per_batch: {type: int, low: 0, high: 4}", "ims_per_batch=0 cannot be trained with: ims_per_batch must be "
                                                    "a positive integer"),
    ("SOLVER.BASE_LR: {type: uniform, low: -0.1, high: 0.1}", "SOLVER.BASE_LR=-0.1 cannot be trained with"),
    ("ims_per_batch: {type: int, low: 2, high: 8, step: 0}", "step must be a whole number from 1 to high - low (6)"),
    ("ims_per_batch: {type: int, low: 2, high: 8, step: -1}", "step must be a whole number from 1 to high - low"),
    ("lr: {type: uniform, low: 0.01, high: 0.1, step: 0.01}", "on a uniform range, which has no step"),
    ("DATASETS.TRAIN: {type: categorical, choices: [[seizure_val]]}", "DATASETS.TRAIN must stay ('seizure_train',)"),
])
def test_a_bad_space_is_refused_before_anything_starts(tiny_data, tmp_path, tracking, capsys, space, message):
    code = main(["tune", "--space", _space(tmp_path, space), "--storage", f"sqlite:///{tmp_path}/optuna.db",
                 *_data(tiny_data), *TINY])
    assert code == 2
    err = capsys.readouterr().err
    assert "--space:" in err and message in err
    assert _runs() == [] and not (tmp_path / "optuna.db").exists()


def test_a_lazy_configs_own_keys_are_searched_and_checked_at_every_edge(tiny_data, tmp_path):
    from conftest import tiny_params
    from seizure_mlflow.config import build_config
    from seizure_mlflow.sweeps.space import check_every_edge, read_space

    base = tiny_params(tiny_data, tmp_path, config="cpu_lazy.py", opts=())
    cfg = build_config(base, num_classes=2, output_dir="")
    good = read_space(_space(tmp_path, "optimizer.weight_decay: {type: loguniform, low: 0.00001, high: 0.001}"), cfg)
    check_every_edge("space", base, good, num_classes=2)  # both edges build
    bad = read_space(_space(tmp_path, "optimizer.no_such_key: {type: uniform, low: 0, high: 1}"), cfg)
    with pytest.raises(UserError, match="the LazyConfig has no key optimizer.no_such_key"):
        check_every_edge("space", base, bad, num_classes=2)


def test_a_pruner_that_does_not_exist_is_refused(tiny_data, tmp_path, tracking, capsys):
    assert main(["tune", "--pruner", "sometimes", "--storage", f"sqlite:///{tmp_path}/optuna.db",
                 *_data(tiny_data), *TINY]) == 2
    assert "--pruner: must be one of median, none, hyperband; got 'sometimes'" in capsys.readouterr().err
    assert _runs() == []


def test_a_storage_that_does_not_answer_names_the_host_and_never_the_password(tiny_data, tmp_path, tracking, capsys):
    url = "postgresql+psycopg://sweeper:s3cr3t-pw@127.0.0.1:1/optuna"
    assert main(["tune", "--storage", url, *_data(tiny_data), *TINY]) == 2
    err = capsys.readouterr().err
    assert "--storage: the study storage at 127.0.0.1:1 does not answer" in err
    assert "s3cr3t-pw" not in err
    assert _runs() == []


@pytest.mark.slow
def test_mlflow_run_tune_makes_a_parent_with_six_children_some_pruned_and_one_version(tiny_data, tmp_path):
    """The done-when of the sweep: `mlflow run . -e tune -P trials=6` on the sample data (tiny model); the
    space includes a learning rate far too low to learn anything, which the median pruner stops. The random
    sampler with seed 4 draws two good trials first (the pruner's start-up), then bad ones."""
    space = _space(tmp_path, "lr: {type: categorical, choices: [0.02, 0.0000001]}\n"
                             "ims_per_batch: {type: categorical, choices: [2, 4]}\n")
    (tj, ti), (vj, vi) = tiny_data["train"], tiny_data["val"]
    with private_tracking_store(tmp_path) as uri:
        done = subprocess.run(
            ["mlflow", "run", str(REPO), "-e", "tune", "--env-manager", "local", "--experiment-name", "sweep-test",
             "-P", "trials=6", "-P", f"space={space}", "-P", "study=six", "-P", "sampler=random", "-P", "sampler_seed=4", "-P", "max_iter=6", "-P", "eval_period=2",
             "-P", "min_size=64", "-P", "model_name=sweep-detector", "-P", f"opts={' '.join(TINY_OPTS)}",
             "-P", f"train_json={tj}", "-P", f"train_images={ti}", "-P", f"val_json={vj}", "-P", f"val_images={vi}",
             "-P", f"output_dir={tmp_path / 'out'}"],  # mlflow run works in the project: not into its folder
            capture_output=True, text=True, timeout=1500, cwd=tmp_path,
            env=venv_env(MLFLOW_TRACKING_URI=uri, SEIZURE_OPTUNA_STORAGE=f"sqlite:///{tmp_path}/optuna.db"))
        assert done.returncode == 0, done.stderr[-3000:]
        client = MlflowClient()
        runs = client.search_runs([client.get_experiment_by_name("sweep-test").experiment_id])
        (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 6 and len(runs) == 7
        for child in children:
            assert {"lr", "ims_per_batch"} <= set(child.data.params)
            assert client.get_metric_history(child.info.run_id, "val/total_loss")
        reasons = [c.data.tags["seizure.stop_reason"] for c in children]
        assert "pruned" in reasons and "max_iter" in reasons
        artifacts = {f.path for f in client.list_artifacts(parent.info.run_id, "sweep")}
        assert {"sweep/trials.csv", "sweep/trials.md", "sweep/val_curves.png", "sweep/optimization_history.png"} <= artifacts
        assert "best.lr" in parent.data.params and "best_val_total_loss" in parent.data.metrics
        versions = client.search_model_versions("name = 'sweep-detector'")
        assert len(versions) == 1 and versions[0].tags["seizure.sweep"] == "six"
        best_trial = int(parent.data.metrics["best_trial"])
        (best_run,) = [c for c in children if c.data.tags["seizure.trial"] == str(best_trial)]
        assert versions[0].run_id == best_run.info.run_id
        assert client.get_model_version_by_alias("sweep-detector", "champion").version == versions[0].version


def _trial_states(storage: str, study: str) -> list[str]:
    import optuna

    return [t.state.name for t in optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)]


def _a_trial_is_training(storage: str, study: str) -> bool:
    """A trial is RUNNING and its MLflow run exists (the worker is past planning, inside training)."""
    import optuna

    from sqlalchemy.exc import DBAPIError

    try:
        trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    except (KeyError, DBAPIError):  # the study does not exist yet, or the worker is creating its tables right now
        return False
    return any(t.state.name == "RUNNING" and t.user_attrs.get("run_id") for t in trials)


def _open_at_once(url: str, barrier, results) -> None:
    from seizure_mlflow.sweeps.storage import open_storage

    barrier.wait()
    try:
        open_storage(url)
        results.put("ok")
    except BaseException as exc:  # what the worker would have died of
        results.put(f"{type(exc).__name__}: {exc}")


def test_workers_opening_a_new_study_database_at_the_same_moment_all_get_it(tmp_path):
    """Each creates Optuna's tables if they are missing; the ones that lose the race wait and open them."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path}/race{round_}.db"
        barrier, results = context.Barrier(6), context.Queue()
        workers = [context.Process(target=_open_at_once, args=(url, barrier, results)) for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert [results.get(timeout=5) for _ in workers] == ["ok"] * 6


@pytest.mark.slow
@pytest.mark.parametrize("command, extra, sig", [("tune", ["--trials", "2", "--pruner", "none"], signal.SIGTERM),
                                                 ("cv", ["--folds", "2"], signal.SIGINT)])
def test_an_interrupted_study_leaves_no_run_running_and_the_same_command_continues_it(tiny_data, tmp_path, command,
                                                                                       extra, sig):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = [sys.executable, "-m", "seizure_mlflow", command, "--study", "stopped", *extra, *_data(tiny_data), *TINY,
            "--max-iter", "40"]  # long enough to be inside training when the signal comes
    with private_tracking_store(tmp_path) as uri:
        env = venv_env(MLFLOW_TRACKING_URI=uri, SEIZURE_OPTUNA_STORAGE=storage)
        log = tmp_path / "first.log"
        first = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline and not ((tmp_path / "optuna.db").exists() and _a_trial_is_training(storage, "stopped")):
            assert first.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(2)
        first.send_signal(sig)
        assert first.wait(timeout=300) == 130, log.read_text()[-3000:]
        text = log.read_text()
        assert f"error: stopped ({sig.name})" in text and "--study NAME" in text and "Traceback" not in text, text[-3000:]
        client = MlflowClient()
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert "RUNNING" not in [r.info.status for r in runs]
        [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert parent.info.status == "KILLED" and "KILLED" in [r.info.status for r in runs if r is not parent]

        again = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stderr[-3000:]
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert client.get_run(parent.info.run_id).info.status == "FINISHED"
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED", "KILLED"]  # the interrupted unit, run again


@pytest.mark.slow
def test_two_workers_share_one_study_and_a_killed_workers_trial_is_retried(tiny_data, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = [sys.executable, "-m", "seizure_mlflow", "tune", "--study", "shared", "--trials", "4", "--heartbeat", "2",
            "--pruner", "none", *_data(tiny_data), *TINY]
    with private_tracking_store(tmp_path) as uri:
        env = venv_env(MLFLOW_TRACKING_URI=uri, SEIZURE_OPTUNA_STORAGE=storage)
        log_a, log_b = open(tmp_path / "a.log", "w"), open(tmp_path / "b.log", "w")
        first = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=log_a, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline and not ((tmp_path / "optuna.db").exists() and _a_trial_is_training(storage, "shared")):
            assert first.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(3)  # inside its first trial's training
        second = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=log_b, stderr=subprocess.STDOUT)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert second.wait(timeout=1200) == 0, (tmp_path / "b.log").read_text()[-3000:]
        states = _trial_states(storage, "shared")
        assert "RUNNING" not in states and "WAITING" not in states
        assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1, states  # the killed one, retried
        client = MlflowClient()
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
        assert len(children) == 5 and len(runs) == 6
        assert sorted(c.info.status for c in children) == ["FINISHED"] * 4 + ["KILLED"]
        assert len({c.data.tags["seizure.trial"] for c in children}) == 5  # no trial run twice
        assert len(client.search_model_versions("name = 'sweep-detector'")) == 1


@pytest.mark.slow
def test_workers_option_starts_worker_processes_of_one_study(tiny_data, tmp_path, capsys):
    with private_tracking_store(tmp_path):
        code = main(["tune", "--workers", "2", "--trials", "3", "--study", "pair", "--pruner", "none",
                     "--storage", f"sqlite:///{tmp_path}/optuna.db", *_data(tiny_data), *TINY])
        assert code == 0
        assert sorted(_trial_states(f"sqlite:///{tmp_path}/optuna.db", "pair")) == ["COMPLETE"] * 3
        runs = _runs()
        (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert parent.info.status == "FINISHED"
        assert sorted(r.data.tags["seizure.trial"] for r in runs if r is not parent) == ["0", "1", "2"]
        assert len(MlflowClient().search_model_versions("name = 'sweep-detector'")) == 1


@pytest.mark.slow
def test_diverging_trials_are_recorded_as_failed_and_the_sweep_goes_on(tiny_data, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    space = _space(tmp_path, "lr: {type: categorical, choices: [100000.0]}\n")
    with private_tracking_store(tmp_path):
        assert main(["tune", "--space", space, "--trials", "2", "--study", "wild", "--storage", storage,
                     *_data(tiny_data), *TINY]) == 0
        import optuna

        trials = optuna.load_study(study_name="wild", storage=storage).trials
        assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
        assert [t.user_attrs["stop_reason"] for t in trials] == ["diverged", "diverged"]
        runs = _runs()
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(children) == 2
        assert all(r.info.status == "FAILED" and r.data.tags["seizure.stop_reason"] == "diverged" for r in children)
        assert MlflowClient().search_registered_models() == []  # nothing to register
