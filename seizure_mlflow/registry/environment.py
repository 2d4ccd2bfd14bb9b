"""What a registered model needs to run where this project is not installed.

* **Code**: the inference part of this package only (``MODEL_CODE``: the pyfunc class, the predictor, the
  errors), staged as a small ``seizure_mlflow`` package and logged with MLflow's ``code_paths``; MLflow puts
  it on ``sys.path`` when the model loads. No training, tracking, stack or CLI code goes with it.
* **Requirements**: every distribution the model imports when it loads and predicts, pinned to the versions
  installed here, and Detectron2 as the exact checked, re-tagged wheel ``make setup`` installed, carried
  inside the model (``artifacts/sal_detectron2-...whl``) and named by that relative path, as MLflow's own
  "wheeled" models do; MLflow's environment managers resolve it inside the model folder, so an isolated
  environment (``--env-manager uv`` or ``virtualenv``, ``mlflow models build-docker``) installs it
  without GitHub.
"""

from __future__ import annotations

import shutil
import sys
from importlib import metadata
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
MODEL_CODE = ("__init__.py", "errors.py", "registry/__init__.py", "registry/model.py", "inference/__init__.py",
              "inference/predictor.py", "data/__init__.py", "data/masks.py",
              "data/frames.py", "lazy/__init__.py", "lazy/network.py", "lazy/spec.py")
DETECTRON2_WHEEL = "sal_detectron2-0.7.2-py3-none-any.whl"
WHEEL_ARTIFACT = "detectron2_wheel"
# What loading and predicting import: MLflow, torch, Detectron2's own needs (its wheel's metadata omits them).
RUNTIME_DISTRIBUTIONS = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pycocotools", "opencv-python-headless",
                         "PyYAML", "Pillow", "fvcore", "iopath", "yacs", "termcolor", "tabulate", "cloudpickle", "tqdm",
                         "omegaconf", "hydra-core", "packaging", "matplotlib", "setuptools")


def stage_model_code(folder: Path) -> Path:
    """Copy :data:`MODEL_CODE` into ``folder/seizure_mlflow``; returns that package folder (for ``code_paths``)."""
    package = folder / "seizure_mlflow"
    for relative in MODEL_CODE:
        target = package / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_ROOT / relative, target)
    return package


def detectron2_wheel() -> Path | None:
    """The wheel ``scripts/install_detectron2.sh`` installed and kept in this environment, if it is here."""
    path = Path(sys.prefix) / "share" / "seizure-mlflow" / "wheels" / DETECTRON2_WHEEL
    return path if path.is_file() else None


def pinned(names: tuple[str, ...] = RUNTIME_DISTRIBUTIONS) -> list[str]:
    """``name==version`` of each distribution as installed here (the bare name if it is not installed)."""
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def model_requirements(wheel_in_model: bool) -> list[str]:
    """The model's ``requirements.txt``: the pins, and Detectron2's wheel by its path inside the model."""
    detectron2 = [f"artifacts/{DETECTRON2_WHEEL}"] if wheel_in_model else []
    return pinned() + detectron2
