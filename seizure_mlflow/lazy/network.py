"""The network of a config: Detectron2's ``build_model`` for a yacs config, the ``model`` spec for a LazyConfig.

A run's yacs config carries a LazyConfig as ``LAZY.SPEC`` (JSON text of :mod:`seizure_mlflow.lazy.spec` data,
so that the config stays a plain CfgNode that processes, checkpoints and registered models pass around); no
config file is executed here. The network is built from modules of Detectron2 and torch only.
"""

from __future__ import annotations

import json
from typing import Any

from seizure_mlflow.lazy.spec import build

LAZY_KEY = "LAZY"
NETWORK_MODULES = ("detectron2.modeling.", "detectron2.layers.", "torch.nn.")


def lazy_spec(cfg) -> dict[str, Any] | None:
    """The LazyConfig spec a yacs config carries, or None for a yacs model."""
    node = cfg.get(LAZY_KEY) if hasattr(cfg, "get") else None
    if not node or not node.get("SPEC"):
        return None
    return json.loads(node.SPEC)


def build_network(cfg):
    """The untrained network of ``cfg`` on ``cfg.MODEL.DEVICE``."""
    spec = lazy_spec(cfg)
    if spec is None:
        from detectron2.modeling import build_model

        return build_model(cfg)
    import torch

    model = build(spec["model"], NETWORK_MODULES, "the LazyConfig's model")
    return model.to(torch.device(cfg.MODEL.DEVICE))
