"""Validation during training: the hook that runs the validation measures (see :mod:`seizure_mlflow.engine.measures`:
the loss, and COCO AP) every period, the loaders it reads and the sample it reads them on.

Validation may run on a fixed *sample* of the set (``val_max_images``, see :class:`Validation`): ``val/*``
is then the sample's values, each with its standard error against the whole set (``val/*_se``), and the whole
set's values are logged as ``val_full/*`` at the end of training (and every ``full_val_period`` iterations), so
the estimate's error is visible in every run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator, Sequence

from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.engine import HookBase
from detectron2.utils import comm

from seizure_mlflow.data.mapper import FrameMapper
from seizure_mlflow.data.val_sample import pilot_size, replicate_groups, select_validation_sample, video_groups
from seizure_mlflow.engine.measures import LossMeasure
from seizure_mlflow.metrics.monitor import Monitor
from seizure_mlflow.metrics.names import SE_SUFFIX, VAL as VAL_PREFIX, VAL_FULL as VAL_FULL_PREFIX

logger = logging.getLogger(__name__)

AUTO = "auto"
AUTO_BUDGET = 0.05  # val_max_images=auto: validation costs at most this share of training time
DEFAULT_PRECISION = 0.02  # val_max_images=auto: a relative standard error this small is precise enough


def build_validation_loader(cfg, dataset_name: str, image_ids: list[int] | None = None, batch_size: int = 1):
    """A loader over ``dataset_name`` (only ``image_ids`` when given) that keeps annotations but uses test-time
    preprocessing; ``batch_size`` images per forward on each process.

    Sharded across processes by Detectron2's ``InferenceSampler``.
    """
    mapper = FrameMapper(
        cfg,
        is_train=True,  # keep annotations: the loss needs them
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")],
    )
    dataset = DatasetCatalog.get(dataset_name)
    if image_ids is not None:
        wanted = set(image_ids)
        dataset = [record for record in dataset if record["image_id"] in wanted]
    return build_detection_test_loader(dataset, mapper=mapper, batch_size=batch_size,
                                       num_workers=cfg.DATALOADER.NUM_WORKERS)


class CachedBatches:
    """Iterates a loader; the first pass keeps its batches (decoded, resized images and annotations) when
    their images total at most ``budget_bytes``, and later passes iterate the kept batches: the preprocessing,
    which is deterministic at test time, is done once, not at every validation period."""

    def __init__(self, loader: Iterable, budget_bytes: int) -> None:
        self._loader = loader
        self._budget = budget_bytes
        self._kept: list | None = None

    @property
    def cached(self) -> bool:
        return self._kept is not None

    def __iter__(self) -> Iterator:
        if self._kept is not None:
            yield from self._kept
            return
        kept, size = [], 0
        for batch in self._loader:
            if kept is not None:
                size += sum(item["image"].numel() * item["image"].element_size() for item in batch)
                if size <= self._budget:
                    kept.append(batch)
                else:
                    kept = None
            yield batch
        self._kept = kept


@dataclass(frozen=True)
class SampleChoice:
    """The validation sample a run uses: its image ids (in COCO-file order) and how its size was chosen."""

    image_ids: list[int]
    full_size: int
    mode: str  # "all", "fixed" or "auto"
    seconds_per_image: float = 0.0  # auto: the timed first pass, every measure (AP counted at its share)
    seconds_per_iteration: float = 0.0  # auto: training, up to the first validation
    decided_by: str = ""  # auto: "precision" (the target was reached) or "time budget"
    metric: str = ""  # auto: the metric whose precision sized the sample (the monitor)
    precision: float = 0.0  # auto: the target relative standard error
    estimated_rse: float | None = None  # auto: that metric's relative standard error expected at this size

    @property
    def size(self) -> int:
        return len(self.image_ids)

    @property
    def is_full_set(self) -> bool:
        return self.size == self.full_size


def auto_sample_size(seconds_per_iteration: float, seconds_per_image: float, eval_period: int, smallest: int,
                     full_size: int, budget: float = AUTO_BUDGET) -> int:
    """The largest sample whose validation costs at most ``budget`` of the training time between two
    validations (``eval_period`` iterations), but at least ``smallest`` frames (one per video) and at most the
    whole set."""
    affordable = int(budget * eval_period * seconds_per_iteration / max(seconds_per_image, 1e-9))
    return max(min(smallest, full_size), min(affordable, full_size))


def expected_rse(value: float, raw_se: float, measured_size: int, size: int, full_size: int) -> float | None:
    """The relative standard error a ``size``-frame sample of a ``full_size`` set is expected to have, from a
    value and its standard error before the finite-population correction measured on ``measured_size`` frames:
    the error is taken to shrink as ``sqrt(1/n - 1/N)``. None when it cannot be judged (no error, a value of 0)."""
    if not (math.isfinite(value) and math.isfinite(raw_se)) or value == 0 or measured_size < 1:
        return None
    per_frame = raw_se ** 2 * measured_size  # the variance of one frame's worth
    return math.sqrt(per_frame * max(1 / size - 1 / full_size, 0.0)) / abs(value)


def precise_sample_size(value: float, raw_se: float, measured_size: int, full_size: int, precision: float
                        ) -> int | None:
    """The smallest sample whose relative standard error (see :func:`expected_rse`) is at most ``precision``;
    None when it cannot be judged."""
    if expected_rse(value, raw_se, measured_size, full_size, full_size) is None:
        return None
    per_frame = raw_se ** 2 * measured_size
    if per_frame == 0:
        return 1
    return min(full_size, math.ceil(1 / ((precision * abs(value)) ** 2 / per_frame + 1 / full_size)))


@dataclass(frozen=True)
class Validated:
    """One validation's results: ``values`` (``val/total_loss``, ``val/segm/AP``, ...) and, when they come from a
    sample of the set, ``errors`` (the same keys: standard errors against the whole set), at ``iteration`` (the
    iteration that just ran, ``trainer.iter``)."""

    iteration: int
    values: dict[str, float]
    errors: dict[str, float]


class Validation(HookBase):
    """Runs the validation *measures* (see :mod:`seizure_mlflow.engine.measures`; default: the loss alone) on the
    validation sample every ``eval_period`` iterations and at the last iteration, and puts ``val/<key>`` (and, when
    the sample is not the whole set, ``val/<key>_se``, its standard error against the whole set) into the
    trainer's storage; ``val_full/*``, the whole set's, every ``full_period`` iterations (0: never) and once when
    training ends (at ``max_iter`` or when a hook stops it with :class:`~seizure_mlflow.engine.stopping.StopTraining`;
    not when it fails). A measure with ``every`` N runs at every N-th validation (and at the last iteration, and
    for ``val_full/*``).

    Each validation's results are also handed on: :attr:`latest` and ``trainer.last_validation`` hold the
    :class:`Validated` of the last validation, which the hooks after it (best checkpoint, early stopping, the
    pruner) read instead of the event storage.

    The sample: ``max_images`` 0 is the whole set, N a fixed N-frame sample (see
    :func:`~seizure_mlflow.data.val_sample.select_validation_sample`), ``"auto"`` chosen at the first validation:
    a timed pass of every measure over a pilot sample (one frame per video, at least 8) and the training time up
    to then give the largest sample costing at most :data:`AUTO_BUDGET` of training time; one pass over that
    sample gives the monitored metric's standard error, and the sample is cut to the size whose relative standard
    error is ``precision`` when that is smaller (``decided_by`` says which limit decided). The choice is part of
    the hook's state (so of every checkpoint: a resumed run keeps its sample) and, on the main process, written to
    ``record_path`` as JSON, with the seconds spent validating (and, at the end, training) in this process.

    Ordering: register it **before** the best-checkpoint hook, early stopping and the pruner (which read
    :attr:`latest`), the writers (so each value is written at its own iteration, unsmoothed, and ``val_full/*``
    before the writers' last write in ``after_train``) and ``PeriodicCheckpointer`` (so a checkpoint's state
    includes this iteration's validation). Values are put at the iteration that just ran (``trainer.iter``);
    writers report them as step ``trainer.iter + 1``, iterations completed.

    Args:
        loader_factory: ``(image_ids or None, cached) -> iterable of batches`` over the validation set.
        coco_images: the validation COCO file's ``images`` (for choosing frames by video and time).
        measures: the measures, in the order they run (default ``[LossMeasure()]``).
        monitor: the metric ``auto`` sizes the sample for (default ``val/total_loss``).
        batch_size: images per validation batch (the standard errors' blocks).
    """

    def __init__(self, eval_period: int, loader_factory: Callable, coco_images: list[dict], seed: int = 0,
                 max_images: int | str = 0, full_period: int = 0, record_path: str | None = None,
                 measures: Sequence | None = None, monitor: Monitor | None = None,
                 precision: float = DEFAULT_PRECISION, batch_size: int = 1) -> None:
        self._period = eval_period
        self._loader_factory = loader_factory
        self._images = coco_images
        self._seed = seed
        self._max_images = max_images
        self._full_period = full_period
        self._record_path = record_path
        self.measures = list(measures) if measures is not None else [LossMeasure()]
        self.monitor = monitor or Monitor()
        self._precision = precision
        self._batch_size = batch_size
        self.choice: SampleChoice | None = None
        self.latest: Validated | None = None
        self._latest_complete = False
        self._loader = None
        self._groups: dict[int, int] = {}
        self._started = 0.0
        self._start_iter = 0
        # wall time of this process's training: validation passes on the sample, on the whole set, auto's pilot
        # and sizing passes, and ("training", at the end) the rest; written with the choice to record_path
        self.seconds = {"sample": 0.0, "full": 0.0, "pilot": 0.0}
        self.seconds_by_measure = {m.name: 0.0 for m in self.measures}  # of "sample"

    def before_train(self) -> None:
        self._started, self._start_iter = time.perf_counter(), self.trainer.iter
        if self.choice is None and self._max_images != AUTO:
            mode = "fixed" if 0 < int(self._max_images) < len(self._images) else "all"
            self._use(SampleChoice(select_validation_sample(self._images, int(self._max_images), self._seed),
                                   len(self._images), mode))

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        last = next_iter == self.trainer.max_iter
        if next_iter % self._period == 0 or last:
            if self.choice is None:
                self._choose_auto(next_iter)
            due = [m for m in self.measures if last or (next_iter // self._period) % m.every == 0]
            values, errors = self._run(due, self._loader, self._groups, "sample")
            if self.choice.is_full_set:
                errors = {}
            self.latest = Validated(self.trainer.iter, {VAL_PREFIX + k: v for k, v in values.items()},
                                    {VAL_PREFIX + k: v for k, v in errors.items()})
            self._latest_complete = len(due) == len(self.measures)
            self.trainer.last_validation = self.latest
            self._put(VAL_PREFIX, values)
            self._put(VAL_PREFIX, {k + SE_SUFFIX: v for k, v in errors.items()})
        if self._full_period and next_iter % self._full_period == 0 and not last:
            self._put_full(self.trainer.iter)

    def after_train(self) -> None:
        # Detectron2 counts one past the last iteration when training finished, not when a hook stopped it.
        finished = self.trainer.iter >= self.trainer.max_iter
        if (finished or getattr(self.trainer, "stopping", False)) and self.choice is not None:
            self._put_full(self.trainer.iter - 1 if finished else self.trainer.iter)
        total = time.perf_counter() - self._started
        self.seconds["training"] = total - self.seconds["sample"] - self.seconds["full"] - self.seconds["pilot"]
        self._write_record()

    def state_dict(self) -> dict:
        return {"choice": asdict(self.choice)} if self.choice is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if state.get("choice"):
            self._use(SampleChoice(**state["choice"]))

    def _run(self, measures: Sequence, loader, groups: dict[int, int] | None, kind: str
             ) -> tuple[dict[str, float], dict[str, float]]:
        """Every measure in ``measures`` over ``loader``: ``(values, errors)``, errors with the finite-population
        correction of the current sample; the seconds each took go to ``seconds[kind]`` (and, for the sample, to
        each measure's)."""
        values, errors = {}, {}
        correction = math.sqrt(max(1 - self.choice.size / self.choice.full_size, 0.0)) if self.choice else 1.0
        for measure in measures:
            started = time.perf_counter()
            measured = measure(self.trainer.model, loader, self._seed, groups)
            spent = time.perf_counter() - started
            self.seconds[kind] += spent
            if kind == "sample":
                self.seconds_by_measure[measure.name] += spent
            values.update(measured.values)
            errors.update({k: v * correction for k, v in measured.errors.items()})
        return values, errors

    def _put(self, prefix: str, values: dict[str, float], iteration: int | None = None) -> None:
        storage = self.trainer.storage
        for name, value in values.items():
            storage.put_scalar(f"{prefix}{name}", value, smoothing_hint=False, cur_iter=iteration)

    def _put_full(self, iteration: int) -> None:
        latest = self.latest
        if self.choice.is_full_set and self._latest_complete and latest is not None and latest.iteration == iteration:
            values = {k[len(VAL_PREFIX):]: v for k, v in latest.values.items()}  # the sample is the whole set
        else:
            # several measures: decoded once, kept up to the cache's budget
            values, _ = self._run(self.measures, self._loader_factory(None, len(self.measures) > 1), None, "full")
        self._put(VAL_FULL_PREFIX, values, iteration)

    def _use(self, choice: SampleChoice) -> None:
        self.choice = choice
        self._loader = self._loader_factory(None if self.choice.is_full_set else self.choice.image_ids, True)
        self._groups = replicate_groups(choice.image_ids, self._batch_size)
        self._write_record()
        logger.info("Validation sample: %d of %d frames (%s%s)", choice.size, choice.full_size, choice.mode,
                    f", {choice.decided_by} decided" if choice.decided_by else "")

    def _write_record(self) -> None:
        if self._record_path and comm.is_main_process() and self.choice is not None:
            with open(self._record_path, "w") as fh:
                json.dump({**asdict(self.choice), "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                           "seconds_by_measure": {k: round(v, 3) for k, v in self.seconds_by_measure.items()}}, fh)

    def _choose_auto(self, next_iter: int) -> None:
        seconds_per_iteration = (time.perf_counter() - self._started) / max(next_iter - self._start_iter, 1)
        pilot = select_validation_sample(self._images, pilot_size(self._images), self._seed)
        comm.synchronize()
        seconds_per_image = 0.0
        pilot_loader = self._loader_factory(pilot, False)
        for measure in self.measures:
            started = time.perf_counter()
            measure(self.trainer.model, pilot_loader, self._seed, None)
            spent = time.perf_counter() - started
            self.seconds["pilot"] += spent
            seconds_per_image += spent / len(pilot) / measure.every
        videos = len(video_groups(self._images))
        full = len(self._images)
        affordable = auto_sample_size(seconds_per_iteration, seconds_per_image, self._period, videos, full)
        size, decided_by, rse = self._size_for_precision(affordable, videos)
        size, decided_by, rse, seconds_per_iteration, seconds_per_image = comm.all_gather(
            (size, decided_by, rse, seconds_per_iteration, seconds_per_image))[0]  # the main process's choice
        self._use(SampleChoice(select_validation_sample(self._images, size, self._seed), full, AUTO,
                               seconds_per_image, seconds_per_iteration, decided_by, self.monitor.metric,
                               self._precision, rse))

    def _size_for_precision(self, affordable: int, smallest: int) -> tuple[int, str, float | None]:
        """``(size, what decided it, the monitored metric's expected relative error)``: one pass over the affordable
        sample measures the monitored metric and its standard error; the sample is cut to the size that reaches
        ``precision`` when that is smaller."""
        key = self.monitor.metric[len(VAL_PREFIX):]
        measure = next((m for m in self.measures if m.gives(key)), self.measures[0])
        ids = select_validation_sample(self._images, affordable, self._seed)
        started = time.perf_counter()
        measured = measure(self.trainer.model, self._loader_factory(ids, False), self._seed,
                           replicate_groups(ids, self._batch_size))
        self.seconds["pilot"] += time.perf_counter() - started
        value, raw_se = measured.values.get(key, math.nan), measured.errors.get(key, math.nan)
        full = len(self._images)
        wanted = precise_sample_size(value, raw_se, len(ids), full, self._precision)
        if wanted is not None and wanted <= affordable:
            size, decided_by = max(wanted, min(smallest, full)), "precision"
        else:
            size, decided_by = affordable, "time budget"
        return size, decided_by, expected_rse(value, raw_se, len(ids), size, full)

