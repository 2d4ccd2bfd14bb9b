"""Which validation measure picks the better checkpoint: ``val/total_loss`` or ``val/segm/AP``, judged by test-set
mask AP, per test video, over several seeds.

Each seed writes its own sample data (``--videos`` videos of ``--frames`` frames, split 60/20/20 by video, data seed
= training seed) and trains the demo's R18-FPN from scratch once, with AP measured at every validation
(``monitor=val/segm/AP``, ``ap_period`` 1, the whole validation set): validation does not change training, so the
checkpoint the loss would have chosen (its lowest ``val/total_loss``) and the one AP chose are two points of the same
run, and the weights of every validated iteration are kept by an extra hook. Both are evaluated on the seed's test
videos: pooled test mask AP, and mask AP per test video (the unit a claim about the next patient rests on). Prints
one table per seed and the paired differences over all test videos; writes benchmarks/results/model_choice.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from detectron2.engine import HookBase

from results import print_table, private_store, write_results  # benchmarks/results.py


class KeepValidated(HookBase):
    """Saves the model's weights at every iteration the validation hook validated (register after it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def after_step(self) -> None:
        import torch

        latest = getattr(self.trainer, "last_validation", None)
        if latest is not None and latest.iteration == self.trainer.iter:
            model = self.trainer.model
            torch.save(getattr(model, "module", model).state_dict(), self.folder / f"{self.trainer.iter + 1}.pth")


def per_video_ap(predictions: list[dict], test_json: str) -> dict[str, float]:
    """Mask AP of each test video, from one per-image evaluation."""
    import json

    from seizure_mlflow.evaluation.coco_ap import ImageMatches, detections_coco, quiet_coco
    from seizure_mlflow.data.val_sample import video_groups

    dataset = json.loads(Path(test_json).read_text())
    gt = quiet_coco(dataset)
    matches = ImageMatches.evaluate(gt, detections_coco(gt, predictions), "segm", [i["id"] for i in dataset["images"]])
    position = {image_id: k for k, image_id in enumerate(matches.image_ids)}
    return {video: matches.summary([position[f["id"]] for f in frames])["AP"]
            for video, frames in video_groups(dataset["images"]).items()}


def evaluate_checkpoint(cfg, weights_path: Path, categories, test, out: Path) -> tuple[float, dict[str, float]]:
    import json

    import torch

    from seizure_mlflow.evaluation.detector import evaluate_detector
    from seizure_mlflow.inference.predictor import Detector

    detector = Detector(cfg, torch.load(weights_path, weights_only=True), categories)
    result = evaluate_detector(detector, test, out, progress=False)
    predictions = json.loads(Path(result.predictions_path).read_text())
    return result.metrics["test/segm/AP"], per_video_ap(predictions, test.json_path)


def run_seed(root: Path, seed: int, args) -> dict:
    import mlflow

    from seizure_mlflow.commands.finish import RegisterModel
    from seizure_mlflow.commands.train import run_training
    from seizure_mlflow.config import TrainParams, build_config
    from seizure_mlflow.data.checks import check_coco
    from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, write_sample_dataset

    data = sample_paths(write_sample_dataset(root / f"data-{seed}", SampleSpec(num_videos=args.videos,
                                                                               frames_per_video=args.frames, seed=seed)))
    out = root / f"out-{seed}"
    params = TrainParams(train_json=data["train"][0], train_images=data["train"][1], val_json=data["val"][0],
                         val_images=data["val"][1], max_iter=args.max_iter, eval_period=args.eval_period, seed=seed,
                         device="cpu", system_metrics=False, model_name=f"choice-{seed}", val_max_images="0",
                         monitor="val/segm/AP", ap_period=1, output_dir=str(out))
    started = time.perf_counter()
    result = run_training(params, finish=RegisterModel(hooks=lambda: [KeepValidated(out / "validated")]))
    wall = time.perf_counter() - started
    client = mlflow.MlflowClient()
    loss = {m.step: m.value for m in client.get_metric_history(result.run_id, "val/total_loss")}
    ap = {m.step: m.value for m in client.get_metric_history(result.run_id, "val/segm/AP")}
    chosen = {"val/total_loss": min(loss, key=lambda s: (loss[s], s)), "val/segm/AP": result.best_iteration}
    test = check_coco(*data["test"])
    cfg = build_config(params, num_classes=len(test.categories), output_dir=str(out))
    categories = [{"id": cid, "name": name} for cid, name in test.categories]
    row = {"seed": seed, "wall_s": round(wall, 1)}
    for monitor, iteration in chosen.items():
        pooled, videos = evaluate_checkpoint(cfg, out / "validated" / f"{iteration}.pth", categories, test,
                                             root / f"eval-{seed}-{iteration}")
        row[monitor] = {"iteration": iteration, "val_total_loss": loss[iteration], "val_segm_AP": ap[iteration],
                        "test_segm_AP": pooled, "per_video": videos}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--videos", type=int, default=10)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--max-iter", type=int, default=400)
    parser.add_argument("--eval-period", type=int, default=40)
    parser.add_argument("--out", default="benchmarks/results/model_choice.json")
    args = parser.parse_args()

    rows, pairs = [], []
    with tempfile.TemporaryDirectory() as tmp, private_store(Path(tmp)):
        for seed in args.seeds:
            row = run_seed(Path(tmp), seed, args)
            rows.append(row)
            loss, ap = row["val/total_loss"], row["val/segm/AP"]
            for video in loss["per_video"]:
                pairs.append({"seed": seed, "video": video, "by_loss": loss["per_video"][video],
                              "by_ap": ap["per_video"][video],
                              "difference": ap["per_video"][video] - loss["per_video"][video]})
    table = [{"seed": r["seed"], "chosen by": m, "iteration": r[m]["iteration"],
              "val/total_loss": round(r[m]["val_total_loss"], 4), "val/segm/AP": round(r[m]["val_segm_AP"], 2),
              "test mask AP (pooled)": round(r[m]["test_segm_AP"], 2),
              "per test video": ", ".join(f"{v:.1f}" for v in r[m]["per_video"].values()), "wall_s": r["wall_s"]}
             for r in rows for m in ("val/total_loss", "val/segm/AP")]
    print_table(table)
    differences = [p["difference"] for p in pairs]
    mean = statistics.fmean(differences)
    sd = statistics.stdev(differences) if len(differences) > 1 else float("nan")
    se = sd / len(differences) ** 0.5 if len(differences) > 1 else float("nan")
    better = sum(d > 0 for d in differences)
    worse = sum(d < 0 for d in differences)
    print(f"\nper test video, AP-chosen minus loss-chosen mask AP over {len(differences)} videos x seeds: mean "
          f"{mean:+.2f}, SD {sd:.2f}, SE {se:.2f}; AP's choice better on {better}, worse on {worse}, equal on "
          f"{len(differences) - better - worse}")
    write_results(args.out, {"setting": vars(args), "runs": rows, "pairs": pairs,
                             "paired_difference": {"mean": mean, "sd": sd, "se": se, "videos": len(differences),
                                                   "better": better, "worse": worse}})


if __name__ == "__main__":
    main()
