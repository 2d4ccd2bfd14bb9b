"""The shape of a COCO instances file, as typed schemas (pydantic 2), and the rules that tie its fields together.

Why pydantic: its strict mode states the types COCO means (``true`` is no id, ``"yes"`` no ``iscrowd``, NaN no
area) in one place, it validates a list of 30,000 records in its compiled core in well under a second, and each
error carries the record's index and the field's path, which is what a message must name. jsonschema would need
a second pass to tell which record a failure belongs to, and is slower by an order of magnitude on lists.

:func:`record_problems` checks the records of one list (``images``, ``annotations`` or ``categories``) and returns
the well-formed ones by index plus one message per problem. :func:`segmentation_problems` holds the rules that
need the image's size: coordinates inside a margin of the frame, an RLE's ``size`` equal to the image's, RLE
counts that cover exactly ``height x width`` pixels, and ``iscrowd`` agreeing with the segmentation's kind as
COCO defines it (polygons for single objects, RLE for crowd regions). These run before pycocotools sees a mask:
its C code trusts the counts it is given.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import AllowInfNan, BaseModel, ConfigDict, Discriminator, Field, Strict, Tag, ValidationError

MAX_ID = 2**63 - 1
MAX_SIDE = 32_768  # pixels; the pixel limit of a frame is in seizure_mlflow.data.frames
MAX_POLYGON_COORDINATES = 200_000
COORDINATE_MARGIN = 0.1  # polygon points may lie this share of the image's side outside it (tools spill a little)
MAX_FILE_NAME = 4096

Id = Annotated[int, Strict(), Field(ge=0, le=MAX_ID)]
Side = Annotated[int, Strict(), Field(ge=1, le=MAX_SIDE)]
Number = Annotated[float, Strict(), AllowInfNan(False)]
Area = Annotated[float, Strict(), AllowInfNan(False), Field(ge=0)]
Crowd = Annotated[int, Strict(), Field(ge=0, le=1)]
Polygon = Annotated[list[Number], Field(min_length=6, max_length=MAX_POLYGON_COORDINATES)]
Run = Annotated[int, Strict(), Field(ge=0)]


class _Record(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class Category(_Record):
    id: Id
    name: Annotated[str, Field(min_length=1, max_length=256, pattern=r"\S")]


class Image(_Record):
    id: Id
    file_name: Annotated[str, Field(min_length=1, max_length=MAX_FILE_NAME, pattern=r"^[^\x00-\x1f]+$")]
    width: Side
    height: Side


class RLE(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    size: Annotated[list[Side], Field(min_length=2, max_length=2)]
    counts: Union[Annotated[str, Field(min_length=1)], Annotated[list[Run], Field(min_length=1)]]


Segmentation = Annotated[
    Union[Annotated[RLE, Tag("rle")], Annotated[Annotated[list[Polygon], Field(min_length=1)], Tag("polygons")]],
    Discriminator(lambda value: "rle" if isinstance(value, (dict, RLE)) else "polygons"),
]


class Annotation(_Record):
    id: Id
    image_id: Id
    category_id: Id
    bbox: Annotated[list[Number], Field(min_length=4, max_length=4)]
    segmentation: Segmentation
    area: Area | None = None
    iscrowd: Crowd = 0


# What each field must be, in the words a message uses.
FIELD_WORDS = {
    "id": "an integer id >= 0", "image_id": "the integer id of an image in this file",
    "category_id": "the integer id of a category in this file", "name": "a non-empty name",
    "file_name": "a relative path without control characters", "width": f"an integer from 1 to {MAX_SIDE}",
    "height": f"an integer from 1 to {MAX_SIDE}", "bbox": "[x, y, width, height], four finite numbers",
    "segmentation": "a list of polygons [[x1, y1, x2, y2, ...]] or an RLE {'size': [h, w], 'counts': ...}",
    "area": "a finite number >= 0", "size": "[height, width] of its image, positive integers",
    "counts": "a compressed COCO RLE string, or a list of run lengths (integers >= 0)", "iscrowd": "0 (one object, polygons) or 1 (a crowd region, RLE)",
}
SCHEMAS = {"images": Image, "annotations": Annotation, "categories": Category}


def where(key: str, index: int, record: Any) -> str:
    """``annotations[3] (id 7)``: a record's place in its file, and its id when it has a usable one."""
    record_id = record.get("id") if isinstance(record, dict) else None
    if isinstance(record_id, int) and not isinstance(record_id, bool):
        return f"{key}[{index}] (id {record_id})"
    return f"{key}[{index}]"


def _field_path(loc: tuple) -> str:
    """``segmentation[0][3]``, ``segmentation.size``: a field's path, without pydantic's union branch names."""
    parts = [str(loc[0])]
    for part in loc[1:]:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part not in ("rle", "polygons", "str") and not part.startswith(("list[", "constrained-")):
            parts.append(f".{part}")
    return "".join(parts)


def _words(loc: tuple) -> str:
    if len(loc) >= 2 and loc[0] == "segmentation" and loc[1] == "polygons":
        return "a polygon: a flat list [x1, y1, x2, y2, ...] of at least 3 points, finite numbers"
    names = [p for p in loc if isinstance(p, str) and p in FIELD_WORDS]
    return FIELD_WORDS[names[-1]] if names else ""


def _describe(error: dict) -> str:
    loc = error["loc"]
    field, words = (_field_path(loc), _words(loc)) if loc else ("record", "a JSON object")
    context = error.get("ctx") or {}
    if error["type"] == "missing":
        return f"{field}: missing; it must be {words}"
    if error["type"] in ("too_short", "too_long"):
        bound = "at least" if error["type"] == "too_short" else "at most"
        limit = context.get("min_length" if error["type"] == "too_short" else "max_length")
        return f"{field}: has {context.get('actual_length')} items; it needs {bound} {limit} ({words})"
    if error["type"] == "string_pattern_mismatch":
        problem = "is blank" if field == "name" else "has a control character (a NUL, a tab or a line break)"
        return f"{field}: {problem}, got {error['input'][:60]!r} ({words})"
    shown = repr(error["input"])
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    message = error["msg"][0].lower() + error["msg"][1:]
    return f"{field}: {message}, got {shown}" + (f" ({words})" if words else "")


def record_problems(key: str, records: list) -> tuple[dict[int, Any], list[str]]:
    """``({index: validated record}, [message, ...])`` for the records of ``images``/``annotations``/``categories``.

    A record with problems is left out of the first and named once per problem in the second.
    """
    schema, valid, problems = SCHEMAS[key], {}, []
    for index, record in enumerate(records):
        try:
            valid[index] = schema.model_validate(record)
        except ValidationError as exc:
            place = where(key, index, record)
            problems += [f"{place}: {_describe(error)}" for error in exc.errors(include_url=False)]
    return valid, problems


def segmentation_problems(annotation: Annotation, width: int, height: int) -> list[str]:
    """What is wrong with a (schema-valid) annotation's segmentation in its ``width`` x ``height`` image."""
    seg = annotation.segmentation
    if isinstance(seg, RLE):
        return _rle_problems(seg, annotation.iscrowd, width, height)
    problems = []
    if annotation.iscrowd == 1:
        problems.append("polygons with iscrowd 1: a crowd region, which training ignores and evaluation does not count "
                        "as a person; a person outlined by polygons has iscrowd 0")
    margin_x, margin_y = max(2.0, COORDINATE_MARGIN * width), max(2.0, COORDINATE_MARGIN * height)
    for k, poly in enumerate(seg):
        xs, ys = poly[0::2], poly[1::2]
        if len(poly) % 2:
            problems.append(f"polygon {k} has {len(poly)} coordinates; it needs an even number, >= 6 (3 points)")
        elif (min(xs) < -margin_x or max(xs) > width + margin_x or min(ys) < -margin_y or max(ys) > height + margin_y):
            problems.append(f"polygon {k} reaches ({min(xs):.6g}, {min(ys):.6g})-({max(xs):.6g}, {max(ys):.6g}), "
                            f"outside its {width}x{height} image (points may lie at most "
                            f"{COORDINATE_MARGIN:.0%} of a side outside it)")
        elif polygon_area(poly) <= 0.0:
            problems.append(f"polygon {k} has zero area (all points on a line or identical)")
    return problems


def _rle_problems(rle: RLE, iscrowd: int, width: int, height: int) -> list[str]:
    problems = []
    if list(rle.size) != [height, width]:
        problems.append(f"RLE size {list(rle.size)} is not its image's [height, width] [{height}, {width}]")
    runs = rle.counts if isinstance(rle.counts, list) else decode_rle_string(rle.counts)
    if runs is None:
        problems.append("RLE counts is not a compressed COCO RLE string (characters '0' to 'o', as pycocotools "
                        "writes them)")
    elif any(run < 0 for run in runs):
        problems.append("RLE counts has a negative run length")
    elif sum(runs) != rle.size[0] * rle.size[1]:
        problems.append(f"RLE counts cover {sum(runs)} pixels, but its size {list(rle.size)} has "
                        f"{rle.size[0] * rle.size[1]}")
    if iscrowd == 0:
        problems.append("an RLE mask with iscrowd 0: COCO (and Detectron2) read RLE as a crowd region (iscrowd 1, "
                        "ignored in training). CVAT exports brush masks this way; `seizure-mlflow prepare` turns "
                        "them into polygons, or export the masks as polygons")
    return problems


def decode_rle_string(counts: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), or None if it is not one."""
    runs: list[int] = []
    position, length = 0, len(counts)
    while position < length:
        value, shift, more = 0, 0, True
        while more:
            if position >= length:
                return None
            code = ord(counts[position]) - 48
            if not 0 <= code < 64:
                return None
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            position += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def polygon_area(poly: list[float]) -> float:
    xs, ys = poly[0::2], poly[1::2]
    n = len(xs)
    return abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2.0
