"""A deterministic synthetic seizure-monitoring dataset, for demos and tests.

Each "video" is a fixed camera looking down at a bed in a room of its own (wall and floor colours,
lighting level and gradient, sensor noise). A patient lies on the bed and moves: a slow drift of the body
and, in most videos, rhythmic convulsion-like jerking of the limbs. Some videos add a blanket over the
legs, and a caregiver who walks in and occludes part of the patient. Annotations are the *visible* pixels
of each person, as COCO polygons, for the categories ``patient`` and ``caregiver``. Frames are split
60/20/20 **by video** into ``train.json``, ``val.json`` and ``test.json``.

The same seed always produces the same bytes, so runs on the sample data are comparable.

The same scene also makes *trace* videos (:func:`write_trace_sample`), long enough to measure rhythm: calm
stretches, clonic episodes of known frequency and duration, and a caregiver who walks past, pats the blanket
or adjusts it at other times, with the truth intervals and every frame's true masks.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from seizure_mlflow.outputs.staging import check_replaceable, staged_folder
from seizure_mlflow.errors import UserError

logger = logging.getLogger(__name__)

CATEGORIES = [{"id": 1, "name": "patient", "supercategory": "person"},
              {"id": 2, "name": "caregiver", "supercategory": "person"}]
SPLITS = ("train", "val", "test")
DEFAULT_SAMPLE_DIR = "data/sample"
MANIFEST = "sample.json"
SAMPLE_COMMAND = "sample-data"


@dataclass(frozen=True)
class SampleSpec:
    """What to generate; the manifest records it so that an existing dataset is reused only if it matches."""

    num_videos: int = 15
    frames_per_video: int = 8
    width: int = 192
    height: int = 144
    seed: int = 0
    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)

    def __post_init__(self) -> None:
        if self.num_videos < 3:
            raise UserError(f"num_videos must be >= 3 so that train, val and test each get a video; got {self.num_videos}")
        if self.frames_per_video < 1:
            raise UserError(f"frames_per_video must be >= 1; got {self.frames_per_video}")
        if not (32 <= self.width <= 1024 and 32 <= self.height <= 1024):
            raise UserError(f"frame size must be between 32 and 1024 px; got {self.width}x{self.height}")


# A setting that overfits (docs/sweeps.md, benchmarks/bench_early_stopping.py): 6 training frames of 2 videos and 3
# validation frames, the demo model trained from scratch at a constant learning rate (these opts); its validation
# loss is lowest at iteration 20 and higher at every validation after it, up to 260 at least.
OVERFITTING_SPEC = SampleSpec(num_videos=4, frames_per_video=3, seed=5)
OVERFITTING_OPTS = ("SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR")
OVERFITTING_SEED = 3


def split_counts(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """Whole-video counts as close to ``ratios`` as possible, each split >= 1 (needs n >= 3)."""
    total = sum(ratios)
    raw = [n * r / total for r in ratios]
    counts = [max(1, int(math.floor(x))) for x in raw]
    while sum(counts) < n:
        # give the next video to the split furthest below its share
        i = max(range(3), key=lambda k: raw[k] - counts[k])
        counts[i] += 1
    while sum(counts) > n:
        i = max((k for k in range(3) if counts[k] > 1), key=lambda k: counts[k] - raw[k])
        counts[i] -= 1
    return counts[0], counts[1], counts[2]


# ---------------------------------------------------------------------------------------------- scene


@dataclass
class _Video:
    wall: np.ndarray
    floor: np.ndarray
    sheet: np.ndarray
    gown: np.ndarray
    skin: np.ndarray
    light: float
    gradient: float
    noise: float
    bed: tuple[int, int, int, int]  # x0, y0, x1, y1
    head_left: bool
    seizure_freq: float  # rhythmic jerks per frame; 0 = calm
    seizure_amp: float
    drift: np.ndarray
    blanket: bool
    caregiver_frames: frozenset[int]
    caregiver_side: int  # -1 from the left, +1 from the right
    caregiver_colour: np.ndarray
    # Trace videos only (a frame rate and a timetable in seconds instead of the per-frame settings above):
    fps: float = 0.0
    episodes: tuple["Episode", ...] = ()
    visits: tuple["Visit", ...] = ()
    moves: tuple["Move", ...] = ()
    camera: tuple["CameraMove", ...] = ()


@dataclass(frozen=True)
class Episode:
    """Clonic jerking of the patient's limbs from ``start`` to ``end`` seconds at ``frequency_hz``."""

    start: float
    end: float
    frequency_hz: float


@dataclass(frozen=True)
class Visit:
    """A caregiver in the picture from ``start`` to ``end`` seconds: ``walk`` past the bed, ``pat`` the
    blanket rhythmically at ``frequency_hz``, or ``blanket`` (adjust it: its edge moves slowly)."""

    kind: str
    start: float
    end: float
    frequency_hz: float = 0.0


@dataclass(frozen=True)
class CameraMove:
    """The camera moves the whole image from ``start`` to ``end`` seconds: it ``shake``s (a vibration of
    ``amplitude_px`` at ``frequency_hz``, eased in and out), ``pan``s (turns by ``amplitude_px`` sideways, smoothly,
    and stays there) or ``drift``s (a slow sway of ``amplitude_px`` at ``frequency_hz``)."""

    kind: str
    start: float
    end: float
    amplitude_px: float
    frequency_hz: float = 0.0

    def offset(self, t: float) -> tuple[float, float]:
        if self.kind == "pan":
            share = _smoothstep((t - self.start) / (self.end - self.start))
            return self.amplitude_px * share, 0.3 * self.amplitude_px * share
        if not self.start <= t <= self.end:
            return 0.0, 0.0
        ease = min(1.0, (t - self.start) / 0.5, (self.end - t) / 0.5) if self.kind == "shake" else 1.0
        phase = 2 * math.pi * self.frequency_hz * (t - self.start)
        return (self.amplitude_px * ease * math.sin(phase), 0.6 * self.amplitude_px * ease * math.sin(phase + 1.1))


@dataclass(frozen=True)
class Move:
    """The patient shifts on the bed by ``(dx, dy)`` pixels, smoothly, from ``start`` to ``end`` seconds."""

    start: float
    end: float
    dx: float
    dy: float


def _smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3 - 2 * x)


def _jerk(video: _Video, t: int) -> float:
    """Limb displacement (in units of ``seizure_amp``) at frame t."""
    if video.fps:
        seconds = t / video.fps
        for episode in video.episodes:
            if episode.start <= seconds < episode.end:
                return video.seizure_amp * math.sin(2 * math.pi * episode.frequency_hz * (seconds - episode.start))
        return 0.0
    return video.seizure_amp * math.sin(2 * math.pi * video.seizure_freq * t) if video.seizure_freq else 0.0


def _body_offset(video: _Video, t: int) -> tuple[float, float]:
    dx, dy = video.drift[0] * t, video.drift[1] * t
    for move in video.moves:
        done = _smoothstep((t / video.fps - move.start) / (move.end - move.start))
        dx, dy = dx + done * move.dx, dy + done * move.dy
    return dx, dy


def _visit_at(video: _Video, t: int) -> Visit | None:
    if not video.fps:
        return None
    seconds = t / video.fps
    return next((v for v in video.visits if v.start <= seconds < v.end), None)


def _make_video(rng: np.random.Generator, w: int, h: int, frames: int, index: int) -> _Video:
    bed_w, bed_h = int(w * rng.uniform(0.55, 0.7)), int(h * rng.uniform(0.38, 0.48))
    x0 = int((w - bed_w) / 2 + rng.uniform(-0.08, 0.08) * w)
    y0 = int((h - bed_h) / 2 + rng.uniform(-0.08, 0.08) * h)
    has_caregiver = index % 3 != 1
    start = int(rng.integers(0, max(1, frames // 2)))
    return _Video(
        wall=rng.uniform(60, 200, 3), floor=rng.uniform(40, 160, 3), sheet=rng.uniform(190, 250, 3),
        gown=rng.uniform(40, 200, 3), skin=np.array([rng.uniform(90, 220), rng.uniform(70, 180), rng.uniform(60, 160)]),
        light=float(rng.uniform(0.55, 1.25)), gradient=float(rng.uniform(-0.35, 0.35)), noise=float(rng.uniform(2, 9)),
        bed=(x0, y0, x0 + bed_w, y0 + bed_h), head_left=bool(rng.integers(0, 2)),
        seizure_freq=0.0 if index % 4 == 0 else float(rng.uniform(0.25, 0.45)),
        seizure_amp=float(rng.uniform(0.5, 1.0)), drift=rng.normal(0, 0.6, 2),
        blanket=index % 2 == 0,
        caregiver_frames=frozenset(range(start, min(frames, start + max(1, frames // 2)))) if has_caregiver else frozenset(),
        caregiver_side=int(rng.choice([-1, 1])), caregiver_colour=rng.uniform(30, 230, 3),
    )


def _limb(canvas: np.ndarray, a: tuple[float, float], b: tuple[float, float], thickness: int, value) -> None:
    cv2.line(canvas, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), value, thickness, lineType=cv2.LINE_8)


def _draw_patient(video: _Video, t: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask, colour layer) of the whole patient at frame t, before occlusion."""
    x0, y0, x1, y1 = video.bed
    dx, dy = _body_offset(video, t)
    cx, cy = (x0 + x1) / 2 + dx, (y0 + y1) / 2 + dy
    length, width = (x1 - x0) * 0.8, (y1 - y0) * 0.45
    d = 1.0 if video.head_left else -1.0  # +1: head towards x0
    jerk = _jerk(video, t)
    torso_c = (cx - d * length * 0.1, cy)
    head_c = (cx - d * length * 0.42, cy + jerk * width * 0.08)
    hip = (cx + d * length * 0.12, cy)
    limb_w = max(2, int(width * 0.22))
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (int(torso_c[0]), int(torso_c[1])), (int(length * 0.22), int(width * 0.5)), 0, 0, 360, 1, -1)
    cv2.circle(mask, (int(head_c[0]), int(head_c[1])), max(3, int(width * 0.38)), 1, -1)
    for side in (-1, 1):
        shoulder = (cx - d * length * 0.25, cy + side * width * 0.4)
        elbow_swing = jerk * width * 0.7 * side
        hand = (cx - d * length * 0.05 + jerk * length * 0.05, cy + side * (width * 0.95 + elbow_swing))
        _limb(mask, shoulder, hand, limb_w, 1)
        foot = (cx + d * length * 0.5 + abs(jerk) * d * length * 0.04, cy + side * width * (0.35 + 0.25 * jerk * side))
        _limb(mask, (hip[0], hip[1] + side * width * 0.2), foot, limb_w + 1, 1)
    skin = np.zeros((h, w), np.uint8)
    cv2.circle(skin, (int(head_c[0]), int(head_c[1])), max(3, int(width * 0.38)), 1, -1)
    return mask.astype(bool), skin.astype(bool)


def _draw_caregiver(video: _Video, t: int, w: int, h: int) -> np.ndarray:
    x0, y0, x1, y1 = video.bed
    frames_in = sorted(video.caregiver_frames)
    progress = (t - frames_in[0] + 1) / (len(frames_in) + 1)
    edge = x0 if video.caregiver_side < 0 else x1
    cx = edge + video.caregiver_side * (1 - progress) * w * 0.25 - video.caregiver_side * w * 0.05
    cy = (y0 + y1) / 2 + (y1 - y0) * 0.3
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (int(cx), int(cy)), (max(4, int(w * 0.07)), max(6, int(h * 0.2))), 15, 0, 360, 1, -1)
    cv2.circle(mask, (int(cx), int(cy - h * 0.2)), max(3, int(h * 0.06)), 1, -1)
    _limb(mask, (cx, cy - h * 0.05), (cx - video.caregiver_side * w * 0.12, cy + h * 0.02), max(2, int(w * 0.025)), 1)
    return mask.astype(bool)


def _blanket_span(video: _Video, t: int) -> tuple[int, int]:
    """Columns the blanket covers; while a caregiver adjusts it, its edge moves up the bed and back."""
    x0, _, x1, _ = video.bed
    visit = _visit_at(video, t)
    shift = 0.0
    if visit is not None and visit.kind == "blanket":
        shift = 0.15 * math.sin(math.pi * (t / video.fps - visit.start) / (visit.end - visit.start))
    if video.head_left:
        return int(x0 + (x1 - x0) * (0.55 - shift)), x1
    return x0, int(x0 + (x1 - x0) * (0.45 + shift))


def _draw_visitor(video: _Video, visit: Visit, t: int, w: int, h: int) -> np.ndarray:
    """The caregiver of a trace video's visit at frame t: body, head and one arm."""
    x0, y0, x1, y1 = video.bed
    seconds = t / video.fps
    progress = (seconds - visit.start) / (visit.end - visit.start)
    legs_x = (x1 - (x1 - x0) * 0.2) if video.head_left else (x0 + (x1 - x0) * 0.2)
    body_r = (max(4, int(w * 0.06)), max(6, int(h * 0.14)))
    if visit.kind == "walk":  # along the near side of the bed, bobbing with each step
        side = video.caregiver_side
        cx = w / 2 - side * (w * 0.6) * (progress - 0.5)
        cy = y1 + body_r[1] * 0.6 + 1.5 * abs(math.sin(math.pi * 1.8 * (seconds - visit.start)))
        hand = (cx + w * 0.05, cy + h * 0.02)
    else:  # standing at the near side, by the patient's legs, one hand on the blanket
        cx, cy = legs_x, y1 + body_r[1] * 0.6
        if visit.kind == "pat":
            lift = math.sin(2 * math.pi * visit.frequency_hz * (seconds - visit.start))
            hand = (legs_x, y1 - (y1 - y0) * (0.35 + 0.2 * lift))
        else:
            bx0, bx1 = _blanket_span(video, t)
            hand = (bx0 if video.head_left else bx1, y1 - (y1 - y0) * 0.3)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (int(cx), int(cy)), body_r, 0, 0, 360, 1, -1)
    cv2.circle(mask, (int(cx), int(cy + body_r[1] * 0.9)), max(3, int(h * 0.05)), 1, -1)
    _limb(mask, (cx, cy - body_r[1] * 0.5), hand, max(2, int(w * 0.02)), 1)
    cv2.circle(mask, (int(hand[0]), int(hand[1])), max(2, int(w * 0.018)), 1, -1)
    return mask.astype(bool)


def render_frame(video: _Video, t: int, w: int, h: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """An RGB frame and the visible mask of each category present."""
    img = np.empty((h, w, 3), np.float32)
    horizon = int(h * 0.3)
    img[:horizon] = video.wall
    img[horizon:] = video.floor
    if video.camera:  # a room with something to see when the camera moves (flat walls show no motion)
        _furnish(img, video, horizon)
    x0, y0, x1, y1 = video.bed
    img[y0:y1, x0:x1] = video.sheet
    pillow_x = (x0 + 3, x0 + (x1 - x0) // 6) if video.head_left else (x1 - (x1 - x0) // 6, x1 - 3)
    img[y0 + 4:y1 - 4, pillow_x[0]:pillow_x[1]] = video.sheet * 0.92

    patient, skin = _draw_patient(video, t, w, h)
    img[patient] = video.gown
    img[skin] = video.skin
    visible_patient = patient.copy()
    if video.blanket:
        blanket = np.zeros((h, w), bool)
        bx = _blanket_span(video, t)
        blanket[y0:y1, bx[0]:bx[1]] = True
        img[blanket] = video.sheet[::-1] * 0.8
        visible_patient &= ~blanket
    masks = {1: visible_patient}
    visit = _visit_at(video, t)
    if t in video.caregiver_frames or visit is not None:
        caregiver = _draw_caregiver(video, t, w, h) if visit is None else _draw_visitor(video, visit, t, w, h)
        img[caregiver] = video.caregiver_colour
        masks[1] = visible_patient & ~caregiver
        masks[2] = caregiver

    ramp = 1.0 + video.gradient * np.linspace(-1, 1, w, dtype=np.float32)[None, :, None]
    img = img * video.light * ramp
    if video.camera:
        img, masks = _filmed_by_camera(video, t, img, masks)
    img = img + rng.normal(0, video.noise, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), masks


def _furnish(img: np.ndarray, video: _Video, horizon: int) -> None:
    """Floor tiles and, on the wall, a window and two frames: still texture in the room, as a real ward has."""
    h, w = img.shape[:2]
    step = max(8, w // 14)
    img[horizon::step, :] = video.floor * 0.7
    img[horizon:, ::step] = video.floor * 0.7
    for fx0, fy0, fx1, fy1, shade in ((0.06, 0.05, 0.24, 0.24, 0.55), (0.42, 0.06, 0.52, 0.2, 0.4),
                                      (0.7, 0.04, 0.92, 0.22, 0.6)):
        a, b, c, d = int(fx0 * w), int(fy0 * h), int(fx1 * w), int(fy1 * h)
        img[b:d, a:c] = video.wall * shade
        img[b + 2:d - 2, a + 2:c - 2] = video.wall * (shade + 0.3)
        img[(b + d) // 2, a:c] = video.wall * shade  # a window's cross bar, a frame's motif


def _filmed_by_camera(video: _Video, t: int, img: np.ndarray, masks: dict[int, np.ndarray]):
    """The scene as a moving camera sees it at frame ``t``: shifted by the sum of the camera's moves (sub-pixel;
    the edge the camera turns towards is filled by reflection), the masks with it."""
    seconds = t / video.fps
    dx = sum(m.offset(seconds)[0] for m in video.camera)
    dy = sum(m.offset(seconds)[1] for m in video.camera)
    h, w = img.shape[:2]
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    moved = cv2.warpAffine(img, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return moved, {cid: cv2.warpAffine(m.astype(np.uint8), shift, (w, h), flags=cv2.INTER_NEAREST,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
                   for cid, m in masks.items()}


def mask_to_annotation(mask: np.ndarray, category_id: int) -> dict | None:
    """COCO polygon annotation of a binary mask (outer contours), or None if nothing is visible."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3 and cv2.contourArea(c) >= 4]
    if not polygons:
        return None
    ys, xs = np.nonzero(mask)
    x, y = float(xs.min()), float(ys.min())
    return {"category_id": category_id, "segmentation": polygons, "area": float(mask.sum()),
            "bbox": [x, y, float(xs.max()) + 1 - x, float(ys.max()) + 1 - y], "iscrowd": 0}


# ---------------------------------------------------------------------------------------------- output


def generate_videos(spec: SampleSpec):
    """Yield ``(video_name, [(frame_index, rgb, annotations), ...])`` for every video, deterministically."""
    for v in range(spec.num_videos):
        rng = np.random.default_rng([spec.seed, v])
        video = _make_video(rng, spec.width, spec.height, spec.frames_per_video, v)
        frames = []
        for t in range(spec.frames_per_video):
            rgb, masks = render_frame(video, t, spec.width, spec.height, rng)
            anns = [a for cid, m in sorted(masks.items()) if (a := mask_to_annotation(m, cid)) is not None]
            frames.append((t, rgb, anns))
        yield f"video_{v:02d}", frames


def cut_sample_videos(names: list[str], ratios: tuple[float, float, float], seed: int) -> dict[str, list[str]]:
    """The sample data's split: shuffle whole videos with ``seed`` and cut them by ``ratios`` (:func:`split_counts`).
    ``prepare`` splits a user's videos (or patients) with :func:`seizure_mlflow.data.prepare.assign_splits`; the
    sample keeps this cut so that its splits, and the figures measured on them, stay as they are."""
    order = list(names)
    np.random.default_rng(seed).shuffle(order)
    n_train, n_val, _ = split_counts(len(order), ratios)
    return {"train": sorted(order[:n_train]), "val": sorted(order[n_train:n_train + n_val]),
            "test": sorted(order[n_train + n_val:])}


def sample_paths(root: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """``{split: (json_path, image_root)}`` of a sample dataset folder."""
    root = Path(root)
    return {split: (str(root / f"{split}.json"), str(root / "images")) for split in SPLITS}


def write_sample_dataset(root: str | os.PathLike = DEFAULT_SAMPLE_DIR, spec: SampleSpec | None = None,
                         force: bool = False) -> Path:
    """Write the sample dataset under ``root`` (images/, train/val/test.json, split.json).

    An existing dataset made from the same spec is kept as it is. Output is written to a temporary folder
    and moved into place when complete, so an interrupted run leaves nothing half-written.
    """
    spec = spec or SampleSpec()
    root = Path(root)
    manifest = {"generator": "seizure_mlflow.sample.scenes", "spec": asdict(spec)}
    manifest["spec"]["ratios"] = list(spec.ratios)
    if not force and (root / MANIFEST).is_file():
        if json.loads((root / MANIFEST).read_text()) == manifest and all(Path(p).exists() for p, _ in sample_paths(root).values()):
            logger.info("Sample data already in %s", root)
            return root
    with staged_folder(root, SAMPLE_COMMAND, force=force) as tmp:
        coco = {split: {"images": [], "annotations": [], "categories": CATEGORIES} for split in SPLITS}
        all_frames = {}
        for name, frames in generate_videos(spec):
            all_frames[name] = frames
        splits = cut_sample_videos(sorted(all_frames), spec.ratios, spec.seed)
        split_of = {name: split for split, names in splits.items() for name in names}
        image_id = ann_id = 0
        for name in sorted(all_frames):
            (tmp / "images" / name).mkdir(parents=True)
            doc = coco[split_of[name]]
            for t, rgb, anns in all_frames[name]:
                image_id += 1
                file_name = f"{name}/frame_{t:06d}.png"
                cv2.imwrite(str(tmp / "images" / file_name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                doc["images"].append({"id": image_id, "file_name": file_name, "width": spec.width,
                                      "height": spec.height, "video_id": name, "frame_index": t})
                for ann in anns:
                    ann_id += 1
                    doc["annotations"].append({"id": ann_id, "image_id": image_id, **ann})
        for split in SPLITS:
            (tmp / f"{split}.json").write_text(json.dumps(coco[split]))
        (tmp / "split.json").write_text(json.dumps({"seed": spec.seed, "ratios": list(spec.ratios), "videos": splits}, indent=2))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    logger.info("Wrote sample data to %s: %s", root, {s: len(v) for s, v in splits.items()})
    return root


def write_sample_exports(root: str | os.PathLike, spec: SampleSpec | None = None, fps: int = 10) -> Path:
    """The sample videos in per-video export form, as annotation tools deliver them: for each video
    ``NAME.mp4`` and ``NAME.json`` (COCO, frames named ``frame_000123.png`` with a ``frame_id``).

    The input of ``seizure-mlflow prepare``. Written to a temporary folder and moved into place.
    """
    from seizure_mlflow.data.video import write_video

    spec = spec or SampleSpec()
    root = Path(root)
    with staged_folder(root, SAMPLE_COMMAND) as tmp:
        for name, frames in generate_videos(spec):
            images, annotations = [], []
            for t, _, anns in frames:
                images.append({"id": t + 1, "file_name": f"frame_{t:06d}.png", "frame_id": t,
                               "width": spec.width, "height": spec.height})
                for ann in anns:
                    annotations.append({"id": len(annotations) + 1, "image_id": t + 1, **ann})
            write_video(tmp / f"{name}.mp4", [rgb for _, rgb, _ in frames], fps=fps)
            (tmp / f"{name}.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                          "categories": CATEGORIES}))
    return root


# ---------------------------------------------------------------------------------------------- trace videos

TRACE_TRUTH = "truth.json"
TRACE_VIDEOS = "videos"
TRACE_MASKS = "masks"
TRACE_CAMERA = "camera.json"


@dataclass(frozen=True)
class TraceSpec:
    """Trace videos: long enough for rhythm (the 4 s windows of ``trace``), at a clinical frame rate."""

    num_videos: int = 4
    seconds: float = 40.0
    fps: float = 25.0
    width: int = 160
    height: int = 120
    seed: int = 0
    camera: bool = False  # a camera that shakes (2-6 Hz), pans and drifts, at quiet times and during episodes

    def __post_init__(self) -> None:
        if not 1 <= self.num_videos <= 100:
            raise UserError(f"num_videos must be between 1 and 100; got {self.num_videos}")
        if self.seconds < 30:
            raise UserError(f"trace videos need at least 30 s to hold their episodes and visits; got {self.seconds}")
        if not 12.5 <= self.fps <= 60:
            raise UserError(f"fps must be between 12.5 and 60; got {self.fps}")
        if not (96 <= self.width <= 1024 and 72 <= self.height <= 1024):
            raise UserError(f"trace frames must be between 96x72 and 1024x1024 px; got {self.width}x{self.height}")


# Per video, in fractions of its length: clonic episodes and caregiver visits never overlap, so that motion
# seen while only the caregiver moves is a false alarm by construction. The third video has no seizure.
_TRACE_TIMETABLES = (
    {"episodes": [(0.30, 0.50)], "visits": [("walk", 0.08, 0.18), ("pat", 0.70, 0.85)], "moves": [(0.60, 0.64)]},
    {"episodes": [(0.62, 0.82)], "visits": [("walk", 0.12, 0.22), ("blanket", 0.35, 0.45)], "moves": [(0.26, 0.30)]},
    {"episodes": [], "visits": [("pat", 0.15, 0.35), ("walk", 0.45, 0.55), ("blanket", 0.65, 0.75), ("pat", 0.82, 0.95)],
     "moves": [(0.58, 0.62)]},
    {"episodes": [(0.15, 0.28), (0.60, 0.75)], "visits": [("pat", 0.38, 0.52)], "moves": [(0.85, 0.89)]},
)


# Per video, in the same fractions as its timetable: shakes while the patient lies still (no episode, no visit:
# anything raised there is a false alarm by construction), one during an episode (still to be found), a pan.
_CAMERA_TIMETABLES = (
    [("shake", 0.86, 0.99, 3.0), ("pan", 0.52, 0.58, 0.0), ("shake", 0.32, 0.46, 4.5)],
    [("shake", 0.46, 0.60, 3.5), ("pan", 0.85, 0.92, 0.0), ("shake", 0.65, 0.79, 2.5)],
    [("shake", 0.00, 0.13, 5.5), ("shake", 0.36, 0.44, 2.2), ("pan", 0.76, 0.81, 0.0)],
    [("shake", 0.29, 0.37, 4.0), ("pan", 0.53, 0.59, 0.0), ("shake", 0.62, 0.73, 3.0)],
)
SHAKE_PX = 2.5
PAN_PX = 12.0
DRIFT_PX, DRIFT_HZ = 2.0, 0.08


def _camera_moves(spec: TraceSpec, index: int, rng: np.random.Generator) -> tuple[CameraMove, ...]:
    length = spec.seconds
    moves = [CameraMove("drift", 0.0, length, DRIFT_PX, DRIFT_HZ)]
    for kind, a, b, frequency in _CAMERA_TIMETABLES[index % len(_CAMERA_TIMETABLES)]:
        amplitude = PAN_PX * float(rng.choice([-1, 1])) if kind == "pan" else SHAKE_PX
        moves.append(CameraMove(kind, round(a * length, 2), round(b * length, 2), amplitude, frequency))
    return tuple(moves)


def make_trace_video(spec: TraceSpec, index: int, rng: np.random.Generator) -> _Video:
    """A scene of the sample generator with a timetable of episodes, visits and moves, in seconds."""
    base = _make_video(rng, spec.width, spec.height, 2, index)
    table = _TRACE_TIMETABLES[index % len(_TRACE_TIMETABLES)]
    length = spec.seconds

    def jitter(a: float, b: float) -> tuple[float, float]:
        shift = float(rng.uniform(-0.02, 0.02)) * length
        return round(a * length + shift, 2), round(b * length + shift, 2)

    episodes = tuple(Episode(*jitter(a, b), frequency_hz=round(float(rng.uniform(2.5, 5.5)), 2))
                     for a, b in table["episodes"])
    visits = tuple(Visit(kind, *jitter(a, b), frequency_hz=round(float(rng.uniform(2.0, 4.0)), 2) if kind == "pat" else 0.0)
                   for kind, a, b in table["visits"])
    moves = tuple(Move(*jitter(a, b), dx=float(rng.uniform(-3, 3)), dy=float(rng.uniform(-2, 2)))
                  for a, b in table["moves"])
    # a dark gown on the light sheet and a saturated caregiver, so that both stay visible in a small frame
    gown = rng.uniform(20, 90, 3)
    caregiver = np.roll(np.array([230.0, float(rng.uniform(20, 80)), float(rng.uniform(20, 80))]), int(rng.integers(0, 3)))
    return _Video(**{**base.__dict__, "gown": gown, "caregiver_colour": caregiver,
                     "drift": np.zeros(2), "blanket": True, "caregiver_frames": frozenset(),
                     "seizure_amp": float(rng.uniform(0.3, 0.45)), "seizure_freq": 0.0,
                     "fps": spec.fps, "episodes": episodes, "visits": visits, "moves": moves,
                     "camera": _camera_moves(spec, index, np.random.default_rng([spec.seed, 2000 + index]))
                     if spec.camera else ()})


def write_trace_sample(root: str | os.PathLike, spec: TraceSpec | None = None) -> Path:
    """Write trace sample videos under ``root``: ``videos/NAME.mp4``, ``masks/NAME.json`` (every frame's
    true masks as COCO, images with ``frame_id``) and ``truth.json`` (``{NAME: [{"start", "end",
    "frequency_hz"}]}``, seconds), plus ``visits.json`` (when the caregiver is in the picture, and doing what) and,
    with ``spec.camera``, ``camera.json`` (when the camera shakes, pans and drifts).

    The input of ``seizure-mlflow trace`` (``--masks`` and ``--truth`` take the masks and truth).
    Written to a temporary folder and moved into place.
    """
    from tqdm import tqdm

    from seizure_mlflow.data.video import VideoWriter

    spec = spec or TraceSpec()
    root = Path(root)
    check_replaceable(root, SAMPLE_COMMAND, param="output")
    frames = int(round(spec.seconds * spec.fps))
    truth, visits, camera = {}, {}, {}
    with staged_folder(root, SAMPLE_COMMAND) as tmp, tqdm(total=frames * spec.num_videos, desc="trace videos", unit="frame") as bar:
        (tmp / TRACE_VIDEOS).mkdir()
        (tmp / TRACE_MASKS).mkdir()
        for v in range(spec.num_videos):
            name = f"trace_{v:02d}"
            rng = np.random.default_rng([spec.seed, 1000 + v])
            video = make_trace_video(spec, v, rng)
            images, annotations = [], []
            with VideoWriter(tmp / TRACE_VIDEOS / f"{name}.mp4", fps=spec.fps) as writer:
                for t in range(frames):
                    rgb, masks = render_frame(video, t, spec.width, spec.height, rng)
                    writer.write(rgb)
                    images.append({"id": t + 1, "file_name": f"frame_{t:06d}.png", "frame_id": t,
                                   "width": spec.width, "height": spec.height})
                    for cid, mask in sorted(masks.items()):
                        if (ann := mask_to_annotation(mask, cid)) is not None:
                            annotations.append({"id": len(annotations) + 1, "image_id": t + 1, **ann})
                    bar.update(1)
            (tmp / TRACE_MASKS / f"{name}.json").write_text(
                json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
            truth[name] = [asdict(e) for e in video.episodes]
            visits[name] = [asdict(e) for e in video.visits]
            camera[name] = [asdict(m) for m in video.camera]
        (tmp / TRACE_TRUTH).write_text(json.dumps(truth, indent=2))
        (tmp / "visits.json").write_text(json.dumps(visits, indent=2))
        if spec.camera:
            (tmp / TRACE_CAMERA).write_text(json.dumps(camera, indent=2))
        (tmp / MANIFEST).write_text(json.dumps({"generator": "seizure_mlflow.sample.scenes.write_trace_sample",
                                                "spec": asdict(spec)}, indent=2))
    return root


def write_trace_exports(root: str | os.PathLike, specs: dict[str, TraceSpec], every: int = 5) -> Path:
    """Trace videos in per-video export form (``PREFIX_NAME.mp4`` + ``PREFIX_NAME.json``, the input of ``prepare``)
    to train a detector for the trace scenes: for each ``prefix: spec``, the videos of ``write_trace_sample(spec)``
    with every ``every``-th frame's true masks (neighbouring frames 40 ms apart teach a detector little). Use other
    seeds than the trace sample's own, so that the detector is then traced on videos it never saw."""
    import shutil
    import tempfile

    root = Path(root)
    with staged_folder(root, SAMPLE_COMMAND) as tmp, tempfile.TemporaryDirectory(prefix="seizure-trace-") as scratch:
        for prefix, spec in specs.items():
            sample = write_trace_sample(Path(scratch) / prefix, spec)
            for masks in sorted((sample / TRACE_MASKS).glob("*.json")):
                coco = json.loads(masks.read_text())
                keep = {image["id"] for image in coco["images"] if image["frame_id"] % every == 0}
                coco["images"] = [image for image in coco["images"] if image["id"] in keep]
                coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
                (tmp / f"{prefix}_{masks.stem}.json").write_text(json.dumps(coco))
                shutil.copy(sample / TRACE_VIDEOS / f"{masks.stem}.mp4", tmp / f"{prefix}_{masks.stem}.mp4")
    return root
