"""What AP's scoring costs, beside inference: pycocotools' COCOeval (evaluate + accumulate, then the 20
accumulates of validation's jackknife) against ``faster-coco-eval``'s, on the same detections; and the test set's
bootstrap over videos at the study's size (``--bootstrap-images`` frames in ``--videos`` videos, 1,000 resamples,
one model and a paired comparison of two), after the one per-image matching.

Synthetic frames the size of the sample data's (192x144, one patient and sometimes a caregiver, polygon masks) and
detections with misses, shifts and false alarms, ``--images`` of them. Both libraries must give the same AP; the
table gives seconds per pass and per frame. ``faster-coco-eval`` is not a dependency of the package: install it
where you run this (``pip install faster-coco-eval``) to compare, or the row says it is missing. Writes
benchmarks/results/coco_ap.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import random
import time

from results import print_table, write_results  # benchmarks/results.py

TASKS = ("bbox", "segm")


def synthetic(images: int, seed: int = 0, per_video: int = 40) -> tuple[dict, list[dict]]:
    rng = random.Random(seed)
    gt = {"images": [{"id": i + 1, "width": 192, "height": 144, "file_name": f"v{i // per_video}/f{i}.png"}
                     for i in range(images)],
          "categories": [{"id": 1, "name": "patient"}, {"id": 2, "name": "caregiver"}], "annotations": []}
    detections = []
    for image in gt["images"]:
        for category in (1, 2) if rng.random() < 0.4 else (1,):
            x, y, w, h = rng.randint(0, 100), rng.randint(0, 70), rng.randint(30, 90), rng.randint(30, 70)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image["id"], "category_id": category,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                                      "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
            for _ in range(rng.randint(1, 6)):  # one good detection and several worse ones, as a detector gives
                dx, dy = rng.randint(-20, 20), rng.randint(-20, 20)
                box = [max(0, x + dx), max(0, y + dy), w, h]
                detections.append({"image_id": image["id"], "category_id": category, "bbox": box, "score": rng.random(),
                                   "segmentation": [[box[0], box[1], box[0] + w, box[1], box[0] + w, box[1] + h,
                                                     box[0], box[1] + h]]})
    return gt, detections


def with_pycocotools(gt: dict, detections: list[dict]) -> tuple[dict, dict]:
    from seizure_mlflow.evaluation.coco_ap import ImageMatches, detections_coco, quiet_coco

    seconds, values = {}, {}
    started = time.perf_counter()
    coco = quiet_coco(gt)
    dt = detections_coco(coco, detections)
    for task in TASKS:
        matches = ImageMatches.evaluate(coco, dt, task, [i["id"] for i in gt["images"]])
        values[task] = matches.summary()["AP"]
    seconds["evaluate + accumulate"] = time.perf_counter() - started
    started = time.perf_counter()
    count = len(matches.image_ids)
    for left in range(20):
        matches.summary([p for p in range(count) if p % 20 != left])
    seconds["20 jackknife accumulates (one task)"] = time.perf_counter() - started
    return seconds, values


def with_faster_coco_eval(gt: dict, detections: list[dict]) -> tuple[dict, dict] | None:
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        return None
    seconds, values = {}, {}
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(copy.deepcopy(gt))
        dt = coco.loadRes(copy.deepcopy(detections))
        for task in TASKS:
            evaluation = COCOeval_faster(coco, dt, task, print_function=lambda *a, **k: None)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            values[task] = evaluation.stats[0] * 100
    seconds["evaluate + accumulate"] = time.perf_counter() - started
    return seconds, values


def bootstrap_rows(images: int, videos: int) -> list[dict]:
    from seizure_mlflow.evaluation.coco_ap import ImageMatches, VideoMatches, detections_coco, quiet_coco

    gt, first = synthetic(images, seed=1, per_video=images // videos)
    rng = random.Random(2)
    second = [{**d, "score": rng.random()} for d in first]  # another "model": the same boxes, ranked otherwise
    rows = []
    started = time.perf_counter()
    coco = quiet_coco(gt)
    video_of = {i["id"]: i["file_name"].split("/")[0] for i in gt["images"]}
    ids = [i["id"] for i in gt["images"]]
    models = [VideoMatches(ImageMatches.evaluate(coco, detections_coco(coco, d), "segm", ids), video_of)
              for d in (first, second)]
    rows.append({"step": "per-image matching, two models (segm)", "seconds": round(time.perf_counter() - started, 2)})
    draws = models[0].bootstrap(1000, seed=0)
    started = time.perf_counter()
    values = [models[0].summary(c)["AP"] for c in draws]
    rows.append({"step": "1,000 resamples of the videos, one model", "seconds": round(time.perf_counter() - started, 2)})
    started = time.perf_counter()
    differences = [models[1].summary(c)["AP"] - models[0].summary(c)["AP"] for c in draws]
    rows.append({"step": "1,000 paired resamples, two models", "seconds": round(time.perf_counter() - started, 2)})
    rows.append({"step": f"(range over the resamples: one model's AP {min(values):.1f}..{max(values):.1f}; the difference "
                         f"{min(differences):+.1f}..{max(differences):+.1f})", "seconds": ""})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[50, 400])
    parser.add_argument("--bootstrap-images", type=int, default=7000)
    parser.add_argument("--videos", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/coco_ap.json")
    args = parser.parse_args()
    rows = []
    for images in args.images:
        gt, detections = synthetic(images)
        for library, run in (("pycocotools", with_pycocotools), ("faster-coco-eval", with_faster_coco_eval)):
            measured = run(gt, detections)
            if measured is None:
                rows.append({"images": images, "library": library, "pass": "not installed", "seconds": "",
                             "ms_per_frame": "", "bbox_AP": "", "segm_AP": ""})
                continue
            seconds, values = measured
            for step, spent in seconds.items():
                rows.append({"images": images, "library": library, "pass": step, "seconds": round(spent, 3),
                             "ms_per_frame": round(1000 * spent / images, 2), "bbox_AP": round(values["bbox"], 4),
                             "segm_AP": round(values["segm"], 4)})
    print_table(rows)
    bootstrap = bootstrap_rows(args.bootstrap_images, args.videos)
    print(f"\nbootstrap over {args.videos} videos of a {args.bootstrap_images}-frame test set")
    print_table(bootstrap)
    write_results(args.out, {"rows": rows, "bootstrap": bootstrap})


if __name__ == "__main__":
    main()
