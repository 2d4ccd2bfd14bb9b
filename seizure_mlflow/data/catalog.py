"""Registration of checked COCO files in Detectron2's ``DatasetCatalog`` / ``MetadataCatalog``."""

from __future__ import annotations

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from seizure_mlflow.data.checks import CocoSummary


def register_coco(name: str, summary: CocoSummary) -> None:
    """(Re-)register ``name`` for a checked COCO file; safe to call again with another file."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, summary.json_path, summary.image_root)
    # Known before the (lazy) load, so that builders reading the metadata early see the classes.
    MetadataCatalog.get(name).set(thing_classes=summary.category_names)
