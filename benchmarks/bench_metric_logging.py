"""How long it takes to send a training run's metrics to MLflow: batched writer vs one request per value.

Simulates `--steps` iterations with the 7 train metrics the writer logs per iteration (plus 6 val metrics
every 25), into a fresh SQLite tracking store, three ways, side by side in one process:
  * MlflowWriter: Detectron2 EventStorage + our writer, queueing every 20 iterations, its thread sending
    log_batch requests (timed until everything is delivered);
  * log_metrics per iteration (one request per iteration);
  * log_metric per value (one request per value, as naive callbacks do).
Prints a table and writes benchmarks/results/metric_logging.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import mlflow
from detectron2.utils.events import EventStorage
from mlflow import MlflowClient

from results import write_results  # benchmarks/results.py
from seizure_mlflow.tracking.writer import MlflowWriter

TRAIN = ["total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc", "lr"]
VAL = ["val/total_loss", "val/loss_cls", "val/loss_box_reg", "val/loss_mask", "val/loss_rpn_cls", "val/loss_rpn_loc"]


def values(step: int) -> tuple[dict, dict]:
    train = {k: 1.0 / (step + 1) + i for i, k in enumerate(TRAIN)}
    val = {k: 2.0 / (step + 1) + i for i, k in enumerate(VAL)} if (step + 1) % 25 == 0 else {}
    return train, val


def with_writer(client: MlflowClient, run_id: str, steps: int) -> int:
    writer = MlflowWriter(run_id, client)
    with EventStorage() as storage:
        for step in range(steps):
            storage.iter = step
            train, val = values(step)
            storage.put_scalars(**train, smoothing_hint=False)
            storage.put_scalars(**val, smoothing_hint=False)
            if (step + 1) % 20 == 0 or step == steps - 1:
                writer.write()
    writer.finish(timeout_s=600)  # the delivery thread sends; the timing includes it
    return steps * len(TRAIN) + (steps // 25) * len(VAL)


def per_step(client: MlflowClient, run_id: str, steps: int) -> int:
    n = 0
    for step in range(steps):
        train, val = values(step)
        metrics = {f"train/{k}": v for k, v in train.items()} | val
        mlflow.log_metrics(metrics, step=step + 1, run_id=run_id)
        n += len(metrics)
    return n


def per_value(client: MlflowClient, run_id: str, steps: int) -> int:
    n = 0
    for step in range(steps):
        train, val = values(step)
        for k, v in ({f"train/{k}": v for k, v in train.items()} | val).items():
            client.log_metric(run_id, k, v, step=step + 1)
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/metric_logging.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        client = MlflowClient()
        experiment = client.create_experiment("bench")
        rows = []
        for name, fn in (("MlflowWriter (log_batch every 20 it)", with_writer),
                         ("log_metrics per iteration", per_step),
                         ("log_metric per value", per_value)):
            run_id = client.create_run(experiment).info.run_id
            start = time.perf_counter()
            count = fn(client, run_id, args.steps)
            seconds = time.perf_counter() - start
            stored = sum(len(client.get_metric_history(run_id, k)) for k in client.get_run(run_id).data.metrics)
            rows.append({"method": name, "values": count, "stored": stored, "seconds": round(seconds, 3)})
    base = rows[0]["seconds"]
    print(f"{'method':40} {'values':>7} {'stored':>7} {'seconds':>8} {'x writer':>9}")
    for r in rows:
        r["ratio_to_writer"] = round(r["seconds"] / base, 1)
        print(f"{r['method']:40} {r['values']:7d} {r['stored']:7d} {r['seconds']:8.2f} {r['ratio_to_writer']:9.1f}")
    write_results(args.out, {"steps": args.steps, "store": "sqlite", "rows": rows})


if __name__ == "__main__":
    main()
