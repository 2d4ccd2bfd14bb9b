"""GPU throughput in one go (``benchmarks/gpu.sh`` runs it): training images/s with AMP off and on at several batch
sizes, what a validation image costs against a training image, and the registered model's pyfunc latency.

On a GPU: Mask R-CNN R50-FPN (the model zoo's from-scratch GroupNorm layout, as no pretrained weights are
needed for timing) at 800 px on synthetic sample frames of 1024x768. With ``--dry-run`` the same steps run on the
CPU with the tiny test model and 64 px frames, in about a minute: a check that the script works, not a
measurement (AMP rows are then marked skipped: AMP needs CUDA). Writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

from results import print_table, private_store, write_results  # benchmarks/results.py

GPU_CONFIG = "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml"
TINY_OPTS = ("MODEL.FPN.OUT_CHANNELS", "32", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN",
             "100", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
             "MODEL.ROI_MASK_HEAD.CONV_DIM", "32")


def setting(dry_run: bool) -> dict:
    if dry_run:
        return {"device": "cpu", "config": "cpu_demo.yaml", "min_size": 64, "frame": (96, 72), "batches": (1, 2),
                "warmup": 1, "timed": 2, "opts": TINY_OPTS, "val_frames": 4, "latency_images": 3}
    return {"device": "cuda", "config": GPU_CONFIG, "min_size": 800, "frame": (1024, 768), "batches": (2, 4, 8),
            "warmup": 5, "timed": 15, "opts": ("INPUT.MAX_SIZE_TRAIN", "1333", "INPUT.MAX_SIZE_TEST", "1333"),
            "val_frames": 40, "latency_images": 20}


def train_throughput(params, datasets, batch: int, amp: bool, warmup: int, timed: int, root: Path) -> dict:
    """Images/s over ``timed`` iterations after ``warmup`` (median iteration time from Detectron2's timer)."""
    import torch

    from seizure_mlflow.config import build_config
    from seizure_mlflow.commands.train import build_trainer

    p = params.replace(ims_per_batch=batch, amp=amp, max_iter=warmup + timed, eval_period=warmup + timed)
    cfg = build_config(p, num_classes=2, output_dir=str(root / f"b{batch}-amp{int(amp)}"))
    trainer = build_trainer(cfg, datasets, validate=False)
    trainer.resume_or_load(resume=False)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    times = [t for t, it in trainer.storage.history("time").values() if it >= warmup]
    seconds = statistics.median(times) if times else float("nan")
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    result = {"batch": batch, "amp": amp, "s_per_iter": round(seconds, 4), "images_per_s": round(batch / seconds, 2),
              "peak_gib": round(peak, 2)}
    del trainer
    return result


def validation_cost(params, datasets, root: Path, train_rows: list[dict]) -> list[dict]:
    """Seconds per validation image, 1 and 4 images per forward, against a training image at batch 2, AMP off."""
    from seizure_mlflow.config import VAL_DATASET, build_config
    from seizure_mlflow.engine.measures import compute_validation_loss
    from seizure_mlflow.engine.validation import build_validation_loader
    from seizure_mlflow.commands.train import build_trainer

    cfg = build_config(params, num_classes=2, output_dir=str(root / "val"))
    trainer = build_trainer(cfg, datasets, validate=False)
    base = next(r for r in train_rows if not r["amp"])
    per_train_image = base["s_per_iter"] / base["batch"]
    rows = []
    for batch in (1, 4):
        loader = build_validation_loader(cfg, VAL_DATASET, batch_size=batch)
        compute_validation_loss(trainer.model, loader, cfg.SEED)  # warm-up
        started = time.perf_counter()
        compute_validation_loss(trainer.model, loader, cfg.SEED)
        per_image = (time.perf_counter() - started) / len(loader.dataset)
        rows.append({"validation_batch": batch, "s_per_image": round(per_image, 4),
                     "vs_training_image": round(per_image / per_train_image, 3)})
    return rows


def pyfunc_latency(params, root: Path, images: list[bytes]) -> dict:
    import mlflow
    import pandas as pd

    from seizure_mlflow.commands.train import run_training

    result = run_training(params.replace(max_iter=4, eval_period=4, ims_per_batch=2, val_max_images="0",
                                         output_dir=str(root / "model"), system_metrics=False, model_name="gpu-bench"))
    model = mlflow.pyfunc.load_model(f"models:/gpu-bench/{result.model_version}")
    model.predict(pd.DataFrame({"image": images[:1]}))
    seconds = []
    for png in images:
        started = time.perf_counter()
        model.predict(pd.DataFrame({"image": [png]}))
        seconds.append(time.perf_counter() - started)
    return {"pyfunc_ms_per_image": round(statistics.median(seconds) * 1000, 1), "images": len(images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with a tiny model")
    parser.add_argument("--out", default="benchmarks/results/gpu.json")
    args = parser.parse_args()
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    import torch

    from seizure_mlflow.config import TrainParams
    from seizure_mlflow.sample.datasets import check_datasets
    from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, write_sample_dataset

    s = setting(args.dry_run)
    if s["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA GPU visible to torch; run with --dry-run to check the script on a CPU")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, private_store(Path(tmp)):
        root = Path(tmp)
        width, height = s["frame"]
        data = sample_paths(write_sample_dataset(root / "data", SampleSpec(
            num_videos=10, frames_per_video=max(2, s["val_frames"] // 2), width=width, height=height)))
        datasets = check_datasets(data["train"][0], data["train"][1], data["val"][0], data["val"][1])
        params = TrainParams(train_json=data["train"][0], train_images=data["train"][1], val_json=data["val"][0],
                             val_images=data["val"][1], config=s["config"], device=s["device"],
                             min_size=s["min_size"], opts=s["opts"], system_metrics=False)
        training = []
        for amp in (False, True):
            for batch in s["batches"]:
                if amp and s["device"] != "cuda":
                    training.append({"batch": batch, "amp": True, "skipped": "AMP needs CUDA"})
                    continue
                training.append(train_throughput(params, datasets, batch, amp, s["warmup"], s["timed"], root))
                print(training[-1], flush=True)
        measured = [r for r in training if "skipped" not in r]
        validation = validation_cost(params, datasets, root, measured)
        test_images = json.loads(Path(data["test"][0]).read_text())["images"][:s["latency_images"]]
        pngs = [(Path(data["test"][1]) / image["file_name"]).read_bytes() for image in test_images]
        latency = pyfunc_latency(params, root, pngs)
    print_table(training, ["batch", "amp", "s_per_iter", "images_per_s", "peak_gib", "skipped"])
    print_table(validation)
    print(f"\npyfunc: {latency['pyfunc_ms_per_image']} ms per image")
    write_results(args.out, {
        "dry_run": args.dry_run, "device": torch.cuda.get_device_name(0) if s["device"] == "cuda" else platform.processor()
        or "cpu", "torch": torch.__version__, "config": s["config"], "min_size": s["min_size"], "training": training,
        "validation": validation, "pyfunc": latency, "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
