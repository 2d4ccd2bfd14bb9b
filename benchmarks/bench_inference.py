"""Inference latency per image: the registered model through MLflow's pyfunc vs Detectron2's ``DefaultPredictor``
on the same weights, and over REST (``mlflow models serve``, one image per request).

A small model is trained and registered first (the demo config, ``--max-iter`` iterations, sample data), so
that all three paths load exactly the same weights. Per image: the median of ``--images`` sample frames, after
``--warmup`` untimed calls. Prints a table and writes benchmarks/results/inference.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from results import print_table, private_store, write_results  # benchmarks/results.py


def per_image(call, inputs: list, warmup: int) -> float:
    for item in inputs[:warmup]:
        call(item)
    seconds = []
    for item in inputs:
        started = time.perf_counter()
        call(item)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def serve(model_uri: str, tracking_uri: str, root: Path):
    from helpers.servers import free_port, wait_until_answers

    port = free_port()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen([mlflow, "models", "serve", "-m", model_uri, "--env-manager", "local", "--host",
                             "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=root,
                            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,  # its uvicorn is beside python
                                 "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
                            start_new_session=True)
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/ping", proc, root / "serve.log")
    except RuntimeError:
        proc.kill()
        raise
    return proc, f"http://127.0.0.1:{port}/invocations"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iter", type=int, default=50)
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/inference.json")
    args = parser.parse_args()
    logging.getLogger("detectron2").setLevel(logging.WARNING)

    import cv2
    import mlflow
    import pandas as pd
    from detectron2.engine import DefaultPredictor

    from seizure_mlflow.config import TrainParams
    from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, write_sample_dataset
    from seizure_mlflow.commands.train import run_training

    with tempfile.TemporaryDirectory() as tmp, private_store(Path(tmp)) as uri:
        root = Path(tmp)
        data = sample_paths(write_sample_dataset(root / "data", SampleSpec()))
        result = run_training(TrainParams(train_json=data["train"][0], train_images=data["train"][1],
                                          val_json=data["val"][0], val_images=data["val"][1], max_iter=args.max_iter,
                                          eval_period=args.max_iter, device="cpu", system_metrics=False,
                                          val_max_images="0", output_dir=str(root / "out"), model_name="bench"))
        model_uri = f"models:/bench/{result.model_version}"
        images = json.loads(Path(data["test"][0]).read_text())["images"]
        paths = [Path(data["test"][1]) / image["file_name"] for image in images][:args.images]
        encoded = [p.read_bytes() for p in paths]
        frames = [cv2.imread(str(p)) for p in paths]

        pyfunc = mlflow.pyfunc.load_model(model_uri)
        pyfunc_s = per_image(lambda png: pyfunc.predict(pd.DataFrame({"image": [png]})), encoded, args.warmup)

        from seizure_mlflow.registry.uris import detector_from_uri

        detector = detector_from_uri(model_uri)
        cfg = detector.cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = str(root / "out" / "model_best.pth")
        predictor = DefaultPredictor(cfg)
        default_s = per_image(predictor, frames, args.warmup)

        proc, url = serve(model_uri, uri, root)
        try:
            def post(png: bytes) -> None:
                body = json.dumps({"dataframe_split": {"columns": ["image"],
                                                       "data": [[base64.b64encode(png).decode()]]}}).encode()
                request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as response:
                    response.read()
            rest_s = per_image(post, encoded, args.warmup)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    rows = [{"path": "Detectron2 DefaultPredictor (same weights)", "ms_per_image": round(default_s * 1000, 1)},
            {"path": "registered model, pyfunc predict", "ms_per_image": round(pyfunc_s * 1000, 1)},
            {"path": "REST, mlflow models serve (one image per request)", "ms_per_image": round(rest_s * 1000, 1)}]
    for row in rows:
        row["vs_DefaultPredictor"] = f"{row['ms_per_image'] / rows[0]['ms_per_image']:.2f}x"
    print(f"\n{len(paths)} sample frames (192x144), the demo R18-FPN, CPU; median per image")
    print_table(rows)
    write_results(args.out, {"images": len(paths), "rows": rows})


if __name__ == "__main__":
    main()
