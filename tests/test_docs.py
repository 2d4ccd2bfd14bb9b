"""The docs say what the code does: the training-run hook table is the trainer's hooks, in order."""

from __future__ import annotations

import re

from conftest import REPO, tiny_params


def _hook_table() -> list[str]:
    text = (REPO / "docs" / "training-run.md").read_text()
    table = text[text.index("| hook | what it does | why here |"):]
    rows = []
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append(re.match(r"\| `(\w+)`", line).group(1))
    return rows


def test_the_hook_table_is_the_trainers_hooks_in_order(tiny_data, tmp_path):
    from seizure_mlflow.commands.train import build_trainer, plan_run
    from seizure_mlflow.sweeps.pruning import ReportToTrial

    plan = plan_run(tiny_params(tiny_data, tmp_path, patience=2), tracking=False)
    cfg = plan.cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    trainer = build_trainer(cfg, plan.datasets, extra_hooks=lambda: [ReportToTrial(trial=None)])
    assert [type(h).__name__ for h in trainer._hooks] == _hook_table()
