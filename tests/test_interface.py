"""The interface users rely on stays in one piece: `main`'s parameters come from one source, and the
package's layers import each other in one direction only."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from seizure_mlflow.cli import build_parser, cli_flag
from seizure_mlflow.config import TrainParams, default_text, param_fields

PACKAGE = REPO / "seizure_mlflow"


def _main_entry_point() -> dict:
    return yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]


def test_mlproject_main_parameters_are_train_params():
    main = _main_entry_point()
    declared = {name: str(spec.get("default")) for name, spec in main["parameters"].items()}
    assert declared == {f.name: default_text(f) for f in param_fields()}
    command = " ".join(main["command"].split())
    for f in param_fields():
        assert f"{cli_flag(f.name)} {{{f.name}}}" in command, f"the main command does not pass {f.name}"


def test_cli_train_options_are_train_params():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    options = {a.dest: a.default for a in train._actions if a.option_strings and a.dest != "help"}
    assert options == {f.name: default_text(f) for f in param_fields()}


def test_readme_lists_every_main_parameter():
    readme = (REPO / "README.md").read_text()
    listed = re.search(r"All `main` parameters:\s*`([^`]*)`", readme)
    assert listed, "the README's 'All `main` parameters:' list is missing"
    assert listed.group(1).split() == [f.name for f in param_fields()]


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions, absolute names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _module_graph() -> dict[str, set[str]]:
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE / "configs"}  # configs are data, run by LazyConfig
    graph = defaultdict(set)
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_among_the_packages_modules():
    graph = _module_graph()
    assert len(graph) > 20
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("root", ["seizure_mlflow.evaluation.detector", "seizure_mlflow.motion.pipeline",
                                  "seizure_mlflow.motion.outputs"])
def test_coco_evaluation_and_the_motion_trace_import_no_mlflow(root):
    graph = _module_graph()
    reached, todo = set(), [root]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph[module])
    for module in reached:
        path = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
        path = path if path.exists() else path.with_suffix("") / "__init__.py"
        assert not any(m == "mlflow" or m.startswith("mlflow.") for m in _imports(path)), f"{module} imports mlflow"


def test_an_interpreter_without_the_dependencies_gets_a_clear_message():
    """What `.venv/bin/mlflow run .` does without an activated venv: the system Python runs the entry point."""
    import os
    import subprocess
    import sys

    base = Path(sys.base_prefix) / "bin" / "python3"
    probe = subprocess.run([str(base), "-c", "import importlib.util as u; print(all(u.find_spec(m) for m in "
                            "('torch', 'mlflow', 'cv2', 'detectron2')))"], capture_output=True, text=True)
    if probe.stdout.strip() != "False":
        import pytest

        pytest.skip(f"{base} has the project's dependencies; no interpreter without them to try")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(base), "-m", "seizure_mlflow", "train", "--max-iter", "2"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=60)
    assert proc.returncode == 2
    assert "it is not the project's environment" in proc.stderr and "source .venv/bin/activate" in proc.stderr
    assert "Traceback" not in proc.stderr


# Command-level modules: where each command's orchestration lives. New branches pile up in long functions there.
COMMAND_MODULES = ("cli.py", "commands/*.py", "sweeps/tune.py", "data/prepare.py", "registry/promote.py",
                   "registry/evaluate.py", "registry/bundle.py")
LONGEST_COMMAND_FUNCTION = 60


def _long_functions(paths, limit: int) -> list[str]:
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_in_the_command_modules_is_longer_than_60_lines():
    paths = sorted({p for pattern in COMMAND_MODULES for p in PACKAGE.glob(pattern)})
    assert len(paths) >= 8
    assert _long_functions(paths, LONGEST_COMMAND_FUNCTION) == []


def test_the_length_check_finds_a_long_function(tmp_path):
    (tmp_path / "long.py").write_text("def f():\n" + "    x = 1\n" * 60 + "\n\ndef g():\n" + "    x = 1\n" * 59)
    assert _long_functions([tmp_path / "long.py"], LONGEST_COMMAND_FUNCTION) == ["long.py:1 f (61 lines)"]


def test_run_training_is_a_straight_line():
    """No branch on the kind of run or the rank: those are the finish's and ``run_as_job``'s."""
    source = (PACKAGE / "commands" / "train.py").read_text()
    tree = ast.parse(source)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for name in ("run_training", "lead_training"):
        node = functions[name]
        assert node.end_lineno - node.lineno + 1 <= 30, name
        assert not [n for n in ast.walk(node) if isinstance(n, (ast.If, ast.IfExp, ast.For, ast.While))], name


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _readme_layers() -> list[str]:
    readme = (REPO / "README.md").read_text()
    found = re.search(r"Layers import downwards only \(([^)]*)\)", readme)
    assert found, "the README's 'Layers import downwards only (...)' sentence is missing"
    return [name.strip() for name in found.group(1).split("->")]


def test_the_readmes_layer_list_is_the_import_graph():
    layers = _readme_layers()
    rank = {name: k for k, name in enumerate(layers)}
    graph = _module_graph()
    packages = {_package_of(m) for m in graph} - {"", "__main__"}
    assert packages == set(layers), f"layers the README does not list or lists wrongly: {packages ^ set(layers)}"
    upward = sorted({f"{_package_of(m)} -> {_package_of(d)}" for m, deps in graph.items() for d in deps
                     if _package_of(m) in rank and _package_of(d) in rank
                     and rank[_package_of(d)] > rank[_package_of(m)]})
    assert upward == [], f"imports against the README's layer order: {upward}"


def test_the_mlproject_file_is_written_from_the_commands_requests():
    """Options are declared once: the MLproject is generated from the request types (regenerate it with
    `python -m seizure_mlflow.commands.entry_points > MLproject`)."""
    from seizure_mlflow.commands.entry_points import mlproject_text

    assert (REPO / "MLproject").read_text() == mlproject_text()


def _entry_point_argv(spec: dict, values: dict[str, str]) -> list[str]:
    import shlex

    command = " ".join(spec["command"].split()).split("python -m seizure_mlflow ", 1)[1]
    for name, value in values.items():
        command = command.replace("{" + name + "}", shlex.quote(value))
    return shlex.split(command)


def _probe_value(kind: str, choices, k: int) -> tuple[str, object]:
    """A text that differs from the default, and the value it must arrive as."""
    if choices:
        return choices[-1], choices[-1]
    return {"int": (str(3 + k), 3 + k), "int?": (str(3 + k), 3 + k), "float": (f"0.{k + 1}5", float(f"0.{k + 1}5")),
            "float?": (f"0.{k + 1}5", float(f"0.{k + 1}5")), "bool": ("true", True),
            "words": ("0.5 0.25 0.25", ("0.5", "0.25", "0.25"))}.get(kind, (f"probe-{k}", f"probe-{k}"))


def _entry_points() -> list[str]:
    from seizure_mlflow.commands.entry_points import COMMANDS

    return [c.entry_point.name for c in COMMANDS if c.entry_point]


@pytest.mark.parametrize("entry", _entry_points())
def test_every_mlproject_parameter_of_every_entry_point_reaches_its_command(entry):
    """Each parameter, given a value unlike its default, arrives in the command's request as that value."""
    from seizure_mlflow.cli import request_of
    from seizure_mlflow.commands.entry_points import COMMANDS
    from seizure_mlflow.options import flag_of, kind_of, option_fields

    spec = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"][entry]
    command = next(c for c in COMMANDS if c.entry_point and c.entry_point.name == entry)
    fields = {flag_of(f)[2:].replace("-", "_"): (f, False) for f in option_fields(command.request)}
    if command.request is not TrainParams:
        fields.update({f.name: (f, True) for f in option_fields(TrainParams)} if command.train_options else {})
    else:
        fields = {f.name: (f, True) for f in option_fields(TrainParams)}
    assert set(spec["parameters"]) <= set(fields), set(spec["parameters"]) - set(fields)
    texts, expected = {}, {}
    for k, name in enumerate(spec["parameters"]):
        f, is_train = fields[name]
        choices = f.metadata["option"].choices
        if name in ("model_uri",):
            texts[name], expected[name] = "runs:/probe/model", "runs:/probe/model"
        elif name in ("monitor",):
            texts[name], expected[name] = "val/segm/AP", "val/segm/AP"
        elif name in ("val_max_images",):
            texts[name], expected[name] = "17", "17"
        elif name == "opts":
            texts[name], expected[name] = "MODEL.X 'a b'", ("MODEL.X", "a b")
        elif name in ("dist_url",):
            texts[name], expected[name] = "tcp://127.0.0.1:1", "tcp://127.0.0.1:1"
        elif name in ("model_name",):
            texts[name], expected[name] = "probe-name", "probe-name"
        elif name in ("num_machines", "machine_rank", "num_processes", "folds"):
            texts[name], expected[name] = {"num_machines": ("2", 2), "machine_rank": ("1", 1), "num_processes": ("1", 1),
                                           "folds": ("4", 4)}[name]
        elif name in ("val_precision", "seed", "sampler_seed", "fold_seed", "frames_per_video", "num_videos"):
            texts[name], expected[name] = str(5 + k if name != "val_precision" else 0.125), (5 + k if name != "val_precision" else 0.125)
        elif name in ("workers",):
            texts[name], expected[name] = "2", 2
        else:
            texts[name], expected[name] = _probe_value(kind_of(f), choices, k)
        if kind_of(f) == "bool" and name == "system_metrics":
            texts[name], expected[name] = "false", False
    if "format" in texts:  # a sample-data format other than trace, so that trace-only options stay unset
        texts["format"], expected["format"] = "per-video", "per-video"
    if "test_json" in texts:
        texts["test_images"], expected["test_images"] = "probe-images", "probe-images"
    if "target_false_alarms_per_hour" in texts:
        texts["truth"], expected["truth"] = "probe-truth", "probe-truth"
    if "ray_address" in texts:
        texts["engine"], expected["engine"] = "ray", "ray"
    args = build_parser().parse_args(_entry_point_argv(spec, texts))
    request = request_of(args)
    for name, value in expected.items():
        f, is_train = fields[name]
        holder = request if not is_train or command.request is TrainParams else request.base
        assert getattr(holder, f.name) == value, name


def test_no_two_options_of_a_command_share_a_name():
    """A training command's own options and TrainParams' land in one argparse namespace."""
    from seizure_mlflow.commands.entry_points import COMMANDS
    from seizure_mlflow.options import option_fields

    train = {f.name for f in option_fields(TrainParams)}
    for command in COMMANDS:
        if command.train_options:
            assert not {f.name for f in option_fields(command.request)} & train, command.name


def test_every_number_option_of_every_command_takes_only_finite_ascii_numbers():
    """The parser applies one number rule to every int/float option, so a new option cannot miss it."""
    import argparse

    from seizure_mlflow.cli import build_parser

    numeric = []
    for subcommand, sub in next(a for a in build_parser()._actions
                                if isinstance(a, argparse._SubParsersAction)).choices.items():
        for action in sub._actions:
            kind = getattr(action.type, "__name__", "")
            if kind in ("int", "float"):
                numeric.append((subcommand, action.option_strings[0], kind))
                for bad in ("nan", "inf", "٣", "1e999"):
                    if kind == "int" and bad in ("inf", "1e999"):
                        continue
                    with pytest.raises(argparse.ArgumentTypeError):
                        action.type(bad)
    assert ("trace", "--fps", "float") in numeric and ("sample-data", "--width", "int") in numeric


def test_promote_refuses_a_name_the_registry_would_refuse(capsys):
    from seizure_mlflow.cli import main

    assert main(["promote", "--model-name", "team/probe"]) == 2
    assert "--model-name: must be a registered model name" in capsys.readouterr().err


OWNED_LITERALS = {
    "outputs/training_folder.py": ("last_checkpoint", "model_best", "model_final", "stop.json", "validation_sample.json",
                                   "metrics.json", "model_improvement_", "metrics_spool", "mlflow_run.json",
                                   ".seizure-mlflow.lock"),
    "metrics/names.py": ("val/", "val_full/", "test/", "train/", "best/", "last_val/", "szcore/", "_se", "total_loss",
                        "best_trial"),
}


def _owned_literals_outside_their_owner(root: Path) -> list[str]:
    """String constants (not docstrings, not prose: no white space) that spell a training-folder file name or a
    metric-name part, in any module but the one that owns it."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docstrings:
                continue
            text = node.value
            if not text or any(c.isspace() for c in text):
                continue
            for owner, literals in OWNED_LITERALS.items():
                if relative != owner and any(text == lit or (lit.endswith(("/", "_")) and text.startswith(lit))
                                             or (lit == "_se" and text.endswith(lit)) for lit in literals):
                    found.append(f"{relative}:{node.lineno} {text!r} (owned by {owner})")
    return found


def test_training_folder_names_and_metric_names_live_in_one_module_each():
    assert _owned_literals_outside_their_owner(PACKAGE) == []


def test_the_owned_literal_check_finds_a_stray_name(tmp_path):
    (tmp_path / "stray.py").write_text('"""Docstring: model_best.pth and val/total_loss are fine here."""\n'
                                       'A = "val/segm/AP"\nB = "last_checkpoint"\nC = "a help text about val/x"\n')
    assert [row.split(" (")[0] for row in _owned_literals_outside_their_owner(tmp_path)] == [
        "stray.py:2 'val/segm/AP'", "stray.py:3 'last_checkpoint'"]
