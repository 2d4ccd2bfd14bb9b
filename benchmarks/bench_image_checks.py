"""How fast the COCO validator checks frames before training: 20,000 small frames, headers read.

Writes `--frames` PNG frames (192x144, the sample data's size) and one COCO file naming them, then times
`check_coco` (records, paths kept inside the image folder, every frame's header: format and size) with the
header reads in 1 thread and in the default number of threads, side by side, plus a records-only pass
(`check_files=False`) for scale. Warm passes are repeated (best of 3); where this process may drop the page
cache (root on Linux), each threaded pass is also run once from a cold cache, as on first contact with a
data set. Prints a table and writes benchmarks/results/image_checks.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from results import write_results  # benchmarks/results.py
from seizure_mlflow.data import checks


def write_frames(root: Path, count: int, width: int = 192, height: int = 144) -> Path:
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "patient"}]}
    for k in range(count):
        name = f"video_{k // 600:03d}/frame_{k % 600:06d}.png"
        (images / name).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(images / name), frame)
        coco["images"].append({"id": k + 1, "file_name": name, "width": width, "height": height})
        coco["annotations"].append({"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [10, 10, 50, 40],
                                    "area": 2000.0, "iscrowd": 0, "segmentation": [[10, 10, 60, 10, 60, 50, 10, 50]]})
    path = root / "train.json"
    path.write_text(json.dumps(coco))
    return path


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def best_of(repeats: int, fn, cold: bool = False) -> float:
    times = []
    for _ in range(repeats):
        if cold:
            drop_page_cache()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--out", default="benchmarks/results/image_checks.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"writing {args.frames} frames ...", flush=True)
        coco = write_frames(root, args.frames)
        default_workers = checks.IMAGE_CHECK_WORKERS
        rows = []
        passes = [("records only (no files)", default_workers, False, False),
                  ("warm cache, 1 thread", 1, True, False),
                  (f"warm cache, {default_workers} threads", default_workers, True, False)]
        if drop_page_cache():
            passes += [("cold cache, 1 thread", 1, True, True),
                       (f"cold cache, {default_workers} threads", default_workers, True, True)]
        for label, workers, check_files, cold in passes:
            check_headers = checks.check_image_headers
            checks.check_image_headers = lambda frames, w=workers: check_headers(frames, workers=w)
            seconds = best_of(1 if cold else 3, lambda: checks.check_coco(coco, root / "images", check_files=check_files),
                              cold=cold)
            checks.check_image_headers = check_headers
            rows.append({"pass": label, "threads": workers, "seconds": round(seconds, 3),
                         "frames_per_second": round(args.frames / seconds)})
    print(f"{'pass (records + frame headers)':36} {'seconds':>8} {'frames/s':>10}")
    for r in rows:
        print(f"{r['pass']:36} {r['seconds']:8.2f} {r['frames_per_second']:10d}")
    write_results(args.out, {"frames": args.frames, "frame_size": "192x144 PNG", "rows": rows})


if __name__ == "__main__":
    main()
