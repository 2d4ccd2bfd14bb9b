"""Each analysed frame's people, patient and motion: the detector on every K-th frame, masks carried in between.

:class:`FrameAnalyser` takes the analysed frames of one video (or of a segment of it) in order, in lists, and for
each frame gives a :class:`FrameRecord`. Which frames are detected follows :class:`~.carry.CarryRules`: the frames
numbered ``0, K, 2K...`` from the video's first analysed frame (one batched call of the source per list), plus any
frame where carrying is not trusted. With ``K = 1`` every frame is detected and the signals are exactly those of
detecting each frame.

Expects its ``source``, ``track`` and ``meter`` fresh (first frame of a video or a segment) and used by nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seizure_mlflow.motion.carry import CarryRules
from seizure_mlflow.motion.patient_track import PatientTrack, TrackedFrame, mask_iou
from seizure_mlflow.motion.signals import FrameMeasure, MotionMeter, _anyone

DETECTED, CARRIED = "detected", "carried"


@dataclass(frozen=True)
class FrameRecord:
    tracked: TrackedFrame
    measure: FrameMeasure
    mask_from: str  # DETECTED or CARRIED
    redetect: str  # why a frame off the schedule was detected: "area", "camera", "agreement", "start"; "" otherwise
    agreement: float  # at a scheduled detection after carried frames: IoU of the carried patient with the detected one

    @property
    def values(self) -> dict:
        return {**self.measure.values, "mask_from": self.mask_from, "redetect": self.redetect,
                "carry_agreement": self.agreement}


class FrameAnalyser:
    def __init__(self, source, track: PatientTrack, meter: MotionMeter, rules: CarryRules = CarryRules()) -> None:
        self.source, self.track, self.meter, self.rules = source, track, meter, rules
        self._detected_area: float | None = None  # the patient's area at the last detection
        self._detect_until = -1  # frames numbered below this are detected (after a poor agreement)
        self._carried_last = False

    def analyse(self, frames: list[tuple[int, int, np.ndarray]]) -> list[FrameRecord]:
        """``frames``: ``(number, index, bgr)`` in order, ``number`` counting analysed frames from the video's first."""
        every = self.rules.every
        people_of = self._detect([f for f in frames if f[0] % every == 0 or f[0] < self._detect_until])
        reasons: dict[int, str] = {}
        records = []
        for number, index, bgr in frames:
            people = people_of.get(number)
            if people is None:
                record, reason = self._carry(bgr)
                if record is not None:
                    records.append(record)
                    continue
                people, reasons[number] = self._detect([(number, index, bgr)])[number], reason
            record = self._detected(bgr, people, reasons.get(number, ""))
            records.append(record)
            if record.agreement < self.rules.min_agreement:
                self._detect_until = (number // every + 1) * every
                later = [f for f in frames if number < f[0] < self._detect_until and f[0] not in people_of]
                people_of.update(self._detect(later))
                reasons.update({f[0]: "agreement" for f in later})
        return records

    def _detect(self, frames: list[tuple[int, int, np.ndarray]]) -> dict[int, list]:
        if not frames:
            return {}
        return dict(zip((f[0] for f in frames), self.source([(index, bgr) for _, index, bgr in frames])))

    def _detected(self, bgr: np.ndarray, people: list, reason: str) -> FrameRecord:
        tracked = self.track.update(people, bgr.shape[:2])
        self.meter.look(bgr, _anyone(tracked.patient, tracked.others))
        agreement = np.nan
        if self._carried_last:
            carried = self.meter.carried()
            if carried is not None and (carried.patient is not None or tracked.patient is not None):
                moved = self.meter.full_size(carried.patient, bgr.shape[:2])
                agreement = mask_iou(moved, tracked.patient) if moved is not None and tracked.patient is not None else 0.0
        measure = self.meter.finish(tracked)
        self._detected_area = float(np.count_nonzero(tracked.patient)) if tracked.patient is not None else None
        self._carried_last = False
        return FrameRecord(tracked, measure, DETECTED, reason, agreement)

    def _carry(self, bgr: np.ndarray) -> tuple[FrameRecord | None, str]:
        """The frame with the previous frame's masks carried into it, or ``(None, why not)``."""
        self.meter.look(bgr, None)
        carried = self.meter.carried()
        if carried is None:
            return None, "start"
        if not carried.camera_fitted:
            return None, "camera"
        if self._detected_area is not None and (
                carried.patient is None or not self.rules.area_trusted(carried.patient_area, self._detected_area)):
            return None, "area"  # the patient's mask shrank, grew or was lost while carried
        shape = bgr.shape[:2]
        tracked = self.track.carry(self.meter.full_size(carried.patient, shape), self.meter.full_size(carried.others, shape))
        self._carried_last = True
        return FrameRecord(tracked, self.meter.finish(tracked, carried), CARRIED, "", np.nan), ""
