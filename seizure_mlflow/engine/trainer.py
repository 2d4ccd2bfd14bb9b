"""The hooked Detectron2 trainer.

``Trainer`` is Detectron2's ``DefaultTrainer`` with three seams:

* ``build_ddp_model``: ``DistributedDataParallel`` with ``device_ids`` only on GPUs, so that several CPU
  processes (gloo) can train too (``DefaultTrainer`` always passes a GPU index);

* ``build_hooks``: timer, LR schedule, RNG state, validation (the measures of ``build_measures``), best
  checkpoint, early stopping (with ``EARLY_STOPPING.PATIENCE`` > 0), extra hooks (a sweep's pruner), writers,
  periodic checkpoints, stop-on-signal, in that order (each hook's docstring says what it needs before it); the
  best checkpoint, early stopping and the pruner all follow one :class:`~seizure_mlflow.metrics.monitor.Monitor`
  (``VALIDATION.MONITOR``);
* ``build_train_loader`` / ``resume_or_load``: a seeded sampler that a resume fast-forwards (see ``resume.py``);
* ``build_writers``: console (with ETA), JSON lines in ``OUTPUT_DIR/metrics.json``, and any extra writers
  given by the caller (the MLflow writer);
* ``build_model`` / ``build_optimizer`` / ``build_lr_scheduler`` / ``build_train_mapper``: from the yacs config,
  or from the LazyConfig spec the config carries (``LAZY.SPEC``, see :mod:`seizure_mlflow.lazy`): its network,
  optimizer, LR multiplier and training augmentations. Everything else (data, sampler, hooks, checkpoints) is
  the same for both.

A non-finite loss stops training at once with Detectron2's ``FloatingPointError`` (raised before the
optimizer step, so checkpoints on disk hold finite weights).
"""

from __future__ import annotations

import json
import logging
import os
import weakref
from typing import Callable, Sequence

import torch
from detectron2.data import MetadataCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, EventWriter, JSONWriter

from seizure_mlflow.config import VAL_DATASET
from seizure_mlflow.data.mapper import FrameMapper
from seizure_mlflow.engine.checkpoint import SafeCheckpointer, check_free_space, state_bytes
from seizure_mlflow.engine.resume import RandomState, ResumableBestCheckpointer, SkipSampler, StopOnSignal
from seizure_mlflow.engine.stopping import EarlyStopping, StopsEarly
from seizure_mlflow.engine.measures import APMeasure, LossMeasure
from seizure_mlflow.metrics.monitor import Monitor
from seizure_mlflow.engine.validation import AUTO, CachedBatches, Validation, build_validation_loader
from seizure_mlflow.lazy.apply import TRAINING_MODULES
from seizure_mlflow.lazy.network import build_network, lazy_spec
from seizure_mlflow.lazy.spec import build
from seizure_mlflow.outputs.training_folder import BEST_CHECKPOINT, METRICS_JSON, VALIDATION_SAMPLE_FILE, path_in

logger = logging.getLogger(__name__)

WRITE_PERIOD = 20
KEEP_PERIODIC_CHECKPOINTS = 2  # plus model_best.pth and model_final.pth


class Trainer(StopsEarly, DefaultTrainer):
    """``DefaultTrainer`` with the validation hook, best-checkpoint hook and pluggable writers.

    Args:
        cfg: a frozen Detectron2 config (``TEST.EVAL_PERIOD`` sets the validation period).
        extra_writers: called on the main process to make writers added after the built-in ones.
        validate: ``False`` drops the validation and best-checkpoint hooks (used to show that validation
            does not change training).
        keep_improvements: keep each improvement's weights too (see ``ResumableBestCheckpointer``).
        extra_hooks: makes hooks that run after the validation, best-checkpoint and early-stopping hooks and
            before the writers and the periodic checkpoint (a sweep's pruner, which may raise
            :class:`StopTraining`).
    """

    def __init__(self, cfg, extra_writers: Callable[[], Sequence[EventWriter]] | None = None,
                 validate: bool = True, keep_improvements: bool = False,
                 extra_hooks: Callable[[], Sequence[hooks.HookBase]] | None = None) -> None:
        # DefaultTrainer.__init__ calls build_hooks(), which reads these.
        self._extra_writers = extra_writers
        self._extra_hooks = extra_hooks
        self._validate = validate
        self._keep_improvements = keep_improvements
        if comm.is_main_process():
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        # DefaultTrainer.__init__, with build_ddp_model as a seam; the construction order is Detectron2's.
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = self.build_ddp_model(cfg, model)
        self._trainer = self.build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        # model weights plus one optimizer buffer per weight (SGD momentum): a checkpoint's size, about
        self.checkpointer.checkpoint_bytes = 2 * state_bytes(model)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.monitor = Monitor(cfg.VALIDATION.MONITOR)
        self.last_validation = None  # the validation hook's latest results (see Validation)
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        """The network (:func:`~seizure_mlflow.lazy.network.build_network`), on ``MODEL.DEVICE``."""
        model = build_network(cfg)
        logger.info("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's optimizer from ``SOLVER``, or the LazyConfig's (its ``params.model`` set to ``model``)."""
        spec = lazy_spec(cfg)
        if spec is None:
            return super().build_optimizer(cfg, model)
        optimizer = dict(spec["optimizer"])
        optimizer["params"] = {**optimizer["params"], "model": model}
        return build(optimizer, TRAINING_MODULES, "the LazyConfig's optimizer")

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """Detectron2's scheduler from ``SOLVER``, or the LazyConfig's ``lr_multiplier`` over ``SOLVER.MAX_ITER``."""
        spec = lazy_spec(cfg)
        if spec is None:
            return super().build_lr_scheduler(cfg, optimizer)
        from detectron2.solver import LRMultiplier

        multiplier = build(spec["lr_multiplier"], TRAINING_MODULES, "the LazyConfig's lr_multiplier")
        return LRMultiplier(optimizer, multiplier=multiplier, max_iter=cfg.SOLVER.MAX_ITER)

    @classmethod
    def build_train_mapper(cls, cfg) -> FrameMapper:
        """The training mapper: ``INPUT``'s augmentations, or the LazyConfig's (large-scale jitter for the new
        baselines), with boxes recomputed from the masks where it asks (after a crop)."""
        spec = lazy_spec(cfg)
        if spec is None:
            return FrameMapper(cfg, is_train=True)
        augmentations = build(spec["augmentations"], TRAINING_MODULES, "the LazyConfig's augmentations")
        return FrameMapper(cfg, is_train=True, augmentations=augmentations, recompute_boxes=spec["recompute_boxes"])

    @classmethod
    def build_step_trainer(cls, cfg, model, data_loader, optimizer):
        """``SimpleTrainer``, or with ``SOLVER.AMP.ENABLED`` Detectron2's ``AMPTrainer`` in bfloat16 where the GPU
        supports it (no gradient scaling needed) and float16 with a gradient scaler elsewhere. On CUDA, TF32
        matrix products and cuDNN's autotuner are switched on."""
        if str(cfg.MODEL.DEVICE).startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        if not cfg.SOLVER.AMP.ENABLED:
            return SimpleTrainer(model, data_loader, optimizer)
        if torch.cuda.is_bf16_supported():
            return AMPTrainer(model, data_loader, optimizer, precision=torch.bfloat16,
                              grad_scaler=torch.amp.GradScaler("cuda", enabled=False))
        return AMPTrainer(model, data_loader, optimizer, precision=torch.float16)

    @classmethod
    def build_ddp_model(cls, cfg, model):
        """The model wrapped for data parallelism when there are several processes (else itself)."""
        on_gpu = cfg.MODEL.DEVICE.startswith("cuda")
        return create_ddp_model(model, broadcast_buffers=False,
                                device_ids=[comm.get_local_rank()] if on_gpu else None)

    @classmethod
    def build_train_loader(cls, cfg, skip_iterations: int = 0):
        """Detectron2's training loader, with a ``TrainingSampler`` seeded from ``cfg.SEED`` whose index
        stream starts after ``skip_iterations`` iterations' worth of images (for an exact resume)."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            return build_detection_train_loader(cfg, mapper=cls.build_train_mapper(cfg))
        dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        per_process = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        sampler = SkipSampler(TrainingSampler(len(dataset), seed=cfg.SEED), skip=skip_iterations * per_process)
        # seed: the loader's own generator, so that creating its iterator does not draw from torch's global RNG
        # (which would shift the random stream of a resumed run).
        return build_detection_train_loader(cfg, dataset=dataset, sampler=sampler, seed=cfg.SEED,
                                            mapper=cls.build_train_mapper(cfg))

    def resume_or_load(self, resume: bool = True) -> None:
        """Detectron2's resume, plus the training data stream fast-forwarded to the resumed iteration."""
        super().resume_or_load(resume=resume)
        if resume and self.start_iter > 0:
            self._trainer.reset_data_loader(lambda: self.build_train_loader(self.cfg, skip_iterations=self.start_iter))

    @classmethod
    def build_validation_loader(cls, cfg, image_ids: list[int] | None = None):
        """The validation set's loader (only ``image_ids`` when given), ``VALIDATION.BATCH_SIZE`` images per forward."""
        return build_validation_loader(cfg, VAL_DATASET, image_ids, batch_size=cfg.VALIDATION.BATCH_SIZE)

    @classmethod
    def build_measures(cls, cfg, val_dataset: dict) -> list:
        """What validation measures: the loss always; COCO AP (boxes and masks) when the monitor is an AP or
        ``VALIDATION.AP_PERIOD`` > 0, at every ``AP_PERIOD``-th validation (every one when 0). ``val_dataset``
        is the validation COCO file's content."""
        measures = [LossMeasure()]
        ap_period = cfg.VALIDATION.AP_PERIOD
        if Monitor(cfg.VALIDATION.MONITOR).needs_ap or ap_period > 0:
            measures.append(APMeasure(val_dataset, every=max(ap_period, 1)))
        return measures

    def build_validation_hook(self, cfg) -> Validation:
        """The validation hook over ``VALIDATION.MAX_IMAGES`` frames of the validation set (its precision target
        ``VALIDATION.PRECISION`` for ``auto``), the sample's preprocessed batches kept in memory up to
        ``VALIDATION.CACHE_MB``."""
        def loaders(image_ids, cached):
            loader = self.build_validation_loader(cfg, image_ids)
            return CachedBatches(loader, cfg.VALIDATION.CACHE_MB * 2**20) if cached else loader

        with open(MetadataCatalog.get(VAL_DATASET).json_file) as fh:
            dataset = json.load(fh)
        max_images = cfg.VALIDATION.MAX_IMAGES
        return Validation(cfg.TEST.EVAL_PERIOD, loaders, dataset["images"], seed=cfg.SEED,
                          max_images=max_images if max_images == AUTO else int(max_images),
                          full_period=cfg.VALIDATION.FULL_PERIOD,
                          record_path=path_in(cfg.OUTPUT_DIR, VALIDATION_SAMPLE_FILE),
                          measures=self.build_measures(cfg, dataset), monitor=self.monitor,
                          precision=cfg.VALIDATION.PRECISION, batch_size=cfg.VALIDATION.BATCH_SIZE)

    def build_hooks(self) -> list[hooks.HookBase]:
        """Validation, best checkpoint and a flush of the writers come *before* the periodic checkpoint, so
        that every metric up to a checkpoint is logged before it exists: a run killed at any moment and
        resumed from its last checkpoint then misses no step (and re-sends none, see ``MlflowWriter``): values not yet
        delivered are on disk in the writer's spool by then."""
        cfg = self.cfg
        ret: list[hooks.HookBase] = [hooks.IterationTimer(), hooks.LRScheduler(), RandomState()]
        if self._validate:
            ret.append(self.build_validation_hook(cfg))
            ret.append(ResumableBestCheckpointer(cfg.TEST.EVAL_PERIOD, self.checkpointer, self.monitor,
                                                 file_prefix=BEST_CHECKPOINT, keep_improvements=self._keep_improvements))
            # before the periodic checkpoint, so that a checkpoint holds the count of its own iteration
            if cfg.EARLY_STOPPING.PATIENCE > 0:
                ret.append(EarlyStopping(self.monitor, cfg.EARLY_STOPPING.PATIENCE, cfg.EARLY_STOPPING.MIN_DELTA))
        if self._extra_hooks is not None:
            ret.extend(self._extra_hooks())
        if comm.is_main_process():
            ret.append(CheckpointAlignedWriter(self.build_writers(), WRITE_PERIOD, cfg.SOLVER.CHECKPOINT_PERIOD))
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD,
                                                  max_to_keep=KEEP_PERIODIC_CHECKPOINTS))
        ret.append(StopOnSignal(self.checkpointer))
        return ret

    def train(self):
        """Train to ``SOLVER.MAX_ITER`` or until a hook raises :class:`StopTraining` (see :class:`StopsEarly`),
        once the output folder has room for two checkpoints."""
        if comm.is_main_process():
            check_free_space(self.cfg.OUTPUT_DIR, self.checkpointer.checkpoint_bytes)
        return super().train()

    def build_writers(self) -> list[EventWriter]:
        writers: list[EventWriter] = [
            CommonMetricPrinter(self.max_iter, window_size=WRITE_PERIOD),
            JSONWriter(path_in(self.cfg.OUTPUT_DIR, METRICS_JSON), window_size=WRITE_PERIOD),
        ]
        if self._extra_writers is not None:
            writers.extend(self._extra_writers())
        return writers


class CheckpointAlignedWriter(hooks.PeriodicWriter):
    """``PeriodicWriter`` that also writes at every checkpoint iteration (and the last), and then asks each
    writer that can (``make_durable``, the MLflow writer) to put what it has not delivered yet on disk: register
    it before ``PeriodicCheckpointer``, so that every value up to a checkpoint is safe before the checkpoint
    exists."""

    def __init__(self, writers: list[EventWriter], period: int, checkpoint_period: int) -> None:
        super().__init__(writers, period=period)
        self._checkpoint_period = checkpoint_period

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        at_checkpoint = self._checkpoint_period > 0 and next_iter % self._checkpoint_period == 0
        if at_checkpoint and next_iter % self._period:
            for writer in self._writers:
                writer.write()
        super().after_step()
        if at_checkpoint or next_iter == self.trainer.max_iter:
            for writer in self._writers:
                if hasattr(writer, "make_durable"):
                    writer.make_durable()
