"""The one COCO validator: training, preparation and evaluation all check their files here.

``check_coco(json_path, image_root)`` reads a COCO instances file and raises :class:`DatasetError` listing
every problem found (up to a limit), each naming the file, the record and the field, before any work starts.
The records are checked against the typed schemas of :mod:`.coco_schema` (strict types, bounds, the rules that
tie a mask to its image), then against each other (duplicate ids, references). Then the frames themselves: each
``file_name`` must stay inside the image folder (no absolute paths, no ``..``, no symbolic links pointing out),
and each frame's header and last bytes are read (:func:`seizure_mlflow.data.frames.read_header`: its format,
its size after EXIF orientation against the record's ``width``/``height``, a cut-short file, the pixel limit),
so a bad frame is found before training, not hours in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from seizure_mlflow.data import coco_schema
from seizure_mlflow.data.frames import FrameError, read_header
from seizure_mlflow.data.video_identity import count_videos
from seizure_mlflow.errors import DatasetError
from seizure_mlflow.user_files import is_inside  # noqa: F401 (the data checks' path rule)

logger = logging.getLogger(__name__)

MAX_REPORTED = 12
IMAGE_CHECK_WORKERS = 8


@dataclass(frozen=True)
class CocoSummary:
    """What a checked COCO file holds."""

    json_path: str
    image_root: str
    categories: tuple[tuple[int, str], ...]  # (id, name), sorted by id
    num_images: int
    num_annotations: int
    unannotated_images: int
    num_videos: int = 0  # see seizure_mlflow.data.video_identity; 0 when unknown

    @cached_property
    def digest(self) -> str:
        """The COCO file's :func:`file_digest`, read once per checked file."""
        return file_digest(self.json_path)

    @property
    def category_names(self) -> list[str]:
        return [name for _, name in self.categories]


class _Problems:
    def __init__(self, json_path: str) -> None:
        self.json_path = json_path
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def raise_if_any(self, how_to_fix: str = "") -> None:
        if not self.items:
            return
        shown = self.items[:MAX_REPORTED]
        more = len(self.items) - len(shown)
        lines = [f"{self.json_path}: {len(self.items)} problem(s) in this COCO file:"]
        lines += [f"  - {item}" for item in shown]
        if more:
            lines.append(f"  ... and {more} more")
        if how_to_fix:
            lines.append(how_to_fix)
        raise DatasetError("\n".join(lines))


def load_coco_json(json_path: str | os.PathLike) -> dict[str, Any]:
    """Read and parse a COCO file, with errors that name the file (and the line of a JSON syntax error)."""
    path = Path(json_path)
    if not path.exists():
        raise DatasetError(f"{path}: COCO file not found; check the path")
    if not path.is_file():
        raise DatasetError(f"{path}: is not a file; give the path of a COCO .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file; is this really a COCO .json file?") from None
    if not text.strip():
        raise DatasetError(f"{path}: file is empty; export the annotations again")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise DatasetError(f"{path}: nested too deeply to be a COCO file (lists or objects inside each other "
                           "thousands of times); export the annotations again") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: top level must be a JSON object with images, annotations and categories")
    return data


def category_key(name: str) -> str:
    """What two spellings of one category name share: ``" Patient "`` and ``"patient"`` are one category."""
    return " ".join(name.split()).casefold()


def check_image_headers(frames: list[tuple[str, str, tuple[int, int]]], workers: int = IMAGE_CHECK_WORKERS) -> list[str]:
    """Problems with ``(where, path, (width, height))`` frames: not an image, cut short, too large, or not the size
    the COCO file says (after the frame's EXIF orientation, as every reader of the package applies it).

    Headers are read in ``workers`` threads (file reads dominate; on network storage this matters most).
    """
    def check(frame: tuple[str, str, tuple[int, int]]) -> str | None:
        where, path, (width, height) = frame
        try:
            if os.path.getsize(path) == 0:
                return f"{where}: image file {path} is empty (0 bytes)"
            header = read_header(path, where=path)
        except (FrameError, OSError) as exc:
            return f"{where}: {exc}"
        if (header.width, header.height) == (width, height):
            return None
        if header.turned and (header.height, header.width) == (width, height):
            return (f"{where}: {path} is shown {header.width}x{header.height}: its EXIF orientation ({header.orientation}) "
                    f"turns the stored {width}x{height} pixels, and the COCO file gives the stored size. Every reader "
                    "here applies the orientation, as annotation tools show it; if the annotations were drawn on the "
                    "stored pixels, remove the tag (e.g. `exiftool -Orientation= -n FILE`), else re-export the sizes")
        return (f"{where}: {path} is {header.width}x{header.height} ({header.format}) but the COCO file says "
                f"{width}x{height}; re-export the annotations or the frame")

    if len(frames) < 64:
        return [m for m in map(check, frames) if m]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [m for m in pool.map(check, frames, chunksize=64) if m]


def file_digest(path: str | os.PathLike) -> str:
    """Short SHA-256 of a file's bytes: names a dataset version without naming its path."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def check_coco(json_path: str | os.PathLike, image_root: str | os.PathLike, *, check_files: bool = True) -> CocoSummary:
    """Check a COCO instances file and its images; raise :class:`DatasetError` naming each bad record."""
    return check_coco_data(load_coco_json(json_path), str(json_path), str(image_root), check_files=check_files)


def check_coco_data(data: dict[str, Any], json_path: str, image_root: str, *, check_files: bool = True) -> CocoSummary:
    """Check parsed COCO ``data`` read from ``json_path`` (named in messages); see :func:`check_coco`.

    With ``check_files=False`` the image files are not looked for (frames still to be extracted).
    """
    problems = _Problems(json_path)
    if check_files and not Path(image_root).is_dir():
        raise DatasetError(f"{json_path}: image folder {image_root} does not exist; give the folder the file_name entries are relative to")

    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            problems.add(f"missing or non-list '{key}' (a COCO instances file needs images, annotations and categories)")
    problems.raise_if_any()
    images, annotations, categories = data["images"], data["annotations"], data["categories"]
    if not images:
        problems.add("'images' is empty")
    if not categories:
        problems.add("'categories' is empty")

    category_ids = _check_categories(categories, problems)
    image_sizes = _check_images(images, image_root, check_files, problems)
    annotated_images = _check_annotations(annotations, image_sizes, category_ids, problems)
    if images and not annotations:
        problems.add("'annotations' is empty: there is nothing to learn from")

    problems.raise_if_any()
    unannotated = len(image_sizes) - len(annotated_images)
    if unannotated:
        logger.warning("%s: %d of %d images have no annotations (kept as negative examples)",
                       json_path, unannotated, len(image_sizes))
    return CocoSummary(
        json_path=json_path,
        image_root=image_root,
        categories=tuple(sorted(category_ids.items())),
        num_images=len(image_sizes),
        num_annotations=len(annotations),
        unannotated_images=unannotated,
        num_videos=count_videos(images),
    )


def _check_categories(categories: list, problems: "_Problems") -> dict[int, str]:
    """``{id: name}`` of the well-formed categories; every bad one reported."""
    valid, messages = coco_schema.record_problems("categories", categories)
    for message in messages:
        problems.add(message)
    category_ids: dict[int, str] = {}
    for i, cat in valid.items():
        where = coco_schema.where("categories", i, categories[i])
        if cat.id in category_ids:
            problems.add(f"{where}: duplicate category id {cat.id}")
        elif cat.name in category_ids.values():
            problems.add(f"{where}: duplicate category name {cat.name!r}")
        elif (same := [n for n in category_ids.values() if category_key(n) == category_key(cat.name)]):
            problems.add(f"{where}: category name {cat.name!r} differs from {same[0]!r} only in case or spaces; "
                         "use one spelling")
        category_ids[cat.id] = cat.name
    return category_ids


def _check_images(images: list, image_root: str, check_files: bool, problems: "_Problems") -> dict[int, tuple[int, int]]:
    """``{id: (width, height)}`` of the images (None for a malformed one, already reported); paths kept inside ``image_root``, files and their
    headers checked (with ``check_files``); every bad one reported."""
    valid, messages = coco_schema.record_problems("images", images)
    for message in messages:
        problems.add(message)
    image_sizes: dict[int, tuple[int, int]] = {}
    to_read: list[tuple[str, str, tuple[int, int]]] = []  # (where, path, (width, height)) of each frame to read
    missing_files = 0
    root_real = os.path.realpath(image_root) if check_files else ""
    for i, img in enumerate(images):  # a record already reported keeps its id, so that no annotation is blamed for it
        if i not in valid:
            if isinstance(img, dict) and type(img.get("id")) is int:
                image_sizes.setdefault(img["id"], None)
            continue
        img = valid[i]
        where = coco_schema.where("images", i, images[i])
        if img.id in image_sizes:
            problems.add(f"{where}: duplicate image id")
            continue
        image_sizes[img.id] = (img.width, img.height)
        if not check_files:
            continue
        path = os.path.join(image_root, img.file_name)
        if os.path.isabs(img.file_name) or not is_inside(path, root_real):
            problems.add(f"{where}: file_name {img.file_name!r} leads outside the image folder {image_root} "
                         "(an absolute path, '..', or a symbolic link pointing out); file names must be relative "
                         "paths inside the image folder")
        elif not os.path.isfile(path):
            missing_files += 1
            if missing_files <= 3:
                problems.add(f"{where}: image file {img.file_name!r} not found under {image_root}")
        else:
            to_read.append((where, path, (img.width, img.height)))
    if missing_files > 3:
        problems.add(f"{missing_files} image files in all are missing under {image_root}; is it the right folder?")
    for message in check_image_headers(to_read):
        problems.add(message)
    return image_sizes


def _check_annotations(annotations: list, image_sizes: dict, category_ids: dict, problems: "_Problems") -> set[int]:
    """The ids of the images that have an annotation; every bad annotation (fields, references, bbox and
    segmentation against its image) reported."""
    valid, messages = coco_schema.record_problems("annotations", annotations)
    for message in messages:
        problems.add(message)
    annotation_ids: set[int] = set()
    annotated_images: set[int] = set()
    for i, ann in valid.items():
        where = coco_schema.where("annotations", i, annotations[i])
        if ann.id in annotation_ids:
            problems.add(f"{where}: duplicate annotation id")
        annotation_ids.add(ann.id)
        if ann.image_id not in image_sizes:
            problems.add(f"{where}: image_id {ann.image_id!r} is not an image in this file")
            continue
        annotated_images.add(ann.image_id)
        if image_sizes[ann.image_id] is None:
            continue
        if ann.category_id not in category_ids:
            problems.add(f"{where}: category_id {ann.category_id!r} is not a category in this file "
                         f"(categories: {sorted(category_ids)})")
        width, height = image_sizes[ann.image_id]
        x, y, w, h = ann.bbox
        if w <= 0 or h <= 0:
            problems.add(f"{where}: degenerate bbox {annotations[i]['bbox']} (width and height must be > 0)")
        elif x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
            problems.add(f"{where}: bbox {annotations[i]['bbox']} lies outside its {width}x{height} image")
        for message in coco_schema.segmentation_problems(ann, width, height):
            problems.add(f"{where}: segmentation: {message}")
    return annotated_images

def check_same_categories(reference: CocoSummary, other: CocoSummary) -> None:
    """Two splits must define the same categories (same ids and names), or the class heads disagree."""
    if reference.categories != other.categories:
        raise DatasetError(
            f"{other.json_path}: categories {list(other.categories)} differ from those of "
            f"{reference.json_path} {list(reference.categories)}; every split must use the same (id, name) "
            "categories (re-export them with one label set, or use `seizure-mlflow prepare` to unify them)"
        )


def check_no_shared_frames(train: CocoSummary, val: CocoSummary) -> None:
    """The validation set must hold none of the training frames (the same image file): a validation loss on frames
    the model trains on says nothing about overfitting, and a best checkpoint chosen by it is the last one."""
    def frames(summary: CocoSummary) -> dict[str, str]:
        root = Path(summary.image_root)
        return {os.path.realpath(root / image["file_name"]): str(image["file_name"])
                for image in load_coco_json(summary.json_path)["images"]}

    training, validation = frames(train), frames(val)
    shared = sorted(set(training) & set(validation))
    if shared:
        examples = ", ".join(repr(validation[path]) for path in shared[:3])
        raise DatasetError(f"{val.json_path}: {len(shared)} of its {len(validation)} frames are training frames of "
                           f"{train.json_path} (e.g. {examples}); validation must be other frames (other videos): "
                           "split by video, e.g. with `seizure-mlflow prepare`")
