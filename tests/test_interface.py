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
from seizure_mlflow.config import default_text, param_fields

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
               for p in PACKAGE.rglob("*.py")}
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


@pytest.mark.parametrize("root", ["seizure_mlflow.evaluation", "seizure_mlflow.motion.pipeline",
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


def test_the_tune_entry_point_passes_every_parameter_to_its_cli_option():
    tune = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["tune"]
    options = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["tune"]._actions}
    for name, spec in tune["parameters"].items():
        dest = name
        assert dest in options, f"tune parameter {name} is no option of `seizure-mlflow tune`"
        assert f"{options[dest].option_strings[0]} {{{name}}}" in tune["command"], f"{name} is not passed on"
    passed = set(re.findall(r"(--[a-z-]+) \{(\w+)\}", tune["command"]))
    assert {name for _, name in passed} == set(tune["parameters"]), "a {parameter} the entry point does not declare"
    assert all(options[name].option_strings[0] == flag for flag, name in passed), "a parameter passed as another option"


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
