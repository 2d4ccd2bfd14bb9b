"""``evaluate`` (COCO AP of a model URI on a test set, recorded in MLflow) and ``promote`` (the challenger
becomes champion only when surely better on the same test videos)."""

from __future__ import annotations

from seizure_mlflow.commands.requests import EvaluateRequest, PromoteRequest

EVALUATION_TAGS = {"seizure.evaluation": "true"}


def run_evaluate(request: EvaluateRequest) -> int:
    from seizure_mlflow.sample.datasets import check_test_set
    from seizure_mlflow.evaluation.detector import summary_line
    from seizure_mlflow.registry.evaluate import evaluate_and_record
    from seizure_mlflow.registry.uris import detector_from_uri, registered_version
    from seizure_mlflow.tracking.run import active_run

    test = check_test_set(request.test_json, request.test_images)
    detector = detector_from_uri(request.model_uri)
    version = registered_version(request.model_uri)
    tags = {**EVALUATION_TAGS, "seizure.model_uri": request.model_uri, "seizure.test_digest": test.digest}
    if version:
        tags.update({"seizure.model_name": version[0], "seizure.model_version": version[1]})
    with active_run(run_name="evaluate", tags=tags) as run:
        result = evaluate_and_record(detector, test, run.info.run_id, version)
    print(f"{request.model_uri}: {summary_line(result)} (run {run.info.run_id})")
    return 0


def run_promote(request: PromoteRequest) -> int:
    from seizure_mlflow.data.checks import check_coco
    from seizure_mlflow.registry.promote import promote

    test = check_coco(request.test_json, request.test_images) if request.test_json else None
    decision = promote(request.model_name, test, request.metric, min_improvement=request.min_improvement,
                       force=request.force)
    print(decision.message(request.model_name))
    return 0
