"""SzCORE event scoring (Dan et al., Epilepsia 2025) through its reference implementation, ``timescoring``,
beside the package's own rule (:func:`~.rhythm.score_intervals`).

SzCORE's defaults: a detection may start up to 30 s before and end up to 60 s after a true event; events (true
or detected) closer than 90 s are merged, longer than 5 minutes split; any overlap counts. Scores are summed over
videos as counts (true events, hits, false detections, hours) and only then turned into rates, as SzCORE
aggregates a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

from timescoring.annotations import Annotation
from timescoring.scoring import EventScoring

LABEL_HZ = 10  # the resolution timescoring scores events at


@dataclass(frozen=True)
class EventCounts:
    events: int  # true events, after SzCORE's merging and splitting
    hits: int
    false_detections: int
    seconds: float

    def __add__(self, other: "EventCounts") -> "EventCounts":
        return EventCounts(self.events + other.events, self.hits + other.hits,
                           self.false_detections + other.false_detections, self.seconds + other.seconds)

    def as_metrics(self) -> dict[str, float]:
        """``sensitivity``, ``precision``, ``f1`` (absent where undefined) and ``fp_per_24h``."""
        metrics = {"fp_per_24h": self.false_detections / (self.seconds / 86400) if self.seconds else 0.0}
        if self.events:
            metrics["sensitivity"] = self.hits / self.events
        if self.hits + self.false_detections:
            metrics["precision"] = self.hits / (self.hits + self.false_detections)
        if self.events + self.false_detections:
            metrics["f1"] = 2 * self.hits / (2 * self.hits + self.false_detections + self.events - self.hits)
        return metrics


def score_events(found: list[tuple[float, float]], truth: list[tuple[float, float]], seconds: float) -> EventCounts:
    """One video's detections ``found`` against its ``truth`` (both ``(start, end)`` in seconds) by SzCORE's rule."""
    samples = max(1, int(round(seconds * LABEL_HZ)))
    clip = [(max(0.0, s), min(seconds, e)) for s, e in found if min(seconds, e) > max(0.0, s)]
    scoring = EventScoring(Annotation(list(truth), LABEL_HZ, samples), Annotation(clip, LABEL_HZ, samples))
    return EventCounts(int(scoring.refTrue), int(scoring.tp), int(scoring.fp), seconds)
