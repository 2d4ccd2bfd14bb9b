"""Model code logged with each registered model ("models from code": nothing is pickled)."""

import mlflow.models

from seizure_mlflow.registry.model import SeizureDetectorModel

mlflow.models.set_model(SeizureDetectorModel())
