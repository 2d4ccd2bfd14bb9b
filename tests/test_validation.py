"""The validation-loss hook: deterministic, side-effect free, test-time preprocessing, all processes."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from detectron2.engine import hooks, launch

from conftest import TINY_OPTS, tiny_params
from seizure_mlflow.config import build_config
from seizure_mlflow.engine.resume import ResumableBestCheckpointer
from seizure_mlflow.engine.trainer import CheckpointAlignedWriter
from seizure_mlflow.engine.measures import compute_validation_loss
from seizure_mlflow.engine.validation import Validation
from seizure_mlflow.tracking.writer import mlflow_metric_name
from seizure_mlflow.sample.datasets import check_datasets
from seizure_mlflow.commands.train import build_trainer

# BatchNorm instead of the demo's GroupNorm: the statistics the hook must not touch.
BN_OPTS = TINY_OPTS + ("MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN")


def _cfg(tiny_data, tmp_path, name="out", **changes):
    params = tiny_params(tiny_data, tmp_path, **{"opts": BN_OPTS, **changes})
    datasets = check_datasets(params.train_json, params.train_images, params.val_json, params.val_images)
    return build_config(params, num_classes=2, output_dir=str(tmp_path / name)), datasets


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_weights_same_data_same_loss_and_nothing_changes(tiny_data, tmp_path):
    cfg, datasets = _cfg(tiny_data, tmp_path)
    trainer = build_trainer(cfg, datasets)
    model, loader = trainer.model, trainer.build_validation_loader(cfg)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    model.train()
    before = _state(model)
    rng_before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())

    first = compute_validation_loss(model, loader, seed=0)
    second = compute_validation_loss(model, loader, seed=0)

    assert first == second
    assert set(first) == {"total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}
    assert first["total_loss"] == pytest.approx(sum(v for k, v in first.items() if k != "total_loss"))
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "weights or BN statistics changed"
    assert all(m.training for m in model.modules()), "module modes were not restored"
    assert torch.equal(rng_before[0], torch.get_rng_state())
    assert np.array_equal(rng_before[1], np.random.get_state()[1])
    assert rng_before[2] == random.getstate()


def test_loss_without_fixed_randomness_would_vary(tiny_data, tmp_path):
    """Why the hook fixes the RNG: proposal sampling makes the raw training-mode loss random."""
    cfg, datasets = _cfg(tiny_data, tmp_path)
    trainer = build_trainer(cfg, datasets)
    loader = trainer.build_validation_loader(cfg)
    seeded = {compute_validation_loss(trainer.model, loader, seed=s)["total_loss"] for s in (0, 1, 2)}
    assert len(seeded) > 1


def test_validation_uses_test_time_preprocessing(tiny_data, tmp_path):
    cfg, datasets = _cfg(tiny_data, tmp_path, min_size=48)
    loader = build_trainer(cfg, datasets).build_validation_loader(cfg)
    first = [b[0]["image"] for b in loader]
    second = [b[0]["image"] for b in loader]
    assert all(min(img.shape[1:]) == cfg.INPUT.MIN_SIZE_TEST for img in first)
    assert all(torch.equal(a, b) for a, b in zip(first, second)), "validation images are randomly augmented"
    assert all(len(b[0]["instances"]) > 0 for b in loader), "annotations were dropped"


def _train(tiny_data, tmp_path, validate):
    cfg, datasets = _cfg(tiny_data, tmp_path, name=f"out-{validate}", max_iter=4, eval_period=2)
    trainer = build_trainer(cfg, datasets, validate=validate)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


def test_training_is_identical_with_and_without_the_hook(tiny_data, tmp_path):
    with_hook = _train(tiny_data, tmp_path, validate=True)
    without = _train(tiny_data, tmp_path, validate=False)
    assert "val/total_loss" in with_hook.storage.histories()
    a, b = _state(with_hook.model), _state(without.model)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"validation changed training: {different[:5]}"
    # Validation keeps the detector's internal scalars out of the training storage.
    accuracy = with_hook.storage.history("fast_rcnn/cls_accuracy").values()
    assert [it for _, it in accuracy] == [0, 1, 2, 3]
    val_iters = [it for _, it in with_hook.storage.history("val/total_loss").values()]
    assert val_iters == [1, 3]  # after 2 and 4 iterations


@pytest.mark.slow
def test_validation_ap_does_not_change_training_either(tiny_data, tmp_path):
    """Eval-mode inference for AP (with BatchNorm, whose statistics eval mode must not move) between training
    iterations: the weights after 4 iterations are the unvalidated run's, bit for bit."""
    cfg, datasets = _cfg(tiny_data, tmp_path, name="out-ap", max_iter=4, eval_period=2, monitor="val/segm/AP")
    with_ap = build_trainer(cfg, datasets)
    with_ap.resume_or_load(resume=False)
    with_ap.train()
    assert [it for _, it in with_ap.storage.history("val/segm/AP").values()] == [1, 3]
    without = _train(tiny_data, tmp_path, validate=False)
    a, b = _state(with_ap.model), _state(without.model)
    assert not [k for k in a if not torch.equal(a[k], b[k])], "validation AP changed training"


def test_hook_order(tiny_data, tmp_path):
    cfg, datasets = _cfg(tiny_data, tmp_path)
    kinds = [type(h) for h in build_trainer(cfg, datasets)._hooks]
    assert kinds.index(Validation) < kinds.index(ResumableBestCheckpointer) < kinds.index(CheckpointAlignedWriter) \
        < kinds.index(hooks.PeriodicCheckpointer)
    assert mlflow_metric_name("val/loss_cls") == "val/loss_cls" and mlflow_metric_name("loss_mask") == "train/loss_mask"
    assert mlflow_metric_name("fast_rcnn/cls_accuracy") is None


def _distributed_loss(cfg, datasets, weights_path, out_path):
    from detectron2.utils import comm

    from seizure_mlflow.commands.train import build_trainer
    from seizure_mlflow.distributed import leave_process_group

    trainer = build_trainer(cfg, datasets)
    model = trainer.model.module  # DistributedDataParallel on CPU processes
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    losses = compute_validation_loss(model, trainer.build_validation_loader(cfg), seed=0)
    shard = sum(1 for _ in trainer.build_validation_loader(cfg))
    gathered = comm.all_gather(shard)
    if comm.is_main_process():
        with open(out_path, "w") as fh:
            json.dump({"losses": losses, "shards": gathered}, fh)
    comm.synchronize()
    leave_process_group()


@pytest.mark.slow
def test_loss_is_averaged_over_all_processes(tiny_data, tmp_path):
    """Two CPU processes (gloo), each with half the validation set, report the whole set's mean (one image per
    forward: with several, a batch's loss depends on which images share it)."""
    cfg, datasets = _cfg(tiny_data, tmp_path, opts=BN_OPTS + ("VALIDATION.BATCH_SIZE", "1"))
    trainer = build_trainer(cfg, datasets)
    weights = tmp_path / "weights.pt"
    torch.save(trainer.model.state_dict(), weights)
    single = compute_validation_loss(trainer.model, trainer.build_validation_loader(cfg), seed=0)

    out = tmp_path / "dist.json"
    launch(_distributed_loss, 2, dist_url="auto", args=(cfg, datasets, str(weights), str(out)))
    result = json.loads(out.read_text())
    assert sorted(result["shards"]) == [1, 1]  # the 2 validation frames, one per process
    for name, value in single.items():
        assert result["losses"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
