"""The annotation loop: pre-labels from a registered model (COCO for CVAT and prepare, Label Studio tasks, the CVAT
auto-annotation function), the annotators' corrections measured after prepare, and the frames worth drawing.

The model is a tiny Mask R-CNN trained here for 100 iterations on the sample scenes (slow tier); what is tested is
the path (files, formats, agreement with `predict`, carrying, records), not how good the model is.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import TINY_SPEC, private_tracking_store, tiny_params
from seizure_mlflow.cli import main
from seizure_mlflow.data.masks import decode_segmentation
from seizure_mlflow.sample.scenes import SampleSpec, write_sample_exports

NAME = "annotator"
MIN_SCORE = "0.2"  # the 100-iteration model is unsure on video frames; the path is under test, not its confidence
EXPORTS_SPEC = SampleSpec(num_videos=3, frames_per_video=6, width=TINY_SPEC.width, height=TINY_SPEC.height,
                          seed=TINY_SPEC.seed)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """Three sample videos (6 frames each) with their true COCO exports: the scenes the model is trained on."""
    return write_sample_exports(tmp_path_factory.mktemp("exports") / "videos", EXPORTS_SPEC)


@pytest.fixture(scope="module")
def champion(tiny_data, tmp_path_factory):
    from seizure_mlflow.commands.train import run_training

    root = tmp_path_factory.mktemp("annotation")
    with private_tracking_store(root) as uri:
        run_training(tiny_params(tiny_data, root, model_name=NAME, max_iter=100, eval_period=50, lr=0.02))
        yield {"uri": uri, "root": root, "model_uri": f"models:/{NAME}@champion"}


def _runs() -> list:
    return MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])


def _masks_per_frame(document: dict) -> dict[int, list[tuple[str, np.ndarray]]]:
    images = {img["id"]: img for img in document["images"]}
    names = {c["id"]: c["name"] for c in document["categories"]}
    found: dict[int, list] = {img["frame_id"]: [] for img in document["images"]}
    for ann in document["annotations"]:
        img = images[ann["image_id"]]
        found[img["frame_id"]].append((names[ann["category_id"]],
                                       decode_segmentation(ann["segmentation"], img["height"], img["width"])))
    return found


def _predicted_per_frame(results: list[dict], min_score: float) -> dict[int, list[tuple[str, np.ndarray]]]:
    found: dict[int, list] = {}
    for r in results:
        h, w = r["segmentation"]["size"]
        mask = decode_segmentation(r["segmentation"], h, w)
        if r["score"] >= min_score and mask.any():
            found.setdefault(r["frame_index"], []).append((r["category_name"], mask))
    return found


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


def _assert_same_masks(ours: list, theirs: list) -> None:
    assert len(ours) == len(theirs)
    for name, mask in theirs:
        best = max((_iou(mask, m) for n, m in ours if n == name), default=0.0)
        assert best >= 0.95, f"a {name} mask of predict has no pre-label like it (best IoU {best:.2f})"


@pytest.mark.slow
def test_pre_labels_agree_with_predict_and_go_through_prepare_and_training(champion, exports, tmp_path, capsys):
    from seizure_mlflow.commands.train import run_training
    from seizure_mlflow.data.checks import check_coco

    runs_before = len(_runs())
    outputs = []
    for video in sorted(exports.glob("*.mp4")):
        out = tmp_path / f"pre-{video.stem}"
        assert main(["pre-annotate", "--model-uri", champion["model_uri"], "--input", str(video), "--output", str(out),
                     "--min-score", MIN_SCORE]) == 0, capsys.readouterr().err
        outputs.append(out)
    assert len(_runs()) == runs_before, "pre-annotate made an MLflow run: nothing of the video is to be recorded"

    counts = {out: len(json.loads((out / f"{out.name.removeprefix('pre-')}.json").read_text())["annotations"])
              for out in outputs}
    out = max(outputs, key=counts.get)  # the video the weak model finds most on (which one depends on the CPU)
    video = exports / f"{out.name.removeprefix('pre-')}.mp4"
    document = json.loads((out / f"{video.stem}.json").read_text())
    summary = check_coco(out / f"{video.stem}.json", out / video.stem)  # the package's own checks
    assert summary.num_images == EXPORTS_SPEC.frames_per_video and document["annotations"], "no masks: vacuous"
    assert all(a["attributes"]["carried"] is False and 0.2 <= a["score"] <= 1 for a in document["annotations"])

    assert main(["predict", "--model-uri", champion["model_uri"], "--input", str(video),
                 "--output", str(tmp_path / "predicted.json")]) == 0
    predicted = _predicted_per_frame(json.loads((tmp_path / "predicted.json").read_text()), float(MIN_SCORE))
    ours = _masks_per_frame(document)
    for frame in ours:
        _assert_same_masks(ours[frame], predicted.get(frame, []))

    tasks = json.loads((out / "label-studio" / f"{video.stem}.json").read_text())
    assert len(tasks) == EXPORTS_SPEC.frames_per_video
    assert {t["predictions"][0]["model_version"] for t in tasks} == {f"{NAME}/1"}
    results = [r for t in tasks for r in t["predictions"][0]["result"]]
    assert results and all(0 <= x <= 100 and 0 <= y <= 100 for r in results for x, y in r["value"]["points"])
    assert {label for r in results for label in r["value"]["polygonlabels"]} <= {"patient", "caregiver"}
    assert (out / "label-studio" / "config.xml").read_text().count("<Label ") == 2

    corrected = tmp_path / "corrected"  # the annotators' files: this video's pre-labels unchanged, the others' truth
    shutil.copytree(exports, corrected, ignore=shutil.ignore_patterns(".seizure-mlflow-output", f"{video.stem}.*"))
    shutil.copy(out / f"{video.stem}.json", corrected)
    shutil.copytree(out / video.stem, corrected / video.stem)
    assert main(["prepare", "--input", str(corrected), "--output", str(tmp_path / "prepared"),
                 "--pre-labels", str(out)]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "prepared" / "report.json").read_text())
    assert report["corrections"]["prelabels"] == len(document["annotations"])
    assert report["corrections"]["kept_share"] == 1.0 and report["corrections"]["mean_iou_kept"] == 1.0
    prepared = tmp_path / "prepared"
    result = run_training(tiny_params({"train": (str(prepared / "train.json"), str(prepared / "images")),
                                       "val": (str(prepared / "val.json"), str(prepared / "images"))},
                                      tmp_path / "two", model_name="from-prelabels", max_iter=2, eval_period=2))
    assert result.stopped_at == 2


@pytest.mark.slow
def test_masks_between_detected_frames_are_carried_and_marked(champion, exports, tmp_path, capsys):
    documents = {}
    for video in sorted(exports.glob("*.mp4")):
        out = tmp_path / f"every-{video.stem}"
        assert main(["pre-annotate", "--model-uri", champion["model_uri"], "--input", str(video),
                     "--output", str(out), "--every", "3", "--min-score", MIN_SCORE]) == 0
        documents[video] = json.loads((out / f"{video.stem}.json").read_text())
    video = max(documents, key=lambda v: len(documents[v]["annotations"]))  # one the weak model finds people on
    document = documents[video]
    carried = {img["frame_id"]: set() for img in document["images"]}
    frame_of = {img["id"]: img["frame_id"] for img in document["images"]}
    for ann in document["annotations"]:
        carried[frame_of[ann["image_id"]]].add(ann["attributes"]["carried"])
    assert all(flags <= {False} for frame, flags in carried.items() if frame % 3 == 0)
    assert any(flags == {True} for frame, flags in carried.items() if frame % 3 != 0), "nothing carried"
    assert main(["predict", "--model-uri", champion["model_uri"], "--input", str(video),
                 "--output", str(tmp_path / "predicted.json")]) == 0
    predicted = _predicted_per_frame(json.loads((tmp_path / "predicted.json").read_text()), float(MIN_SCORE))
    ours = _masks_per_frame(document)
    for frame in (0, 3):
        _assert_same_masks(ours[frame], predicted.get(frame, []))
    assert "2 detected, 4 carried" in capsys.readouterr().out


@pytest.mark.slow
def test_the_cvat_function_loads_an_alias_and_returns_shapes_cvat_accepts(champion, exports, tmp_path):
    pytest.importorskip("cvat_sdk.auto_annotation", reason="the cvat extra (cvat-sdk) is not installed")
    import logging

    import cvat_sdk.models as models
    import PIL.Image
    from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl

    from seizure_mlflow.integrations import cvat

    function = cvat.create(model_uri=champion["model_uri"], min_score=float(MIN_SCORE))
    assert [(label.name, label.type) for label in function.spec.labels] == [("patient", "mask"), ("caregiver", "mask")]
    from seizure_mlflow.annotation.sources import frame_source

    frames = [bgr for video in sorted(exports.glob("*.mp4")) for _, _, bgr in frame_source(video).frames()]
    image = PIL.Image.fromarray(max(frames, key=lambda bgr: len(function.detector.predict([bgr])[0]))[:, :, ::-1].copy())
    task_labels = [models.Label(id=100 + k, name=name, type="any", attributes=[], sublabels=[])
                   for k, name in enumerate(("patient", "caregiver"))]
    for to_polygons in (False, True):
        context = _DetectionFunctionContextImpl(frame_name="frame_000000.png", conf_threshold=None,
                                                conv_mask_to_poly=to_polygons)
        shapes = function.detect(context, image)
        assert shapes, "no shape: vacuous"
        assert {str(s.type) for s in shapes} == {"polygon" if to_polygons else "mask"}
        mapper = _AnnotationMapper(logging.getLogger("test"), function.spec.labels, task_labels,
                                   allow_unmatched_labels=False, conv_mask_to_poly=to_polygons)
        _, accepted = mapper.validate_and_remap(shapes, 0)  # CVAT's own driver: labels mapped, types checked
        assert len(accepted) == len(shapes) and {s.label_id for s in accepted} <= {100, 101}
    strict = _DetectionFunctionContextImpl(frame_name="f", conf_threshold=0.999, conv_mask_to_poly=False)
    assert len(function.detect(strict, image)) < len(shapes)


def _exports_copy(exports: Path, to: Path) -> Path:
    shutil.copytree(exports, to, ignore=shutil.ignore_patterns(".seizure-mlflow-output"))
    return to


def test_prepare_reports_how_much_the_annotators_changed_the_pre_labels(exports, tmp_path, capsys):
    """Pre-labels made from the truth: one mask moved, one false mask the annotators deleted, one true mask they
    added."""
    corrected = _exports_copy(exports, tmp_path / "corrected")
    prelabels = tmp_path / "prelabels"
    prelabels.mkdir()
    truth = json.loads((corrected / "video_00.json").read_text())
    document = json.loads(json.dumps(truth))
    document["annotations"].pop(0)  # the model missed it: the annotators added it
    moved = document["annotations"][0]
    moved["segmentation"] = [[x + (3 if k % 2 == 0 else 0) for k, x in enumerate(p)] for p in moved["segmentation"]]
    false = dict(moved, id=9999, segmentation=[[1, 1, 8, 1, 8, 8, 1, 8]], image_id=document["images"][-1]["id"])
    document["annotations"].append(false)  # a mask where nobody is: deleted
    (prelabels / "video_00.json").write_text(json.dumps(document))
    kept = len(document["annotations"]) - 1
    assert main(["prepare", "--input", str(corrected), "--output", str(tmp_path / "out"),
                 "--pre-labels", str(prelabels)]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())["corrections"]
    assert report["videos"] == 1 and report["prelabels"] == kept + 1
    assert (report["kept"], report["deleted"], report["added"]) == (kept, 1, 1)
    assert 0.5 <= report["mean_iou_kept"] < 1.0 and report["kept_share"] == round(kept / (kept + 1), 4)
    assert f"{kept} of {kept + 1} masks kept" in capsys.readouterr().out
    assert main(["prepare", "--input", str(corrected), "--output", str(tmp_path / "none"),
                 "--pre-labels", str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "none").exists()


def test_select_frames_honours_the_budget_and_the_window_and_records_no_file_name(exports, tracking, tmp_path):
    from seizure_mlflow.data.video import frame_rate

    fps = frame_rate(sorted(exports.glob("*.mp4"))[0])
    window_frames = 2
    for strategy in ("even", "random"):
        out = tmp_path / strategy
        assert main(["select-frames", "--input", str(exports), "--output", str(out), "--budget", "2",
                     "--window", str(window_frames / fps), "--strategy", strategy]) == 0
        with open(out / "selection.csv") as fh:
            rows = list(csv.DictReader(fh))
        by_video: dict[str, list[int]] = {}
        for row in rows:
            by_video.setdefault(row["video"], []).append(int(row["frame"]))
        assert sorted(by_video) == ["video_00", "video_01", "video_02"]
        for frames in by_video.values():
            assert len(frames) == 2 and abs(frames[1] - frames[0]) >= window_frames
        listed = (out / "frames.txt").read_text().split()
        assert len(listed) == 6 and all((out / line).is_file() for line in listed)
    even = [int(r["frame"]) for r in csv.DictReader(open(tmp_path / "even" / "selection.csv"))]
    assert even[:2] == [1, 4]  # the middles of two halves of six frames
    [run, _] = sorted(_runs(), key=lambda r: r.info.start_time)[:2]
    assert run.data.params["strategy"] == "even" and run.data.params["budget_per_video"] == "2"
    selection = Path(MlflowClient().download_artifacts(run.info.run_id, "selection.json", str(tmp_path))).read_text()
    recorded = json.dumps([run.data.params, run.data.tags]) + selection
    for secret in ("video_0", str(exports), str(tmp_path), ".mp4", ".png"):
        assert secret not in recorded, f"{secret!r} reached the tracking server"
    assert [len(frames) for frames in json.loads(selection)["videos"].values()] == [2, 2, 2]


def test_bad_selection_and_pre_label_requests_are_refused_before_any_work(exports, tracking, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    from seizure_mlflow.annotation.sources import frame_source
    from seizure_mlflow.data.video import write_png

    for index, name, bgr in frame_source(sorted(exports.glob("*.mp4"))[0]).frames():
        write_png(frames / name, bgr)
    cases = [
        (["pre-annotate", "--model-uri", "models:/none@champion", "--input", str(frames), "--output",
          str(tmp_path / "a"), "--every", "3"], "--every: carries masks between neighbouring frames of a video"),
        (["select-frames", "--input", str(exports), "--output", str(tmp_path / "b"), "--budget", "0"],
         "--budget: must be >= 1"),
        (["pre-annotate", "--input", str(tmp_path / "nothing.mp4"), "--output", str(tmp_path / "c")],
         "--input:"),
        (["select-frames", "--input", str(exports), "--output", str(tmp_path / "d"), "--strategy", "best"],
         "--strategy: must be one of even, random, uncertainty"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not any((tmp_path / x).exists() for x in "abcd") and not _runs()
