"""One validation pass, side by side on the same weights: this project's hook vs a re-implementation of the
widely copied ``LossEvalHook``.

``CopiedLossEvalHookPass`` below is **not** this project's code: it is a faithful re-implementation, written for
this comparison, of what the copied hook does (its data loader maps validation images with
``DatasetMapper(cfg, True)``, i.e. the training augmentations; the model stays in training mode; gradients
are enabled; no RNG is fixed; the mean of per-image total losses on the main process's share). The model uses
BatchNorm here (``MODEL.RESNETS.NORM BN``), so that what each pass does to the running statistics shows.

Rows: seconds per image, the difference between two passes on the same weights, and how many BatchNorm
buffers a pass changed; for this project's hook, one and 4 images per forward, and 4 with the preprocessed
batches kept (the second and later passes of a run). The model is trained ``--train-iterations`` first, so that
its BatchNorm statistics mean something. Prints a table and writes
benchmarks/results/validation_pass.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from results import print_table, write_results  # benchmarks/results.py

BN_OPTS = ("MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN")


class CopiedLossEvalHookPass:
    """A re-implementation of the copied ``LossEvalHook``'s pass (see the module docstring); for comparison only."""

    def __init__(self, cfg, model) -> None:
        from detectron2.data import DatasetMapper, build_detection_test_loader

        self._model = model
        self._loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0], DatasetMapper(cfg, True))

    def _get_loss(self, data) -> float:
        metrics = self._model(data)
        metrics = {k: v.detach().cpu().item() if isinstance(v, torch.Tensor) else float(v) for k, v in metrics.items()}
        return sum(metrics.values())

    def run(self) -> tuple[float, int]:
        from detectron2.utils.events import EventStorage

        losses = []
        with EventStorage():  # the copied hook runs inside the trainer's storage
            for inputs in self._loader:
                losses.append(self._get_loss(inputs))
        return float(np.mean(losses)), len(losses)


def bn_buffers(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "running_" in k}


def changed(before: dict, after: dict) -> int:
    return sum(not torch.equal(before[k], after[k]) for k in before)


def measure(label: str, run, model) -> dict:
    """Two passes; the weights and buffers are reset to the same state before each."""
    start_state = copy.deepcopy(model.state_dict())
    values, seconds, changes = [], [], 0
    for _ in range(2):
        model.load_state_dict(start_state)
        model.train()
        before = bn_buffers(model)
        started = time.perf_counter()
        value, images = run()
        seconds.append((time.perf_counter() - started) / images)
        changes = max(changes, changed(before, bn_buffers(model)))
        values.append(value)
    model.load_state_dict(start_state)
    return {"pass": label, "s_per_image_first": round(seconds[0], 4), "s_per_image_second": round(seconds[1], 4),
            "total_loss": round(values[0], 6), "repeat_difference": abs(values[0] - values[1]),
            "bn_buffers_changed": changes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-per-video", type=int, default=6)
    parser.add_argument("--train-iterations", type=int, default=40, help="trained first, from scratch")
    parser.add_argument("--out", default="benchmarks/results/validation_pass.json")
    args = parser.parse_args()
    logging.getLogger("detectron2").setLevel(logging.WARNING)

    from seizure_mlflow.config import VAL_DATASET, TrainParams, build_config
    from seizure_mlflow.sample.datasets import check_datasets
    from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, write_sample_dataset
    from seizure_mlflow.engine.measures import compute_validation_loss
    from seizure_mlflow.engine.validation import CachedBatches, build_validation_loader
    from seizure_mlflow.commands.train import build_trainer

    with tempfile.TemporaryDirectory() as tmp:
        data = sample_paths(write_sample_dataset(Path(tmp) / "data",
                                                 SampleSpec(num_videos=50, frames_per_video=args.frames_per_video)))
        params = TrainParams(train_json=data["train"][0], train_images=data["train"][1], val_json=data["val"][0],
                             val_images=data["val"][1], device="cpu", opts=BN_OPTS, max_iter=args.train_iterations)
        datasets = check_datasets(params.train_json, params.train_images, params.val_json, params.val_images)
        cfg = build_config(params, num_classes=2, output_dir=str(Path(tmp) / "out"))
        trainer = build_trainer(cfg, datasets, validate=False)
        trainer.resume_or_load(resume=False)
        trainer.train()  # a few iterations, so that the BatchNorm statistics are not at their initial values
        model = trainer.model
        frames = len(json.loads(Path(data["val"][0]).read_text())["images"])

        def ours(loader):
            return lambda: (compute_validation_loss(model, loader, cfg.SEED)["total_loss"], frames)

        def loader(batch_size: int):
            return build_validation_loader(cfg, VAL_DATASET, batch_size=batch_size)

        cached = CachedBatches(loader(4), 2**30)
        list(cached)  # a run's first pass fills it
        rows = [
            measure("copied LossEvalHook (re-implementation, see docstring)", CopiedLossEvalHookPass(cfg, model).run,
                    model),
            measure("this hook, 1 image per forward", ours(loader(1)), model),
            measure("this hook, 4 images per forward (the default)", ours(loader(4)), model),
            measure("this hook, 4 per forward, preprocessed batches kept (2nd pass on)", ours(cached), model),
        ]
    for row in rows:
        row["repeat_difference"] = f"{row['repeat_difference']:.3g}"
    print(f"\n{frames} validation frames, the demo R18-FPN with BatchNorm, CPU")
    print_table(rows)
    write_results(args.out, {"validation_frames": frames, "rows": rows})


if __name__ == "__main__":
    main()
