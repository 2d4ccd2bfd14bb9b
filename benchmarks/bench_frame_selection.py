"""Frames worth drawing: models trained on frames chosen by the champion's uncertainty, by even spacing in time and
at random, at the same budget, side by side (same data, same seeds), each evaluated on the test videos.

The setting: sample videos with more frames than the demo's (12 videos x 24 frames, 96x72 px, seed 11; split by
video); a champion trained on the validation videos (``--champion-iter`` iterations) scores the training videos'
frames (``select-frames``' uncertainty: its best score and the agreement of its mask with the mask the flow
carries from the previous frame); each strategy then picks ``--budget`` frames per training video, no two closer
than ``--window`` frames, and a fresh tiny Mask R-CNN is trained on their true masks for ``--iter`` iterations,
once per seed. Prints per strategy the test mask AP of each seed (with its 95% interval over test videos), the mean
and standard deviation over seeds, and the paired difference to even spacing; writes
benchmarks/results/frame_selection.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from results import private_store, write_results  # benchmarks/results.py

STRATEGIES = ("even", "random", "uncertainty")


def _frames_by_video(coco: dict) -> dict[str, list[dict]]:
    from seizure_mlflow.data.video_identity import grouped_by_video

    return grouped_by_video(coco["images"])


def choose_subset(coco: dict, root: Path, strategy: str, budget: int, window: int, seed: int, detector) -> dict:
    """The training COCO document of the frames ``strategy`` picks in each video."""
    from seizure_mlflow.annotation.selection import Candidate, choose, score_frames
    from seizure_mlflow.data.frames import read_frame

    keep = set()
    for video, images in _frames_by_video(coco).items():
        if strategy == "uncertainty":
            candidates = score_frames(detector, ((k, read_frame(root / img["file_name"])) for k, img in
                                                 enumerate(images)))
        else:
            candidates = [Candidate(k) for k in range(len(images))]
        keep |= {images[c.frame]["id"] for c in choose(candidates, budget, window, strategy, seed)}
    return {"images": [i for i in coco["images"] if i["id"] in keep],
            "annotations": [a for a in coco["annotations"] if a["image_id"] in keep], "categories": coco["categories"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=3, help="frames per training video")
    parser.add_argument("--window", type=int, default=2, help="frames between chosen frames, at least")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iter", type=int, default=150)
    parser.add_argument("--champion-iter", type=int, default=150)
    parser.add_argument("--out", default="benchmarks/results/frame_selection.json")
    args = parser.parse_args()

    from conftest import TINY_OPTS  # tests/conftest.py: the tiny model of the tests
    from seizure_mlflow.commands.train import run_training
    from seizure_mlflow.config import TrainParams
    from seizure_mlflow.data.checks import check_coco
    from seizure_mlflow.evaluation.detector import evaluate_detector
    from seizure_mlflow.registry.uris import detector_from_uri
    from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, write_sample_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp, private_store(Path(tmp)):
        data = sample_paths(write_sample_dataset(Path(tmp) / "data",
                                                 SampleSpec(num_videos=12, frames_per_video=24, width=96, height=72,
                                                            seed=11)))
        common = dict(min_size=72, device="cpu", opts=TINY_OPTS, system_metrics=False, val_max_images="0",
                      ims_per_batch=2, lr=0.02)
        champion = run_training(TrainParams(train_json=data["val"][0], train_images=data["val"][1],
                                            val_json=data["val"][0], val_images=data["val"][1], model_name="champion",
                                            max_iter=args.champion_iter, eval_period=args.champion_iter,
                                            output_dir=f"{tmp}/champion", **common))
        detector = detector_from_uri(f"models:/champion/{champion.model_version}")
        train = json.loads(Path(data["train"][0]).read_text())
        test = check_coco(*data["test"])
        for strategy in STRATEGIES:
            for seed in range(1, args.seeds + 1):
                subset = choose_subset(train, Path(data["train"][1]), strategy, args.budget, args.window, seed,
                                       detector)
                path = Path(tmp) / f"{strategy}-{seed}.json"
                path.write_text(json.dumps(subset))
                started = time.perf_counter()
                result = run_training(TrainParams(train_json=str(path), train_images=data["train"][1],
                                                  val_json=data["val"][0], val_images=data["val"][1], seed=seed,
                                                  model_name=f"{strategy}-{seed}", max_iter=args.iter,
                                                  eval_period=args.iter, output_dir=f"{tmp}/{strategy}-{seed}",
                                                  **common))
                model = detector_from_uri(f"models:/{strategy}-{seed}/{result.model_version}")  # its best checkpoint
                evaluation = evaluate_detector(model, test, f"{tmp}/eval-{strategy}-{seed}")
                metrics = evaluation.metrics
                rows.append({"strategy": strategy, "seed": seed, "frames": len(subset["images"]),
                             "masks": len(subset["annotations"]), "test_segm_AP": round(metrics["test/segm/AP"], 2),
                             "ci_low": round(metrics.get("test/segm/AP_ci_low", float("nan")), 2),
                             "ci_high": round(metrics.get("test/segm/AP_ci_high", float("nan")), 2),
                             "wall_s": round(time.perf_counter() - started, 1)})
                print(rows[-1], flush=True)
    summary = {}
    even = {r["seed"]: r["test_segm_AP"] for r in rows if r["strategy"] == "even"}
    for strategy in STRATEGIES:
        values = [r["test_segm_AP"] for r in rows if r["strategy"] == strategy]
        paired = [r["test_segm_AP"] - even[r["seed"]] for r in rows if r["strategy"] == strategy]
        summary[strategy] = {"mean": round(statistics.mean(values), 2),
                             "sd": round(statistics.stdev(values), 2) if len(values) > 1 else None,
                             "minus_even_mean": round(statistics.mean(paired), 2),
                             "minus_even_sd": round(statistics.stdev(paired), 2) if len(paired) > 1 else None}
    print("\nstrategy | seed | frames | masks | test mask AP [95% interval over test videos] | wall_s")
    for r in rows:
        print(f"{r['strategy']} | {r['seed']} | {r['frames']} | {r['masks']} | {r['test_segm_AP']} "
              f"[{r['ci_low']}, {r['ci_high']}] | {r['wall_s']}")
    print("\nstrategy | mean AP over seeds | sd | minus even spacing, paired by seed (mean, sd)")
    for strategy, s in summary.items():
        print(f"{strategy} | {s['mean']} | {s['sd']} | {s['minus_even_mean']} ({s['minus_even_sd']})")
    write_results(args.out, {"settings": vars(args), "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
