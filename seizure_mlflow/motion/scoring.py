"""A trace's candidate intervals against a truth file, summed over its videos, by three readings: the package's
own rule (:func:`~.rhythm.score_intervals`), SzCORE's (:mod:`.szcore`), and the package's rule at every threshold
(:mod:`.thresholds`), all from the one pass that computed each video's rhythm index."""

from __future__ import annotations

import pandas as pd

from seizure_mlflow.motion.rhythm import Scores
from seizure_mlflow.motion.szcore import EventCounts, score_events
from seizure_mlflow.motion.thresholds import ThresholdSweep, choose_threshold


class ScoreBoard:
    """:meth:`add` each traced video with its truth; :meth:`summary` then gives every score and the threshold
    curve. Nothing here writes files."""

    def __init__(self, threshold: float, target_false_alarms_per_hour: float | None = None) -> None:
        self.threshold, self.target = threshold, target_false_alarms_per_hour
        self.own: Scores | None = None
        self.szcore: EventCounts | None = None
        self.sweep = ThresholdSweep(also=threshold)

    def add(self, result, truth: list[tuple[float, float]]) -> Scores:
        """Score one video (its own scores are returned); its trace is not kept."""
        own = result.score(truth)
        self.own = own if self.own is None else self.own + own
        counts = score_events([(i.start, i.end) for i in result.intervals], truth, result.seconds)
        self.szcore = counts if self.szcore is None else self.szcore + counts
        self.sweep.add(result, truth)
        return own

    def summary(self) -> tuple[dict, pd.DataFrame]:
        """Every score, and the threshold curve (for :func:`~.outputs.write_threshold_curve`)."""
        curve = self.sweep.curve()
        choice = choose_threshold(curve, self.target)
        weakest = self.sweep.weakest_detection(self.threshold)
        return {"scores": self.own.as_dict(),
                "szcore": {**self.szcore.as_metrics(), "events": self.szcore.events, "hits": self.szcore.hits,
                           "false_detections": self.szcore.false_detections},
                "thresholds": {"run_threshold": self.threshold, "chosen": choice.as_dict(),
                               "weakest_detected_peak": weakest,
                               "margin": round(weakest - self.threshold, 4) if weakest is not None else None}}, curve
