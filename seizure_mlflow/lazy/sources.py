"""Which LazyConfigs may run, and loading one.

A LazyConfig is code: Detectron2's ``LazyConfig.load`` executes a ``.py`` config and reads a lazy ``.yaml`` with
``yaml.unsafe_load``. The package runs, by default, only the configs it ships (:data:`PACKAGE_CONFIGS`) and
Detectron2's model-zoo configs (in the installed Detectron2); any other file needs ``trust_config_code``, and is
refused before any run exists otherwise. Loading happens only where a run is planned; everything after works on
the spec (see :mod:`seizure_mlflow.lazy.spec`).
"""

from __future__ import annotations

from pathlib import Path

from seizure_mlflow.errors import ConfigError

PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRUST_OPTION = "trust_config_code"
REQUIRED_NODES = ("model", "optimizer", "lr_multiplier", "dataloader.train")


def model_zoo_configs() -> Path:
    import detectron2.model_zoo

    return Path(detectron2.model_zoo.__file__).resolve().parent / "configs"


def is_lazy_file(path: str | Path) -> bool:
    """A ``.py`` config, or a YAML written by ``LazyConfig.save`` (``_target_`` keys, or Python tags that only
    ``yaml.unsafe_load`` reads)."""
    path = Path(path)
    if path.suffix == ".py":
        return True
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return "_target_" in text or "!!python/" in text


def is_trusted(path: str | Path) -> bool:
    """Under the package's own configs or the installed Detectron2's model zoo (links resolved)."""
    real = Path(path).resolve()
    return any(real.is_relative_to(place) for place in (PACKAGE_CONFIGS, model_zoo_configs()))


def load_lazy_config(path: str, name: str, trust_code: bool):
    """The LazyConfig at ``path`` (``name`` is how the user gave it), run only when trusted (:func:`is_trusted`)
    or when ``trust_code`` says so; a :class:`ConfigError` otherwise, and when it lacks a node the package needs."""
    if not trust_code and not is_trusted(path):
        raise ConfigError(
            f"{name} is a LazyConfig, which is code: loading it runs it with your rights (a .py file executes, a "
            "lazy .yaml is read with yaml.unsafe_load). Only the package's own configs "
            f"({', '.join(sorted(p.name for p in PACKAGE_CONFIGS.glob('*.py')))}) and Detectron2's model-zoo configs "
            f"run unasked. If you wrote it, or trust whoever did, pass {TRUST_OPTION} (--trust-config-code, "
            f"-P {TRUST_OPTION}=true); nothing was run", param="config")
    from detectron2.config import LazyConfig

    try:
        lazy = LazyConfig.load(str(path))
    except Exception as exc:  # a user's config can fail in any way; say which file and how
        raise ConfigError(f"{name}: loading the LazyConfig failed: {type(exc).__name__}: {exc}", param="config") from None
    missing = [node for node in REQUIRED_NODES if _select(lazy, node) is None]
    if missing:
        raise ConfigError(f"{name}: a LazyConfig to train needs {', '.join(REQUIRED_NODES)}; it has no "
                          f"{', '.join(missing)}", param="config")
    return lazy


def _select(lazy, dotted: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(lazy, dotted, default=None)
