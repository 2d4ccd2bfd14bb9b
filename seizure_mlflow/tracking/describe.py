"""What a person reads about a run: its name, a one-paragraph result, and the model card of its model.

The same paragraph is the run's description (``mlflow.note.content``) and the registered version's
description, so the runs table, the run page and the model version page all say what was trained and what
came out. The model card adds what a deployer needs: data digests and counts, the configuration, the best
iteration, and how to load the model (Python, CLI, REST). Nothing in them names a path or a patient.
"""

from __future__ import annotations

from dataclasses import dataclass

from seizure_mlflow.data.checks import CocoSummary
from seizure_mlflow.metrics.names import DEFAULT_MONITOR, test_metric
from seizure_mlflow.metrics.monitor import Monitor

MODEL_CARD = "model_card.md"


def run_name(cfg, given: str = "") -> str:
    """``given``, or what differs between runs: ``r18 lr=0.02 b2 800it`` (backbone depth, learning rate,
    total batch, iterations)."""
    if given.strip():
        return given.strip()
    return (f"r{cfg.MODEL.RESNETS.DEPTH} lr={cfg.SOLVER.BASE_LR:g} b{cfg.SOLVER.IMS_PER_BATCH} "
            f"{cfg.SOLVER.MAX_ITER}it")


@dataclass(frozen=True)
class Outcome:
    """What a training run produced, for its description and model card."""

    config: str
    run_name: str
    train: CocoSummary
    val: CocoSummary
    best_value: float  # the best checkpoint's value of monitor
    best_iteration: int
    max_iter: int
    model_name: str
    version: str
    alias: str
    test_metrics: dict[str, float] | None = None
    monitor: str = DEFAULT_MONITOR


def _data_line(role: str, summary: CocoSummary) -> str:
    return (f"{role} {summary.digest} ({summary.num_images} frames, {summary.num_annotations} "
            f"instances, {summary.num_videos} videos)")


def result_paragraph(o: Outcome) -> str:
    """One paragraph: what was trained on what, the best validation loss and where, the registered version."""
    text = (f"{o.run_name} ({o.config}) trained for {o.max_iter} iterations on {_data_line('training set', o.train)}, "
            f"validated on {_data_line('validation set', o.val)}. Best {o.monitor} {o.best_value:.4f} "
            f"at iteration {o.best_iteration}; that checkpoint is registered as {o.model_name} version {o.version}"
            f"{f' (@{o.alias})' if o.alias else ''}.")
    if o.test_metrics:
        text += (f" Test set: box AP {o.test_metrics.get(test_metric('bbox', 'AP'), float('nan')):.1f}, mask AP "
                 f"{o.test_metrics.get(test_metric('segm', 'AP'), float('nan')):.1f}.")
    return text


def model_card(o: Outcome, cfg) -> str:
    """The model card (Markdown) of a registered version."""
    uri = f"models:/{o.model_name}/{o.version}"
    categories = ", ".join(o.train.category_names)
    tested = "\n".join(f"| {k} | {v:.2f} |" for k, v in sorted((o.test_metrics or {}).items()))
    return f"""# {o.model_name} version {o.version}

{result_paragraph(o)}

## Model
Detectron2 Mask R-CNN, ResNet-{cfg.MODEL.RESNETS.DEPTH} FPN ({o.config}), {cfg.MODEL.ROI_HEADS.NUM_CLASSES} classes:
{categories}. Input frames are resized to a shorter side of {cfg.INPUT.MIN_SIZE_TEST} px (at most
{cfg.INPUT.MAX_SIZE_TEST} px). Trained with base learning rate {cfg.SOLVER.BASE_LR:g}, {cfg.SOLVER.IMS_PER_BATCH}
images per batch, {cfg.SOLVER.MAX_ITER} iterations, seed {cfg.SEED}; the best checkpoint ({Monitor(o.monitor).words}
on the validation set) is this model.

## Data (digests of the COCO files, no file names)
| split | digest | frames | instances | videos |
| --- | --- | --- | --- | --- |
| training | {o.train.digest} | {o.train.num_images} | {o.train.num_annotations} | {o.train.num_videos} |
| validation | {o.val.digest} | {o.val.num_images} | {o.val.num_annotations} | {o.val.num_videos} |

Frames of one video are all in one split. {o.monitor} at iteration {o.best_iteration}: {o.best_value:.4f}.
{f'''
## Test set
| metric | value |
| --- | --- |
{tested}
''' if tested else ''}
## Use it
```python
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model("{uri}")
detections = model.predict(pd.DataFrame({{"image": [open("frame.png", "rb").read()]}}))
```
```bash
seizure-mlflow predict --model-uri {uri} --input frames/ --output detections.json
mlflow models serve -m {uri} --env-manager local -p 5001   # POST /invocations {{"dataframe_split": ...}}
```
Each image gives a list of `{{category_id, category_name, bbox [x, y, w, h], score, segmentation (RLE)}}` in the
image's pixel coordinates. Output is a research model's: review before any clinical use.
"""
