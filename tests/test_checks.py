"""The COCO validator: each malformed input fails with a message naming the file, the record and the fix."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from PIL import Image

from seizure_mlflow.data.checks import check_coco, check_same_categories
from seizure_mlflow.errors import DatasetError


def _valid() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10},
                   {"id": 2, "file_name": "b.png", "width": 20, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5],
                         "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]], "area": 25, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "patient"}],
    }


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (20, 10)).save(root / name)
    (tmp_path / "outside.png").write_bytes((root / "a.png").read_bytes())  # a real image beside the image folder
    (root / "notes.png").write_text("this is a text file named like a frame")
    (root / "empty.png").write_bytes(b"")
    Image.new("RGB", (32, 24)).save(root / "big.png")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    return root


def _write(tmp_path, data, name="coco.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def _edit(fn):
    data = _valid()
    fn(data)
    return data


def _rle(size=(10, 20), counts=None) -> dict:
    from pycocotools import mask as mask_util

    mask = np.zeros((10, 20), np.uint8, order="F")
    mask[1:6, 1:6] = 1
    rle = mask_util.encode(mask)
    return {"size": list(size), "counts": counts if counts is not None else rle["counts"].decode()}

MALFORMED = [
    ("empty file", "", "file is empty"),
    ("not json", "{images: [}", "not valid JSON (line 1"),
    ("top level list", "[]", "top level must be a JSON object"),
    ("nested past the parser's limit", '{"images": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ("no images key", _edit(lambda d: d.pop("images")), "missing or non-list 'images'"),
    ("empty images", _edit(lambda d: d.update(images=[], annotations=[])), "'images' is empty"),
    ("empty categories", _edit(lambda d: d.update(categories=[])), "'categories' is empty"),
    ("duplicate image id", _edit(lambda d: d["images"].append(dict(d["images"][0]))), "images[2] (id 1): duplicate image id"),
    ("image without size", _edit(lambda d: d["images"][0].pop("width")), "images[0] (id 1): width: missing; it must be an integer from 1 to"),
    ("image file missing", _edit(lambda d: d["images"][1].update(file_name="gone.png")), "image file 'gone.png' not found"),
    ("unknown image id", _edit(lambda d: d["annotations"][0].update(image_id=9)), "annotations[0] (id 1): image_id 9 is not an image"),
    ("unknown category id", _edit(lambda d: d["annotations"][0].update(category_id=5)), "category_id 5 is not a category in this file"),
    ("duplicate annotation id", _edit(lambda d: d["annotations"].append(dict(d["annotations"][0]))), "annotations[1] (id 1): duplicate annotation id"),
    ("zero-width bbox", _edit(lambda d: d["annotations"][0].update(bbox=[1, 1, 0, 5])), "degenerate bbox [1, 1, 0, 5]"),
    ("bbox outside image", _edit(lambda d: d["annotations"][0].update(bbox=[15, 1, 30, 5])), "lies outside its 20x10 image"),
    ("bbox wrong length", _edit(lambda d: d["annotations"][0].update(bbox=[1, 1, 5])), "bbox: has 3 items; it needs at least 4"),
    ("polygon too short", _edit(lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5]])), "segmentation[0]: has 4 items; it needs at least 6 (a polygon"),
    ("polygon odd length", _edit(lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5, 6, 6, 7]])), "needs an even number"),
    ("polygon zero area", _edit(lambda d: d["annotations"][0].update(segmentation=[[1, 1, 2, 2, 3, 3]])), "polygon 0 has zero area"),
    ("bad RLE", _edit(lambda d: d["annotations"][0].update(segmentation={"counts": "abc"})), "segmentation.size: missing; it must be [height, width] of its image"),
    ("duplicate category name", _edit(lambda d: d["categories"].append({"id": 2, "name": "patient"})), "duplicate category name 'patient'"),
    ("no annotations", _edit(lambda d: d.update(annotations=[])), "'annotations' is empty"),
    ("category names differing in case", _edit(lambda d: d["categories"].append({"id": 2, "name": " Patient"})),
     "category name ' Patient' differs from 'patient' only in case or spaces"),
    ("file_name with ..", _edit(lambda d: d["images"][1].update(file_name="../outside.png")),
     "images[1] (id 2): file_name '../outside.png' leads outside the image folder"),
    ("absolute file_name", _edit(lambda d: d["images"][1].update(file_name="/etc/hostname")),
     "images[1] (id 2): file_name '/etc/hostname' leads outside the image folder"),
    ("symlink pointing out", _edit(lambda d: d["images"][1].update(file_name="link.png")),
     "images[1] (id 2): file_name 'link.png' leads outside the image folder"),
    ("text file named .png", _edit(lambda d: d["images"][1].update(file_name="notes.png")),
     "images[1] (id 2): {root}/notes.png: not a readable image"),
    ("0-byte frame", _edit(lambda d: d["images"][1].update(file_name="empty.png")),
     "images[1] (id 2): image file {root}/empty.png is empty (0 bytes)"),
    ("frame of another size", _edit(lambda d: d["images"][1].update(file_name="big.png")),
     "images[1] (id 2): {root}/big.png is 32x24 (PNG) but the COCO file says 20x10"),
    # Records that passed the old checks and then crashed a started run, or were trained on silently.
    ("RLE with iscrowd 0 (CVAT brush masks)", _edit(lambda d: d["annotations"][0].update(segmentation=_rle(), iscrowd=0)),
     "annotations[0] (id 1): segmentation: an RLE mask with iscrowd 0: COCO (and Detectron2) read RLE as a crowd region"),
    ("polygons with iscrowd 1", _edit(lambda d: d["annotations"][0].update(iscrowd=1)),
     "annotations[0] (id 1): segmentation: polygons with iscrowd 1: a crowd region, which training ignores"),
    ("missing segmentation", _edit(lambda d: d["annotations"][0].pop("segmentation")),
     "annotations[0] (id 1): segmentation: missing"),
    ("negative uncompressed RLE counts", _edit(lambda d: d["annotations"][0].update(segmentation={"size": [10, 20], "counts": [5, -3, 10]}, iscrowd=1)),
     "annotations[0] (id 1): segmentation.counts[1]: input should be greater than or equal to 0"),
    ("uncompressed RLE counts of another total", _edit(lambda d: d["annotations"][0].update(segmentation={"size": [10, 20], "counts": [5, 3, 10]}, iscrowd=1)),
     "RLE counts cover 18 pixels, but its size [10, 20] has 200"),
    ("string area", _edit(lambda d: d["annotations"][0].update(area="big")), "annotations[0] (id 1): area: input should be a valid number, got 'big'"),
    ("NaN area", _edit(lambda d: d["annotations"][0].update(area=float("nan"))), "annotations[0] (id 1): area: input should be a finite number"),
    ("negative area", _edit(lambda d: d["annotations"][0].update(area=-5)), "annotations[0] (id 1): area: input should be greater than or equal to 0"),
    ("polygon at 1e9", _edit(lambda d: d["annotations"][0].update(segmentation=[[-1e9, -1e9, 1e9, -1e9, 1e9, 1e9]])),
     "annotations[0] (id 1): segmentation: polygon 0 reaches (-1e+09, -1e+09)-(1e+09, 1e+09), outside its 20x10 image"),
    ("RLE of another size", _edit(lambda d: d["annotations"][0].update(segmentation=_rle(size=[5, 5]), iscrowd=1)),
     "annotations[0] (id 1): segmentation: RLE size [5, 5] is not its image's [height, width] [10, 20]"),
    ("garbage RLE counts", _edit(lambda d: d["annotations"][0].update(segmentation=_rle(counts="zzzz!!!"), iscrowd=1)),
     "segmentation: RLE counts is not a compressed COCO RLE string"),
    ("RLE counts of another total", _edit(lambda d: d["annotations"][0].update(segmentation=_rle(counts="0\\1"), iscrowd=1)),
     "segmentation: RLE counts cover"),
    ("iscrowd 'yes'", _edit(lambda d: d["annotations"][0].update(iscrowd="yes")), "annotations[0] (id 1): iscrowd: input should be a valid integer, got 'yes'"),
    ("iscrowd 2", _edit(lambda d: d["annotations"][0].update(iscrowd=2)), "annotations[0] (id 1): iscrowd: input should be less than or equal to 1"),
    ("category_id true", _edit(lambda d: d["annotations"][0].update(category_id=True)), "annotations[0] (id 1): category_id: input should be a valid integer, got True"),
    ("image id true", _edit(lambda d: d["images"][1].update(id=True)), "images[1]: id: input should be a valid integer, got True"),
    ("NUL in file_name", _edit(lambda d: d["images"][1].update(file_name="b\x00.png")), "images[1] (id 2): file_name: has a control character"),
    ("blank category name", _edit(lambda d: d["categories"][0].update(name="  ")), "categories[0] (id 1): name: is blank"),
    ("bbox of strings", _edit(lambda d: d["annotations"][0].update(bbox=["1", 1, 5, 5])), "annotations[0] (id 1): bbox[0]: input should be a valid number, got '1'"),
]



@pytest.mark.parametrize("data,expected", [(d, e) for _, d, e in MALFORMED], ids=[c for c, _, _ in MALFORMED])
def test_malformed_coco_is_a_clear_error(tmp_path, image_root, data, expected):
    path = _write(tmp_path, copy.deepcopy(data))
    with pytest.raises(DatasetError) as err:
        check_coco(path, image_root)
    message = str(err.value)
    assert path in message, message
    assert expected.format(root=image_root) in message, message


def test_bad_frames_are_all_listed_at_once_and_nothing_outside_is_opened(tmp_path, image_root, monkeypatch):
    data = _valid()
    data["images"] += [{"id": 3, "file_name": name, "width": 20, "height": 10}
                       for name in ("notes.png", "empty.png", "big.png", "../outside.png", "link.png")]
    for k, image in enumerate(data["images"][2:]):
        image["id"] = 3 + k
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **kw: opened.append(str(p)) or real_open(p, *a, **kw))
    with pytest.raises(DatasetError) as err:
        check_coco(_write(tmp_path, data), image_root)
    message = str(err.value)
    assert "5 problem(s)" in message
    for name in ("notes.png", "empty.png", "big.png", "'../outside.png'", "'link.png'"):
        assert name in message
    assert not any("outside" in p or "link" in p for p in opened), opened


def test_many_frames_are_checked_in_parallel_with_the_same_result(tmp_path):
    from seizure_mlflow.data.checks import check_image_headers

    root = tmp_path / "frames"
    root.mkdir()
    frames = []
    for k in range(200):
        path = root / f"f{k}.png"
        if k == 150:
            path.write_text("not an image")
        else:
            Image.new("RGB", (20, 10)).save(path)
        frames.append((f"images[{k}]", str(path), (20, 10) if k != 77 else (21, 10)))
    problems = check_image_headers(frames)
    assert [p.split(":")[0] for p in problems] == ["images[77]", "images[150]"]


def test_missing_file_and_folder(tmp_path, image_root):
    with pytest.raises(DatasetError, match="COCO file not found"):
        check_coco(tmp_path / "nope.json", image_root)
    path = _write(tmp_path, _valid())
    with pytest.raises(DatasetError, match="image folder .* does not exist"):
        check_coco(path, tmp_path / "no-images")


def test_every_problem_is_listed_at_once(tmp_path, image_root):
    data = _valid()
    data["annotations"][0].update(category_id=7, bbox=[0, 0, -1, 2])
    with pytest.raises(DatasetError) as err:
        check_coco(_write(tmp_path, data), image_root)
    assert "2 problem(s)" in str(err.value)


def test_valid_file_summary(tmp_path, image_root, caplog):
    summary = check_coco(_write(tmp_path, _valid()), image_root)
    assert summary.categories == ((1, "patient"),)
    assert (summary.num_images, summary.num_annotations, summary.unannotated_images) == (2, 1, 1)
    assert "1 of 2 images have no annotations" in caplog.text


def test_train_and_val_categories_must_agree(tmp_path, image_root):
    train = check_coco(_write(tmp_path, _valid(), "train.json"), image_root)
    other = _valid()
    other["categories"] = [{"id": 1, "name": "person"}]
    val = check_coco(_write(tmp_path, other, "val.json"), image_root)
    with pytest.raises(DatasetError, match="val.json: categories .* differ from those of .*train.json"):
        check_same_categories(train, val)
