"""Validation at the study's ratio: the whole validation set every period vs ``val_max_images=auto``, with the loss
alone and with validation AP (``monitor=val/segm/AP``), and how sure each sample's values are.

The study validated 6,854 frames every 100 iterations of 64 images: 1.07 validation frames per training image.
This benchmark keeps that ratio on sample data made large enough (50 videos x ``--frames-per-video`` frames,
so 10 validation videos), with the demo's R18-FPN config on this machine's CPU:

* run 1, ``val_max_images=0``: every validation frame at every period;
* run 2, ``val_max_images=auto`` and ``full_val_period`` = the validation period, so that the sample's
  ``val/total_loss`` can be compared with the whole set's ``val_full/total_loss`` at every period (those extra
  full passes are a measurement, reported apart: a normal run makes one, at the end);
* run 3, the same with ``monitor=val/segm/AP``: the loss and AP on the sample, sized with the AP pass included.

At every period and for each value, the table gives the sample's value, its standard error (``val/*_se``), the
whole set's value and whether it lies within two standard errors. The loss's and AP's shares of training time
come from the same run (``seconds_by_measure``), side by side.

Validation's share is the seconds the validation hook spent on its periodic passes over the seconds of
training proper (both from the run's ``validation_sample.json``). Repeat passes: the sample's loss computed
twice more on the final weights must be bit-identical. Prints a table and writes
benchmarks/results/validation_sample.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from results import print_table, private_store, write_results  # benchmarks/results.py

STUDY_VAL_FRAMES_PER_TRAIN_IMAGE = 6854 / (100 * 64)


def repeat_is_identical(output_dir: Path, params, datasets, record: dict) -> bool:
    """The sample's loss on the final weights, twice, compared bit for bit."""
    import torch

    from seizure_mlflow.config import build_config
    from seizure_mlflow.engine.measures import compute_validation_loss
    from seizure_mlflow.commands.train import build_trainer

    cfg = build_config(params, num_classes=len(datasets.train.categories), output_dir=str(output_dir / "repeat"))
    trainer = build_trainer(cfg, datasets)
    state = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    trainer.model.load_state_dict(state)
    loader = trainer.build_validation_loader(cfg, record["image_ids"])
    first = compute_validation_loss(trainer.model, loader, cfg.SEED)
    second = compute_validation_loss(trainer.model, loader, cfg.SEED)
    return first == second


ESTIMATED = ("total_loss", "segm/AP", "bbox/AP")


def _share(seconds: float, training: float) -> str:
    return f"{seconds / training:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-per-video", type=int, default=100)
    parser.add_argument("--ims-per-batch", type=int, default=2)
    parser.add_argument("--periods", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/validation_sample.json")
    args = parser.parse_args()
    import mlflow

    from seizure_mlflow.config import TrainParams
    from seizure_mlflow.sample.datasets import check_datasets
    from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, write_sample_dataset
    from seizure_mlflow.commands.train import run_training

    rows, errors = [], []
    with tempfile.TemporaryDirectory() as tmp, private_store(Path(tmp)):
        root = Path(tmp)
        started = time.perf_counter()
        data = sample_paths(write_sample_dataset(root / "data", SampleSpec(num_videos=50,
                                                                           frames_per_video=args.frames_per_video)))
        print(f"sample data written in {time.perf_counter() - started:.0f} s")
        val_frames = len(json.loads(Path(data["val"][0]).read_text())["images"])
        eval_period = round(val_frames / (STUDY_VAL_FRAMES_PER_TRAIN_IMAGE * args.ims_per_batch))
        base = TrainParams(train_json=data["train"][0], train_images=data["train"][1], val_json=data["val"][0],
                           val_images=data["val"][1], ims_per_batch=args.ims_per_batch, eval_period=eval_period,
                           max_iter=eval_period * args.periods, device="cpu", system_metrics=False,
                           model_name="bench-validation")
        runs = (("whole set (val_max_images=0)", "whole", {"val_max_images": "0"}),
                ("auto, loss", "auto-loss", {"val_max_images": "auto", "full_val_period": eval_period}),
                ("auto, monitor=val/segm/AP (loss + AP)", "auto-ap",
                 {"val_max_images": "auto", "full_val_period": eval_period, "monitor": "val/segm/AP"}))
        for label, name, changes in runs:
            out = root / f"out-{name}"
            params = base.replace(output_dir=str(out), **changes)
            result = run_training(params)
            record = json.loads((out / "validation_sample.json").read_text())
            seconds, by_measure = record["seconds"], record.get("seconds_by_measure", {})
            training = seconds["training"]
            periodic = seconds["sample"]
            one_full_pass = seconds["full"] / args.periods if name != "whole" else 0.0  # whole set: val_full = val
            rows.append({"run": label, "frames_per_pass": len(record["image_ids"]), "of": record["full_size"],
                         "decided_by": record.get("decided_by") or record["mode"],
                         "expected_rse": "" if record.get("estimated_rse") is None else f"{record['estimated_rse']:.1%}",
                         "training_s": round(training, 1), "validation_s": round(periodic, 1),
                         "loss_share": _share(by_measure.get("loss", periodic), training),
                         "ap_share": _share(by_measure["ap"], training) if "ap" in by_measure else "",
                         "validation_share": _share(periodic, training),
                         "share_with_final_full_pass": _share(periodic + one_full_pass, training),
                         "pilot_s": round(seconds["pilot"], 1)})
            if name == "whole":
                continue
            # the same run's whole-set passes (one per period): the whole set's cost on the same machine at the
            # same time as the sample's, side by side
            rows.append({"run": f"whole set, passes inside the '{label}' run", "frames_per_pass": record["full_size"],
                         "of": record["full_size"], "decided_by": "", "expected_rse": "",
                         "training_s": round(training, 1), "validation_s": round(seconds["full"], 1),
                         "loss_share": "", "ap_share": "", "validation_share": _share(seconds["full"], training),
                         "share_with_final_full_pass": "", "pilot_s": ""})
            client = mlflow.MlflowClient()
            for key in ESTIMATED if name == "auto-ap" else ESTIMATED[:1]:
                val = {m.step: m.value for m in client.get_metric_history(result.run_id, f"val/{key}")}
                se = {m.step: m.value for m in client.get_metric_history(result.run_id, f"val/{key}_se")}
                full = {m.step: m.value for m in client.get_metric_history(result.run_id, f"val_full/{key}")}
                for step in sorted(full):
                    gap = abs(val[step] - full[step])
                    errors.append({"run": label, "metric": key, "iteration": step, "sample": round(val[step], 4),
                                   "standard_error": round(se[step], 4) if step in se else "",
                                   "whole_set": round(full[step], 4),
                                   "relative_error": f"{gap / abs(full[step]):.2%}" if full[step] else "",
                                   "gap_in_se": round(gap / se[step], 2) if se.get(step) else "",
                                   "within_2se": gap <= 2 * se[step] if step in se else ""})
            if name == "auto-loss":
                datasets = check_datasets(params.train_json, params.train_images, params.val_json, params.val_images)
                identical = repeat_is_identical(out, params, datasets, record)
    print(f"\nstudy ratio: {STUDY_VAL_FRAMES_PER_TRAIN_IMAGE:.2f} validation frames per training image; here "
          f"{val_frames} validation frames every {eval_period} iterations of {args.ims_per_batch} images")
    print_table(rows)
    print("('share_with_final_full_pass' for auto adds one whole-set pass, as a normal run makes at its end, spread "
          f"over {args.periods} periods; loss_share and ap_share split the validation_share of the same run)")
    print_table(errors)
    losses = [e for e in errors if e["metric"] == "total_loss"]
    worst = max(float(e["relative_error"].rstrip("%")) for e in losses)
    covered = sum(1 for e in errors if e["within_2se"] is True)
    judged = sum(1 for e in errors if e["within_2se"] != "")
    print(f"\nworst loss estimate error {worst:.2f}%; whole set within 2 standard errors of the sample {covered} of "
          f"{judged} times; repeat passes bit-identical: {identical}")
    write_results(args.out, {"setting": {"frames_per_video": args.frames_per_video, "val_frames": val_frames,
                                         "eval_period": eval_period, "ims_per_batch": args.ims_per_batch,
                                         "periods": args.periods},
                             "runs": rows, "estimate": errors, "worst_relative_error_percent": worst,
                             "within_2se": {"covered": covered, "judged": judged},
                             "repeat_bit_identical": identical})


if __name__ == "__main__":
    main()
