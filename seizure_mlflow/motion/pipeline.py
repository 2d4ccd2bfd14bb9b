"""A video and a source of masks -> the patient's motion trace, rhythm index and candidate intervals.

:func:`trace_video` decodes the video once as a stream (at its own frame rate or a lower ``fps``), asks
the source for each batch of frames' people, follows the patient (:class:`~.track.PatientTrack`),
measures motion (:class:`~.signals.MotionMeter`) and then the rhythm (:mod:`.rhythm`). Nothing here
talks to MLflow or writes files; :mod:`.outputs` writes the results.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from seizure_mlflow.data.masks import mask_to_rle
from seizure_mlflow.data.video import frame_count, frame_rate, iter_frames
from seizure_mlflow.errors import UserError
from seizure_mlflow.motion.rhythm import (Interval, RhythmSettings, Scores, Windows, band_envelope, candidate_intervals,
                                          rhythm_windows, score_intervals)
from seizure_mlflow.motion.analyser import FrameAnalyser
from seizure_mlflow.motion.carry import CarryRules
from seizure_mlflow.motion.patient_track import PatientTrack
from seizure_mlflow.motion.signals import REGIONS, MotionMeter

logger = logging.getLogger(__name__)

MIN_FOUND_FRACTION = 0.5  # below this share of frames with the patient, a video has no usable trace


@dataclass(frozen=True)
class TraceOptions:
    fps: float | None = None  # None: the video's own rate
    method: str = "flow"
    region: str = "patient"  # what the rhythm is measured on: the patient, or the whole frame (the baseline)
    rhythm: RhythmSettings = field(default_factory=RhythmSettings)
    cells: int = 8
    max_width: int = 320
    min_score: float = 0.5
    batch_size: int = 8
    accept_short_video: bool = False  # trace a video cut short (see seizure_mlflow.data.video.iter_frames)
    compensate_camera: bool = True  # remove the camera's own motion from the flow (see .camera)
    carry: CarryRules = field(default_factory=CarryRules)  # the detector on every K-th frame (see .carry)


@dataclass
class TraceResult:
    table: pd.DataFrame  # one row per analysed frame: frame, time, patient_found and every signal
    components: dict[str, np.ndarray]  # region -> frames x components
    fps: float
    settings: RhythmSettings  # as applied (the total band narrowed for slow videos)
    region: str
    windows: Windows
    intervals: list[Interval]
    processing_seconds: float
    patient_rles: list | None = None  # per frame, for the overlay video
    warning: str | None = None

    @property
    def seconds(self) -> float:
        return len(self.table) / self.fps

    def reanalysed(self, region: str | None = None, settings: RhythmSettings | None = None) -> "TraceResult":
        """The same measurements with the rhythm taken over another region or with other settings."""
        region, settings = region or self.region, settings or self.settings
        windows = rhythm_windows(self.components[region], _found(self.table, region), self.fps, settings)
        table = self.table.copy()
        table["rhythm_index"], table["dominant_hz"] = _per_frame(windows, table["time"].to_numpy())
        envelope = band_envelope(self.components[region], self.fps, settings)
        table["band_power"] = envelope
        return TraceResult(table, self.components, self.fps, settings, region, windows,
                           candidate_intervals(windows, settings, envelope, self.fps), self.processing_seconds,
                           self.patient_rles, self.warning)

    def score(self, truth: list[tuple[float, float]]) -> Scores:
        return score_intervals(self.intervals, truth, self.seconds)


def _found(table: pd.DataFrame, region: str) -> np.ndarray:
    return table["patient_found"].to_numpy(bool) if region == "patient" else np.ones(len(table), bool)


def check_traceable(path: str | Path, options: TraceOptions) -> tuple[RhythmSettings, str | None]:
    """Before any work: the frame rate allows the rhythm band, ``--fps`` is not above the video's rate, and
    the video (as declared) lasts at least one window."""
    source_fps, declared = frame_rate(path), frame_count(path)
    fps = options.fps or source_fps
    if options.fps and options.fps > source_fps + 1e-6:
        raise UserError(f"{options.fps:g} is above the frame rate of {path} ({source_fps:g} frames/s)", param="fps")
    settings, warning = options.rhythm.for_frame_rate(fps)
    if declared is not None and declared / source_fps < settings.window_s:
        raise UserError(f"{path} lasts {declared / source_fps:.1f} s, shorter than one {settings.window_s:g} s window "
                        "of the rhythm analysis; give a longer video (or a shorter --window)", param="input")
    return settings, warning


def trace_video(path: str | Path, source: Callable, options: TraceOptions, keep_masks: bool = False) -> TraceResult:
    """Measure one video in one pass. ``source(batch)`` gives each frame's people (see :mod:`.sources`)."""
    settings, warning = check_traceable(path, options)
    if warning:
        logger.warning("%s: %s", Path(path).name, warning)
    return finish_trace(path, measure_frames(path, source, options, keep_masks), options, settings, warning)


@dataclass
class MeasuredFrames:
    """The per-frame measurements of a run of analysed frames: a whole video, or a segment of it (see
    :func:`join_measured`)."""

    first: int  # the number of the first analysed frame here (0: the video's first)
    rows: list[dict]
    components: dict[str, list]
    rles: list | None
    processing_seconds: float
    fps: float

    def __len__(self) -> int:
        return len(self.rows)


def lead_in(options: TraceOptions, fps: float) -> int:
    """Frames analysed before a segment's first and dropped, so that its first frames are measured as in one pass:
    the flow needs the previous frame, the track and the carried masks a detection before it. Two detection periods
    and at least one second, rounded up to a whole detection period (segments start on the detection schedule)."""
    every = options.carry.every
    frames = max(2 * every, int(np.ceil(fps)))
    return -(-frames // every) * every


def measure_frames(path: str | Path, source: Callable, options: TraceOptions, keep_masks: bool = False,
                   first: int = 0, stop: int | None = None, progress: bool = True) -> MeasuredFrames:
    """Measure the analysed frames numbered ``first`` to ``stop - 1`` (to the video's end when ``stop`` is None).

    From a ``first`` above 0, the :func:`lead_in` frames before it are analysed too and dropped; the frames before
    those are decoded and skipped. ``first`` must lie on the detection schedule (a multiple of
    ``options.carry.every``)."""
    every = options.carry.every
    if first % every:
        raise ValueError(f"a segment starts on the detection schedule (a multiple of {every}), not at {first}")
    started = time.perf_counter()
    frames, declared, source_fps = iter_frames(path, accept_short=options.accept_short_video, lazy=True)
    fps = options.fps or source_fps
    start = max(0, first - lead_in(options, fps))
    analyser = FrameAnalyser(source, PatientTrack(min_score=options.min_score),
                             MotionMeter(options.method, options.cells, options.max_width, options.compensate_camera),
                             options.carry)
    measured = MeasuredFrames(first, [], {r: [] for r in REGIONS}, [] if keep_masks else None, 0.0, fps)
    expected = int(declared * fps / source_fps) if declared else None
    if expected is not None:
        expected = (expected if stop is None else min(stop, expected)) - first

    def analyse(batch):
        for (number, index, _), record in zip(batch, analyser.analyse(batch)):
            if number < first:
                continue
            measured.rows.append({"frame": index, "time": round(number / fps, 4),
                                  "patient_found": int(record.tracked.patient is not None), **record.values})
            for region in REGIONS:
                measured.components[region].append(record.measure.components[region])
            if measured.rles is not None:
                measured.rles.append(None if record.tracked.patient is None else mask_to_rle(record.tracked.patient))
        bar.update(sum(1 for f in batch if f[0] >= first))

    batch = []
    size = options.batch_size * every  # a batch holds batch_size scheduled detections
    with tqdm(total=expected, desc=f"trace {Path(path).name}", unit="frame", disable=not progress) as bar:
        for number, (index, bgr) in enumerate(analysis_ticks(frames, fps, source_fps)):
            if stop is not None and number >= stop:
                frames.close()
                break
            if number < start:
                continue
            batch.append((number, index, bgr()))
            if len(batch) == size:
                analyse(batch)
                batch.clear()
        if batch:
            analyse(batch)
    measured.processing_seconds = time.perf_counter() - started
    return measured


def join_measured(parts: list[MeasuredFrames]) -> MeasuredFrames:
    """Segments of one video, in order, as one: they must follow each other frame by frame."""
    parts = sorted(parts, key=lambda m: m.first)
    joined = MeasuredFrames(0, [], {r: [] for r in REGIONS}, [] if parts[0].rles is not None else None, 0.0, parts[0].fps)
    for part in parts:
        if not part.rows:  # a segment past the end of a video that declared more frames than it has
            continue
        if part.first != len(joined.rows):
            raise RuntimeError(f"segments do not join: one starts at frame {part.first}, the previous ones end at "
                               f"{len(joined.rows)}")
        joined.rows += part.rows
        for region in REGIONS:
            joined.components[region] += part.components[region]
        if joined.rles is not None:
            joined.rles += part.rles
        joined.processing_seconds += part.processing_seconds
    return joined


def finish_trace(path: str | Path, measured: MeasuredFrames, options: TraceOptions, settings: RhythmSettings,
                 warning: str | None) -> TraceResult:
    """The whole video's measurements -> its rhythm windows and candidate intervals (one pass over all frames,
    however they were measured), after checking the video was long enough and the patient found often enough."""
    fps = measured.fps
    table = pd.DataFrame(measured.rows)
    if len(table) / fps < settings.window_s:
        raise UserError(f"{path} lasts {len(table) / fps:.1f} s, shorter than one {settings.window_s:g} s window "
                        "of the rhythm analysis; give a longer video (or a shorter --window)", param="input")
    found = table["patient_found"].mean()
    if found < MIN_FOUND_FRACTION:
        raise UserError(f"{path}: the patient was found in {int(table['patient_found'].sum())} of {len(table)} "
                        f"frames (needs {MIN_FOUND_FRACTION:.0%}); is this the right model for this camera, or the "
                        "right --min-score?", param="input")
    areas = table["area"]
    table["area_rel"] = areas / np.nanmedian(areas)
    result = TraceResult(table, {r: np.array(v) for r, v in measured.components.items()}, fps, settings,
                         options.region, windows=None, intervals=[], processing_seconds=measured.processing_seconds,
                         patient_rles=measured.rles, warning=warning)
    return result.reanalysed()


def analysis_ticks(frames, fps: float, source_fps: float):
    """The frames analysed, one per tick of a regular ``1/fps`` grid, placed by each frame's own timestamp (so that
    variable-frame-rate video keeps its times): the frame shown within half a source frame of a tick, else, across
    a gap in the video, the last frame shown (held). ``frames`` yields ``(index, timestamp or None, bgr)``; yields
    ``(index, bgr)``. On constant-rate video this is every frame (``fps`` = the video's rate) or the nearest one."""
    step, half = 1 / fps, 0.5 / source_fps
    next_time, first, previous = 0.0, None, None
    for index, timestamp, bgr in frames:
        if timestamp is None:
            shown_at = index / source_fps
        else:
            first = timestamp if first is None else first
            shown_at = timestamp - first
        while previous is not None and next_time < shown_at - half:  # a gap: the last frame shown holds
            yield previous
            next_time += step
        if next_time <= shown_at + half:
            yield index, bgr
            next_time += step
        previous = (index, bgr)


def _per_frame(windows: Windows, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's rhythm index and dominant frequency: those of the window centred nearest to it."""
    centres = windows.centres
    nearest = np.clip(np.searchsorted(centres, times), 0, len(centres) - 1)
    before = np.clip(nearest - 1, 0, len(centres) - 1)
    nearest = np.where(np.abs(centres[before] - times) < np.abs(centres[nearest] - times), before, nearest)
    return windows.index[nearest], windows.dominant_hz[nearest]
