"""Bad input as a class: generated and mutated COCO files, parameter strings, sweep spaces and truth files.

The property, whatever the input: it is accepted and the work it starts goes through, or it is refused with a
:class:`UserError` (the command line's exit 2 and one message) before anything exists; never another exception,
a crash, or a run left RUNNING.

* Fast tier (``make test-fast``): a small budget per property, on the library entry points the commands call
  first (the COCO checks, then the very data path training takes, Detectron2's loader and the mapper, for each
  accepted file; parameter planning; the space and truth readers).
* Slow tier: a larger budget, and through ``main`` itself: every accepted COCO file or parameter set trains two
  iterations and its run ends FINISHED; every refused one exits 2 with no MLflow run.

Inputs that found bugs are kept as explicit ``@example``s.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from conftest import TINY_OPTS, private_tracking_store
from seizure_mlflow.errors import UserError

# The "ci" profile (tests/conftest.py) is derandomized: every run tries the same inputs, so a failure reproduces;
# HYPOTHESIS_PROFILE=explore tries new ones.
FAST = settings(max_examples=40, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=400, suppress_health_check=list(HealthCheck))
RUNS = settings(max_examples=8, suppress_health_check=list(HealthCheck))

# Any JSON value, with the shapes that broke the checks before: huge and negative numbers, NaN, booleans where
# numbers go, strings that look like numbers, NUL bytes, nesting.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, 2, -1, 1e9, -1e9, 0.5, 1e308]),
    st.text(max_size=12), st.sampled_from(["", "1", "yes", "a\x00b.png", "../x.png", "/etc/hostname", "²"]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
FIELDS = {
    "images": ["id", "file_name", "width", "height", "video_id"],
    "annotations": ["id", "image_id", "category_id", "bbox", "segmentation", "area", "iscrowd"],
    "categories": ["id", "name"],
}
coordinate = st.floats(-12, 110, allow_nan=False, width=32)
# Values a careful but mistaken tool might write: near the image's bounds, other records' ids, small polygons.
PLAUSIBLE = {
    "id": st.integers(-1, 40), "image_id": st.integers(0, 40), "category_id": st.integers(0, 3),
    "width": st.sampled_from([96, 72, 95, 97, 1]), "height": st.sampled_from([72, 96, 71, 73]),
    "file_name": st.sampled_from(["video_00/frame_000000.png", "video_01/frame_000001.png", "video_02/x.png"]),
    "video_id": st.sampled_from(["video_00", "video_01", "", None]),
    "bbox": st.lists(st.floats(-3, 100, width=32), min_size=4, max_size=4),
    "segmentation": st.lists(st.lists(coordinate, min_size=6, max_size=12), min_size=1, max_size=2),
    "area": st.floats(0, 7000, width=32), "iscrowd": st.sampled_from([0, 1]), "name": st.sampled_from(["patient", "x", " "]),
}
rle_like = st.fixed_dictionaries({"size": st.lists(st.integers(-5, 200), max_size=3),
                                  "counts": st.one_of(st.text(max_size=20), st.lists(st.integers(-5, 5000), max_size=8))})
polygon_like = st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=10), max_size=3)


@st.composite
def mutations(draw) -> list[tuple]:
    """A few edits of a COCO file: (set | delete | duplicate, list key, record position, field, value)."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(FIELDS)))
        action = draw(st.sampled_from(["set", "set", "set", "delete", "duplicate"]))
        field = draw(st.sampled_from(FIELDS[key]))
        wild = {"segmentation": st.one_of(rle_like, polygon_like), "bbox": st.lists(scalars, max_size=5)}
        value = draw(st.one_of(PLAUSIBLE[field], PLAUSIBLE[field], wild.get(field, json_values)))
        edits.append((action, key, draw(st.integers(0, 50)), field, value))
    return edits


def mutate(coco: dict, edits: list[tuple]) -> dict:
    coco = copy.deepcopy(coco)
    for action, key, position, field, value in edits:
        records = coco[key]
        if not records:
            continue
        record = records[position % len(records)]
        if action == "set":
            record[field] = value
        elif action == "delete":
            record.pop(field, None)
        else:
            records.append(copy.deepcopy(record))
    return coco


@pytest.fixture(scope="module")
def coco_data(tmp_path_factory):
    """A tiny sample dataset (its train split to mutate) and a Detectron2 config for the data path."""
    from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, write_sample_dataset

    root = write_sample_dataset(tmp_path_factory.mktemp("fuzz") / "sample",
                                SampleSpec(num_videos=5, frames_per_video=2, width=96, height=72, seed=5))
    paths = sample_paths(root)
    return paths, json.loads(Path(paths["train"][0]).read_text())


def _write(tmp_path: Path, name: str, coco: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(coco, allow_nan=True))
    return path


def _data_path_accepts(json_path: Path, image_root: str) -> None:
    """What training does with an accepted file, up to the model: Detectron2's loader, then the mapper (frame read,
    augmentation, annotations to instances with masks) on every record."""
    from detectron2.config import get_cfg
    from detectron2.data.datasets import load_coco_json

    from seizure_mlflow.data.mapper import FrameMapper

    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.MODEL.MASK_ON = (64,), 128, True
    mapper = FrameMapper(cfg, is_train=True)
    for record in load_coco_json(str(json_path), image_root, dataset_name=None):
        out = mapper(record)
        if record.get("annotations") and any(not a.get("iscrowd") for a in record["annotations"]):
            assert out["instances"].has("gt_masks")


def _check_or_refuse(json_path: Path, image_root: str) -> None:
    """Accepted (then the data path must take it), or refused with a message naming the file."""
    from seizure_mlflow.data.checks import check_coco

    try:
        check_coco(json_path, image_root)
    except UserError as exc:
        assert str(json_path) in str(exc)
        event("refused")
        return
    _data_path_accepts(json_path, image_root)
    event("accepted")


# Inputs that crashed a started run or were trained on silently before the schema (issue 25).
KNOWN = [
    [("set", "annotations", 0, "segmentation", {"size": [72, 96], "counts": "PPYo1"}), ("set", "annotations", 0, "iscrowd", 0)],
    [("delete", "annotations", 0, "segmentation", None)],
    [("set", "annotations", 0, "segmentation", {"size": [72, 96], "counts": [5, -3, 10]})],
    [("set", "annotations", 0, "segmentation", [[-1e9, -1e9, 1e9, -1e9, 1e9, 1e9]])],
    [("set", "annotations", 0, "iscrowd", "yes")],
    [("set", "annotations", 0, "category_id", True)],
    [("set", "annotations", 0, "area", math.nan)],
    [("set", "images", 0, "file_name", "a\x00b.png")],
]


def _coco_property(coco_data, tmp_path, edits) -> None:
    paths, coco = coco_data
    _check_or_refuse(_write(tmp_path, "train.json", mutate(coco, edits)), paths["train"][1])


@FAST
@given(edits=mutations())
@example(edits=KNOWN[0]).via("CVAT brush masks")
@example(edits=KNOWN[1]).via("no segmentation")
@example(edits=KNOWN[2]).via("negative RLE counts")
@example(edits=KNOWN[3]).via("polygon at 1e9")
@example(edits=KNOWN[4]).via("iscrowd yes")
@example(edits=KNOWN[5]).via("category_id true")
@example(edits=KNOWN[6]).via("NaN area")
@example(edits=KNOWN[7]).via("NUL in file_name")
def test_a_mutated_coco_file_is_refused_or_goes_through_the_data_path(coco_data, tmp_path, edits):
    _coco_property(coco_data, tmp_path, edits)


@pytest.mark.slow
@SLOW
@given(edits=mutations())
def test_a_mutated_coco_file_is_refused_or_goes_through_the_data_path_many(coco_data, tmp_path, edits):
    _coco_property(coco_data, tmp_path, edits)


def _train_args(paths, out: Path, **params: str) -> list[str]:
    (tj, ti), (vj, vi) = paths["train"], paths["val"]
    args = ["train", "--train-json", tj, "--train-images", ti, "--val-json", vj, "--val-images", vi, "--device", "cpu",
            "--max-iter", "2", "--eval-period", "2", "--min-size", "64", "--opts", " ".join(TINY_OPTS),
            "--output-dir", str(out), "--val-max-images", "0"]
    for name, value in params.items():
        if name == "opts":
            args[args.index("--opts") + 1] += " " + value
        else:
            args += [f"--{name.replace('_', '-')}", value]
    return args


def _runs_and_statuses() -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments) if experiments else []
    return [f"{r.info.status}:{r.data.tags.get('seizure.stop_reason', '')}" for r in runs]


def _through_main(args: list[str], root: Path, capsys) -> tuple[int, list[str], str]:
    """``main(args)`` in a private tracking store under ``root``: (exit status, the runs' statuses, stderr)."""
    from seizure_mlflow.cli import main

    root.mkdir(parents=True, exist_ok=True)
    with private_tracking_store(root):
        code = main(args)
        statuses = _runs_and_statuses()
    return code, statuses, capsys.readouterr().err


def _assert_accepted_or_refused(code: int, statuses: list[str], err: str) -> None:
    """``main`` returned (an exception escaping it is what the command line shows as a traceback): it finished
    with one FINISHED run, or refused with exit 2, a message and no run. (Detectron2's loggers keep the stream of
    the first example they logged to, so ``err`` can hold logging's own complaints: not checked here.)"""
    event("trained" if code == 0 else "refused")
    if code == 0:
        assert [s.split(":")[0] for s in statuses] == ["FINISHED"], statuses
    else:
        assert code == 2 and "error: " in err and statuses == [], (code, statuses, err[-2000:])


@pytest.mark.slow
@RUNS
@given(edits=mutations())
@example(edits=KNOWN[0])
@example(edits=KNOWN[3])
@example(edits=[("set", "annotations", 0, "area", 100.0), ("set", "images", 1, "video_id", None)]).via("accepted")
def test_a_mutated_coco_file_trains_two_iterations_or_is_refused_with_no_run(coco_data, tmp_path_factory, capsys, edits):
    paths, coco = coco_data
    root = tmp_path_factory.mktemp("run")
    data = root / "data"
    data.mkdir()
    mutated = dict(paths)
    mutated["train"] = (str(_write(data, "train.json", mutate(coco, edits))), paths["train"][1])
    _assert_accepted_or_refused(*_through_main(_train_args(mutated, root / "out"), root, capsys))


# ------------------------------------------------------------------------------------------- parameters

NUMBER_TEXT = st.one_of(st.integers(-10, 10**12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                        st.sampled_from(["", " ", "auto", "1e999", "nan", "-0", "0x10", "²", "٣", "1_000", "true"]),
                        st.text(max_size=6))
OPTS_KEYS = ["SOLVER.BASE_LR", "SOLVER.MAX_ITER", "SOLVER.IMS_PER_BATCH", "MODEL.DEVICE", "INPUT.MIN_SIZE_TEST",
             "SOLVER.CHECKPOINT_PERIOD", "MODEL.WEIGHTS", "SOLVER.AMP.ENABLED", "INPUT.MAX_SIZE_TRAIN", "NO.SUCH.KEY"]
param_sets = st.fixed_dictionaries({}, optional={
    "lr": NUMBER_TEXT, "ims_per_batch": NUMBER_TEXT, "max_iter": NUMBER_TEXT, "seed": NUMBER_TEXT,
    "val_max_images": NUMBER_TEXT, "min_size": NUMBER_TEXT, "patience": NUMBER_TEXT, "min_delta": NUMBER_TEXT,
    "eval_period": NUMBER_TEXT, "model_name": st.one_of(st.text(max_size=10), st.sampled_from(["team/probe", "a:b", ".."])),
    "opts": st.tuples(st.sampled_from(OPTS_KEYS), st.one_of(NUMBER_TEXT, st.sampled_from(["cuda", "cpu", "cuda:7"])))
            .map(" ".join),
})


def _plan_or_refuse(paths, out: Path, values: dict[str, str]) -> None:
    from seizure_mlflow.commands.train import plan_run
    from seizure_mlflow.config import params_from_text

    (tj, ti), (vj, vi) = paths["train"], paths["val"]
    text = {"train_json": tj, "train_images": ti, "val_json": vj, "val_images": vi, "device": "cpu",
            "output_dir": str(out), "opts": " ".join(TINY_OPTS), **values}
    if "opts" in values:
        text["opts"] = " ".join(TINY_OPTS) + " " + values["opts"]
    try:
        plan_run(params_from_text(text), tracking=False)
    except UserError:
        event("refused")
        return
    event("accepted")


@FAST
@given(values=param_sets)
@example(values={"seed": str(2**32)}).via("seed beyond 32 bits")
@example(values={"val_max_images": "²"}).via("a superscript digit")
@example(values={"opts": "MODEL.DEVICE cuda:7"}).via("a GPU this machine lacks")
@example(values={"ims_per_batch": "100000"}).via("a batch no memory holds")
@example(values={"model_name": "team/probe"}).via("a name the registry refuses")
def test_parameter_strings_plan_or_are_refused(coco_data, tmp_path, values):
    _plan_or_refuse(coco_data[0], tmp_path / "out", values)


@pytest.mark.slow
@SLOW
@given(values=param_sets)
def test_parameter_strings_plan_or_are_refused_many(coco_data, tmp_path, values):
    _plan_or_refuse(coco_data[0], tmp_path / "out", values)


@pytest.mark.slow
@RUNS
@given(values=param_sets)
@example(values={"lr": "1e30"})
def test_parameter_strings_train_or_are_refused_with_no_run(coco_data, tmp_path_factory, capsys, values):
    root = tmp_path_factory.mktemp("run")
    values = {k: v for k, v in values.items() if k not in ("max_iter", "eval_period")}  # two iterations, whatever else
    code, statuses, err = _through_main(_train_args(coco_data[0], root / "out", **values), root, capsys)
    assert not any(s.startswith("RUNNING") for s in statuses), statuses
    if code != 0 and statuses:  # it started and ended badly: only a learning rate that diverged may, and says so
        assert statuses == ["FAILED:diverged"], (statuses, err[-2000:])
        return
    _assert_accepted_or_refused(code, statuses, err)


# ------------------------------------------------------------------------------------------- sweep spaces and truth

space_documents = st.dictionaries(
    st.one_of(st.sampled_from(["lr", "ims_per_batch", "seed", "device", "SOLVER.BASE_LR", "output_dir", "nope"]),
              st.text(max_size=8)),
    st.one_of(json_values, st.fixed_dictionaries({"type": st.one_of(st.sampled_from(["uniform", "loguniform", "int",
                                                                                      "categorical"]), json_values)},
                                                 optional={"low": scalars, "high": scalars, "choices": json_values,
                                                           "log": scalars, "step": scalars})),
    max_size=3)


def _space_property(coco_data, tmp_path, document) -> None:
    import yaml

    from seizure_mlflow.config import params_from_text
    from seizure_mlflow.sweeps.space import check_every_edge, read_space

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(document))
    (tj, ti), (vj, vi) = coco_data[0]["train"], coco_data[0]["val"]
    base = params_from_text({"train_json": tj, "train_images": ti, "val_json": vj, "val_images": vi, "device": "cpu",
                             "opts": " ".join(TINY_OPTS)})
    try:
        check_every_edge(str(path), base, read_space(path), num_classes=2)
    except UserError as exc:
        assert str(path) in str(exc) or "space" in str(exc)
        event("refused")
        return
    event("accepted")


@FAST
@given(document=space_documents)
@example(document={"device": {"type": "categorical", "choices": []}}).via("an empty choice list")
@example(document={"device": {"type": "categorical", "choices": ["cpu", "cuda"]}}).via("a GPU as a choice")
def test_a_sweep_space_is_read_or_refused(coco_data, tmp_path, document):
    _space_property(coco_data, tmp_path, document)


truth_documents = st.one_of(json_values, st.dictionaries(st.sampled_from(["clip", "other"]), json_values, max_size=2),
                            st.fixed_dictionaries({"clip": st.lists(st.fixed_dictionaries(
                                {}, optional={"start": scalars, "end": scalars, "frequency_hz": scalars}), max_size=3)}))


@FAST
@given(document=truth_documents)
@example(document={"clip": [{"start": math.nan, "end": 3}]}).via("a NaN start")
@example(document={"clip": [{"start": 5, "end": 1}]}).via("an interval backwards")
def test_a_truth_file_is_read_or_refused(tmp_path, document):
    from seizure_mlflow.commands.trace import read_truth

    path = tmp_path / "truth.json"
    path.write_text(json.dumps(document, allow_nan=True))
    try:
        truth = read_truth(str(path), [tmp_path / "clip.mp4"])
    except UserError as exc:
        assert "truth" in str(exc) or str(path) in str(exc)
        event("refused")
        return
    event("accepted")
    for start, end in truth["clip"]:
        assert math.isfinite(start) and math.isfinite(end) and start < end
