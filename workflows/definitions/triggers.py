"""Retraining triggers, defined in Hera: a CronWorkflow (the schedule) and an Argo Events webhook EventSource plus a
Sensor (drift) that submit the `sentiment-training` WorkflowTemplate with a `reason` parameter.

    Alertmanager DataDrift --webhook body--> EventSource sentiment-retrain (webhook :12000/retrain, bearer token)
    (or an operator: POST {"reason": ...})     -> EventBus default -> Sensor sentiment-retrain (filters, rate limit)
                                               -> Workflow from the template, arguments.parameters: reason
    CronWorkflow sentiment-training-cron ------> Workflow from the template, reason = cron

Both pass only `reason`: every other parameter is the template's default, which the chart sets from its values.
The reason reaches MLflow: the template exports it as SENTIMENTOPS_RUN_REASON and train/register tag the run
(`run.reason`). Two retrains never overlap: the template holds the `sentiment-training` mutex, and the cron's
concurrencyPolicy Forbid skips a tick while the previous scheduled run is still going. Locally,
`sentimentops drift webhook` plays the EventSource + Sensor (steps/drift/webhook.py).
"""

from __future__ import annotations

from hera.events.models import (
    ArgoWorkflowTrigger,
    ArtifactLocation,
    DataFilter,
    EventDependency,
    EventDependencyFilter,
    EventSource,
    EventSourceSpec,
    RateLimit,
    Sensor,
    SensorSpec,
    Service,
    Template,
    Trigger,
    TriggerParameter,
    TriggerParameterSource,
    TriggerTemplate,
    WebhookContext,
)
from hera.events.models.io.k8s.api.core.v1 import SecretKeySelector as EventsSecret
from hera.events.models.io.k8s.api.core.v1 import ServicePort as EventsPort
from hera.events.models.io.k8s.apimachinery.pkg.apis.meta.v1 import ObjectMeta as EventsMeta
from hera.workflows import CronWorkflow, Parameter, Workflow
from hera.workflows.models import Metadata, WorkflowTemplateRef

from sentimentops.workflows.definitions.common import labels, package_version
from sentimentops.workflows.definitions.training import TEMPLATE_NAME

NAME = "sentiment-retrain"            # EventSource and Sensor; the Service Argo Events creates: NAME-eventsource-svc
CRON_NAME = "sentiment-training-cron"
WEBHOOK_PORT = "12000"                # the Argo Events convention, and `sentimentops drift webhook`'s default port
WEBHOOK_PATH = "/retrain"
EVENT_NAME = "drift"
# Weekly, early Sunday in the team's timezone: fresh data every week, at the least busy hour for the GPU pool.
SCHEDULES = ["0 3 * * 0"]
TIMEZONE = "Europe/Amsterdam"
# A bearer token (Secret) guards the webhook: Alertmanager sends it (credentials_file), so does an operator.
WEBHOOK_SECRET = EventsSecret(name="sentiment-retrain-webhook", key="token")
SENSOR_SERVICE_ACCOUNT = "sentiment-retrain-sensor"  # needs RBAC to create Workflows (chart)
REASON_FALLBACK = "drift: webhook call without a reason"
DRIFT_ALERT = "DataDrift"  # the alert of charts/sentimentops/files/monitoring/rules whose route calls the webhook
# What the Sensor accepts (Argo Events pkg/sensors/dependencies/filter.go, filterData): a body whose firing alerts
# include DataDrift (Alertmanager's webhook: {"alerts": [{"status", "labels": {"alertname"}, ...}]}), or a body with
# a non-blank `reason`. Paths are gjson over the webhook event's data ({"header", "body"}); a string filter's
# values are regular expressions matched against the value's text, here the JSON list of the firing alerts' names.
# With the `or` operator the first passing filter admits the event; a path that does not exist (no `reason` in an
# Alertmanager body, no `alerts` in an operator's) counts as not passing. Anything else, a resolved-only
# notification included, is discarded and logged by the Sensor.
EVENT_FILTERS = EventDependencyFilter(
    data=[DataFilter(path='body.alerts.#(status=="firing")#.labels.alertname', type="string",
                     value=[f'"{DRIFT_ALERT}"']),
          DataFilter(path="body.reason", type="string", value=[r"\S"])],
    data_logical_operator="or",
)
# At most one submission per hour. Argo Events' rate limiter (go.uber.org/ratelimit, `Take()` in
# triggerWithRateLimit) spaces triggers out rather than dropping them: a burst of events becomes one retrain now and
# the rest an hour apart, each queued behind the `sentiment-training` mutex (and lost if the Sensor restarts). One
# drift episode reaches the webhook once a day at most (one caller: Alertmanager, grouped, with group_interval and
# repeat_interval of 24h on its retrain route), so the limit is a guard against a storm, not the deduplication.
RATE_LIMIT = RateLimit(unit="Hour", requests_per_unit=1)
# The reason from either body: drift watch sends {"reason": ...}; Alertmanager sends {"alerts": [{annotations:
# {summary}}]}. Go template with sprig (Argo Events dataTemplate); `.Input` is the event payload.
REASON_TEMPLATE = (
    "{{ if .Input.body.reason }}{{ .Input.body.reason | trunc 200 }}{{ else }}"
    "{{ $s := list }}{{ range .Input.body.alerts }}{{ if eq .status \"firing\" }}"
    "{{ $s = append $s .annotations.summary }}{{ end }}{{ end }}{{ join \"; \" $s | trunc 200 }}{{ end }}"
)


def _labels(component: str) -> dict[str, str]:
    return labels(component, package_version())


def cron() -> dict:
    """The scheduled retrain: the training template with reason=cron."""
    workflow = CronWorkflow(
        name=CRON_NAME,
        labels=_labels("training-schedule"),
        schedules=SCHEDULES,
        timezone=TIMEZONE,
        concurrency_policy="Forbid",
        # A missed tick (controller down) still runs if the controller is back within an hour, not days later.
        starting_deadline_seconds=3600,
        successful_jobs_history_limit=3,
        failed_jobs_history_limit=3,
        workflow_template_ref=WorkflowTemplateRef(name=TEMPLATE_NAME),
        workflow_metadata=Metadata(labels={"sentimentops.io/trigger": "cron"}),
        arguments=[Parameter(name="reason", value="cron")],
    )
    return workflow.to_dict()


def submitted_workflow() -> dict:
    """The Workflow the Sensor creates: the template by reference, only `reason` set (replaced from the event)."""
    workflow = Workflow(
        generate_name="sentiment-training-drift-",
        labels={"sentimentops.io/trigger": "drift"},
        workflow_template_ref=WorkflowTemplateRef(name=TEMPLATE_NAME),
        arguments=[Parameter(name="reason", value=REASON_FALLBACK)],
    )
    return workflow.to_dict()


def event_source() -> dict:
    source = EventSource(
        metadata=EventsMeta(name=NAME, labels=_labels("retrain-trigger")),
        spec=EventSourceSpec(
            service=Service(ports=[EventsPort(port=int(WEBHOOK_PORT), target_port=int(WEBHOOK_PORT))]),
        ),
    )
    doc = {"apiVersion": "argoproj.io/v1alpha1", "kind": "EventSource",
           **source.model_dump(by_alias=True, exclude_none=True, mode="json")}
    # Argo Events inlines WebhookContext in WebhookEventSource (`json:",inline"`); Hera models it as a nested
    # `webhook_context` field, which would serialise to a key the controller ignores.
    context = WebhookContext(endpoint=WEBHOOK_PATH, method="POST", port=WEBHOOK_PORT, auth_secret=WEBHOOK_SECRET)
    doc["spec"]["webhook"] = {EVENT_NAME: context.model_dump(by_alias=True, exclude_none=True, mode="json")}
    return doc


def sensor() -> dict:
    trigger = Trigger(
        rate_limit=RATE_LIMIT,
        template=TriggerTemplate(
            name="submit-training",
            argo_workflow=ArgoWorkflowTrigger(
                operation="submit",
                source=ArtifactLocation(resource=None),  # set below: the inline Workflow (K8SResource is free-form)
                parameters=[TriggerParameter(
                    src=TriggerParameterSource(dependency_name=EVENT_NAME, data_template=REASON_TEMPLATE,
                                               value=REASON_FALLBACK),
                    dest="spec.arguments.parameters.0.value")],
            ),
        ),
    )
    built = Sensor(
        metadata=EventsMeta(name=NAME, labels=_labels("retrain-trigger")),
        spec=SensorSpec(
            template=Template(service_account_name=SENSOR_SERVICE_ACCOUNT),
            dependencies=[EventDependency(name=EVENT_NAME, event_source_name=NAME, event_name=EVENT_NAME,
                                          filters=EVENT_FILTERS)],
            triggers=[trigger],
        ),
    )
    doc = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Sensor",
           **built.model_dump(by_alias=True, exclude_none=True, mode="json")}
    doc["spec"]["triggers"][0]["template"]["argoWorkflow"]["source"] = {"resource": submitted_workflow()}
    return doc
