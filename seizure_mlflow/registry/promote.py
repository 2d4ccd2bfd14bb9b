"""Champion/challenger promotion by test AP, paired over the test videos.

``promote(model_name, test, metric)`` with a test set: both versions are evaluated on it (a version already
evaluated on a file with the same digest is not evaluated again: its predictions are read back from that
evaluation's run), and they are compared on the *same* test videos: the difference of their pooled ``metric``
(default ``test/segm/AP``, challenger minus champion) and its paired 95% bootstrap interval (the same resampled
videos for both; see :func:`seizure_mlflow.evaluation.per_video_evidence`). The ``challenger`` replaces the
``champion`` only when the interval's lower end is above ``min_improvement`` (default 0); otherwise the champion
stays: ``kept-worse`` (lower), ``kept-tie`` (equal), ``kept-not-significant`` (higher, but not surely: the interval
reaches ``min_improvement``, or there are fewer than two test videos to resample). ``force`` promotes anyway and
says so in the record.

Without a test set the values recorded on the versions by earlier evaluations are compared, unpaired (no
interval: a strictly higher value promotes), and only if they come from the same test set. The decision, both
values, the difference and its interval, the number of videos and resamples are recorded as tags on both versions
(and as metrics in ``run_id``, the evaluation's run, when given) and printed.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric

from seizure_mlflow.data.checks import CocoSummary
from seizure_mlflow.errors import UserError
from seizure_mlflow.evaluation.detector import BOOTSTRAP_SEED, PREDICTIONS, RESAMPLES, video_matches
from seizure_mlflow.metrics.names import DEFAULT_TEST_METRIC as DEFAULT_METRIC, TEST_METRICS as METRICS
from seizure_mlflow.registry.evaluate import evaluate_and_record
from seizure_mlflow.registry.register import CHALLENGER, CHAMPION, EVALUATION_RUN_TAG, TEST_DIGEST_TAG, version_tag
from seizure_mlflow.registry.uris import detector_from_uri

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Decision:
    outcome: str  # no-champion | promoted | kept-worse | kept-tie | kept-not-significant | no-challenger
    champion: str | None  # the champion version after the decision
    challenger: str | None
    metric: str
    champion_value: float | None
    challenger_value: float | None
    interval: tuple[float, float] | None = None  # paired 95% interval of challenger - champion over videos
    videos: int = 0
    resamples: int = 0
    min_improvement: float = 0.0
    forced: bool = False

    @property
    def difference(self) -> float | None:
        if self.champion_value is None or self.challenger_value is None:
            return None
        return self.challenger_value - self.champion_value

    def message(self, model_name: str) -> str:
        values = (f" ({self.metric}: challenger {self.challenger_value:.2f} vs champion {self.champion_value:.2f}"
                  if self.difference is not None else "")
        if values and self.interval is not None:
            values += (f"; difference {self.difference:+.2f}, 95% interval {self.interval[0]:+.2f} to "
                       f"{self.interval[1]:+.2f} over {self.videos} test videos, {self.resamples} resamples")
        elif values and self.videos:
            values += f"; {self.videos} test video(s): too few for an interval"
        values += ")" if values else ""
        text = {
            "no-champion": f"{model_name} had no champion: version {self.champion} is now @champion",
            "promoted": (f"version {self.challenger} is promoted by --force and is now @champion" if self.forced
                         else f"version {self.challenger} is better and is now @champion"),
            "kept-worse": f"version {self.challenger} is worse; @champion stays version {self.champion}",
            "kept-tie": f"version {self.challenger} ties; @champion stays version {self.champion}",
            "kept-not-significant": (f"version {self.challenger} is not surely better by more than "
                                     f"{self.min_improvement:g} (the interval's lower end is not above it); @champion "
                                     f"stays version {self.champion} (--force promotes anyway)"),
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


def predictions_of(client: MlflowClient, model_name: str, version: str, test: CocoSummary) -> list[dict]:
    """The version's predictions on ``test``: from the run of its evaluation on this file (evaluated now if it has
    none)."""
    evaluate_version(client, model_name, version, test)
    run_id = client.get_model_version(model_name, version).tags[EVALUATION_RUN_TAG]
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, PREDICTIONS, tmp)).read_text())


def paired_interval(test: CocoSummary, champion: list[dict], challenger: list[dict], metric: str
                    ) -> tuple[float, float, tuple[float, float] | None, int]:
    """``(champion value, challenger value, the 95% interval of their difference or None, videos)`` on the same
    resampled test videos (:data:`~seizure_mlflow.evaluation.RESAMPLES`, seeded)."""
    _, task, key = metric.split("/")
    ours, theirs = (video_matches(test.json_path, predictions, (task,))[task] for predictions in (champion, challenger))
    before, after = ours.summary()[key], theirs.summary()[key]
    if len(ours.videos) < 2:
        return before, after, None, len(ours.videos)
    differences = [theirs.summary(counts)[key] - ours.summary(counts)[key]
                   for counts in ours.bootstrap(RESAMPLES, BOOTSTRAP_SEED)]
    low, high = np.percentile(differences, [2.5, 97.5])
    return before, after, (float(low), float(high)), len(ours.videos)


def promote(model_name: str, test: CocoSummary | None = None, metric: str = DEFAULT_METRIC,
            min_improvement: float = 0.0, force: bool = False, run_id: str | None = None) -> Decision:
    if metric not in METRICS:
        raise UserError(f"must be one of {', '.join(METRICS)}; got {metric!r}", param="metric")
    if not (math.isfinite(min_improvement) and min_improvement >= 0):
        raise UserError(f"must be a number >= 0 (AP points), got {min_improvement!r}", param="min_improvement")
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
        champion_value, challenger_value, interval, videos = paired_interval(
            test, predictions_of(client, model_name, champion, test),
            predictions_of(client, model_name, challenger, test), metric)
        digest = test.digest
        evidence = {"interval": interval, "videos": videos, "resamples": RESAMPLES if interval else 0,
                    "min_improvement": min_improvement}
        surely_better = interval is not None and interval[0] > min_improvement
        if force or surely_better:
            outcome = "promoted"
        elif challenger_value < champion_value:
            outcome = "kept-worse"
        elif challenger_value == champion_value:
            outcome = "kept-tie"
        else:
            outcome = "kept-not-significant"
        return _decide(client, model_name, Decision(outcome, challenger if outcome == "promoted" else champion,
                                                    challenger, metric, champion_value, challenger_value,
                                                    forced=force and not surely_better, **evidence),
                       champion, digest, run_id)
    champion_value, champion_digest = recorded_value(client, model_name, champion, metric)
    challenger_value, digest = recorded_value(client, model_name, challenger, metric)
    if champion_digest != digest:
        raise UserError(f"refusing to compare: champion version {champion} was evaluated on test set {champion_digest} "
                        f"and challenger version {challenger} on {digest}; evaluate both on one test set "
                        "(pass --test-json/--test-images)")
    better = challenger_value > champion_value
    outcome = ("promoted" if better or force
               else "kept-tie" if challenger_value == champion_value else "kept-worse")
    return _decide(client, model_name, Decision(outcome, challenger if outcome == "promoted" else champion, challenger,
                                                metric, champion_value, challenger_value, forced=force and not better),
                   champion, digest, run_id)


def _decide(client: MlflowClient, model_name: str, decision: Decision, champion: str, digest: str,
            run_id: str | None) -> Decision:
    """Move the aliases as ``decision`` says and record it on both versions (and in ``run_id``)."""
    if decision.outcome == "promoted":
        client.set_registered_model_alias(model_name, CHAMPION, decision.challenger)
        client.delete_registered_model_alias(model_name, CHALLENGER)
    for version in (decision.challenger, champion):
        _record(client, model_name, version, decision, digest)
    if run_id and decision.difference is not None:
        metrics = {"promotion/difference": decision.difference}
        if decision.interval is not None:
            metrics["promotion/ci_low"], metrics["promotion/ci_high"] = decision.interval
        client.log_batch(run_id, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in metrics.items()])
        client.set_tag(run_id, "seizure.promotion", decision.outcome)
    return decision


def _record(client: MlflowClient, model_name: str, version: str, decision: Decision, digest: str | None) -> None:
    tags = {"promotion_decision": decision.outcome, "promotion_metric": decision.metric}
    if decision.champion_value is not None:
        tags["promotion_champion_value"] = f"{decision.champion_value:.4f}"
        tags["promotion_challenger_value"] = f"{decision.challenger_value:.4f}"
        tags["promotion_difference"] = f"{decision.difference:.4f}"
    if decision.interval is not None:
        tags["promotion_ci_low"], tags["promotion_ci_high"] = (f"{v:.4f}" for v in decision.interval)
    if decision.videos:
        tags["promotion_videos"] = str(decision.videos)
        tags["promotion_resamples"] = str(decision.resamples)
        tags["promotion_min_improvement"] = f"{decision.min_improvement:g}"
    if decision.forced:
        tags["promotion_forced"] = "true"
    if digest:
        tags["promotion_test_digest"] = digest
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
