"""Champion/challenger promotion by test AP.

``promote(model_name, test, metric)``: the ``challenger`` replaces the ``champion`` only if it is strictly
better on ``metric`` (default ``test/segm/AP``) on the same test set. With a test set, both versions are
evaluated on it (a version already evaluated on a file with the same digest is not evaluated again);
without one, the values recorded on the versions by earlier evaluations are compared, and only if they
come from the same test set. The decision and both values are recorded as tags on the challenger and
printed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient

from seizure_mlflow.data.checks import CocoSummary
from seizure_mlflow.errors import UserError
from seizure_mlflow.evaluation import METRICS, metric_name
from seizure_mlflow.registry.evaluate import evaluate_and_record
from seizure_mlflow.registry.register import CHALLENGER, CHAMPION, TEST_DIGEST_TAG, version_tag
from seizure_mlflow.registry.uris import detector_from_uri

logger = logging.getLogger(__name__)

DEFAULT_METRIC = metric_name("segm", "AP")


@dataclass(frozen=True)
class Decision:
    outcome: str  # no-champion | promoted | kept-worse | kept-tie | no-challenger
    champion: str | None  # the champion version after the decision
    challenger: str | None
    metric: str
    champion_value: float | None
    challenger_value: float | None

    def message(self, model_name: str) -> str:
        values = (f" ({self.metric}: challenger {self.challenger_value:.2f} vs champion {self.champion_value:.2f})"
                  if self.champion_value is not None and self.challenger_value is not None else "")
        text = {
            "no-champion": f"{model_name} had no champion: version {self.champion} is now @champion",
            "promoted": f"version {self.challenger} is better and is now @champion",
            "kept-worse": f"version {self.challenger} is worse; @champion stays version {self.champion}",
            "kept-tie": f"version {self.challenger} ties; @champion stays version {self.champion}",
            "no-challenger": f"{model_name} has no challenger; @champion stays version {self.champion}",
        }[self.outcome]
        return text + values


def evaluate_version(client: MlflowClient, model_name: str, version: str, test: CocoSummary) -> dict[str, float]:
    """The version's test metrics on ``test``: from its tags when they are for this file, else evaluated now."""
    tags = client.get_model_version(model_name, version).tags
    digest = test.digest
    if tags.get(TEST_DIGEST_TAG) == digest and all(version_tag(m) in tags for m in METRICS):
        return {m: float(tags[version_tag(m)]) for m in METRICS}
    detector = detector_from_uri(f"models:/{model_name}/{version}")
    tags = {"seizure.evaluation": "true", "seizure.model_name": model_name, "seizure.model_version": version,
            "seizure.test_digest": digest}
    with mlflow.start_run(run_name=f"evaluate {model_name} v{version}", nested=mlflow.active_run() is not None,
                          tags=tags) as run:
        result = evaluate_and_record(detector, test, run.info.run_id, (model_name, version))
    return result.metrics


def recorded_value(client: MlflowClient, model_name: str, version: str, metric: str) -> tuple[float, str]:
    tags = client.get_model_version(model_name, version).tags
    if version_tag(metric) not in tags or TEST_DIGEST_TAG not in tags:
        raise UserError(f"{model_name} version {version} has no recorded {metric}; run `seizure-mlflow evaluate "
                        f"--model-uri models:/{model_name}/{version}` or give a test set to compare on")
    return float(tags[version_tag(metric)]), tags[TEST_DIGEST_TAG]


def promote(model_name: str, test: CocoSummary | None = None, metric: str = DEFAULT_METRIC) -> Decision:
    if metric not in METRICS:
        raise UserError(f"must be one of {', '.join(METRICS)}; got {metric!r}", param="metric")
    client = MlflowClient()
    try:
        aliases = client.get_registered_model(model_name).aliases
    except mlflow.exceptions.MlflowException:
        raise UserError(f"no registered model named {model_name!r}") from None
    champion, challenger = aliases.get(CHAMPION), aliases.get(CHALLENGER)
    champion, challenger = (str(champion) if champion else None), (str(challenger) if challenger else None)
    if champion is None:
        if challenger is None:
            versions = client.search_model_versions(f"name = '{model_name}'")
            if not versions:
                raise UserError(f"{model_name} has no versions to promote")
            challenger = str(max(int(v.version) for v in versions))
        client.set_registered_model_alias(model_name, CHAMPION, challenger)
        if aliases.get(CHALLENGER):
            client.delete_registered_model_alias(model_name, CHALLENGER)
        decision = Decision("no-champion", challenger, challenger, metric, None, None)
        _record(client, model_name, challenger, decision, None)
        return decision
    if challenger is None or challenger == champion:
        return Decision("no-challenger", champion, None, metric, None, None)

    if test is not None:
        champion_value = evaluate_version(client, model_name, champion, test)[metric]
        challenger_value = evaluate_version(client, model_name, challenger, test)[metric]
        digest = test.digest
    else:
        champion_value, champion_digest = recorded_value(client, model_name, champion, metric)
        challenger_value, digest = recorded_value(client, model_name, challenger, metric)
        if champion_digest != digest:
            raise UserError(f"refusing to compare: champion version {champion} was evaluated on test set {champion_digest} "
                            f"and challenger version {challenger} on {digest}; evaluate both on one test set "
                            "(pass --test-json/--test-images)")
    if challenger_value > champion_value:
        client.set_registered_model_alias(model_name, CHAMPION, challenger)
        client.delete_registered_model_alias(model_name, CHALLENGER)
        decision = Decision("promoted", challenger, challenger, metric, champion_value, challenger_value)
    else:
        outcome = "kept-tie" if challenger_value == champion_value else "kept-worse"
        decision = Decision(outcome, champion, challenger, metric, champion_value, challenger_value)
    _record(client, model_name, challenger, decision, digest)
    return decision


def _record(client: MlflowClient, model_name: str, version: str, decision: Decision, digest: str | None) -> None:
    tags = {"promotion_decision": decision.outcome, "promotion_metric": decision.metric}
    if decision.champion_value is not None:
        tags["promotion_champion_value"] = f"{decision.champion_value:.4f}"
        tags["promotion_challenger_value"] = f"{decision.challenger_value:.4f}"
    if digest:
        tags["promotion_test_digest"] = digest
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
