"""Each hook's contract on a toy model and Detectron2's own ``SimpleTrainer``: when it runs, what it puts or
calls, how it stops training, what its state carries across a resume. Seconds, no Mask R-CNN (the way
Detectron2's engine tests exercise its hooks)."""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import pytest
import torch
from detectron2.engine import SimpleTrainer, hooks
from detectron2.utils.events import EventWriter
from torch import nn

from seizure_mlflow.engine.resume import RandomState, ResumableBestCheckpointer, StopOnSignal
from seizure_mlflow.engine.stopping import EARLY_STOPPING, MAX_ITER, PRUNED, EarlyStopping, StopsEarly
from seizure_mlflow.engine.trainer import CheckpointAlignedWriter
from seizure_mlflow.metrics.monitor import Monitor
from seizure_mlflow.engine.measures import compute_validation_loss
from seizure_mlflow.engine.validation import Validated, Validation
from seizure_mlflow.sweeps.pruning import ReportToTrial



class ToyDetector(nn.Module):
    """Returns a loss dict for a batch of ``{"image_id", "x"}`` like a detector in training mode; with BatchNorm
    (its statistics must not move during validation) and a random term (validation must seed it)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.norm = nn.BatchNorm1d(2)

    def forward(self, batch):
        x = torch.stack([item["x"] for item in batch])
        y = self.linear(self.norm(x) if len(batch) > 1 or not self.training else x).squeeze(1)
        return {"loss_fit": (y ** 2).mean(), "loss_noise": torch.rand(()) * 1e-3 + 0 * y.sum()}


def _batches(n: int = 6, size: int = 2) -> list[list[dict]]:
    gen = torch.Generator().manual_seed(0)
    items = [{"image_id": i, "x": torch.randn(2, generator=gen)} for i in range(n)]
    return [items[k:k + size] for k in range(0, n, size)]


class ToyTrainer(StopsEarly, SimpleTrainer):
    def __init__(self, max_iter: int = 7, lr: float = 0.05) -> None:
        model = ToyDetector()
        batches = _batches()
        super().__init__(model, iter(batches * 1000), torch.optim.SGD(model.parameters(), lr=lr))
        self.max_iter = max_iter

    def train(self):
        return super().train(0, self.max_iter)


class FakeCheckpointer:
    """What the hooks call on Detectron2's checkpointer: ``save(name, **extra)``, recorded with the iteration."""

    save_to_disk, save_dir = True, ""

    def __init__(self, trainer) -> None:
        self.trainer, self.model, self.saved = trainer, trainer.model, []

    def save(self, name: str, **extra) -> None:
        self.saved.append((name, self.trainer.iter, extra))


def _history(trainer, key: str) -> list[tuple[int, float]]:
    return [(int(i), v) for v, i in trainer.storage.history(key).values()]


def _validation(period: int = 3, full_period: int = 0, max_images=0, measures=None) -> Validation:
    images = [{"id": i, "file_name": f"clip{i // 3}/frame_{i % 3:06d}.png", "video_id": f"clip{i // 3}"}
              for i in range(6)]
    by_id = {item["image_id"]: item for batch in _batches() for item in batch}

    def loaders(image_ids, cached):
        ids = sorted(by_id) if image_ids is None else image_ids
        return [[by_id[i]] for i in ids]

    return Validation(period, loaders, images, seed=1, max_images=max_images, full_period=full_period, measures=measures)


def test_validation_runs_every_period_and_at_the_last_iteration_and_the_whole_set_at_the_end():
    trainer = ToyTrainer(max_iter=7)
    trainer.register_hooks([_validation(period=3, max_images=2)])
    trainer.train()
    assert [i for i, _ in _history(trainer, "val/total_loss")] == [2, 5, 6]  # after iterations 3, 6 and 7
    assert [i for i, _ in _history(trainer, "val_full/total_loss")] == [6]
    assert {"val/loss_fit", "val/loss_noise"} <= set(trainer.storage.histories())
    assert trainer.stop_reason == MAX_ITER and trainer.stopped_at == 7


def test_validation_is_a_function_of_the_weights_and_data_and_leaves_the_model_alone():
    model = ToyDetector().train()
    data = [[item] for batch in _batches() for item in batch]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    first, second = compute_validation_loss(model, data, seed=3), compute_validation_loss(model, data, seed=3)
    assert first == second and first["total_loss"] == pytest.approx(first["loss_fit"] + first["loss_noise"])
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng[0]) and (np.random.get_state()[1] == rng[1]).all()
    assert random.getstate() == rng[2]


def test_the_validation_sample_is_part_of_the_hooks_state():
    hook = _validation(max_images=2)
    trainer = ToyTrainer(max_iter=3)
    trainer.register_hooks([hook])
    trainer.train()
    resumed = _validation(max_images=4)  # a resume keeps the sample the run chose, whatever the new setting
    resumed.load_state_dict(hook.state_dict())
    assert resumed.choice == hook.choice and hook.choice.size == 2


class HandsOn(hooks.HookBase):
    """What the validation hook hands on (``trainer.last_validation``): ``values`` one by one, every ``period``
    iterations, under ``metric`` (None: a validation that did not measure it)."""

    def __init__(self, values, period: int, metric: str = "val/total_loss") -> None:
        self._values, self._period, self._metric = iter(values), period, metric

    def after_step(self):
        if (self.trainer.iter + 1) % self._period == 0:
            value = next(self._values)
            self.trainer.last_validation = Validated(self.trainer.iter, {} if value is None else {self._metric: value}, {})


@pytest.mark.parametrize("metric, values, saved, best_value", [
    ("val/total_loss", [3.0, 2.0, 2.5], [(2, 3.0), (5, 2.0)], (2.0, 5)),
    ("val/segm/AP", [10.0, None, 30.0, 20.0], [(2, 10.0), (8, 30.0)], (30.0, 8)),  # AP up; a validation without AP skipped
])
def test_best_checkpoint_saves_on_improvement_of_the_monitor_only_and_its_best_survives_a_resume(
        metric, values, saved, best_value):
    trainer = ToyTrainer(max_iter=3 * len(values))
    checkpointer = FakeCheckpointer(trainer)
    best = ResumableBestCheckpointer(3, checkpointer, Monitor(metric), file_prefix="model_best")
    trainer.register_hooks([HandsOn(values, 3, metric), best])
    trainer.train()
    assert [(name, it, extra["best_metric"], extra["monitor"]) for name, it, extra in checkpointer.saved] == [
        ("model_best", it, value, metric) for it, value in saved]
    again = ResumableBestCheckpointer(3, checkpointer, Monitor(metric), file_prefix="model_best")
    again.load_state_dict(best.state_dict())
    assert (again.best_metric, again.best_iter) == best_value


@pytest.mark.parametrize("hook_kind", ["early_stopping", "pruner"])
def test_a_stopping_hook_ends_training_after_its_iteration_with_its_reason(hook_kind):
    trainer = ToyTrainer(max_iter=30)
    values = [1.0, 0.9, 0.95, 0.92, 0.91] + [0.9] * 10

    class Trial:
        number, reported = 4, []

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return len(self.reported) == 2

    trial = Trial()
    stopper = EarlyStopping("val/total_loss", patience=3, min_delta=0.0) if hook_kind == "early_stopping" \
        else ReportToTrial(trial)
    after = []

    class SeesTheEnd(hooks.HookBase):
        def after_train(self):
            after.append(getattr(self.trainer, "stopping", False))

    trainer.register_hooks([HandsOn(values, 2), stopper, SeesTheEnd()])
    trainer.train()
    if hook_kind == "early_stopping":  # best 0.9 at iteration 4; 6, 8 and 10 bring no improvement
        assert (trainer.stop_reason, trainer.stopped_at) == (EARLY_STOPPING, 10)
        assert stopper.state_dict() == {"best": 0.9, "periods_without_improvement": 3}
    else:
        assert (trainer.stop_reason, trainer.stopped_at) == (PRUNED, 4) and trial.reported == [(2, 1.0), (4, 0.9)]
    assert after == [True]


def test_early_stopping_counts_on_after_a_resume():
    hook = EarlyStopping("val/total_loss", patience=3)
    hook.load_state_dict({"best": 0.5, "periods_without_improvement": 2})
    trainer = ToyTrainer(max_iter=10)
    trainer.register_hooks([HandsOn([0.7] * 5, 2), hook])
    trainer.train()
    assert (trainer.stop_reason, trainer.stopped_at) == (EARLY_STOPPING, 2)


def test_the_writer_writes_every_period_at_checkpoints_and_the_last_and_makes_values_durable():
    class Recorder(EventWriter):
        def __init__(self, trainer):
            self.trainer, self.writes, self.durable = trainer, [], []

        def write(self):
            self.writes.append(self.trainer.iter + 1)

        def make_durable(self):
            self.durable.append(self.trainer.iter + 1)

        def close(self):
            pass

    trainer = ToyTrainer(max_iter=11)
    recorder = Recorder(trainer)
    trainer.register_hooks([CheckpointAlignedWriter([recorder], period=4, checkpoint_period=3)])
    trainer.train()
    assert recorder.durable == [3, 6, 9, 11]
    # every 4, every checkpoint, the last; then once more in after_train (Detectron2 counts iter past the end)
    assert sorted(set(recorder.writes)) == [3, 4, 6, 8, 9, 11, 12]


def test_a_signal_stops_after_its_iteration_with_a_checkpoint_and_restores_the_handlers():
    trainer = ToyTrainer(max_iter=20)
    checkpointer = FakeCheckpointer(trainer)
    before = signal.getsignal(signal.SIGTERM)

    class SendsSigterm(hooks.HookBase):
        def after_step(self):
            if self.trainer.iter == 4:
                os.kill(os.getpid(), signal.SIGTERM)

    trainer.register_hooks([SendsSigterm(), StopOnSignal(checkpointer)])
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        trainer.train()
    assert [(name, it) for name, it, _ in checkpointer.saved] == [("model_0000004", 4)]
    assert signal.getsignal(signal.SIGTERM) == before


def test_random_state_is_saved_with_a_checkpoint_and_restored_before_training():
    hook = RandomState()
    torch.manual_seed(11)
    np.random.seed(11)
    random.seed(11)
    state = hook.state_dict()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    resumed = RandomState()
    resumed.load_state_dict(state)
    resumed.before_train()
    assert torch.equal(torch.rand(3), expected[0]) and (np.random.rand(3) == expected[1]).all()
    assert random.random() == expected[2]


def test_early_stopping_on_ap_waits_for_a_rise_of_more_than_min_delta():
    # AP 10 after 2 iterations, then 10.5, 11.0 (not more than 1 above) and a fall: stopped after 8
    hook = EarlyStopping(Monitor("val/segm/AP"), patience=3, min_delta=1.0)
    trainer = ToyTrainer(max_iter=30)
    trainer.register_hooks([HandsOn([10.0, 10.5, 11.0, 8.0] + [30.0] * 10, 2, "val/segm/AP"), hook])
    trainer.train()
    assert (trainer.stop_reason, trainer.stopped_at) == (EARLY_STOPPING, 8) and hook.best == 10.0


class NormMeasure:
    """A measure of one function: the mean of |x| over the images it sees (to show a new measure needs no change
    to the hook)."""

    name, every = "norm", 2

    def __init__(self) -> None:
        self.calls = 0

    def gives(self, key):
        return key == "norm"

    def __call__(self, model, batches, seed=0, groups=None):
        from seizure_mlflow.engine.measures import Measured

        self.calls += 1
        values = [float(item["x"].abs().mean()) for batch in batches for item in batch]
        return Measured({"norm": sum(values) / len(values)}, {"norm": 0.5})


def test_a_new_measure_is_one_function_logged_at_its_period_with_its_error_and_handed_on():
    from seizure_mlflow.engine.measures import LossMeasure

    norm = NormMeasure()
    hook = _validation(period=2, max_images=3, measures=[LossMeasure(), norm])
    seen = []

    class Reads(hooks.HookBase):
        def after_step(self):
            latest = getattr(self.trainer, "last_validation", None)
            if latest is not None and latest.iteration == self.trainer.iter:
                seen.append((self.trainer.iter, sorted(latest.values)))

    trainer = ToyTrainer(max_iter=7)
    trainer.register_hooks([hook, Reads()])
    trainer.train()
    # the loss at every validation (after 2, 4, 6, 7), the norm at every 2nd (after 4) and at the last (7)
    assert [i for i, _ in _history(trainer, "val/total_loss")] == [1, 3, 5, 6]
    assert [i for i, _ in _history(trainer, "val/norm")] == [3, 6]
    # a sample of 3 of 6 frames: the error against the whole set is the measure's times sqrt(1 - 3/6)
    assert _history(trainer, "val/norm_se")[0][1] == pytest.approx(0.5 * np.sqrt(0.5))
    assert "val/total_loss_se" in trainer.storage.histories()
    assert [i for i, _ in _history(trainer, "val_full/norm")] == [6] and "val_full/norm_se" not in trainer.storage.histories()
    assert [i for i, _ in seen] == [1, 3, 5, 6]  # the hooks after it read each validation's values
    assert "val/norm" in seen[1][1] and "val/norm" not in seen[0][1]


class SureLoss:
    """A loss measure whose value is 1.0 with a small error (0.001 before the finite-population correction) on any
    frames: ``auto`` can reach a 2% precision with very few of them."""

    name, every = "loss", 1

    def gives(self, key):
        return key == "total_loss"

    def __call__(self, model, batches, seed=0, groups=None):
        from seizure_mlflow.engine.measures import Measured

        list(batches)
        return Measured({"total_loss": 1.0}, {"total_loss": 0.001})


def test_auto_stops_growing_the_sample_at_the_precision_target_and_records_why(tmp_path):
    import json

    from seizure_mlflow.engine.validation import expected_rse

    class SlowSteps(hooks.HookBase):  # training at 20 ms an iteration: the time budget affords every frame
        def after_step(self):
            import time

            time.sleep(0.02)

    hook = _validation(period=3, max_images="auto", measures=[SureLoss()])
    hook._record_path = str(tmp_path / "sample.json")
    trainer = ToyTrainer(max_iter=3)
    trainer.register_hooks([SlowSteps(), hook])
    trainer.train()
    record = json.loads((tmp_path / "sample.json").read_text())
    # one frame would reach 2%; at least one frame per video (2 videos) is kept
    assert (record["decided_by"], len(record["image_ids"]), record["metric"]) == ("precision", 2, "val/total_loss")
    assert record["estimated_rse"] == pytest.approx(expected_rse(1.0, 0.001, 6, 2, 6)) and record["precision"] == 0.02
