"""`trace`: from a video and masks (true ones, or a registered model's) to the patient's motion trace,
rhythm index, candidate seizure intervals and their scores."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import REPO, private_tracking_store, venv_env
from seizure_mlflow.cli import main
from seizure_mlflow.sample.scenes import TraceSpec, write_trace_sample
from seizure_mlflow.data.video import write_video
from seizure_mlflow.motion.rhythm import (Interval, RhythmSettings, band_envelope, candidate_intervals, rhythm_windows,
                                          score_intervals)
from seizure_mlflow.motion.carry import CarryRules
from seizure_mlflow.motion.patient_track import Instance, PatientTrack
from seizure_mlflow.motion.pipeline import (TraceOptions, check_traceable, finish_trace, join_measured, measure_frames,
                                            trace_video)
from seizure_mlflow.motion.sources import TrueMaskSource

FPS = 25.0


# --------------------------------------------------------------------------------------------- rhythm


def _oscillation(seconds: float, episode: tuple[float, float], frequency: float, seed: int = 0) -> np.ndarray:
    """Signed components (frames x 6): noise, plus a limb oscillating at ``frequency`` during ``episode``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FPS)) / FPS
    components = rng.normal(0, 0.05, (len(t), 6))
    inside = (t >= episode[0]) & (t < episode[1])
    components[inside, 2] += np.cos(2 * np.pi * frequency * t[inside])  # velocity of a sinusoidal movement
    components[inside, 4] -= 0.7 * np.cos(2 * np.pi * frequency * t[inside])
    return components


@pytest.mark.parametrize("frequency", [2.5, 4.0, 5.5])
def test_rhythm_index_finds_an_episode_its_frequency_and_its_bounds(frequency):
    settings = RhythmSettings()
    components = _oscillation(40, (12.0, 22.0), frequency)
    windows = rhythm_windows(components, np.ones(len(components), bool), FPS, settings)
    intervals = candidate_intervals(windows, settings, band_envelope(components, FPS, settings), FPS)
    assert len(intervals) == 1
    (found,) = intervals
    assert abs(found.dominant_hz - frequency) <= 0.5
    assert abs(found.start - 12.0) <= 1.0 and abs(found.end - 22.0) <= 1.0
    assert found.peak_index > 0.8
    calm = windows.index[(windows.centres < 9) | (windows.centres > 25)]
    assert calm.max() < settings.threshold  # noise spreads over the whole band


def test_rhythm_outside_the_band_and_short_bursts_raise_nothing():
    settings = RhythmSettings()
    slow = _oscillation(40, (10.0, 30.0), 1.0)  # slow, non-clonic movement
    fast = _oscillation(40, (10.0, 30.0), 9.0)
    burst = _oscillation(40, (20.0, 21.0), 4.0)  # shorter than the 2 s minimum
    for components in (slow, fast, burst):
        windows = rhythm_windows(components, np.ones(len(components), bool), FPS, settings)
        assert candidate_intervals(windows, settings, band_envelope(components, FPS, settings), FPS) == []


def test_windows_where_the_patient_is_missing_have_no_index():
    settings = RhythmSettings()
    components = _oscillation(40, (12.0, 22.0), 4.0)
    found = np.ones(len(components), bool)
    found[int(14 * FPS):int(20 * FPS)] = False
    windows = rhythm_windows(components, found, FPS, settings)
    half = settings.window_s / 2
    missing = np.clip(np.minimum(windows.centres + half, 20) - np.maximum(windows.centres - half, 14), 0, None)
    mostly_missing = missing / settings.window_s > settings.max_gap_fraction + 0.01
    assert np.isnan(windows.index[mostly_missing]).all()
    assert not np.isnan(windows.index[missing / settings.window_s < settings.max_gap_fraction - 0.01]).any()


def test_slow_videos_narrow_the_band_and_too_slow_ones_are_refused():
    settings, warning = RhythmSettings().for_frame_rate(15)
    assert settings.total[1] < 7.5 and "narrowed" in warning
    assert RhythmSettings().for_frame_rate(25) == (RhythmSettings(), None)
    from seizure_mlflow.errors import UserError

    with pytest.raises(UserError, match="cannot show rhythm up to 6 Hz"):
        RhythmSettings().for_frame_rate(10)


def test_scores_count_detections_false_alarms_and_latency():
    def found(start, end):
        return Interval(start, end, 0.9, 4.0, alarm_at=start + 4)

    scores = score_intervals([found(10, 20), found(50, 55)], truth=[(11, 19), (30, 35)], seconds=1800)
    assert (scores.events, scores.detected, scores.false_alarms) == (2, 1, 1)
    assert scores.sensitivity == 0.5 and scores.false_alarms_per_hour == 2.0
    assert scores.latencies == (3.0, None)


def _traced(components: np.ndarray, settings: RhythmSettings = RhythmSettings()):
    """What the threshold sweep reads of a traced video: its windows, envelope, settings and length."""
    from types import SimpleNamespace

    windows = rhythm_windows(components, np.ones(len(components), bool), FPS, settings)
    table = pd.DataFrame({"band_power": band_envelope(components, FPS, settings)})
    return SimpleNamespace(windows=windows, table=table, settings=settings, fps=FPS, seconds=len(components) / FPS)


def test_one_pass_scores_every_threshold_and_the_chosen_one_sits_between_alarm_and_episode():
    from seizure_mlflow.motion import thresholds
    from seizure_mlflow.motion.thresholds import ThresholdSweep, choose_threshold

    components = _oscillation(60, (10.0, 20.0), 4.0)  # a strong rhythm: the true episode
    t = np.arange(len(components)) / FPS
    weak = (t >= 40) & (t < 46)  # a weak rhythm elsewhere: a false alarm at low thresholds only
    components[weak, 2] += 0.12 * np.cos(2 * np.pi * 3.0 * t[weak])
    video = _traced(components)
    sweep = ThresholdSweep(also=0.6)
    sweep.add(video, [(10.0, 20.0)])
    curve = sweep.curve()
    assert len(curve) == len(thresholds.THRESHOLDS) and 0.6 in set(curve["threshold"])
    strict = choose_threshold(curve)
    assert strict.sensitivity == 1.0 and strict.false_alarms_per_hour == 0
    at_zero = curve[(curve["false_alarms"] == 0) & (curve["sensitivity"] == 1.0)]["threshold"]
    assert strict.threshold == sorted(at_zero)[(len(at_zero) - 1) // 2]  # the middle of the thresholds that tie
    alarms_below = curve[curve["false_alarms"] > 0]["threshold"]
    assert len(alarms_below), "the weaker rhythm should raise an alarm at the lowest thresholds"
    assert strict.threshold > alarms_below.max()
    loose = choose_threshold(curve, target_false_alarms_per_hour=1000)
    assert loose.threshold < strict.threshold and loose.sensitivity == 1.0
    weakest = sweep.weakest_detection(strict.threshold)
    assert weakest is not None and weakest > strict.threshold


def test_szcore_scores_by_its_own_tolerances_where_the_package_rule_is_strict():
    from seizure_mlflow.motion.szcore import score_events

    late = [Interval(40.0, 45.0, 0.9, 4.0, alarm_at=44.0)]  # starts 20 s after the seizure ended
    own = score_intervals(late, truth=[(11.0, 20.0)], seconds=600)
    assert (own.detected, own.false_alarms) == (0, 1)
    szcore = score_events([(40.0, 45.0)], [(11.0, 20.0)], 600).as_metrics()  # within SzCORE's 60 s after the end
    assert szcore["sensitivity"] == 1.0 and szcore["precision"] == 1.0 and szcore["fp_per_24h"] == 0
    far = score_events([(200.0, 205.0)], [(11.0, 20.0)], 600).as_metrics()
    assert far["sensitivity"] == 0 and far["fp_per_24h"] == pytest.approx(86400 / 600)


# --------------------------------------------------------------------------------------------- tracking


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[1]) ** 2 + (xx - centre[0]) ** 2 <= radius ** 2


def test_track_follows_the_patient_by_overlap_not_by_score_and_marks_gaps():
    shape = (60, 80)
    track = PatientTrack(min_score=0.5)
    bed = _disc(shape, (30, 30), 10)
    first = track.update([Instance("patient", 0.9, bed)], shape)
    assert first.patient is not None and first.patient.sum() == bed.sum()
    visitor = _disc(shape, (65, 30), 8)  # a second "patient"-class instance, scoring higher, elsewhere
    nurse = _disc(shape, (38, 30), 5)
    second = track.update([Instance("patient", 0.99, visitor), Instance("patient", 0.7, _disc(shape, (31, 30), 10)),
                           Instance("caregiver", 0.95, nurse)], shape)
    assert second.patient[30, 25] and not second.patient[30, 65]
    assert not (second.patient & nurse).any()  # other people are excluded from the patient
    assert second.others[30, 65] and second.others[30, 38]
    assert track.update([Instance("caregiver", 0.95, nurse)], shape).patient is None  # a gap, not a guess


# --------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 6 s, 25 frames/s clip of the trace scene, with its true masks (trace_00's first seconds)."""
    root = tmp_path_factory.mktemp("clip")
    sample = write_trace_sample(root / "sample", TraceSpec(num_videos=1, seconds=30, width=96, height=72))
    import av

    with av.open(str(sample / "videos" / "trace_00.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(150), container.decode(video=0))]
    write_video(root / "clip.mp4", frames, fps=FPS)
    masks = json.loads((sample / "masks" / "trace_00.json").read_text())
    keep = {im["id"] for im in masks["images"] if im["frame_id"] < 150}
    masks["images"] = [im for im in masks["images"] if im["id"] in keep]
    masks["annotations"] = [a for a in masks["annotations"] if a["image_id"] in keep]
    (root / "clip.json").write_text(json.dumps(masks))
    other_camera = {**masks, "images": [{**im, "width": 160, "height": 120} for im in masks["images"]]}
    (root / "other_camera.json").write_text(json.dumps(other_camera))
    other_night = {**masks, "images": [{**im, "frame_id": im["frame_id"] + 150} for im in masks["images"]]}
    (root / "other_night.json").write_text(json.dumps(other_night))
    no_patient = {**masks, "annotations": [a for a in masks["annotations"] if a["category_id"] != 1]}
    (root / "no_patient.json").write_text(json.dumps(no_patient))
    write_video(root / "short.mp4", frames[:50], fps=FPS)
    write_video(root / "whole.mkv", frames, fps=FPS)
    data = (root / "whole.mkv").read_bytes()
    (root / "cut.mkv").write_bytes(data[: len(data) * 9 // 10])  # a copy interrupted: the header says 6 s
    (root / "broken.mp4").write_bytes(b"this is not a video")
    return root


def _trace(*args: str) -> int:
    return main(["trace", "--no-mlflow", *args])


def test_trace_of_a_clip_with_true_masks_writes_its_files(clip, tmp_path):
    out = tmp_path / "out"
    assert _trace("--input", str(clip / "clip.mp4"), "--masks", str(clip / "clip.json"), "--output", str(out),
                  "--overlay") == 0
    assert sorted(p.name for p in out.iterdir()) == [".seizure-mlflow-output", "events.json", "overlay.mp4", "trace.csv", "trace.png"]
    from seizure_mlflow.data.video import frame_count

    assert frame_count(out / "overlay.mp4") == 150
    table = pd.read_csv(out / "trace.csv")
    assert len(table) == 150 and table["patient_found"].all()
    assert {"motion_inside", "motion_outside", "area_rel", "displacement", "mask_change", "rhythm_index"} <= set(table)
    assert (table.loc[table["frame"] % 10 == 0, "mask_from"] == "detected").all()  # the default: every 10th frame
    assert (table["mask_from"] == "carried").mean() > 0.8


@pytest.mark.slow  # a fresh process (imports torch and Detectron2): 8 s
def test_the_serial_trace_never_imports_ray(clip, tmp_path):
    """Ray is an optional extra: a trace without --engine ray runs, and never imports it, where Ray is installed."""
    import sys

    code = ("import sys; from seizure_mlflow.cli import main; "
            f"rc = main(['trace', '--no-mlflow', '--input', {str(clip / 'clip.mp4')!r}, '--masks', "
            f"{str(clip / 'clip.json')!r}, '--output', {str(tmp_path / 'out')!r}]); "
            "print('imported:', sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=venv_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported: []" in done.stdout, done.stdout[-500:]
    assert (tmp_path / "out" / "events.json").is_file()


def test_frame_difference_is_the_cheap_option(clip, tmp_path):
    out = tmp_path / "out"
    assert _trace("--input", str(clip / "clip.mp4"), "--masks", str(clip / "clip.json"), "--output", str(out),
                  "--method", "diff") == 0
    assert json.loads((out / "events.json").read_text())["method"] == "diff"
    table = pd.read_csv(out / "trace.csv")
    assert table["motion_inside"].iloc[1:].notna().all() and table["motion_frame"].iloc[1:].sum() > 0


@pytest.mark.parametrize("case, message", [
    (["--input", "{clip}/broken.mp4", "--masks", "{clip}/clip.json"], "broken.mp4: cannot read this video"),
    (["--input", "{clip}/short.mp4", "--masks", "{clip}/clip.json"], "shorter than one 4 s window"),
    (["--input", "{clip}/clip.mp4", "--masks", "{clip}/no_patient.json"], "the patient was found in 0 of 150 frames"),
    (["--input", "{clip}/clip.mp4", "--masks", "{clip}/clip.json", "--truth", "{clip}/clip.json"], "has no entry for ['clip']"),
    (["--input", "{clip}/clip.mp4", "--masks", "{clip}/clip.json", "--threshold", "1.5"], "--threshold: must be between 0 and 1"),
    (["--input", "{clip}/clip.mp4", "--masks", "{clip}/clip.json", "--fps", "30"], "above the frame rate"),
    (["--input", "{clip}/clip.mp4", "--masks", "{clip}/missing.json"], "--masks:"),
    (["--input", "{clip}/cut.mkv", "--masks", "{clip}/clip.json"], "cut.mkv ended after "),
    (["--input", "{clip}/clip.mp4", "--masks", "{clip}/clip.json", "--fps", "nan"], "--fps: must be a finite number"),
    (["--input", "{clip}/clip.mp4", "--masks", "{clip}/clip.json", "--target-false-alarms-per-hour", "1"],
     "--target-false-alarms-per-hour: needs --truth"),
    (["--input", "{clip}/clip.mp4", "--masks", "{clip}/other_camera.json"], "are these the masks of another video?"),
    (["--input", "{clip}/clip.mp4", "--masks", "{clip}/other_night.json"], "frame_id 299 is outside"),
    (["--input", "{clip}/clip.mp4", "--masks", "{clip}/clip.json", "--engine", "ray", "--ray-address", "127.0.0.1:9"],
     "--ray-address: nothing answers at 127.0.0.1:9"),
    (["--input", "{clip}/clip.mp4", "--masks", "{clip}/clip.json", "--engine", "ray", "--ray-address", "head-node"],
     "--ray-address: expected HOST:PORT"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(clip, tmp_path, capsys, case, message):
    out = tmp_path / "out"
    assert _trace(*[a.format(clip=clip) for a in case], "--output", str(out)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written beside it either


def test_a_video_cut_short_is_traced_only_when_accepted_and_then_with_a_warning(clip, tmp_path, caplog):
    out = tmp_path / "out"
    assert _trace("--input", str(clip / "cut.mkv"), "--masks", str(clip / "clip.json"), "--output", str(out),
                  "--accept-short-video") == 0
    frames = len(pd.read_csv(out / "trace.csv"))
    assert 100 <= frames < 150
    assert f"cut.mkv ended after {frames / FPS:.1f} s of the 6.0 s its container declares" in caplog.text


def test_a_model_uri_that_does_not_exist_is_a_clear_error(clip, tracking, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["trace", "--model-uri", "models:/no-such-model@champion", "--input", str(clip / "clip.mp4"),
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--model-uri" in err and "no-such-model" in err
    assert not out.exists()
    assert MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()]) == []


def test_an_output_folder_with_files_is_never_overwritten(clip, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _trace("--input", str(clip / "clip.mp4"), "--masks", str(clip / "clip.json"), "--output", str(out)) == 2
    assert "is not an earlier output of trace" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------- the sample set


# --------------------------------------------------------------------------------------------- every K-th frame


class _CountingMasks(TrueMaskSource):
    """True masks that remember which frames they were asked for: the frames the detector would have seen."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.asked: list[int] = []

    def __call__(self, frames):
        self.asked += [index for index, _ in frames]
        return super().__call__(frames)


def _episode_video(clip: Path) -> tuple[Path, Path, list[tuple[float, float]]]:
    sample = clip / "sample"
    truth = json.loads((sample / "truth.json").read_text())["trace_00"]
    return sample / "videos" / "trace_00.mp4", sample / "masks" / "trace_00.json", [(e["start"], e["end"]) for e in truth]


def test_detecting_every_fifth_frame_carries_the_masks_between_and_scores_as_every_frame(clip):
    video, masks, truth = _episode_video(clip)
    every_frame = trace_video(video, TrueMaskSource(masks), TraceOptions(carry=CarryRules(every=1)))
    counted = _CountingMasks(masks)
    fifth = trace_video(video, counted, TraceOptions(carry=CarryRules(every=5)))

    assert fifth.score(truth).as_dict() | {"latency_s": None, "mean_latency_s": None} == \
        every_frame.score(truth).as_dict() | {"latency_s": None, "mean_latency_s": None}
    assert fifth.score(truth).detected == 1 and fifth.score(truth).false_alarms == 0
    assert len(fifth.intervals) == len(every_frame.intervals)
    for a, b in zip(fifth.intervals, every_frame.intervals):
        assert abs(a.start - b.start) <= 0.5 and abs(a.end - b.end) <= 0.5
    table = fifth.table
    scheduled = table["frame"] % 5 == 0
    assert (table.loc[scheduled, "mask_from"] == "detected").all()
    between = table[~scheduled]
    assert (between["mask_from"] == "carried").mean() > 0.9
    assert ((between["mask_from"] == "detected") == (between["redetect"] != "")).all()  # off schedule only with a why
    assert sorted(counted.asked) == sorted(table.loc[table["mask_from"] == "detected", "frame"])  # nothing else seen
    assert table["carry_agreement"].dropna().between(0.6, 1).all()


def test_a_video_measured_in_segments_joins_into_its_one_pass(clip):
    video, masks, _ = _episode_video(clip)
    options = TraceOptions(carry=CarryRules(every=5))
    whole = trace_video(video, TrueMaskSource(masks), options)
    settings, warning = check_traceable(video, options)
    parts = [measure_frames(video, TrueMaskSource(masks), options, first=first, stop=stop, progress=False)
             for first, stop in ((500, None), (0, 250), (250, 500))]
    joined = finish_trace(video, join_measured(parts), options, settings, warning)
    pd.testing.assert_frame_equal(joined.table, whole.table)
    assert np.array_equal(joined.windows.index, whole.windows.index, equal_nan=True)
    assert [i.as_dict() for i in joined.intervals] == [i.as_dict() for i in whole.intervals] != []
    with pytest.raises(ValueError, match="detection schedule"):
        measure_frames(video, TrueMaskSource(masks), options, first=252, stop=500, progress=False)
    with pytest.raises(RuntimeError, match="do not join"):  # the middle segment missing
        join_measured([parts[0], parts[1]])


@pytest.fixture(scope="module")
def trace_sample(tmp_path_factory) -> Path:
    return write_trace_sample(tmp_path_factory.mktemp("trace") / "sample", TraceSpec())


@pytest.mark.slow
def test_true_masks_find_every_episode_and_no_caregiver_only_alarm(trace_sample, tracking, tmp_path, monkeypatch):
    """The signal chain without the detector: every clonic episode found, at its frequency and time; the
    caregiver patting, walking and adjusting the blanket raise nothing on the patient, but do over the
    whole frame (the baseline). The patient's trace is recorded in MLflow: files and scores but no names; with
    --truth one pass scores every threshold (the rhythm index is computed once per video) and SzCORE's event
    scores, which on the sample traces agree with the package's own sensitivity."""
    from seizure_mlflow.motion import pipeline

    truth = json.loads((trace_sample / "truth.json").read_text())
    visits = json.loads((trace_sample / "visits.json").read_text())
    calls = []
    monkeypatch.setattr(pipeline, "rhythm_windows", lambda *a, **k: calls.append(1) or rhythm_windows(*a, **k))
    args = ["--input", str(trace_sample / "videos"), "--masks", str(trace_sample / "masks"),
            "--truth", str(trace_sample / "truth.json")]
    out = tmp_path / "out"
    assert main(["trace", *args, "--output", str(out)]) == 0  # recorded in MLflow
    assert len(calls) == 4, "the rhythm index must be computed once per video, for every threshold"
    assert _trace(*args, "--region", "frame", "--output", str(tmp_path / "frame")) == 0
    found = {region: {v: json.loads((folder / v / "events.json").read_text())["events"] for v in truth}
             for region, folder in (("patient", out), ("frame", tmp_path / "frame"))}
    for video, episodes in truth.items():
        events = found["patient"][video]
        assert len(events) == len(episodes), (video, events)
        for episode, event in zip(episodes, events):
            assert abs(event["dominant_hz"] - episode["frequency_hz"]) <= 0.5, (video, event, episode)
            assert abs(event["start"] - episode["start"]) <= 1.0 and abs(event["end"] - episode["end"]) <= 1.0
    pats = [(v, p) for v, vs in visits.items() for p in vs if p["kind"] == "pat"]
    assert pats
    false_on_frame = [e for v in truth for e in found["frame"][v]
                      if not any(e["start"] < t["end"] and e["end"] > t["start"] for t in truth[v])]
    assert false_on_frame, "the whole-frame baseline should be fooled by the caregiver"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scores"]["sensitivity"] == 1.0 and summary["scores"]["false_alarms"] == 0

    client = MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["sensitivity"] == 1.0 and metrics["false_alarms"] == 0
    assert metrics["videos"] == 4 and metrics["video_seconds"] == 160
    assert run.data.params["trace.source"] == "true_masks" and run.data.params["trace.method"] == "flow"
    artifacts = {f.path for d in client.list_artifacts(run.info.run_id) if d.is_dir
                 for f in client.list_artifacts(run.info.run_id, d.path)}
    assert artifacts == {f"video_{n:02d}/{name}" for n in range(1, 5) for name in ("trace.csv", "events.json", "trace.png")}
    assert {"threshold_curve.csv", "threshold_curve.png"} <= {f.path for f in client.list_artifacts(run.info.run_id)}

    curve = pd.read_csv(out / "threshold_curve.csv")
    assert len(curve) > 60
    at_run = curve[curve["threshold"] == 0.6].iloc[0]
    assert at_run["sensitivity"] == metrics["sensitivity"] and at_run["false_alarms"] == metrics["false_alarms"]
    assert metrics["chosen_threshold"] in set(curve[(curve["false_alarms"] == 0)]["threshold"])
    assert metrics["threshold_margin"] == pytest.approx(metrics["weakest_detected_peak"] - 0.6, abs=1e-4) and metrics["threshold_margin"] > 0
    assert metrics["szcore/sensitivity"] == metrics["sensitivity"]
    assert metrics["szcore/precision"] == 1.0 and metrics["szcore/fp_per_24h"] == 0
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "downloaded")))
    recorded = " ".join([json.dumps(run.data.params), json.dumps(run.data.tags)] +
                        [p.read_text() for p in local.rglob("*") if p.suffix in (".csv", ".json")])
    for private in ("trace_0", str(trace_sample), str(tmp_path)):
        assert private not in recorded


@pytest.fixture(scope="module")
def camera_sample(tmp_path_factory) -> Path:
    # the first three scenes: shakes while the patient is still (in the third, who has no seizure, only those), and
    # shakes during and just before an episode
    return write_trace_sample(tmp_path_factory.mktemp("camera") / "sample", TraceSpec(num_videos=3, camera=True))


@pytest.mark.slow
def test_a_moving_camera_raises_nothing_once_its_motion_is_removed_and_episodes_are_still_found(camera_sample, tmp_path):
    """The sample camera shakes at 2-6 Hz while the patient lies still, pans, drifts, and shakes during an
    episode. Uncompensated, the shakes raise false alarms; compensated, every episode is found and nothing
    else is raised, and the motion removed (trace.csv) is the camera's."""
    from seizure_mlflow.sample.scenes import CameraMove

    truth = json.loads((camera_sample / "truth.json").read_text())
    camera = json.loads((camera_sample / "camera.json").read_text())
    args = ["--input", str(camera_sample / "videos"), "--masks", str(camera_sample / "masks"),
            "--truth", str(camera_sample / "truth.json"), "--no-mlflow"]
    assert _trace(*args, "--output", str(tmp_path / "raw"), "--no-camera-compensation") == 0
    raw = json.loads((tmp_path / "raw" / "summary.json").read_text())["scores"]
    assert raw["false_alarms"] > 0, "the shaking camera should fool the uncompensated trace: nothing to show"
    assert _trace(*args, "--output", str(tmp_path / "out")) == 0
    scores = json.loads((tmp_path / "out" / "summary.json").read_text())["scores"]
    assert scores["sensitivity"] == 1.0 and scores["false_alarms"] == 0, scores
    for video, moves in camera.items():
        table = pd.read_csv(tmp_path / "out" / video / "trace.csv")
        assert table["camera_fitted"].mean() > 0.9
        moves = [CameraMove(**m) for m in moves]
        offsets = np.array([[sum(m.offset(t)[k] for m in moves) for k in (0, 1)] for t in table["time"]])
        moving = np.linalg.norm(np.diff(offsets, axis=0), axis=1) > 0.3
        removed = table[["camera_dx", "camera_dy"]].to_numpy()[1:]
        both = moving & np.isfinite(removed).all(axis=1)
        correlation = np.corrcoef(np.diff(offsets, axis=0)[both].ravel(), removed[both].ravel())[0, 1]
        assert correlation > 0.9, (video, correlation)  # the motion removed is the camera's, frame by frame
    assert all(len(json.loads((tmp_path / "out" / v / "events.json").read_text())["events"]) == len(e)
               for v, e in truth.items())


# --------------------------------------------------------------------------------------------- with a model


@pytest.mark.slow
def test_a_model_trained_through_main_finds_the_seizures_a_shaking_camera_films_every_tenth_frame_as_every_frame(
        camera_sample, tmp_path):
    """End to end, with a model in place of the true masks: a detector trained through `prepare` and the training
    path of `main` on frames of the trace scenes (other videos than those traced), registered, then
    `mlflow run . -e trace` by its alias on the moving-camera sample at the default --detect-every: every episode,
    the one filmed while the camera shakes included, and no alarm on the shakes; uncompensated, the shakes raise
    one; and with the detector on every frame, the same scores."""
    from seizure_mlflow.commands.train import run_training
    from seizure_mlflow.config import TrainParams
    from seizure_mlflow.sample.scenes import write_trace_exports
    from seizure_mlflow.motion.carry import DEFAULT_DETECT_EVERY
    from seizure_mlflow.motion.sources import ModelSource
    from seizure_mlflow.registry.uris import detector_from_uri

    exports = write_trace_exports(tmp_path / "exports", {
        "still": TraceSpec(num_videos=4, seconds=30, seed=11), "cam": TraceSpec(num_videos=4, seconds=30, seed=12, camera=True)})
    prepared = tmp_path / "prepared"
    assert main(["prepare", "--input", str(exports), "--output", str(prepared), "--no-mlflow"]) == 0
    part = {name: (str(prepared / f"{name}.json"), str(prepared / "images")) for name in ("train", "val")}
    with private_tracking_store(tmp_path) as uri:
        run_training(TrainParams(train_json=part["train"][0], train_images=part["train"][1], val_json=part["val"][0],
                                 val_images=part["val"][1], max_iter=400, eval_period=400, device="cpu", seed=1,
                                 model_name="trace-detector", output_dir=str(tmp_path / "output"), system_metrics=False))
    out = tmp_path / "trace"
    done = subprocess.run(
        ["mlflow", "run", str(REPO), "-e", "trace", "--env-manager", "local", "--experiment-name", "trace-test",
         "-P", "model_uri=models:/trace-detector@champion", "-P", f"input={camera_sample / 'videos'}",
         "-P", f"output={out}", "-P", f"truth={camera_sample / 'truth.json'}"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env=venv_env(MLFLOW_TRACKING_URI=uri))
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads((out / "summary.json").read_text())["scores"]
    assert scores["events"] == 2 and scores["sensitivity"] == 1.0 and scores["false_alarms"] == 0, scores
    first = pd.read_csv(out / "trace_00" / "trace.csv")
    assert (first.loc[first["frame"] % DEFAULT_DETECT_EVERY == 0, "mask_from"] == "detected").all()
    assert (first["mask_from"] == "carried").mean() > 0.5 and first["patient_found"].mean() > 0.9
    with private_tracking_store(tmp_path):
        client = MlflowClient()
        (run,) = client.search_runs([client.get_experiment_by_name("trace-test").experiment_id])
        assert run.info.status == "FINISHED"
        assert run.data.params["trace.model_name"] == "trace-detector" and run.data.params["trace.model_version"] == "1"
        assert run.data.params["trace.detect_every"] == str(DEFAULT_DETECT_EVERY)
        assert {f.path for f in client.list_artifacts(run.info.run_id, "video_01")} == {
            "video_01/trace.csv", "video_01/events.json", "video_01/trace.png"}
        assert run.data.metrics["sensitivity"] == 1.0 and run.data.metrics["false_alarms"] == 0
        source = ModelSource(detector_from_uri("models:/trace-detector@champion"))

    video = camera_sample / "videos" / "trace_00.mp4"  # quiet shakes, and an episode filmed while the camera shakes
    truth = [(e["start"], e["end"]) for e in json.loads((camera_sample / "truth.json").read_text())["trace_00"]]
    shaken = trace_video(video, source, TraceOptions(compensate_camera=False))
    assert shaken.score(truth).false_alarms > 0, "the shakes should fool the uncompensated trace: nothing to show"
    every_frame = trace_video(video, source, TraceOptions(carry=CarryRules(every=1))).score(truth)
    tenth = trace_video(video, source, TraceOptions()).score(truth)
    assert (tenth.detected, tenth.false_alarms) == (every_frame.detected, every_frame.false_alarms) == (1, 0)


def _variable_rate_copy(video: Path, masks: Path, truth: list[dict], out: Path) -> tuple[Path, Path]:
    """``video`` as a variable-frame-rate Matroska file, as a webcam dropping frames writes it: every 3rd frame
    dropped outside the episodes (2 s around each), each kept frame at its original time; its masks renumbered."""
    from fractions import Fraction

    import av

    def in_episode(t: float) -> bool:
        return any(e["start"] - 2 <= t <= e["end"] + 2 for e in truth)

    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    kept = [i for i in range(len(frames)) if in_episode(i / FPS) or i % 3 != 2]
    path = out / f"{video.stem}.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=int(FPS))
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"qscale": "2"}
        for i in kept:
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            frame.pts, frame.time_base = round(i * 1000 / FPS), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    coco = json.loads(masks.read_text())
    new_index = {old: new for new, old in enumerate(kept)}
    coco["images"] = [{**im, "frame_id": new_index[im["frame_id"]]} for im in coco["images"] if im["frame_id"] in new_index]
    ids = {im["id"] for im in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    (out / f"{video.stem}.json").write_text(json.dumps(coco))
    return path, out / f"{video.stem}.json"


@pytest.mark.slow
def test_variable_frame_rate_video_keeps_its_times(trace_sample, tmp_path):
    """A third of the frames dropped between the episodes: the episodes are found at the times of the constant-rate
    original (trace times come from each frame's timestamp, not from its index over the average rate)."""
    truth = json.loads((trace_sample / "truth.json").read_text())["trace_00"]
    video, masks = _variable_rate_copy(trace_sample / "videos" / "trace_00.mp4", trace_sample / "masks" / "trace_00.json",
                                       truth, tmp_path)
    events = {}
    for name, (v, m) in {"constant": (trace_sample / "videos" / "trace_00.mp4", trace_sample / "masks" / "trace_00.json"),
                         "variable": (video, masks)}.items():
        assert _trace("--input", str(v), "--masks", str(m), "--output", str(tmp_path / name)) == 0
        events[name] = json.loads((tmp_path / name / "events.json").read_text())["events"]
    assert len(events["variable"]) == len(events["constant"]) == len(truth)
    for constant, variable in zip(events["constant"], events["variable"]):
        assert abs(constant["start"] - variable["start"]) <= 0.2 and abs(constant["end"] - variable["end"]) <= 0.2
    table = pd.read_csv(tmp_path / "variable" / "trace.csv")
    assert abs(table["time"].iloc[-1] - pd.read_csv(tmp_path / "constant" / "trace.csv")["time"].iloc[-1]) <= 0.1
