"""seizure-mlflow: Detectron2 Mask R-CNN training, tracking and serving for seizure-monitoring video."""

__version__ = "0.1.0"
