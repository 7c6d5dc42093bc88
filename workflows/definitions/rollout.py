"""The canary rollout, defined in Hera: deploy-canary -> analyse -> promote | rollback.

One WorkflowTemplate, `sentiment-rollout`, whose entrypoint DAG template `rollout` serves two callers:
- a rollout on its own (`argo submit --from workflowtemplate/sentiment-rollout`: a manual re-roll, a rollback
  drill): Argo passes the workflow's arguments to the entrypoint's inputs of the same names;
- the training DAG (workflows/definitions/training.py), after `register`, when the promotion policy passed
  (`promoted == true`) and the `rollout` parameter is `canary`, through
  `templateRef: {name: sentiment-rollout, template: rollout}` (Argo resolves the referenced template, its
  `synchronization` included, from the WorkflowTemplate in the namespace).
So the `rollout` template takes every value it needs as `inputs.parameters` and its steps read only their own
inputs: under a templateRef, `{{workflow.parameters.*}}` would name the *caller's* parameters. It holds the
`sentiment-rollout` mutex at template level, so every caller holds it: two rollouts never patch the
InferenceService at once, whichever workflow started them.

The steps are `sentimentops rollout <command>` (steps/rollout, docs/rollout.md); this file knows them only by their
CLI. `analyse` writes the decision (promote | rollback) to a file that becomes its output parameter; exactly one of
promote and rollback runs, by `when`. They run as the `sentimentops-pipeline` ServiceAccount (set on each container
template, so it holds under a templateRef from the training workflow, whose own account is sentimentops-training),
which the chart's `sentimentops-rollout` Role lets get and patch the InferenceService and create events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hera.workflows import (
    DAG,
    Artifact,
    Container,
    Env,
    Parameter,
    Resources,
    RetryStrategy,
    WorkflowTemplate,
)
from hera.workflows.models import Mutex, Synchronization, ValueFrom

from sentimentops.workflows.definitions.common import (
    ARGO_UI_URL,
    INFERENCE_SERVICE,
    MLFLOW_TRACKING_URI,
    NOT_RETRIED,
    NOTIFY_TEMPLATE,
    OUTPUT_ROOT,
    PROFILE_PARAM,
    PROMETHEUS_URL,
    REASON_PARAM,
    WorkflowParam,
    image_params,
    lineage_env,
    notify_container,
    package_version,
    retry,
    stage_image,
    template_settings,
)

TEMPLATE_NAME = "sentiment-rollout"
ENTRYPOINT = "rollout"  # the DAG template callers reference
SERVICE_ACCOUNT = "sentimentops-pipeline"  # charts/sentimentops: bound to the sentimentops-rollout Role
# One rollout at a time per InferenceService, from any caller (they all patch the same object).
ROLLOUT_MUTEX = "sentiment-rollout"

# The longest soak the analyse step is given time for. Its deadline below must outlive it: the analysis waits up to
# `rollout.ready_timeout` (10m, steps/rollout/cli.py) for the canary, then soaks, then decides; a deadline shorter
# than that would kill a healthy canary's analysis and roll it back. 2h + 10m readiness leaves 50 min for slow
# Prometheus queries and the final verdict; a retried pod resumes the soak from the start recorded on the
# InferenceService, so a retry does not need a longer deadline (tests/contract/test_rollout_workflow.py).
MAX_SOAK = "2h"
ANALYSE_DEADLINE_S = 3 * 3600


def behaviour_params() -> list[WorkflowParam]:
    """How the canary behaves; the training template carries these as `rollout-<name>`."""
    return [
        WorkflowParam("canary-percent", "10", "Share of traffic for the canary while it soaks (0-100)"),
        WorkflowParam("soak", "30m", f"How long the canary must prove itself before promotion (e.g. 30m, 1h; at "
                      f"most {MAX_SOAK}: the analysis step's deadline covers that, the readiness wait and a margin)"),
        WorkflowParam("interval", "1m", "Analysis interval, also the PromQL window of each analysis"),
        WorkflowParam("target", "kserve", "Where to roll out: the KServe InferenceService, or local processes",
                      ("kserve", "local")),
    ]


MODEL_PARAM = WorkflowParam("model", "challenger",
                            "Candidate: an MLflow alias (challenger) or a registered version number")
# What the steps need besides the behaviour: run context and where the images come from. With the behaviour, the
# model and the two deployment parameters, these are the `rollout` template's inputs (INPUTS).
CONTEXT_PARAMS = ("profile", "reason", "mlflow-tracking-uri", "image-registry", "image-tag")


def workflow_params(pkg_version: str) -> list[WorkflowParam]:
    """The WorkflowTemplate's parameters (a standalone rollout's submission form)."""
    return [MODEL_PARAM, *behaviour_params(), INFERENCE_SERVICE, PROMETHEUS_URL, PROFILE_PARAM, REASON_PARAM,
            MLFLOW_TRACKING_URI, *image_params(pkg_version), ARGO_UI_URL]


INPUTS: tuple[str, ...] = (MODEL_PARAM.name, *(p.name for p in behaviour_params()), INFERENCE_SERVICE.name,
                           PROMETHEUS_URL.name, *CONTEXT_PARAMS)


@dataclass(frozen=True)
class RolloutStep:
    task: str  # DAG task (and template) name
    command: str  # sentimentops rollout <command>
    output: str  # output artifact folder
    params: tuple[str, ...]  # the command's flags, each from the input of the same name
    retry_limit: int = 3
    deadline_s: int | None = None


STEPS = (
    RolloutStep("deploy-canary", "deploy", "canary", ("target", "model", "canary-percent", "inference-service")),
    # analyse resumes the soak from the start recorded on the InferenceService, so a retried pod does not restart it.
    RolloutStep("analyse", "analyse", "analysis", ("target", "soak", "interval", "inference-service",
                                                   "prometheus-url"), retry_limit=2, deadline_s=ANALYSE_DEADLINE_S),
    RolloutStep("promote", "promote", "promotion", ("target", "inference-service")),
    RolloutStep("rollback", "rollback", "rollback", ("target", "inference-service")),
)


def _retry(limit: int) -> RetryStrategy:
    # Every command is idempotent (the state lives on the InferenceService), so a pod error or an unexpected failure
    # (3: the API server, MLflow or Prometheus unreachable) may retry; a data or usage error (an unknown model version,
    # a bad flag) would fail the same way again, and an analysis its deadline killed must not restart (NOT_RETRIED).
    return retry(limit, "Always", NOT_RETRIED)


def _input(name: str) -> str:
    return f"{{{{inputs.parameters.{name}}}}}"


def step_container(step: RolloutStep) -> Container:
    args = ["rollout", step.command]
    for param in step.params:
        args += [f"--{param}", _input(param)]
    args += ["--out", f"{{{{outputs.artifacts.{step.output}.path}}}}"]
    out_path = f"{OUTPUT_ROOT}/{step.output}"
    outputs: list[Artifact | Parameter] = [Artifact(name=step.output, path=out_path)]
    if step.command == "analyse":
        outputs.append(Parameter(name="decision", value_from=ValueFrom(path=f"{out_path}/decision")))
    image = stage_image("rollout", scope="inputs.parameters")
    return Container(
        name=step.task,
        image=image,
        command=["sentimentops"],
        args=args,
        inputs=[Parameter(name=p) for p in (*step.params, *CONTEXT_PARAMS)],
        outputs=outputs,
        env=[Env(name="SENTIMENTOPS_PROFILE", value=_input("profile")),
             Env(name="SENTIMENTOPS_RUN_REASON", value=_input("reason")),
             Env(name="SENTIMENTOPS_MLFLOW_TRACKING_URI", value=_input("mlflow-tracking-uri")),
             Env(name="SENTIMENTOPS_WORKFLOW_NAME", value="{{workflow.name}}"), *lineage_env(image)],
        resources=Resources(cpu_request="100m", memory_request="256Mi"),
        retry_strategy=_retry(step.retry_limit),
        active_deadline_seconds=step.deadline_s,
        service_account_name=SERVICE_ACCOUNT,
    )


def call_arguments(value: Callable[[str], str]) -> list[Parameter]:
    """Arguments for a task calling the `rollout` template: one per input, `value(input name)` each."""
    return [Parameter(name=name, value=value(name)) for name in INPUTS]


def _add_rollout_dag() -> None:
    """The `rollout` DAG template (inside an open WorkflowTemplate context)."""
    containers = {s.task: step_container(s) for s in STEPS}
    with DAG(name=ENTRYPOINT, inputs=[Parameter(name=name) for name in INPUTS],
             synchronization=Synchronization(mutexes=[Mutex(name=ROLLOUT_MUTEX)])):
        tasks = {}
        for step in STEPS:
            args = [Parameter(name=p, value=_input(p)) for p in (*step.params, *CONTEXT_PARAMS)]
            tasks[step.task] = containers[step.task](name=step.task, arguments=args)
        deploy, analyse = tasks["deploy-canary"], tasks["analyse"]
        analyse.depends = f"{deploy.name}.Succeeded"
        decision = f"{{{{tasks.{analyse.name}.outputs.parameters.decision}}}}"
        for action in ("promote", "rollback"):
            tasks[action].depends = f"{analyse.name}.Succeeded"
            tasks[action].when = f"{decision} == {action}"


def build(pkg_version: str | None = None) -> WorkflowTemplate:
    """The `sentiment-rollout` WorkflowTemplate (version: the app.kubernetes.io/version label)."""
    pkg_version = pkg_version or package_version()
    # No workflow-level mutex: the `rollout` template holds it, and a workflow holding the same mutex at both
    # levels would wait for itself.
    with WorkflowTemplate(name=TEMPLATE_NAME, entrypoint=ENTRYPOINT, on_exit=NOTIFY_TEMPLATE,
                          **template_settings("rollout", pkg_version, workflow_params(pkg_version), SERVICE_ACCOUNT,
                                              mutex=None)) as wt:
        _add_rollout_dag()
        notify_container()
    return wt
