"""What every SentimentOps WorkflowTemplate shares (training, rollout, triggers): the package version as a label
and the default image tag, the parameters the chart sets from values, the template-level settings, the exit
handler, and the container paths of artifacts.

The definitions import this module; none imports another definition upward (tests/contract/test_layout.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from hera.workflows import Container, Env, Parameter, Resources, RetryStrategy, SecretEnv
from hera.workflows.models import (
    Backoff,
    Metadata,
    Mutex,
    PodGC,
    PodSecurityContext,
    Synchronization,
    TTLStrategy,
)

from sentimentops.steps.core.errors import NOT_RETRIED as NOT_RETRIED_EXIT_CODES
from sentimentops.steps.core.manifests import IMAGE_ENV

# Artifacts live at fixed container paths; the args reference them through {{inputs/outputs.artifacts.X.path}},
# so the local runner can map them into its run folder without knowing these strings.
INPUT_ROOT = "/tmp/sentimentops/inputs"
OUTPUT_ROOT = "/tmp/sentimentops/outputs"


def package_version() -> str:
    """The installed `sentimentops` version (the `app.kubernetes.io/version` label and the default image tag)."""
    try:
        return version("sentimentops")
    except PackageNotFoundError:  # a bare checkout without `pip install -e .`
        return "0.0.0"


@dataclass(frozen=True)
class WorkflowParam:
    name: str
    default: str
    description: str
    enum: tuple[str, ...] = ()


PROFILE_PARAM = WorkflowParam("profile", "gke", "Config profile exported as SENTIMENTOPS_PROFILE (gke in the cluster)",
                              ("gke", "local"))
REASON_PARAM = WorkflowParam("reason", "manual",
                             "Why this run started (manual, cron, drift: ...); exported as SENTIMENTOPS_RUN_REASON")
DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"  # kube-prometheus-stack's operated Service

# Where a deployment's locations come from. The rendered defaults are neutral (no project, registry or bucket is
# written here): the chart replaces `spec.arguments.parameters[name == P].value` in every WorkflowTemplate from its
# values, and a Workflow submitted from a template (cron, Sensor, `argo submit --from`) inherits those defaults.
# An empty value reaches the stage as an empty SENTIMENTOPS_* variable, which counts as unset
# (steps/core/config.py): the profile's value applies.
IMAGE_REGISTRY = WorkflowParam("image-registry", "", "Registry holding the per-stage images sentimentops-<stage> "
                               "(the chart sets it from image.registry)")
MLFLOW_TRACKING_URI = WorkflowParam("mlflow-tracking-uri", "", "MLflow tracking + registry URI, exported as "
                                    "SENTIMENTOPS_MLFLOW_TRACKING_URI (empty: the profile's)")
MLFLOW_ARTIFACTS_DESTINATION = WorkflowParam(
    "mlflow-artifacts-destination", "", "The MLflow server's --artifacts-destination (e.g. gs://bucket/artifacts), "
    "exported to register as SENTIMENTOPS_MLFLOW_ARTIFACTS_DESTINATION (empty: storage URI = the download URI)")
DVC_REMOTE = WorkflowParam("dvc-remote", "", "DVC remote the dataset snapshot is pushed to, exported to version as "
                           "SENTIMENTOPS_VERSION_REMOTE (empty: the profile's)")
PRODUCTION_STORE = WorkflowParam(
    "production-store", "", "Production data store (captured requests and feedback labels: gs://BUCKET[/PREFIX]) "
    "whose labelled feedback ingest merges into the training data, exported to ingest as "
    "SENTIMENTOPS_PRODUCTION_STORE (the chart sets it from production.store; empty: the profile's, none on gke)")
PROMETHEUS_URL = WorkflowParam("prometheus-url", DEFAULT_PROMETHEUS, "Prometheus HTTP API the canary analysis queries")
INFERENCE_SERVICE = WorkflowParam("inference-service", "sentiment", "Name of the InferenceService in this namespace")
ARGO_UI_URL = WorkflowParam("argo-ui-url", "", "Argo UI base URL for the link in the Slack message (empty: no link)")


def image_params(pkg_version: str) -> list[WorkflowParam]:
    """Where every template's stage images come from (<image-registry>/sentimentops-<stage>:<image-tag>)."""
    return [IMAGE_REGISTRY,
            WorkflowParam("image-tag", pkg_version, "Tag of the per-stage images (defaults to the package version)")]


def stage_image(stage: str, scope: str = "workflow.parameters") -> str:
    """`<registry>/sentimentops-<stage>:<tag>` from the registry and tag parameters in `scope` (the workflow's, or
    a template's own inputs in the rollout template, which takes every value as an input)."""
    return f"{{{{{scope}.image-registry}}}}/sentimentops-{stage}:{{{{{scope}.image-tag}}}}"


def lineage_env(image: str) -> list[Env]:
    """What a step records about where it ran (steps/core/manifests.py `image`): SENTIMENTOPS_IMAGE, the very
    expression of the container's `image`. The digest the kubelet pulled comes from the step's own pod status
    (steps/core/podimage.py; `get pods` in the chart's executor Role), found by HOSTNAME, which Kubernetes sets to
    the pod's name: no downward-API variable, whose `valueFrom` the local runner refuses (workflows/argo/spec.py
    runs only what exists on this machine)."""
    return [Env(name=IMAGE_ENV, value=image)]


def labels(component: str, pkg_version: str) -> dict[str, str]:
    """The version is a label, never part of a name: the chart, the cron, the Sensor and the rollout's templateRef
    name templates that do not change with a release."""
    return {"app.kubernetes.io/name": "sentimentops", "app.kubernetes.io/component": component,
            "app.kubernetes.io/version": pkg_version}


def template_settings(component: str, pkg_version: str, params: list[WorkflowParam], service_account: str,
                      mutex: str | None) -> dict:
    """What every SentimentOps WorkflowTemplate shares: labels (also on every Workflow started from it, so `argo
    list -l` finds runs by version), its parameters, one run at a time when `mutex` is set (a workflow-level
    mutex; the rollout holds its own at template level instead), a success kept a day (the UI link in the Slack
    message stays valid) and a failure a week, successful pods removed at once (failed ones stay for `kubectl
    logs`), the chart's Workload Identity ServiceAccount, and pods that refuse root (the stage images run as uid
    10001, images/; checkov CKV_ARGO_1/2)."""
    meta = labels(component, pkg_version)
    settings = {
        "labels": meta,
        "arguments": [Parameter(name=p.name, value=p.default, description=p.description, enum=list(p.enum) or None)
                      for p in params],
        "workflow_metadata": Metadata(labels=meta),
        "ttl_strategy": TTLStrategy(seconds_after_success=86400, seconds_after_failure=604800),
        "pod_gc": PodGC(strategy="OnPodSuccess"),
        "service_account_name": service_account,
        "security_context": PodSecurityContext(run_as_non_root=True, run_as_user=10001, run_as_group=10001,
                                               fs_group=10001),
    }
    if mutex:
        settings["synchronization"] = Synchronization(mutexes=[Mutex(name=mutex)])
    return settings


# The exit handler (`onExit: notify`): one Slack message per run with the outcome, the reason, the duration, the
# failed tasks and the Argo UI link (`sentimentops notify`, steps/notify.py). Argo runs it after the DAG whatever
# the outcome, with {{workflow.status}} (Succeeded | Failed | Error) and {{workflow.failures}} (a JSON list of the
# failed nodes: displayName, message, templateName, phase, podName, finishedAt) set (docs/variables.md, "Exit
# Handler"). Its image is the rollout's (the small one with the notify code); the webhook URL comes from an
# optional Secret key, so a namespace without Slack still runs the handler, which then logs the message.
NOTIFY_TEMPLATE = "notify"
SLACK_SECRET = "sentiment-alertmanager-slack"  # the chart maps it to secrets.alertmanagerSlack
SLACK_SECRET_KEY = "webhook-url"
NOTIFY_ARGS = ("notify", "--workflow", "{{workflow.name}}", "--namespace", "{{workflow.namespace}}",
               "--status", "{{workflow.status}}", "--failures", "{{workflow.failures}}",
               "--reason", "{{workflow.parameters.reason}}", "--duration", "{{workflow.duration}}",
               "--ui-url", "{{workflow.parameters.argo-ui-url}}")


def notify_container() -> Container:
    """The `notify` exit handler template (inside an open WorkflowTemplate context)."""
    return Container(
        name=NOTIFY_TEMPLATE,
        image=stage_image("rollout"),
        command=["sentimentops"],
        args=list(NOTIFY_ARGS),
        env=[Env(name="SENTIMENTOPS_PROFILE", value="{{workflow.parameters.profile}}"),
             SecretEnv(name="SENTIMENTOPS_NOTIFY_SLACK_WEBHOOK_URL", secret_name=SLACK_SECRET,
                       secret_key=SLACK_SECRET_KEY, optional=True)],
        resources=Resources(cpu_request="50m", memory_request="128Mi"),
        # A Slack failure never fails the handler (it logs and exits 0); only a lost pod is worth another try.
        retry_strategy=RetryStrategy(limit="2", retry_policy="OnError",
                                     backoff=Backoff(duration="10s", factor="2", cap="1m")),
    )


# Argo's retry expression (expr-lang, not govaluate; workflows/argo/expressions.py evaluates it in the tests):
# retry a pod error (eviction, preemption, a lost node: phase Error, exit code -1) or a stage's exit status above
# the deterministic ones, never a data error (1) or a usage error (2): steps/core/errors.py holds that table and the
# bound below is generated from it. Nor a pod its template's activeDeadlineSeconds killed: the kubelet's message
# "Pod was active on the node longer than the specified deadline" becomes the node's (Argo's inferFailedReason),
# and a hung step would hang again, each retry with a fresh deadline. With retryPolicy Always, Argo retries only
# when the policy and the expression both allow it (operator.go processNodeRetries).
assert set(NOT_RETRIED_EXIT_CODES) == set(range(1, max(NOT_RETRIED_EXIT_CODES) + 1)), "expression needs 1..N"
DEADLINE_MESSAGE = "longer than the specified deadline"
NOT_RETRIED = (f'(lastRetry.status == "Error" || asInt(lastRetry.exitCode) > {max(NOT_RETRIED_EXIT_CODES)})'
               f' && !(lastRetry.message contains "{DEADLINE_MESSAGE}")')


def retry(limit: int, policy: str, expression: str | None = None) -> RetryStrategy:
    # Exponential backoff 30 s, 60 s, ... capped at 5 min: long enough for a node to be replaced or a registry
    # or MLflow hiccup to pass, short enough not to stall a nightly run.
    return RetryStrategy(
        limit=str(limit),
        retry_policy=policy,
        expression=expression,
        backoff=Backoff(duration="30s", factor="2", cap="5m"),
    )
