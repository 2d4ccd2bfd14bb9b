"""Early stopping on an overfitting setting of the sample data: the full-length run vs the same run with
``patience``, side by side (same data, same seed).

The setting (documented in docs/sweeps.md): 4 sample videos x 3 frames (seed 5; 6 training frames of 2
videos, 3 validation frames), the bundled CPU demo model trained from scratch at a constant learning rate
0.02 (``SOLVER.LR_SCHEDULER_NAME WarmupMultiStepLR``), validation every 20 iterations. The training loss keeps
falling while the validation loss is lowest early and then rises. Prints wall time, best validation loss,
best iteration and where each run stopped, and writes benchmarks/results/early_stopping.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from results import private_store, write_results  # benchmarks/results.py

def overfitting_params(root: Path, **changes):
    """TrainParams of the overfitting setting, with its sample data written under ``root``."""
    from seizure_mlflow.config import TrainParams
    from seizure_mlflow.sample.scenes import (OVERFITTING_OPTS, OVERFITTING_SEED, OVERFITTING_SPEC, sample_paths,
                                            write_sample_dataset)

    data = sample_paths(write_sample_dataset(root / "data", OVERFITTING_SPEC))
    base = dict(train_json=data["train"][0], train_images=data["train"][1], val_json=data["val"][0],
                val_images=data["val"][1], lr=0.02, max_iter=400, eval_period=20, device="cpu",
                seed=OVERFITTING_SEED, opts=OVERFITTING_OPTS, system_metrics=False, model_name="overfit",
                val_max_images="0")
    base.update(changes)
    return TrainParams(**base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iter", type=int, default=400)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/early_stopping.json")
    args = parser.parse_args()
    from seizure_mlflow.commands.train import run_training

    rows = []
    with tempfile.TemporaryDirectory() as tmp, private_store(Path(tmp)):
        for label, patience in (("full length", 0), (f"patience {args.patience}", args.patience)):
            params = overfitting_params(Path(tmp), max_iter=args.max_iter, patience=patience,
                                        output_dir=str(Path(tmp) / f"out-{patience}"))
            started = time.perf_counter()
            result = run_training(params)
            rows.append({"run": label, "wall_s": round(time.perf_counter() - started, 1),
                         "best_val_total_loss": round(result.best_val_total_loss, 5),
                         "best_iteration": result.best_iteration, "stopped_at": result.stopped_at,
                         "stop_reason": result.stop_reason})
    saved = 1 - rows[1]["wall_s"] / rows[0]["wall_s"]
    print("\nrun | wall_s | best_val_total_loss | best_iteration | stopped_at | stop_reason")
    for row in rows:
        print(" | ".join(str(row[k]) for k in ("run", "wall_s", "best_val_total_loss", "best_iteration", "stopped_at",
                                                "stop_reason")))
    print(f"early stopping saved {saved:.0%} of the wall time; same best: "
          f"{rows[0]['best_val_total_loss'] == rows[1]['best_val_total_loss']}")
    from seizure_mlflow.sample.scenes import OVERFITTING_OPTS, OVERFITTING_SPEC

    write_results(args.out, {"setting": {"num_videos": OVERFITTING_SPEC.num_videos,
                                         "frames_per_video": OVERFITTING_SPEC.frames_per_video,
                                         "seed": OVERFITTING_SPEC.seed, "opts": list(OVERFITTING_OPTS),
                                         "max_iter": args.max_iter},
                             "rows": rows, "wall_time_saved": round(saved, 3)})


if __name__ == "__main__":
    main()
