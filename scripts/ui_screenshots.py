"""Screenshots of what users see in the MLflow UI, taken in a real browser (headless Chromium + Playwright).

    python scripts/ui_screenshots.py [--out docs/images] [--chromium /usr/bin/chromium]

Builds a tracking store with two short training runs on the synthetic sample data (different learning
rates, the second with a test set), registers their models, starts `mlflow server` on 127.0.0.1, and
saves PNGs of: the runs table, the chart comparison of train/val loss across both runs, a run's artifacts
with the loss plot, the model version page, and the experiment's Models tab ranked by validation loss.
It also writes `pages.json`: the visible text of each page, which the tests read. Nothing leaves this
machine: the store, the server and the browser are all local.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the one free-port and server-waiting helper (tests/helpers)
EXPERIMENT = "seizure-ui"
MODEL_NAME = "seizure-patient-detector"
PAGES = ("runs_table", "loss_charts", "run_artifacts", "model_version", "logged_models")
TINY_OPTS = ("MODEL.FPN.OUT_CHANNELS", "32", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
             "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "SOLVER.WARMUP_ITERS", "2")


def build_store(root: Path) -> dict:
    """Two short runs (lr 0.01 and 0.03) in experiment seizure-ui; the second evaluated on the test split."""
    import mlflow

    from seizure_mlflow.config import TrainParams
    from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, write_sample_dataset
    from seizure_mlflow.commands.train import run_training

    os.chdir(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(EXPERIMENT)
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"
    data = sample_paths(write_sample_dataset(root / "sample", SampleSpec(num_videos=5, frames_per_video=4, width=96,
                                                                         height=72, seed=3)))
    (tj, ti), (vj, vi), (sj, si) = data["train"], data["val"], data["test"]
    runs = []
    for k, lr in enumerate((0.01, 0.03)):
        test = dict(test_json=sj, test_images=si) if k == 1 else {}
        params = TrainParams(train_json=tj, train_images=ti, val_json=vj, val_images=vi, lr=lr, max_iter=30,
                             eval_period=5, min_size=64, device="cpu", seed=1, model_name=MODEL_NAME, opts=TINY_OPTS,
                             output_dir=str(root / f"out{k}"), **test)
        runs.append(run_training(params))
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    return {"uri": uri, "experiment_id": experiment.experiment_id, "runs": [r.run_id for r in runs],
            "versions": [r.model_version for r in runs], "aliases": [r.model_alias for r in runs]}


def start_server(uri: str, root: Path, port: int) -> subprocess.Popen:
    from helpers.servers import wait_until_answers

    mlflow = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port",
                               str(port), "--workers", "1"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                              stderr=open(root / "server.log", "w"))
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/health", server, root / "server.log", timeout_s=120)
    except RuntimeError as exc:
        server.kill()
        raise SystemExit(f"mlflow server did not start: {exc}") from None
    return server


def take_screenshots(base: str, store: dict, out: Path, chromium: str) -> dict[str, str]:
    """Visit each page in "Model training" mode with the assistant panel closed; screenshot it and keep its text."""
    from playwright.sync_api import sync_playwright

    exp, run_b = store["experiment_id"], store["runs"][1]
    mode = "workflowType=machine_learning"
    pages = {
        "runs_table": (f"{base}/#/experiments/{exp}/runs?{mode}", None),
        "loss_charts": (f"{base}/#/experiments/{exp}/runs?{mode}&compareRunsMode=CHART", _only_loss_charts),
        "run_artifacts": (f"{base}/#/experiments/{exp}/runs/{run_b}/artifactPath/plots/loss_curves.png?{mode}", None),
        "model_version": (f"{base}/#/models/{MODEL_NAME}/versions/{store['versions'][1]}?{mode}", None),
        "logged_models": (f"{base}/#/experiments/{exp}/models?{mode}", _only_validation_metrics),
    }
    texts = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        for name, (url, arrange) in pages.items():
            page.goto(url, wait_until="load")
            page.wait_for_timeout(5000)  # the UI keeps polling (no network idle); tables and charts render late
            _close_assistant(page)
            if arrange is not None:
                arrange(page)
                page.wait_for_timeout(2000)
            page.set_viewport_size({"width": 1600, "height": 1300 if name == "loss_charts" else 900})
            page.screenshot(path=str(out / f"ui_{name}.png"), full_page=name == "model_version")
            texts[name] = page.inner_text("body")
        browser.close()
    return texts


def _close_assistant(page) -> None:
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()
        page.wait_for_timeout(500)


def _only_loss_charts(page) -> None:
    page.get_by_placeholder("Search metric charts").fill("/total_loss")  # train/ and val/, not best/


def _only_validation_metrics(page) -> None:
    """Columns: the logged models' metrics on the validation set (best/val_total_loss, best/iteration)."""
    page.get_by_role("button", name="Columns").click()
    page.wait_for_timeout(1000)
    for label in ("Status", "Logged from", "No dataset", "Parameters"):
        page.get_by_text(label, exact=True).last.click()
    page.get_by_text(re.compile("^Dataset: seizure-testing")).last.click()
    page.keyboard.press("Escape")


def shrink(out: Path, width: int = 1100) -> None:
    from PIL import Image

    for png in out.glob("ui_*.png"):
        image = Image.open(png)
        if image.height > 2000:  # a full page: keep its top
            image = image.crop((0, 0, image.width, 2000))
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
        image.convert("P", palette=Image.ADAPTIVE, colors=256).save(png, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "images"))
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--workdir", default="", help="keep the store here (reused when it exists)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.chromium).exists():
        raise SystemExit(f"no Chromium at {args.chromium}: install Debian's package (`apt-get install chromium`)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp).resolve()
        root.mkdir(parents=True, exist_ok=True)
        saved = root / "store.json"
        store = json.loads(saved.read_text()) if saved.exists() else build_store(root)
        saved.write_text(json.dumps(store))
        from helpers.servers import free_port

        port = free_port()
        server = start_server(store["uri"], root, port)
        try:
            texts = take_screenshots(f"http://127.0.0.1:{port}", store, out, args.chromium)
        finally:
            server.terminate()
            server.wait(timeout=30)
    shrink(out)
    (out / "pages.json").write_text(json.dumps({"store": store, "pages": texts}, indent=2))
    print(f"screenshots in {out}: {', '.join(f'ui_{p}.png' for p in PAGES)}")


if __name__ == "__main__":
    main()
