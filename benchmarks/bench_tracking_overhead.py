"""What tracking costs training: seconds per iteration of this project's trainer, with its MLflow writer pointed
at different servers, against Detectron2's plain ``DefaultTrainer`` on the same config.

Rows, side by side in one process on the same data and config (validation off in every row, so that only the
trainer's hooks and the metric delivery differ):

* ``DefaultTrainer`` (console and JSON writers; TensorBoard left out, not installed here), first and last;
* ``Trainer``: no tracking; a SQLite store; a local ``mlflow server`` over HTTP (the team stack's server when
  ``--team-env .stack/env`` is given); that server behind a proxy that answers every request 2 s late; a server
  that is down (connection refused); a server that accepts connections and never answers.

Seconds per iteration = wall time of ``trainer.train()`` / iterations (the mean: it includes every write,
unlike the median). The time to deliver what is still queued when training ends is shown apart ("drain").
Prints a table and writes benchmarks/results/tracking_overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from pathlib import Path

from results import print_table, private_store, write_results  # benchmarks/results.py


def build_cfg(data: dict, output_dir: Path, iterations: int):
    from seizure_mlflow.config import TrainParams, build_config

    params = TrainParams(train_json=data["train"][0], train_images=data["train"][1], val_json=data["val"][0],
                         val_images=data["val"][1], max_iter=iterations, eval_period=iterations, device="cpu",
                         opts=("SOLVER.CHECKPOINT_PERIOD", str(iterations)))
    output_dir.mkdir(parents=True, exist_ok=True)
    return build_config(params, num_classes=2, output_dir=str(output_dir))


def default_trainer(cfg):
    from detectron2.engine import DefaultTrainer
    from detectron2.utils.events import CommonMetricPrinter, JSONWriter

    class Plain(DefaultTrainer):
        def build_writers(self):
            return [CommonMetricPrinter(self.max_iter), JSONWriter(f"{self.cfg.OUTPUT_DIR}/metrics.json")]

    cfg = cfg.clone()
    cfg.defrost()
    cfg.TEST.EVAL_PERIOD = 0  # DefaultTrainer has no evaluator to call
    cfg.freeze()
    return Plain(cfg), None


def our_trainer(cfg, tracking_uri: str | None, answers: bool = True):
    import mlflow

    from seizure_mlflow.engine.trainer import Trainer
    from seizure_mlflow.tracking.writer import MlflowWriter

    writer = None
    if tracking_uri is not None:
        run_id = mlflow.MlflowClient(tracking_uri).create_run("0").info.run_id if answers else "0" * 32
        writer = MlflowWriter(run_id, spool_dir=Path(cfg.OUTPUT_DIR) / "spool", tracking_uri=tracking_uri)
    return Trainer(cfg, extra_writers=(lambda: [writer]) if writer else None, validate=False), writer


def timed(make, cfg, iterations: int, **kwargs) -> dict:
    trainer, writer = make(cfg, **kwargs)
    trainer.resume_or_load(resume=False)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    drain = 0.0
    if writer is not None:
        started = time.perf_counter()
        with contextlib.suppress(RuntimeError):
            writer.finish(timeout_s=5)
        drain = time.perf_counter() - started
    return {"s_per_iter": seconds / iterations, "drain_s": round(drain, 1),
            "delivered": writer.delivery.delivered if writer else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--team-env", default="", help="the team stack's env file (.stack/env) to use its server")
    parser.add_argument("--out", default="benchmarks/results/tracking_overhead.json")
    args = parser.parse_args()
    logging.getLogger("detectron2").setLevel(logging.WARNING)

    from seizure_mlflow.data.catalog import register_coco
    from seizure_mlflow.sample.datasets import check_datasets
    from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, write_sample_dataset
    from helpers.servers import FaultyProxy, free_port, local_server

    rows = []
    with tempfile.TemporaryDirectory() as tmp, private_store(Path(tmp)) as sqlite_uri:
        root = Path(tmp)
        data = sample_paths(write_sample_dataset(root / "data", SampleSpec()))
        datasets = check_datasets(data["train"][0], data["train"][1], data["val"][0], data["val"][1])
        register_coco("seizure_train", datasets.train)
        register_coco("seizure_val", datasets.val)
        team = {}
        if args.team_env:
            for line in Path(args.team_env).read_text().splitlines():
                key, _, value = line.partition("=")
                team[key.strip()] = value.strip().strip('"')
        with contextlib.ExitStack() as stack:
            server = team.get("MLFLOW_TRACKING_URI") or stack.enter_context(local_server(root / "server"))
            slow = stack.enter_context(FaultyProxy(server, delay_s=2.0))
            hole = stack.enter_context(FaultyProxy(blackhole=True))
            down = f"http://127.0.0.1:{free_port()}"
            server_label = "team server" if team else "local mlflow server (HTTP)"
            variants = [("DefaultTrainer", default_trainer, {}),
                        ("Trainer, no tracking", our_trainer, {"tracking_uri": None}),
                        ("Trainer, SQLite store", our_trainer, {"tracking_uri": sqlite_uri}),
                        (f"Trainer, {server_label}", our_trainer, {"tracking_uri": server}),
                        ("Trainer, server 2 s per request", our_trainer, {"tracking_uri": slow.url}),
                        ("Trainer, server down (refused)", our_trainer, {"tracking_uri": down, "answers": False}),
                        ("Trainer, server never answers", our_trainer, {"tracking_uri": hole.url, "answers": False}),
                        ("DefaultTrainer (again)", default_trainer, {})]
            for k, (label, make, kwargs) in enumerate(variants):
                cfg = build_cfg(data, root / f"out{k}", args.iterations)
                row = {"trainer": label, **timed(make, cfg, args.iterations, **kwargs)}
                rows.append(row)
                print(f"{label}: {row['s_per_iter']:.4f} s/iteration", flush=True)
    baseline = (rows[0]["s_per_iter"] + rows[-1]["s_per_iter"]) / 2
    for row in rows:
        row["overhead_vs_DefaultTrainer"] = f"{row['s_per_iter'] / baseline - 1:+.1%}"
        row["s_per_iter"] = round(row["s_per_iter"], 4)
    print_table(rows, ["trainer", "s_per_iter", "overhead_vs_DefaultTrainer", "drain_s", "delivered"])
    write_results(args.out, {"iterations": args.iterations, "baseline_s_per_iter": round(baseline, 4), "rows": rows})


if __name__ == "__main__":
    main()
