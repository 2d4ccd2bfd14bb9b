"""The files of a trace: ``trace.csv``, ``events.json``, ``trace.png`` and, on request, an overlay video.

None of them holds a pixel of the video, its file name or its path, so all but the overlay may be shared
with a tracking server; the overlay (the video itself, with the mask drawn) stays on this machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from pycocotools import mask as mask_util  # noqa: E402

from seizure_mlflow.motion.analyser import DETECTED  # noqa: E402
from seizure_mlflow.motion.pipeline import TraceResult  # noqa: E402

TRACE_CSV = "trace.csv"
EVENTS_JSON = "events.json"
TRACE_PNG = "trace.png"
OVERLAY = "overlay.mp4"
COLUMNS = ("frame", "time", "patient_found", "motion_inside", "motion_outside", "motion_frame", "area", "area_rel",
           "displacement", "mask_change", "camera_dx", "camera_dy", "camera_inliers", "camera_fitted", "mask_from",
           "redetect", "carry_agreement", "band_power", "rhythm_index", "dominant_hz")


def events_document(result: TraceResult, method: str, truth: list[tuple[float, float]] | None = None) -> dict:
    settings = result.settings
    document = {
        "fps": result.fps, "seconds": round(result.seconds, 3), "frames": len(result.table),
        "region": result.region, "method": method,
        "settings": {"window_s": settings.window_s, "step_s": settings.step_s, "band_hz": list(settings.band),
                     "total_hz": list(settings.total), "threshold": settings.threshold,
                     "min_duration_s": settings.min_duration_s, "merge_gap_s": settings.merge_gap_s},
        "patient_found_fraction": round(float(result.table["patient_found"].mean()), 4),
        "detected_fraction": round(float((result.table["mask_from"] == DETECTED).mean()), 4),
        "max_index": _max_index(result),
        "events": [i.as_dict() for i in result.intervals],
    }
    if result.warning:
        document["warning"] = result.warning
    if truth is not None:
        document["truth"] = [{"start": a, "end": b} for a, b in truth]
        document["scores"] = result.score(truth).as_dict()
    return document


def _max_index(result: TraceResult) -> float | None:
    index = result.windows.index
    return round(float(np.nanmax(index)), 4) if np.isfinite(index).any() else None


def write_trace(result: TraceResult, folder: Path, method: str, truth: list[tuple[float, float]] | None = None) -> dict:
    """Write trace.csv, events.json and trace.png into ``folder``; return the events document."""
    folder.mkdir(parents=True, exist_ok=True)
    result.table.loc[:, list(COLUMNS)].to_csv(folder / TRACE_CSV, index=False, float_format="%.5g")
    document = events_document(result, method, truth)
    (folder / EVENTS_JSON).write_text(json.dumps(document, indent=2))
    plot_trace(result, folder / TRACE_PNG, truth)
    return document


def plot_trace(result: TraceResult, path: Path, truth: list[tuple[float, float]] | None = None) -> None:
    """Stacked panels on one time axis: motion inside vs outside the patient, area, displacement, the
    rhythm index with its threshold and intervals, and the spectrogram of the analysed motion."""
    table, settings = result.table, result.settings
    time = table["time"].to_numpy()
    fig, axes = plt.subplots(5, 1, figsize=(11, 11), sharex=True,
                             gridspec_kw={"height_ratios": [2, 1, 1, 1.6, 1.8]})
    ax = axes[0]
    ax.plot(time, table["motion_inside"], lw=0.8, color="tab:red", label="inside the patient")
    ax.plot(time, table["motion_outside"], lw=0.8, color="tab:blue", alpha=0.8, label="outside (caregivers, background)")
    ax.set_ylabel("motion\n(px/frame)")
    ax.legend(loc="upper right", fontsize=8)
    missing = table["patient_found"].to_numpy() == 0
    if missing.any():
        ax.fill_between(time, 0, 1, where=missing, transform=ax.get_xaxis_transform(), color="0.7", alpha=0.5,
                        step="mid", label="patient not found")
    axes[1].plot(time, table["area_rel"], lw=0.8, color="tab:purple")
    axes[1].set_ylabel("area /\nmedian")
    axes[2].plot(time, table["displacement"], lw=0.8, color="tab:green")
    axes[2].set_ylabel("centroid shift\n/ √area")
    ax = axes[3]
    ax.plot(result.windows.centres, result.windows.index, color="black", lw=1.2, label=f"rhythm index ({result.region})")
    ax.axhline(settings.threshold, color="tab:orange", ls="--", lw=1, label=f"threshold {settings.threshold:g}")
    for k, interval in enumerate(result.intervals):
        ax.axvspan(interval.start, interval.end, color="tab:orange", alpha=0.25,
                   label="candidate interval" if k == 0 else None)
    for k, (start, end) in enumerate(truth or []):
        ax.axvspan(start, end, ymin=0.9, ymax=1.0, color="tab:red", alpha=0.7, label="true seizure" if k == 0 else None)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"P({settings.band[0]:g}-{settings.band[1]:g} Hz) /\nP({settings.total[0]:g}-{settings.total[1]:g} Hz)")
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[4]
    shown = (result.windows.frequencies >= settings.total[0]) & (result.windows.frequencies <= settings.total[1])
    power = result.windows.power[:, shown]
    if len(power) and np.isfinite(power).any():
        step = settings.step_s
        extent = (result.windows.centres[0] - step / 2, result.windows.centres[-1] + step / 2,
                  result.windows.frequencies[shown][0], result.windows.frequencies[shown][-1])
        with np.errstate(divide="ignore", invalid="ignore"):
            decibels = 10 * np.log10(power.T)
        ax.imshow(decibels, aspect="auto", origin="lower", extent=extent, cmap="magma")
    for edge in settings.band:
        ax.axhline(edge, color="white", lw=0.6, ls=":")
    ax.set_ylabel("frequency (Hz)")
    ax.set_xlabel("time (s)")
    axes[0].set_title(f"Motion trace ({result.seconds:.0f} s at {result.fps:g} frames/s): "
                      f"{len(result.intervals)} candidate interval(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_overlay(video: Path, result: TraceResult, path: Path) -> None:
    """The video (at the analysed frames) with the patient's mask tinted and the running rhythm index."""
    from seizure_mlflow.data.video import VideoWriter, iter_frames

    frames, _, _ = iter_frames(video, accept_short=True)  # trace has read it already, and said so if it was short
    wanted = dict(zip(result.table["frame"].tolist(), range(len(result.table))))
    index = result.table["rhythm_index"].to_numpy()
    with VideoWriter(path, result.fps) as writer:
        for frame, _, bgr in frames:
            row = wanted.get(frame)
            if row is None:
                continue
            rle = result.patient_rles[row] if result.patient_rles else None
            if rle is not None:
                mask = mask_util.decode(rle).astype(bool)
                bgr[mask] = (0.55 * bgr[mask] + 0.45 * np.array((60, 60, 230))).astype(np.uint8)
            alarm = any(i.start <= result.table["time"].iat[row] <= i.end for i in result.intervals)
            label = "rhythm index " + ("-" if np.isnan(index[row]) else f"{index[row]:.2f}")
            cv2.putText(bgr, label, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (0, 0, 255) if alarm else (255, 255, 255), 1, cv2.LINE_AA)
            writer.write(bgr[:, :, ::-1])


THRESHOLD_CSV = "threshold_curve.csv"
THRESHOLD_PNG = "threshold_curve.png"


def write_threshold_curve(curve, folder: Path, run_threshold: float, chosen: float | None) -> None:
    """``threshold_curve.csv`` and ``threshold_curve.png``: sensitivity against false alarms per hour, one point
    per threshold, the run's threshold and the chosen one marked."""
    curve.to_csv(folder / THRESHOLD_CSV, index=False, float_format="%.5g")
    fig, (ax, by) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax.plot(curve["false_alarms_per_hour"], curve["sensitivity"], marker=".", color="black", lw=1)
    for label, threshold, colour in (("this run", run_threshold, "tab:orange"), ("chosen", chosen, "tab:green")):
        row = curve[curve["threshold"] == threshold]
        if threshold is not None and len(row):
            ax.scatter(row["false_alarms_per_hour"], row["sensitivity"], s=80, color=colour, zorder=3,
                       label=f"{label}: threshold {threshold:g}")
    ax.set_xlabel("false alarms per hour")
    ax.set_ylabel("sensitivity")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("sensitivity against false alarms (one point per threshold)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    by.plot(curve["threshold"], curve["sensitivity"], color="tab:red", label="sensitivity")
    by.set_xlabel("rhythm index threshold")
    by.set_ylabel("sensitivity")
    by.set_ylim(-0.02, 1.02)
    twin = by.twinx()
    twin.plot(curve["threshold"], curve["false_alarms_per_hour"], color="tab:blue", label="false alarms per hour")
    twin.set_ylabel("false alarms per hour")
    by.set_title("both against the threshold")
    fig.tight_layout()
    fig.savefig(folder / THRESHOLD_PNG, dpi=100)
    plt.close(fig)
