"""From per-video annotation exports (or one merged COCO file) to train/val/test COCO files, split by video.

Input folder, for each video ``NAME``: ``NAME.json`` (a COCO export: CVAT "COCO 1.0", Label Studio,
labelme-to-COCO) and either a folder ``NAME/`` of frame images or a video ``NAME.mp4|.avi|.mov|.mkv``.
With a video, each COCO image is a frame, identified by its ``frame_id`` / ``frame`` field or by the last
group of digits in its ``file_name`` (``frame_000123.png`` is frame 123).

Everything is read and checked before anything is written; output goes to a temporary folder that is
moved into place only when complete.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util
from pydantic import ValidationError
from tqdm import tqdm

from seizure_mlflow.data import coco_schema
from seizure_mlflow.data.checks import category_key, check_coco_data, load_coco_json
from seizure_mlflow.user_files import is_inside
from seizure_mlflow.data.grouping import assign_groups, patient_groups
from seizure_mlflow.data.masks import decode_segmentation, mask_to_polygons, segmentation_to_rle
from seizure_mlflow.outputs.staging import check_output_folder, check_replaceable, staged_folder
from seizure_mlflow.data.video import VIDEO_SUFFIXES, extract_frames, frame_count, write_png
from seizure_mlflow.errors import DatasetError, UserError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
BACKGROUND_NAMES = {"_background_", "__background__", "background"}
_DIGITS = re.compile(r"(\d+)")


@dataclass
class Video:
    """One annotated video: its COCO export (normalised) and where its frames come from."""

    name: str
    json_path: str
    data: dict[str, Any]
    frames_dir: Path | None = None
    video_path: Path | None = None
    source: Path | None = None  # the input it came from: the exports folder, or the merged COCO file
    frame_of_image: dict[int, int] = field(default_factory=dict)  # image id -> frame index (video files)


# ---------------------------------------------------------------------------------------------- reading


def frame_index(image: dict[str, Any]) -> int | None:
    """The frame number of a COCO image: ``frame_id``/``frame`` field, else the last digits of its file name."""
    for key in ("frame_id", "frame", "frame_index"):
        if isinstance(image.get(key), int) and not isinstance(image.get(key), bool):
            return image[key]
    digits = _DIGITS.findall(Path(str(image.get("file_name", ""))).stem)
    return int(digits[-1]) if digits else None


def normalise_export(data: dict[str, Any], json_path: str) -> dict[str, Any]:
    """Drop the background category labelme writes; turn RLE masks marked ``iscrowd: 0`` (CVAT's brush masks)
    into polygons, as COCO defines single objects; fill missing ``bbox``/``area`` from the segmentation."""
    categories = data.get("categories")
    if isinstance(categories, list):
        background = {c.get("id") for c in categories if isinstance(c, dict) and str(c.get("name", "")).lower() in BACKGROUND_NAMES}
        if background:
            data["categories"] = [c for c in categories if c.get("id") not in background]
            if isinstance(data.get("annotations"), list):
                data["annotations"] = [a for a in data["annotations"] if not isinstance(a, dict) or a.get("category_id") not in background]
    sizes = {img.get("id"): (img.get("height"), img.get("width")) for img in data.get("images", []) if isinstance(img, dict)}
    for ann in data.get("annotations", []) if isinstance(data.get("annotations"), list) else []:
        if isinstance(ann, dict):
            _rle_object_to_polygons(ann, sizes.get(ann.get("image_id")))
        if not isinstance(ann, dict) or ("bbox" in ann and "area" in ann):
            continue
        seg, size = ann.get("segmentation"), sizes.get(ann.get("image_id"))
        if not seg or not size or not all(isinstance(v, int) for v in size):
            continue  # the checks report what is missing
        try:
            rle = segmentation_to_rle(seg, *size)
        except (TypeError, ValueError, IndexError):
            continue  # the checks report the bad segmentation
        ann.setdefault("bbox", [float(v) for v in mask_util.toBbox(rle)])
        ann.setdefault("area", float(mask_util.area(rle)))
    return data


def _rle_object_to_polygons(ann: dict, size: tuple | None) -> None:
    """An RLE segmentation with ``iscrowd`` 0 as polygons (in place), when the RLE is whole (its counts cover its
    image exactly); a broken one is left for the checks to report."""
    seg = ann.get("segmentation")
    if not isinstance(seg, dict) or ann.get("iscrowd", 0) != 0 or not size or not all(type(v) is int for v in size):
        return
    try:  # a bbox this function's caller fills in afterwards is not needed to judge the mask
        annotation = coco_schema.Annotation.model_validate({**ann, "bbox": ann.get("bbox", [0, 0, 1, 1])})
    except ValidationError:
        return
    height, width = size
    if [p for p in coco_schema.segmentation_problems(annotation, width, height) if "iscrowd 0" not in p]:
        return
    polygons = mask_to_polygons(decode_segmentation(seg, height, width))
    if polygons:
        ann["segmentation"] = polygons


def discover_videos(input_dir: str | os.PathLike) -> list[Video]:
    """Each ``NAME.json`` in ``input_dir`` with its ``NAME/`` frame folder or ``NAME.<video>`` file."""
    root = Path(input_dir)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder", param="input_dir")
    exports = sorted(p for p in root.glob("*.json") if not p.name.startswith("."))
    if not exports:
        raise UserError(f"{root}: no per-video COCO exports (NAME.json) in this folder", param="input_dir")
    videos = []
    root_real = os.path.realpath(root)
    for json_path in exports:
        name = json_path.stem
        frames_dir = root / name
        video_files = [p for p in (root / f"{name}{s}" for s in VIDEO_SUFFIXES + tuple(x.upper() for x in VIDEO_SUFFIXES)) if p.is_file()]
        for source in (json_path, frames_dir, *video_files):
            if source.exists() and not is_inside(source, root_real):
                raise DatasetError(f"{source} is a symbolic link to {os.path.realpath(source)}, outside the input folder "
                                   f"{root}; copy the file into the input folder instead of linking it")
        if frames_dir.is_dir():
            source = {"frames_dir": frames_dir}
        elif video_files:
            source = {"video_path": video_files[0]}
        else:
            raise DatasetError(f"{json_path}: neither a frame folder {name}/ nor a video {name}.mp4|.avi|.mov|.mkv "
                               f"next to it; put the frames or the video beside the export")
        data = normalise_export(load_coco_json(json_path), str(json_path))
        videos.append(Video(name=name, json_path=str(json_path), data=data, source=root, **source))
    return videos


def split_merged(merged_json: str | os.PathLike, images_root: str | os.PathLike, video_key: str = "video_id",
                 video_regex: str | None = None) -> list[Video]:
    """Cut one merged COCO file into videos by an image field (``video_key``) or a regex over ``file_name``.

    ``video_regex`` must have one capturing group (or a group named ``video``), e.g. ``^([^/]+)/``.
    """
    data = normalise_export(load_coco_json(merged_json), str(merged_json))
    pattern = None
    if video_regex:
        try:
            pattern = re.compile(video_regex)
        except re.error as exc:
            raise UserError(f"{video_regex!r} is not a regular expression ({exc})", param="video_regex") from None
    by_video: dict[str, list[dict]] = defaultdict(list)
    for i, img in enumerate(data.get("images", []) if isinstance(data.get("images"), list) else []):
        if pattern is not None:
            m = pattern.search(str(img.get("file_name", "")))
            key = (m.groupdict().get("video") or (m.group(1) if m.groups() else m.group(0))) if m else None
        else:
            key = img.get(video_key) if isinstance(img, dict) else None
        if key is None or key == "":
            how = f"video_regex {video_regex!r} does not match its file_name" if pattern else f"it has no '{video_key}' field"
            raise DatasetError(f"{merged_json}: images[{i}] (id {img.get('id')}): cannot tell its video: {how}")
        by_video[str(key)].append(img)
    videos = []
    for name in sorted(by_video):
        ids = {img.get("id") for img in by_video[name]}
        part = {"images": by_video[name], "categories": data.get("categories", []),
                "annotations": [a for a in data.get("annotations", []) if isinstance(a, dict) and a.get("image_id") in ids]}
        videos.append(Video(name=_safe_name(name), json_path=f"{merged_json} [video {name}]", data=part,
                            frames_dir=Path(images_root), source=Path(merged_json)))
    if not videos:
        raise DatasetError(f"{merged_json}: 'images' is empty")
    return videos


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "video"


def check_video(video: Video) -> None:
    """The shared COCO checks, plus, for a video file, that every image names a distinct, existing frame."""
    check_coco_data(video.data, video.json_path, str(video.frames_dir or ""), check_files=video.frames_dir is not None)
    if video.video_path is None:
        return
    seen: dict[int, int] = {}
    for i, img in enumerate(video.data["images"]):
        index = frame_index(img)
        if index is None:
            raise DatasetError(f"{video.json_path}: images[{i}] (id {img['id']}): no frame number: give it a 'frame_id' "
                               f"field or digits in its file_name (frame_000123.png)")
        if index in seen:
            raise DatasetError(f"{video.json_path}: images[{i}] (id {img['id']}) and image id {seen[index]} are both frame {index}")
        seen[index] = img["id"]
        video.frame_of_image[img["id"]] = index
    declared = frame_count(video.video_path)
    if declared is not None and max(seen) >= declared:
        beyond = sorted(i for i in seen if i >= declared)
        raise DatasetError(f"{video.json_path}: frame index(es) {beyond[:5]} out of range: {video.video_path.name} has "
                           f"{declared} frames (0-{declared - 1})")


# ---------------------------------------------------------------------------------------------- splitting


def assign_splits(groups: dict[str, list[str]], ratios: tuple[float, float, float], seed: int) -> dict[str, list[str]]:
    """Whole groups (patients, or single videos) to train/val/test, reproducibly from ``seed``, by the rule of
    :func:`~seizure_mlflow.data.grouping.assign_groups` (the first three groups seed the three splits, so none
    is empty)."""
    if len(groups) < 3:
        what = "patients" if any(len(v) > 1 for v in groups.values()) else "videos"
        raise UserError(f"need at least 3 {what} to make non-empty train, val and test splits; got {len(groups)}")
    if len(ratios) != 3 or any(r <= 0 for r in ratios):
        raise UserError(f"needs three positive numbers (train val test); got {list(ratios)}", param="ratios")
    return dict(zip(SPLITS, assign_groups(groups, ratios, seed)))


# ---------------------------------------------------------------------------------------------- writing


def _unify_categories(videos: list[Video], merge_spellings: bool = False) -> list[dict]:
    """One category list for all exports, by name. Names that differ only in case or spaces (``patient``,
    ``Patient ``) are an error listing each spelling and its exports, or, with ``merge_spellings``, one
    category named by its first spelling (with a warning)."""
    spellings: dict[str, dict[str, list[str]]] = {}
    for video in videos:
        for cat in sorted(video.data["categories"], key=lambda c: c["id"]):
            spellings.setdefault(category_key(cat["name"]), {}).setdefault(cat["name"], []).append(Path(video.json_path).name)
    mixed = {key: found for key, found in spellings.items() if len(found) > 1}
    for found in mixed.values():
        listed = "; ".join(f"{name!r} in {', '.join(files[:3])}{' ...' if len(files) > 3 else ''}"
                           for name, files in found.items())
        if not merge_spellings:
            raise DatasetError(f"one category is spelled in {len(found)} ways: {listed}. Use one spelling in the "
                               "exports, or make them one class (--merge-category-spellings; in Python "
                               "merge_category_spellings=True)")
        logger.warning("Category spellings %s are made one class %r", listed, next(iter(found)))
    return [{"id": i + 1, "name": next(iter(found))} for i, found in enumerate(spellings.values())]


PREPARE_COMMAND = "prepare"  # the marker staging writes: the only folders --force may replace


def check_output_location(videos: list[Video], out: Path, force: bool) -> None:
    """The output is writable, outside every input (and no input is inside it), and, if it exists and is not
    empty, is replaced only with ``force`` and only when it is an earlier output of ``prepare``."""
    check_output_folder(out, "output")
    out_real = os.path.realpath(out)
    inputs = {os.path.realpath(p) for v in videos for p in (v.frames_dir, v.video_path, v.source) if p}
    for source in sorted(inputs):
        if is_inside(out_real, source) or is_inside(source, out_real):
            raise UserError(f"{out} is, contains or is inside the input {source}; write to a folder outside the "
                            "input", param="output")
    check_replaceable(out, PREPARE_COMMAND, force)


@dataclass
class PrepareResult:
    output: Path
    splits: dict[str, list[str]]
    report: dict[str, Any]


def prepare_dataset(videos: list[Video], output: str | os.PathLike, ratios=(0.6, 0.2, 0.2), seed: int = 0,
                    patient_map: str | None = None, every: int = 0, force: bool = False,
                    progress: bool = True, merge_category_spellings: bool = False,
                    report_extra: dict | None = None) -> PrepareResult:
    """Check every video, split by video (or patient), extract/copy frames, write COCO files and reports
    (``report_extra`` added to ``report.json``: counts only)."""
    out = Path(output)
    check_output_location(videos, out, force)
    names = [v.name for v in videos]
    duplicates = [n for n, c in Counter(names).items() if c > 1]
    if duplicates:
        raise DatasetError(f"two inputs are both video {duplicates[0]!r}; video names must be unique")
    for video in videos:
        check_video(video)
    if every < 0:
        raise UserError(f"must be >= 0; got {every}", param="every")
    groups = patient_groups(names, patient_map)
    splits = assign_splits(groups, tuple(ratios), seed)
    split_of = {name: split for split, members in splits.items() for name in members}
    categories = _unify_categories(videos, merge_category_spellings)
    category_id = {category_key(c["name"]): c["id"] for c in categories}

    to_decode = sum(max(v.frame_of_image.values()) + 1 for v in videos if v.video_path is not None)
    bar = tqdm(total=to_decode or None, unit="frame", desc="decoding videos", disable=not progress or not to_decode)
    with bar, staged_folder(out, PREPARE_COMMAND, force=force) as tmp:
        coco = {s: {"images": [], "annotations": [], "categories": categories} for s in SPLITS}
        next_ids = {"image": 1, "annotation": 1}
        for video in sorted(videos, key=lambda v: v.name):
            _add_video(video, coco[split_of[video.name]], tmp / "images" / video.name, category_id, next_ids, every,
                       bar)
        for split in SPLITS:
            (tmp / f"{split}.json").write_text(json.dumps(coco[split]))
        report = {**build_report(coco, splits), **(report_extra or {})}
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        (tmp / "split.json").write_text(json.dumps({
            "seed": seed, "ratios": list(ratios), "videos": splits,
            "patients": {p: sorted(v) for p, v in groups.items()} if patient_map else None,
            "method": "groups shuffled with the seed; the first three seed train/val/test, each next group goes to "
                      "the split furthest below its share of videos",
        }, indent=2))
    return PrepareResult(output=out, splits=splits, report=report)


def _add_video(video: Video, doc: dict, folder: Path, category_id: dict, next_ids: dict[str, int], every: int,
               bar) -> None:
    """One video's frames into ``folder`` (copied, or extracted from the video file) and its images and annotations
    into the split's COCO ``doc``, with ids from ``next_ids`` (advanced) and categories mapped by ``category_id``."""
    folder.mkdir(parents=True)
    old_cat = {c["id"]: c["name"] for c in video.data["categories"]}
    new_id: dict[int, int] = {}
    file_of: dict[int, str] = {}
    for img in sorted(video.data["images"], key=lambda i: (video.frame_of_image.get(i["id"], 0), str(i["file_name"]))):
        new_id[img["id"]] = next_ids["image"]
        entry = {"id": next_ids["image"], "width": img["width"], "height": img["height"], "video_id": video.name}
        if video.video_path is not None:
            entry["frame_index"] = video.frame_of_image[img["id"]]
            file_of[entry["frame_index"]] = f"frame_{entry['frame_index']:06d}.png"
            entry["file_name"] = f"{video.name}/{file_of[entry['frame_index']]}"
        else:
            src = Path(video.frames_dir) / img["file_name"]
            dst = folder / Path(img["file_name"]).name
            if dst.exists():
                raise DatasetError(f"{video.json_path}: two images are named {dst.name}; file names must differ within a video")
            shutil.copy2(src, dst)
            entry["file_name"] = f"{video.name}/{dst.name}"
            if (index := frame_index(img)) is not None:
                entry["frame_index"] = index
        doc["images"].append(entry)
        next_ids["image"] += 1
    for ann in video.data["annotations"]:
        doc["annotations"].append({**ann, "id": next_ids["annotation"], "image_id": new_id[ann["image_id"]],
                                   "category_id": category_id[category_key(old_cat[ann["category_id"]])]})
        next_ids["annotation"] += 1
    if video.video_path is not None:
        sizes = {video.frame_of_image[i["id"]]: (i["width"], i["height"]) for i in video.data["images"]}

        def write(index: int, bgr: np.ndarray, folder=folder, sizes=sizes, video=video) -> None:
            if index in sizes and (bgr.shape[1], bgr.shape[0]) != sizes[index]:
                raise DatasetError(f"{video.json_path}: frame {index} is {bgr.shape[1]}x{bgr.shape[0]} in "
                                   f"{video.video_path.name} but {sizes[index][0]}x{sizes[index][1]} in the export")
            write_png(folder / f"frame_{index:06d}.png", bgr)

        bar.set_postfix_str(video.name)
        extract_frames(video.video_path, sizes.keys(), write, every=every, bar=bar)


def build_report(coco: dict[str, dict], splits: dict[str, list[str]]) -> dict[str, Any]:
    """Counts per split: videos, frames, instances (all and per category). No names, no paths."""
    report: dict[str, Any] = {}
    for split in SPLITS:
        names = {c["id"]: c["name"] for c in coco[split]["categories"]}
        per_cat = Counter(names[a["category_id"]] for a in coco[split]["annotations"])
        report[split] = {"videos": len(splits[split]), "frames": len(coco[split]["images"]),
                         "instances": len(coco[split]["annotations"]),
                         "instances_per_category": {n: per_cat.get(n, 0) for n in names.values()}}
    return report


def format_report(report: dict[str, Any]) -> str:
    categories = list(next(iter(report.values()))["instances_per_category"])
    header = ["split", "videos", "frames", "instances"] + categories
    rows = [[s, report[s]["videos"], report[s]["frames"], report[s]["instances"]]
            + [report[s]["instances_per_category"][c] for c in categories] for s in SPLITS]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*r) for r in rows])
