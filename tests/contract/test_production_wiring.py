"""The production store's wiring (issue 15), followed the way an operator would: terraform's production bucket and
its output -> values-gke.yaml production.store -> the predictor's SENTIMENTOPS_PRODUCTION_STORE (and its capture
rate) and the training template's production-store parameter -> ingest's SENTIMENTOPS_PRODUCTION_STORE; each
reader and writer runs as a Kubernetes ServiceAccount whose Google identity terraform grants exactly what it does
on that bucket (the predictor adds and reads parts, ingest and the rollout read them), and captured texts expire.

Every name is read from the files; the settings the variables land in are the settings classes' own fields."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import wiring_refs as w
import yaml

from sentimentops.steps.core.config import CommonSettings, load_profile
from sentimentops.steps.ingest import IngestSettings
from sentimentops.workflows.definitions import training

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sentimentops"
STORE_ENV, RATE_ENV = "SENTIMENTOPS_PRODUCTION_STORE", "SENTIMENTOPS_SERVE_CAPTURE_RATE"
PARAM = training.PRODUCTION_STORE.name


@pytest.fixture(scope="module")
def tf() -> w.Terraform:
    return w.Terraform.load(REPO / "terraform")


@pytest.fixture(scope="module")
def chart(tmp_path_factory) -> Path:
    return w.chart_copy(tmp_path_factory.mktemp("production-wiring"))


@pytest.fixture(scope="module")
def gke_values() -> dict:
    return yaml.safe_load((CHART / "values-gke.yaml").read_text())


@pytest.fixture(scope="module")
def gke(chart, gke_values) -> list[dict]:
    return w.render(chart, w.deep_merge(gke_values, {"inferenceService": {"storageUri": "gs://m/1",
                                                                         "modelVersion": "1"}}))


def predictor_env(docs: list[dict]) -> dict[str, str]:
    runtime = w.by_kind(docs, "ServingRuntime")["sentimentops"]
    container = next(c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container")
    return {e["name"]: e.get("value") for e in container["env"]}


def training_template(docs: list[dict]) -> dict:
    return w.by_kind(docs, "WorkflowTemplate")[training.TEMPLATE_NAME]


def test_the_env_names_are_the_settings_fields():
    from sentimentops.steps.serve.server import ServeSettings

    assert "production_store" in CommonSettings.model_fields and STORE_ENV == "SENTIMENTOPS_PRODUCTION_STORE"
    assert ServeSettings.section == "serve" and "capture_rate" in ServeSettings.model_fields
    assert issubclass(IngestSettings, CommonSettings)
    # Empty in the chart is unset (steps/core/config.py): the gke profile's value must then mean "no store".
    assert load_profile("gke")["common"]["production_store"] == ""
    assert CommonSettings.model_fields["production_store"].default == "{home}/production"  # the local runner's


def test_terraform_production_bucket_expires_captures_and_is_the_output_the_values_name(tf, gke_values):
    bucket = tf.locals["buckets"]["production"]
    assert bucket["prefix_days"] == {"captures/": "${var.capture_retention_days}"}
    variable = tf.variables["capture_retention_days"]
    assert variable["type"] in ("number", "${number}") and variable["default"] == 30 and variable.get("validation")
    data = tf.resources("google_storage_bucket")["data"]
    rules = [r for r in data["dynamic"] if "lifecycle_rule" in r]
    prefixed = [r["lifecycle_rule"] for r in rules if r["lifecycle_rule"]["for_each"] == "${each.value.prefix_days}"]
    assert prefixed and prefixed[0]["content"][0]["condition"][0]["matches_prefix"] == ["${lifecycle_rule.key}"]
    assert data["name"] == "${local.bucket_prefix}-${each.key}"
    assert tf.locals["production_store"] == '${"gs://${google_storage_bucket.data["production"].name}"}' or \
        tf.locals["production_store"] == 'gs://${google_storage_bucket.data["production"].name}'
    outputs = tf.outputs()
    assert outputs["production_store"]["value"] == "${local.production_store}"
    chart_values = outputs["chart_values"]["value"]
    assert chart_values["production"] == {"store": "${local.production_store}"}
    # values-gke.yaml: the placeholder prefix + "-" + the bucket key, as terraform names it
    assert gke_values["production"]["store"] == "gs://your-project-id-production"


def test_terraform_grants_each_identity_what_it_does_on_the_production_bucket(tf, gke_values):
    grants = [g for g in tf.locals["bucket_grants"].values() if g["bucket"] == "production"]
    assert sorted((g["sa"], g["role"]) for g in grants) == [
        ("serving", "roles/storage.objectCreator"), ("serving", "roles/storage.objectViewer"),
        ("training", "roles/storage.objectViewer")]  # the rollout reads feedback through Prometheus, not here
    roles = tf.locals["workload_roles"]
    for sa in {g["sa"] for g in grants}:  # the KSA terraform binds is the chart's, and its GSA is values-gke's
        assert roles[sa]["ksa"] == gke_values["serviceAccounts"][sa]["name"], sa
        assert gke_values["serviceAccounts"][sa]["gcpServiceAccount"].startswith(f"so-{sa}@"), sa


def test_the_predictor_writes_the_store_of_the_values_as_the_serving_identity(gke, gke_values):
    env = predictor_env(gke)
    assert env[STORE_ENV] == gke_values["production"]["store"]
    assert env[RATE_ENV] == "0"  # capture off unless asked for
    isvc = w.by_kind(gke, "InferenceService")["sentiment"]
    account = isvc["spec"]["predictor"]["serviceAccountName"]
    assert account == gke_values["serviceAccounts"]["serving"]["name"]
    ksa = w.by_kind(gke, "ServiceAccount")[account]
    assert ksa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == \
        gke_values["serviceAccounts"]["serving"]["gcpServiceAccount"]


def test_ingest_reads_the_store_of_the_values_in_every_retrain(gke, gke_values):
    template = training_template(gke)
    params = {p["name"]: p.get("value") for p in template["spec"]["arguments"]["parameters"]}
    assert params[PARAM] == gke_values["production"]["store"]
    ingest = next(t for t in template["spec"]["templates"] if t["name"] == "ingest")
    env = {e["name"]: e.get("value") for e in ingest["container"]["env"]}
    assert env[STORE_ENV] == f"{{{{workflow.parameters.{PARAM}}}}}"
    # the training template runs as the training identity terraform lets read the bucket
    assert template["spec"]["serviceAccountName"] == gke_values["serviceAccounts"]["training"]["name"]
    # the cron and the Sensor pass only `reason`: they inherit the template's default, the chart's store
    for kind in ("CronWorkflow", "Sensor"):
        for doc in w.by_kind(gke, kind).values():
            assert PARAM not in yaml.safe_dump(doc), kind


def test_capture_rate_and_store_follow_their_values_and_default_to_off(chart):
    base = {"inferenceService": {"storageUri": "gs://m/1", "modelVersion": "1"}}
    default = predictor_env(w.render(chart, base))
    assert default[STORE_ENV] == "" and default[RATE_ENV] == "0"
    on = w.deep_merge(base, {"inferenceService": {"capture": {"rate": 0.1}}, "production": {"store": "gs://prod-bucket"}})
    env = predictor_env(w.render(chart, on))
    assert env[RATE_ENV] == "0.1" and env[STORE_ENV] == "gs://prod-bucket"
    assert float(env[RATE_ENV]) == 0.1 and re.fullmatch(r"gs://[a-z0-9._-]+(/.*)?", env[STORE_ENV])


def test_feedback_for_ids_another_replica_captured_is_deferred_in_the_cluster(chart, gke):
    """Several replicas answer behind one address: the chart defers labels for ids a replica did not capture (they
    reach ingest through the store), while the setting's own default (one local predictor) refuses them."""
    import json
    import typing

    from sentimentops.steps.serve.server import ServeSettings

    field = ServeSettings.model_fields["feedback_unknown_ids"]
    assert field.default == "reject"
    schema = json.loads((CHART / "values.schema.json").read_text())
    choices = schema["properties"]["inferenceService"]["properties"]["capture"]["properties"]["unknownIds"]["enum"]
    assert sorted(choices) == sorted(typing.get_args(field.annotation))
    assert predictor_env(gke)["SENTIMENTOPS_SERVE_FEEDBACK_UNKNOWN_IDS"] == "defer"
    base = {"inferenceService": {"storageUri": "gs://m/1", "modelVersion": "1"}}
    assert predictor_env(w.render(chart, base))["SENTIMENTOPS_SERVE_FEEDBACK_UNKNOWN_IDS"] == "defer"
    one = w.deep_merge(base, {"inferenceService": {"capture": {"unknownIds": "reject"}}})
    assert predictor_env(w.render(chart, one))["SENTIMENTOPS_SERVE_FEEDBACK_UNKNOWN_IDS"] == "reject"
    with pytest.raises(Exception, match="unknownIds"):
        w.render(chart, w.deep_merge(base, {"inferenceService": {"capture": {"unknownIds": "drop"}}}))


def test_capture_without_a_store_fails_the_render_not_the_predictor(chart):
    values = {"inferenceService": {"storageUri": "gs://m/1", "modelVersion": "1", "capture": {"rate": 0.5}}}
    with pytest.raises(Exception, match="production.store"):
        w.render(chart, values)


def test_batch_scoring_has_a_bucket_its_identity_may_read_and_write(tf, gke_values):
    """sentiment-batch-score runs as the training identity; terraform's scores bucket (output batch_scoring_root) is
    the one it may read its input from and write its output to, and docs/batch-scoring.md points there."""
    from sentimentops.workflows.definitions import batch_score

    assert "scores" in tf.locals["buckets"]
    grants = [g for g in tf.locals["bucket_grants"].values() if g["bucket"] == "scores"]
    assert [(g["sa"], g["role"]) for g in grants] == [("training", "roles/storage.objectUser")]
    assert tf.outputs()["batch_scoring_root"]["value"] == "${local.batch_scoring_root}"
    assert "scores" in tf.locals["batch_scoring_root"]
    doc = batch_score.build().to_dict()
    assert doc["spec"]["serviceAccountName"] == tf.locals["workload_roles"]["training"]["ksa"] == \
        gke_values["serviceAccounts"]["training"]["name"]
    assert "batch_scoring_root" in (w.REPO / "docs" / "batch-scoring.md").read_text()


def test_the_batch_score_image_has_what_scoring_needs():
    """The image the batch-score template runs installs an extra with MLflow (the alias), ONNX Runtime and
    tokenizers (the CPU path) and google-cloud-storage (gs:// inputs and outputs)."""
    import tomllib

    from sentimentops.workflows.definitions import batch_score

    extras = tomllib.loads((w.REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    dockerfile = (w.REPO / "images" / f"{batch_score.IMAGE}.Dockerfile").read_text()
    extra = batch_score.IMAGE
    assert f"[{extra}]" in dockerfile or f"'{extra}'" in dockerfile or f"\"{extra}\"" in dockerfile, dockerfile
    closure, todo = set(), [extra]
    while todo:
        for dep in extras[todo.pop()]:
            if dep.startswith("sentimentops["):
                todo += dep[len("sentimentops["):-1].split(",")
            else:
                closure.add(dep.split("=")[0].split(">")[0].split("<")[0].split("[")[0].strip())
    # transformers brings tokenizers (the encoder scoring shares with the predictor)
    assert {"mlflow", "onnxruntime", "transformers", "google-cloud-storage"} <= closure, closure
