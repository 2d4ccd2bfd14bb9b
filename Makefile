# `make demo` and `make test` work on a fresh clone: both run `make setup` first, which builds .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
export MLFLOW_DISABLE_TELEMETRY ?= true
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup demo test test-unit test-fast bench stack-deps stack-up stack-down mlflow-only-env ui-deps ui-screenshots clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install_detectron2.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	PYTHON=$(PY) bash scripts/install_detectron2.sh
	$(PY) -m pip install -e '.[test,ray,cvat]'
	touch $(STAMP)

demo: setup
	seizure-mlflow sample-data
	mlflow run . --env-manager local --experiment-name seizure-demo

test: setup
	$(PY) -m pytest --durations=25

# The hooks' contracts on a toy model: seconds.
test-unit: setup
	$(PY) -m pytest tests/unit

# Daily work: everything but the tests marked slow (whole training runs, servers, several processes).
test-fast: setup
	$(PY) -m pytest -m "not slow"

# A team tracking stack on 127.0.0.1: PostgreSQL + SeaweedFS S3 + mlflow server (state in .stack/).
# A venv with nothing but MLflow and uv: what a colleague has before `mlflow run . --env-manager uv`
# (used by the test that builds the project's environment from its own files).
MLFLOW_ONLY := .venv-mlflow-only
mlflow-only-env: $(MLFLOW_ONLY)/.done

$(MLFLOW_ONLY)/.done:
	test -x $(MLFLOW_ONLY)/bin/python || python3 -m venv $(MLFLOW_ONLY)
	$(MLFLOW_ONLY)/bin/python -m pip install mlflow==3.17.2 uv
	touch $@

# A real browser for the UI test and the screenshots in docs/images (Debian's chromium; Playwright is a test extra).
ui-deps:
	command -v chromium >/dev/null 2>&1 || (test "$$(id -u)" -eq 0 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  || echo "install Chromium (Debian: apt-get install chromium) for the UI test and screenshots"

ui-screenshots: setup ui-deps
	$(PY) scripts/ui_screenshots.py --out docs/images

stack-deps:
	bash scripts/install_stack_deps.sh

stack-up: setup stack-deps
	$(PY) -m seizure_mlflow.stack.local up

stack-down:
	$(PY) -m seizure_mlflow.stack.local down

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf output mlruns mlflow.db data/sample
