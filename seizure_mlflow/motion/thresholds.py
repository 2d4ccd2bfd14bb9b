"""Every threshold from one pass: the rhythm index of each video is computed once (its
:class:`~.rhythm.Windows` and band envelope, in :class:`~.pipeline.TraceResult`), and only the cheap last step,
runs of windows above a threshold (:func:`~.rhythm.candidate_intervals`), is repeated per threshold.

:func:`threshold_curve` gives sensitivity against false alarms per hour over a range of thresholds (a FROC-style
curve); :func:`choose_threshold` reads an operating point off it; :func:`weakest_detection` says how far the
weakest detected episode's peak index is above a threshold (the margin before it would be missed).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from seizure_mlflow.motion.rhythm import Scores, candidate_intervals, overlaps, score_intervals

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.30, 0.951, 0.01))
CURVE_COLUMNS = ("threshold", "events", "detected", "sensitivity", "false_alarms", "false_alarms_per_hour",
                 "mean_latency_s")


def intervals_at(result, threshold: float):
    """The candidate intervals of a traced video at another threshold, from its windows and envelope."""
    settings = replace(result.settings, threshold=threshold)
    return candidate_intervals(result.windows, settings, result.table["band_power"].to_numpy(), result.fps)


class ThresholdSweep:
    """Scores at every threshold, summed over the videos :meth:`add`-ed (each video's trace can be dropped
    afterwards: a night of video holds gigabytes of components)."""

    def __init__(self, also: float | None = None, thresholds: tuple[float, ...] = THRESHOLDS) -> None:
        """``thresholds``, and ``also`` (the run's own threshold) among them."""
        self.thresholds = tuple(sorted(set(thresholds) | ({also} if also is not None else set())))
        self._scores: list[Scores | None] = [None] * len(thresholds)
        self._peaks: list[list[float]] = [[] for _ in thresholds]  # per threshold: each detected episode's peak

    def add(self, result, truth: list[tuple[float, float]]) -> None:
        for k, threshold in enumerate(self.thresholds):
            intervals = intervals_at(result, threshold)
            scores = score_intervals(intervals, truth, result.seconds)
            self._scores[k] = scores if self._scores[k] is None else self._scores[k] + scores
            for onset, offset in truth:
                hits = [i.peak_index for i in intervals if overlaps(i, onset, offset)]
                if hits:
                    self._peaks[k].append(max(hits))

    def curve(self) -> pd.DataFrame:
        """One row per threshold: events, detected, sensitivity, false alarms (and per hour), mean latency."""
        rows = [{"threshold": t, "events": s.events, "detected": s.detected, "sensitivity": s.sensitivity,
                 "false_alarms": s.false_alarms, "false_alarms_per_hour": s.false_alarms_per_hour,
                 "mean_latency_s": s.mean_latency} for t, s in zip(self.thresholds, self._scores) if s is not None]
        return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))

    def weakest_detection(self, threshold: float) -> float | None:
        """The lowest, over the true episodes detected at ``threshold`` (one of the sweep's), of the highest peak
        index of the intervals that detect it; None when none is detected."""
        peaks = self._peaks[self.thresholds.index(threshold)]
        return min(peaks) if peaks else None


@dataclass(frozen=True)
class Choice:
    threshold: float | None  # None: no threshold of the range meets the target
    sensitivity: float | None
    false_alarms_per_hour: float | None
    rule: str  # what was asked, in words

    def as_dict(self) -> dict:
        return {"threshold": self.threshold, "sensitivity": self.sensitivity,
                "false_alarms_per_hour": self.false_alarms_per_hour, "rule": self.rule}


def choose_threshold(curve: pd.DataFrame, target_false_alarms_per_hour: float | None = None) -> Choice:
    """The threshold with the highest sensitivity among those with at most ``target_false_alarms_per_hour``
    (default: none at all). Where several thresholds tie, the middle one of them: the furthest from both the
    episodes it would start to miss and the false alarms it would start to raise."""
    target = 0.0 if target_false_alarms_per_hour is None else target_false_alarms_per_hour
    rule = (f"highest sensitivity at no more than {target:g} false alarms per hour"
            if target_false_alarms_per_hour is not None else "highest sensitivity at zero false alarms")
    allowed = curve[curve["false_alarms_per_hour"] <= target + 1e-12]
    if allowed.empty or allowed["sensitivity"].isna().all():
        return Choice(None, None, None, rule)
    best = allowed[allowed["sensitivity"] == allowed["sensitivity"].max()]
    row = best.iloc[(len(best) - 1) // 2]
    return Choice(float(row["threshold"]), float(row["sensitivity"]), float(row["false_alarms_per_hour"]), rule)
