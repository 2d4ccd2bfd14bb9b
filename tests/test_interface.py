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
