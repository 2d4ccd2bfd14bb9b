"""Video files: decode the annotated frames once, in order (PyAV), and write synthetic videos."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from functools import partial
from typing import Callable, Iterable

import av
import cv2
import numpy as np
from tqdm import tqdm

from seizure_mlflow.errors import DatasetError, UserError

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")


def _open(path: str | os.PathLike):
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read this video ({exc}); is the file complete and a video?") from None
    if not container.streams.video:
        container.close()
        raise DatasetError(f"{path}: has no video stream")
    return container


def check_video_readable(path: str | os.PathLike) -> None:
    """Before any work: the file opens as a video and its first frame decodes."""
    with _open(path) as container:
        try:
            next(container.decode(container.streams.video[0]))
        except (av.error.FFmpegError, StopIteration) as exc:
            raise DatasetError(f"{path}: no frame could be decoded ({exc or 'no frames'})") from None


def frame_count(path: str | os.PathLike) -> int | None:
    """Frames the container declares, or None when it does not say (some AVI/MKV files)."""
    with _open(path) as container:
        return container.streams.video[0].frames or None


def frame_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of the video's frames, from its stream header."""
    with _open(path) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height


def frame_rate(path: str | os.PathLike) -> float:
    """Frames per second the container declares (10 when it does not say)."""
    with _open(path) as container:
        return _rate(container.streams.video[0])


def _rate(stream) -> float:
    return float(stream.average_rate) if stream.average_rate else 10.0


def extract_frames(path: str | os.PathLike, wanted: Iterable[int], write: Callable[[int, np.ndarray], None],
                   every: int = 0, bar: tqdm | None = None) -> int:
    """Decode ``path`` once, in order, stopping after the last frame needed.

    ``write(index, bgr)`` receives each wanted frame (and, with ``every=N``, every N-th frame too);
    ``bar``, if given, advances by one per decoded frame.
    Returns the number of frames decoded. A wanted index beyond the end of the video is a
    :class:`DatasetError` naming the video and the indices.
    """
    wanted = set(int(i) for i in wanted)
    if any(i < 0 for i in wanted):
        raise DatasetError(f"{path}: negative frame index {min(wanted)}")
    declared = frame_count(path)
    if declared is not None and wanted and max(wanted) >= declared and not every:
        beyond = sorted(i for i in wanted if i >= declared)
        raise DatasetError(f"{path}: frame index(es) {beyond[:5]} out of range: the video has {declared} frames (0-{declared - 1})")
    last = max(wanted) if wanted else -1
    if every:
        last = max(last, (declared or 0) - 1) if declared else None
    decoded = 0
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                if bar is not None:
                    bar.update(1)
                if index in wanted or (every and index % every == 0):
                    write(index, frame.to_ndarray(format="bgr24"))
                if last is not None and index >= last:
                    break
        except av.error.FFmpegError as exc:
            raise DatasetError(f"{path}: decoding failed at frame {decoded} ({exc})") from None
    missing = sorted(i for i in wanted if i >= decoded)
    if missing:
        raise DatasetError(f"{path}: frame index(es) {missing[:5]} out of range: the video has {decoded} frames (0-{decoded - 1})")
    return decoded


class VideoWriter:
    """Streams RGB ``uint8`` frames into an MPEG-4 file; the size is taken from the first frame.

    Odd widths or heights are cropped by one pixel (the encoder needs even sizes).
    """

    def __init__(self, path: str | os.PathLike, fps: float = 10) -> None:
        self._container = av.open(str(path), "w")
        self._fps = fps
        self._stream = None

    def write(self, rgb: np.ndarray) -> None:
        height, width = (rgb.shape[0] // 2) * 2, (rgb.shape[1] // 2) * 2
        if self._stream is None:
            from fractions import Fraction

            self._stream = self._container.add_stream("mpeg4", rate=Fraction(self._fps).limit_denominator(1001))
            self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
            self._stream.options = {"qscale": "2"}
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:height, :width]), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_video(path: str | os.PathLike, frames_rgb: Iterable[np.ndarray], fps: float = 10) -> None:
    """Encode RGB ``uint8`` frames as an MPEG-4 video."""
    with VideoWriter(path, fps) as writer:
        for rgb in frames_rgb:
            writer.write(rgb)


class ShortVideoError(DatasetError):
    """A video that ends before the frames its container declares: a copy or a recording cut short."""


def _declared_length(container) -> tuple[int | None, float | None]:
    """``(frames, seconds)`` the container declares (Matroska gives a duration and no count); None where it does not."""
    frames = container.streams.video[0].frames or None
    return frames, (container.duration / av.time_base if container.duration else None)


def _cut_short(decoded: int, last_time: float | None, frames: int | None, seconds: float | None, fps: float) -> str:
    """How a video read to its end falls short of what its container declares ('' when it does not): by its frame
    count where declared, else by its duration (variable-rate video has fewer frames than duration x rate)."""
    if frames:
        return f"{decoded} of the {frames} frames" if decoded < frames - max(2, frames // 100) else ""
    if seconds and last_time is not None and last_time + 1 / fps < seconds - max(2 / fps, seconds / 100):
        return f"{last_time + 1 / fps:.1f} s of the {seconds:.1f} s"
    return ""


def iter_frames(path: str | os.PathLike, accept_short: bool = False, lazy: bool = False):
    """``(frames, expected, fps)``: ``frames`` yields ``(index, timestamp_seconds, bgr)`` for every frame, decoded as
    a stream (``timestamp_seconds`` is the frame's own presentation time, None where the file gives none; with
    ``lazy``, ``bgr`` is a function that converts the decoded frame when called, so that frames skipped cost only
    their decoding);
    ``expected`` is the number of frames the container declares (or its duration times its rate, or None).

    A video that ends more than 1% (at least 2 frames) before the frames (or, without a count, the duration) its
    container declares raises :class:`ShortVideoError` at its end, naming what was read and what was declared,
    unless ``accept_short`` (then a warning says the same).
    """
    container = _open(path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    declared_frames, declared_seconds = _declared_length(container)
    fps = _rate(stream)
    expected = declared_frames or (round(declared_seconds * fps) if declared_seconds else None)

    def frames():
        decoded, first, last = 0, None, None
        with container:
            try:
                for index, frame in enumerate(container.decode(stream)):
                    timestamp = float(frame.time) if frame.time is not None else None
                    decoded = index + 1
                    if timestamp is not None:
                        first = timestamp if first is None else first
                        last = timestamp - first
                    yield index, timestamp, (partial(frame.to_ndarray, format="bgr24") if lazy else
                                             frame.to_ndarray(format="bgr24"))
            except av.error.FFmpegError as exc:
                raise DatasetError(f"{path}: decoding failed at frame {decoded} ({exc})") from None
        short = _cut_short(decoded, last, declared_frames, declared_seconds, fps)
        if short:
            message = (f"{path} ended after {short} its container declares: the file is cut short (an "
                       "interrupted copy or recording?)")
            if not accept_short:
                raise ShortVideoError(f"{message}; copy it again, or pass --accept-short-video to use the frames "
                                      "that are there")
            logger.warning("%s; using the %d frames there (--accept-short-video)", message, decoded)

    return frames(), expected, fps


def write_png(path: str | os.PathLike, bgr: np.ndarray) -> None:
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"could not write {path}")


def list_videos(path: str | os.PathLike) -> list[Path]:
    """A video file, or the videos of a folder (sorted by name); a clear error for anything else."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() not in VIDEO_SUFFIXES:
            raise UserError(f"{p}: not a video file ({'/'.join(VIDEO_SUFFIXES)})", param="input")
        return [p]
    if p.is_dir():
        videos = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise UserError(f"{p}: no {'/'.join(VIDEO_SUFFIXES)} videos in this folder", param="input")
        return videos
    raise UserError(f"{p}: no such file or folder", param="input")
