"""Rhythm of a motion signal: a sliding-window rhythm index, candidate seizure intervals, and scores.

Over sliding windows (default 4 s, step 0.5 s) the Welch power spectrum of the signed motion components
(summed over components) gives the *rhythm index* P(2-6 Hz) / P(0.5-12.5 Hz) and the dominant frequency
(the peak in 0.5-12.5 Hz). Candidate intervals are runs of windows whose index stays above a threshold,
runs closer than ``merge_gap_s`` merged, kept when they last at least ``min_duration_s`` (2 s, as in the
published detector: Kalitzin et al. 2012; Geertsema, Kalitzin et al., Epilepsia 2018). Noise spreads its
power over the whole band (an index near 4/12 = 0.33); slow, non-rhythmic movement puts it below 2 Hz.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy.signal import butter, sosfiltfilt, welch

from seizure_mlflow.errors import UserError


@dataclass(frozen=True)
class RhythmSettings:
    window_s: float = 4.0
    step_s: float = 0.5
    band: tuple[float, float] = (2.0, 6.0)
    total: tuple[float, float] = (0.5, 12.5)
    threshold: float = 0.6
    min_duration_s: float = 2.0
    merge_gap_s: float = 1.0
    max_gap_fraction: float = 0.25  # windows where the patient is missing in more frames have no index

    def check(self) -> None:
        if self.window_s <= 0 or self.step_s <= 0:
            raise UserError(f"window and step must be > 0 s; got {self.window_s} and {self.step_s}", param="window")
        if not 0 < self.threshold < 1:
            raise UserError(f"must be between 0 and 1 (a share of the band power); got {self.threshold}", param="threshold")
        if self.min_duration_s < 0:
            raise UserError(f"must be >= 0 s; got {self.min_duration_s}", param="min_duration")
        if not 0 < self.total[0] < self.band[0] < self.band[1] <= self.total[1]:
            raise UserError(f"the rhythm band {self.band} must lie inside the total band {self.total}", param="band")

    def for_frame_rate(self, fps: float) -> tuple["RhythmSettings", str | None]:
        """The settings at ``fps``: the total band narrowed below the Nyquist frequency (with a warning), or
        a :class:`UserError` when even the rhythm band cannot be seen."""
        nyquist = fps / 2
        if nyquist <= self.band[1]:
            raise UserError(f"{fps:g} frames/s cannot show rhythm up to {self.band[1]:g} Hz (it needs more than "
                            f"{2 * self.band[1]:g} frames/s); use a video recorded at 25 frames/s or more", param="fps")
        if self.total[1] <= nyquist:
            return self, None
        narrowed = replace(self, total=(self.total[0], round(nyquist * 0.95, 2)))
        return narrowed, (f"{fps:g} frames/s is below {2 * self.total[1]:g}: the total band is narrowed to "
                          f"{narrowed.total[0]:g}-{narrowed.total[1]:g} Hz, so rhythm index values are not comparable "
                          "with those of 25 frames/s videos")


@dataclass
class Windows:
    centres: np.ndarray  # seconds
    index: np.ndarray  # NaN where the window is not analysed (patient missing)
    dominant_hz: np.ndarray
    frequencies: np.ndarray
    power: np.ndarray  # windows x frequencies, summed over components (the spectrogram)


@dataclass(frozen=True)
class Interval:
    start: float
    end: float
    peak_index: float
    dominant_hz: float
    alarm_at: float  # when a causal detector would raise it: min_duration_s in, plus half a window

    def as_dict(self) -> dict:
        return {k: round(v, 3) for k, v in asdict(self).items()}


def window_frames(fps: float, settings: RhythmSettings) -> int:
    return max(4, int(round(settings.window_s * fps)))


def rhythm_windows(components: np.ndarray, found: np.ndarray, fps: float, settings: RhythmSettings) -> Windows:
    """The rhythm index per window of ``components`` (frames x components, NaN allowed).

    ``found`` marks the frames where the region exists (the patient was tracked).
    """
    n = len(components)
    size = window_frames(fps, settings)
    step = max(1, int(round(settings.step_s * fps)))
    segment = max(4, size // 2)
    nfft = max(256, 2 ** math.ceil(math.log2(segment * 4)))
    frequencies = np.fft.rfftfreq(nfft, 1 / fps)
    in_total = (frequencies >= settings.total[0]) & (frequencies <= settings.total[1])
    in_band = (frequencies >= settings.band[0]) & (frequencies <= settings.band[1])
    starts = list(range(0, n - size + 1, step))
    centres, index, dominant, power = [], [], [], []
    for start in starts:
        block = components[start:start + size]
        centres.append((start + size / 2) / fps)
        usable = np.mean(~np.isnan(block), axis=0) >= 0.5
        if 1 - np.mean(found[start:start + size]) > settings.max_gap_fraction or not usable.any():
            index.append(np.nan), dominant.append(np.nan), power.append(np.full(len(frequencies), np.nan))
            continue
        block = block[:, usable]
        block = np.where(np.isnan(block), np.nanmean(block, axis=0), block)
        _, psd = welch(block, fs=fps, nperseg=segment, noverlap=segment // 2, nfft=nfft, detrend="constant", axis=0)
        total_psd = psd.sum(axis=1)
        denominator = total_psd[in_total].sum()
        index.append(float(total_psd[in_band].sum() / denominator) if denominator > 0 else 0.0)
        dominant.append(float(frequencies[in_total][np.argmax(total_psd[in_total])]))
        power.append(total_psd)
    return Windows(np.array(centres), np.array(index), np.array(dominant), frequencies,
                   np.array(power).reshape(len(centres), len(frequencies)))


def band_envelope(components: np.ndarray, fps: float, settings: RhythmSettings) -> np.ndarray:
    """Per frame, the power of the components in the rhythm band (zero-phase band-pass, summed over
    components, smoothed over half a second): where in time the rhythm is, at a finer resolution than the
    windows."""
    filled = np.nan_to_num(components, nan=0.0)
    if len(filled) < 30:
        return np.zeros(len(filled))
    sos = butter(4, settings.band, btype="bandpass", fs=fps, output="sos")
    power = (sosfiltfilt(sos, filled, axis=0) ** 2).sum(axis=1)
    width = max(1, int(round(fps / 2)))
    return np.convolve(power, np.ones(width) / width, mode="same")


def candidate_intervals(windows: Windows, settings: RhythmSettings, envelope: np.ndarray | None = None,
                        fps: float | None = None) -> list[Interval]:
    """Runs of windows above the threshold, merged across short gaps, at least ``min_duration_s`` long.

    A window holding a few seconds of strong rhythm is above the threshold as soon as the rhythm enters it,
    so runs of windows start and end up to half a window early and late. With the band ``envelope`` (and
    ``fps``), each interval's start and end move to where the band power first and last reaches a quarter
    of its level inside the interval (its 90th percentile: half the amplitude), never beyond the run of
    windows; the minimum duration then applies to the rhythm itself, so a 1 s burst that lifts every window
    around it raises nothing.
    """
    above = np.nan_to_num(windows.index, nan=0.0) > settings.threshold
    half_step = settings.step_s / 2
    runs: list[list[int]] = []
    for k in np.flatnonzero(above):
        if runs and windows.centres[k] - windows.centres[runs[-1][-1]] <= settings.merge_gap_s + settings.step_s + 1e-9:
            runs[-1].append(k)
        else:
            runs.append([k])
    intervals = []
    for run in runs:
        start, end = windows.centres[run[0]] - half_step, windows.centres[run[-1]] + half_step
        if end - start < settings.min_duration_s:
            continue
        alarm_at = start + settings.min_duration_s + settings.window_s / 2
        if envelope is not None and fps:
            start, end = _refine(envelope, fps, start, end)
            if end - start < settings.min_duration_s:
                continue
        intervals.append(Interval(start=float(start), end=float(end),
                                  peak_index=float(np.max(windows.index[run])),
                                  dominant_hz=float(np.median(windows.dominant_hz[run])),
                                  alarm_at=float(alarm_at)))
    return intervals


def _refine(envelope: np.ndarray, fps: float, start: float, end: float) -> tuple[float, float]:
    first, last = max(0, int(start * fps)), min(len(envelope), int(np.ceil(end * fps)))
    inside = envelope[first:last]
    level = np.percentile(inside, 90) / 4 if len(inside) else 0.0
    if not level > 0:
        return start, end
    strong = np.flatnonzero(inside >= level)
    return (first + strong[0]) / fps, (first + strong[-1] + 1) / fps


@dataclass(frozen=True)
class Scores:
    events: int
    detected: int
    false_alarms: int
    hours: float
    latencies: tuple[float | None, ...]  # per true event: alarm time - onset, None when missed

    @property
    def sensitivity(self) -> float | None:
        return self.detected / self.events if self.events else None

    @property
    def false_alarms_per_hour(self) -> float:
        return self.false_alarms / self.hours if self.hours else 0.0

    @property
    def mean_latency(self) -> float | None:
        found = [x for x in self.latencies if x is not None]
        return float(np.mean(found)) if found else None

    def as_dict(self) -> dict:
        return {"events": self.events, "detected": self.detected, "sensitivity": self.sensitivity,
                "false_alarms": self.false_alarms, "false_alarms_per_hour": self.false_alarms_per_hour,
                "hours": self.hours, "latency_s": list(self.latencies), "mean_latency_s": self.mean_latency}

    def __add__(self, other: "Scores") -> "Scores":
        return Scores(self.events + other.events, self.detected + other.detected,
                      self.false_alarms + other.false_alarms, self.hours + other.hours,
                      self.latencies + other.latencies)


def overlaps(interval: Interval, onset: float, offset: float) -> bool:
    """Whether a candidate interval and a true event ``[onset, offset]`` share any time (touching is not enough)."""
    return interval.start < offset and interval.end > onset


def score_intervals(found: list[Interval], truth: list[tuple[float, float]], seconds: float) -> Scores:
    """A true event is detected when a candidate interval overlaps it; a candidate that overlaps no true
    event is a false alarm. Latency: the first overlapping candidate's alarm time minus the onset."""
    latencies = []
    for onset, offset in truth:
        hits = [i for i in found if overlaps(i, onset, offset)]
        latencies.append(round(min(i.alarm_at for i in hits) - onset, 3) if hits else None)
    false_alarms = sum(1 for i in found if not any(overlaps(i, onset, offset) for onset, offset in truth))
    return Scores(events=len(truth), detected=sum(x is not None for x in latencies), false_alarms=false_alarms,
                  hours=seconds / 3600, latencies=tuple(latencies))
