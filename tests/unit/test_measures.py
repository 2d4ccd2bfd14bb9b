"""The parts validation measures are made of: the monitor's rule and direction, AP on parts of a set from one
per-image evaluation, the jackknife's standard error, the replicate groups and the precision target's size.
Seconds, no Mask R-CNN."""

from __future__ import annotations

import contextlib
import io
import math
import random

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from seizure_mlflow.evaluation.coco_ap import ImageMatches, detections_coco, quiet_coco
from seizure_mlflow.config import ConfigError
from seizure_mlflow.data.val_sample import replicate_groups
from seizure_mlflow.engine.measures import jackknife_se
from seizure_mlflow.metrics.monitor import Monitor
from seizure_mlflow.engine.validation import expected_rse, precise_sample_size


def test_the_monitor_knows_its_direction_and_names():
    loss, ap = Monitor(), Monitor("val/segm/AP")
    assert (loss.mode, loss.direction, loss.best_metric, loss.key) == ("min", "minimize", "best/val_total_loss",
                                                                       "val_total_loss")
    assert (ap.mode, ap.direction, ap.best_metric, ap.key) == ("max", "maximize", "best/val_segm_AP", "val_segm_AP")
    assert loss.improves(0.5, 0.6) and not loss.improves(0.55, 0.6, min_delta=0.1) and not loss.improves(math.nan, None)
    assert ap.improves(31.0, 30.0) and not ap.improves(30.5, 30.0, min_delta=1.0) and not ap.improves(29.0, 30.0)
    assert Monitor("val/loss_mask").mode == "min" and ap.needs_ap and not loss.needs_ap


@pytest.mark.parametrize("bad", ["val/segm/AP75", "segm/AP", "test/segm/AP", "val/total_loss ", "train/total_loss"])
def test_an_unknown_monitor_is_refused_naming_the_choices(bad):
    from seizure_mlflow.config import TrainParams

    with pytest.raises(ConfigError, match="monitor must be val/total_loss, a val/loss_\\* component, or val/bbox/AP"):
        TrainParams(monitor=bad)


def _dataset(images: int = 6, seed: int = 0) -> tuple[dict, list[dict]]:
    """Ground truth of ``images`` 100x100 frames (one or two people, boxes and polygon masks) and detections with
    misses, false alarms and shifted boxes, so that AP differs between parts of the set."""
    rng = random.Random(seed)
    gt = {"images": [{"id": i + 1, "width": 100, "height": 100, "file_name": f"v{i // 3}/f{i}.png"}
                     for i in range(images)],
          "categories": [{"id": 1, "name": "patient"}, {"id": 2, "name": "caregiver"}], "annotations": []}
    detections = []
    for image in gt["images"]:
        for category in (1, 2) if image["id"] % 2 else (1,):
            x, y, w, h = rng.randint(0, 40), rng.randint(0, 40), rng.randint(20, 50), rng.randint(20, 50)
            polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image["id"], "category_id": category,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0, "segmentation": [polygon]})
            if rng.random() < 0.8:  # found, more or less well
                dx = rng.randint(-8, 8)
                box = [x + dx, y, w, h]
                detections.append({"image_id": image["id"], "category_id": category, "bbox": box,
                                   "score": rng.random(), "segmentation": [[box[0], y, box[0] + w, y, box[0] + w, y + h,
                                                                            box[0], y + h]]})
            if rng.random() < 0.3:  # a false alarm
                detections.append({"image_id": image["id"], "category_id": category, "bbox": [60, 60, 30, 30],
                                   "score": rng.random(), "segmentation": [[60, 60, 90, 60, 90, 90, 60, 90]]})
    return gt, detections


def _fresh_ap(gt: dict, detections: list[dict], task: str, image_ids: list[int]) -> tuple[float, float]:
    coco = quiet_coco(gt)
    evaluation = COCOeval(coco, detections_coco(coco, detections), task)
    evaluation.params.imgIds = image_ids
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats[0] * 100, evaluation.stats[1] * 100


@pytest.mark.parametrize("task", ["bbox", "segm"])
def test_ap_on_any_part_of_the_set_is_cocoevals_own_on_that_part(task):
    gt, detections = _dataset()
    coco = quiet_coco(gt)
    matches = ImageMatches.evaluate(coco, detections_coco(coco, detections), task, [i["id"] for i in gt["images"]])
    whole = matches.summary()
    assert (whole["AP"], whole["AP50"]) == pytest.approx(_fresh_ap(gt, detections, task, matches.image_ids))
    part = [0, 2, 3]  # positions, not a prefix (pycocotools' own imgIds subsetting gets these wrong)
    expected = _fresh_ap(gt, detections, task, [matches.image_ids[p] for p in part])
    assert (matches.summary(part)["AP"], matches.summary(part)["AP50"]) == pytest.approx(expected)
    assert matches.summary(part)["AP"] != pytest.approx(whole["AP"])


def test_an_image_that_appears_twice_counts_twice():
    gt, detections = _dataset()
    coco = quiet_coco(gt)
    matches = ImageMatches.evaluate(coco, detections_coco(coco, detections), "segm", [i["id"] for i in gt["images"]])
    # the same as a set in which image 1 has a twin with its own id
    twin = {**gt, "images": gt["images"] + [{**gt["images"][0], "id": 99}],
            "annotations": gt["annotations"] + [{**a, "id": 1000 + a["id"], "image_id": 99}
                                                for a in gt["annotations"] if a["image_id"] == 1]}
    twin_detections = detections + [{**d, "image_id": 99} for d in detections if d["image_id"] == 1]
    expected = _fresh_ap(twin, twin_detections, "segm", [i["id"] for i in twin["images"]])
    assert matches.summary([0, 0, 1, 2, 3, 4, 5])["AP"] == pytest.approx(expected[0])


@pytest.mark.parametrize("task", ["bbox", "segm"])
def test_ap_on_a_resample_of_videos_is_cocoevals_on_those_frames_with_repeats(task):
    from seizure_mlflow.evaluation.coco_ap import VideoMatches

    gt, detections = _dataset(images=9, seed=2)  # videos v0, v1, v2 of 3 frames each
    coco = quiet_coco(gt)
    matches = ImageMatches.evaluate(coco, detections_coco(coco, detections), task, [i["id"] for i in gt["images"]])
    video_of = {i["id"]: i["file_name"].split("/")[0] for i in gt["images"]}
    by_video = VideoMatches(matches, video_of)
    assert by_video.videos == ["v0", "v1", "v2"]
    positions = {v: [p for p, i in enumerate(matches.image_ids) if video_of[i] == v] for v in by_video.videos}
    for counts in ([1, 1, 1], [2, 0, 1], [0, 3, 0], [1, 2, 0]):
        expected = matches.summary([p for v, c in zip(by_video.videos, counts) for _ in range(c) for p in positions[v]])
        got = by_video.summary(np.array(counts))
        assert (got["AP"], got["AP50"]) == pytest.approx((expected["AP"], expected["AP50"]), abs=1e-9), counts
    assert by_video.summary([2, 0, 1]) != pytest.approx(by_video.summary([1, 1, 1]))
    draws = by_video.bootstrap(resamples=50, seed=1)
    assert draws.shape == (50, 3) and (draws.sum(axis=1) == 3).all()
    assert (draws == by_video.bootstrap(resamples=50, seed=1)).all()


def test_no_detections_at_all_is_zero_ap():
    gt, _ = _dataset()
    coco = quiet_coco(gt)
    matches = ImageMatches.evaluate(coco, detections_coco(coco, []), "bbox", [i["id"] for i in gt["images"]])
    assert matches.summary() == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}


def test_the_jackknife_error_of_a_mean_is_the_textbook_standard_error():
    values = np.random.default_rng(0).normal(3.0, 2.0, size=40)
    left_out = [(values.sum() - v) / (len(values) - 1) for v in values]
    assert jackknife_se(left_out) == pytest.approx(values.std(ddof=1) / np.sqrt(len(values)))
    assert math.isnan(jackknife_se([1.0]))


def test_replicate_groups_are_blocks_of_one_batch_dealt_round_robin():
    ids = list(range(100, 130))
    groups = replicate_groups(ids, batch_size=4, replicates=5)
    assert [groups[i] for i in ids[:12]] == [0] * 4 + [1] * 4 + [2] * 4
    assert groups[ids[20]] == 0 and set(groups.values()) == set(range(5))
    assert set(replicate_groups(ids[:6], batch_size=4).values()) == {0, 1}  # two blocks, two groups


def test_the_precise_size_shrinks_the_error_to_the_target():
    # a standard error of 4% of the value on 100 frames of 1000: a 2% error needs about 4x the frames
    size = precise_sample_size(10.0, 0.4, 100, 1000, 0.02)
    assert expected_rse(10.0, 0.4, 100, size, 1000) <= 0.02 < expected_rse(10.0, 0.4, 100, size - 1, 1000)
    assert 280 < size < 300 and expected_rse(10.0, 0.4, 100, 100, 1000) == pytest.approx(0.4 * math.sqrt(0.9) / 10)
    assert precise_sample_size(0.0, 0.4, 100, 1000, 0.02) is None  # an AP of 0: no relative error
    assert precise_sample_size(10.0, 0.01, 100, 1000, 0.02) < 100
    assert expected_rse(10.0, 0.4, 100, 1000, 1000) == 0.0  # the whole set has no sampling error
