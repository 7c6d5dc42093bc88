"""The canary rollout, defined in Hera: deploy-canary -> analyse -> promote | rollback.

One set of task builders serves two DAGs:
- the `sentiment-rollout-v<version>` WorkflowTemplate (a rollout on its own: a manual re-roll, a rollback drill);
- the training DAG (workflows/training.py), after `register`, when the promotion policy passed
  (`promoted == true`) and the `rollout` parameter is `canary`.
The steps are `sentimentops rollout <command>` (steps/rollout, docs/rollout.md); this file knows them only by their
CLI. `analyse` writes the decision (promote | rollback) to a file that becomes its output parameter; exactly one of
promote and rollback runs, by `when`. They run as the `sentimentops-pipeline` ServiceAccount, which the chart's
`sentimentops-rollout` Role lets get and patch the InferenceService and create events, in its namespace only.
"""

from __future__ import annotations

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
from hera.workflows.models import (
    Backoff,
    ValueFrom,
)

from sentimentops.workflows.definitions.common import (
    OUTPUT_ROOT,
    PROFILE_PARAM,
    WorkflowParam,
    dns_label,
    image_params,
    package_version,
    template_settings,
)

TEMPLATE_BASENAME = "sentiment-rollout"
SERVICE_ACCOUNT = "sentimentops-pipeline"  # charts/sentimentops: bound to the sentimentops-rollout Role
# One rollout at a time per InferenceService, from either template (both patch the same object).
ROLLOUT_MUTEX = "sentiment-rollout"
DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"


def template_name(pkg_version: str | None = None) -> str:
    return dns_label(f"{TEMPLATE_BASENAME}-v{pkg_version or package_version()}")


def rollout_params() -> list[WorkflowParam]:
    """The rollout's parameters; the training template carries them too (same names, same defaults)."""
    return [
        WorkflowParam("model", "challenger", "Candidate: an MLflow alias (challenger) or a registered version number"),
        WorkflowParam("canary-percent", "10", "Share of traffic for the canary while it soaks (0-100)"),
        WorkflowParam("soak", "30m", "How long the canary must prove itself before promotion (e.g. 30m, 1h)"),
        WorkflowParam("interval", "1m", "Analysis interval, also the PromQL window of each analysis"),
        WorkflowParam("target", "kserve", "Where to roll out: the KServe InferenceService, or local processes",
                      ("kserve", "local")),
        WorkflowParam("inference-service", "sentiment", "Name of the InferenceService in this namespace"),
        WorkflowParam("prometheus-url", DEFAULT_PROMETHEUS, "Prometheus HTTP API the analysis queries"),
        WorkflowParam("artifacts-destination", "gs://sentimentops-mlflow/artifacts",
                      "The MLflow server's --artifacts-destination: maps mlflow-artifacts:/ URIs to a storageUri"),
    ]


@dataclass(frozen=True)
class RolloutStep:
    task: str  # DAG task name (prefixed in the training DAG)
    command: str  # sentimentops rollout <command>
    output: str  # output artifact folder
    params: tuple[str, ...]
    retry_limit: int = 3


STEPS = (
    RolloutStep("deploy-canary", "deploy", "canary",
                ("target", "model", "canary-percent", "inference-service", "artifacts-destination")),
    # analyse resumes the soak from the start recorded on the InferenceService, so a retried pod does not restart it.
    RolloutStep("analyse", "analyse", "analysis", ("target", "soak", "interval", "inference-service",
                                                   "prometheus-url"), retry_limit=2),
    RolloutStep("promote", "promote", "promotion", ("target", "inference-service")),
    RolloutStep("rollback", "rollback", "rollback", ("target", "inference-service")),
)


def _retry(limit: int) -> RetryStrategy:
    # Every command is idempotent (the state lives on the InferenceService), so any failure may retry.
    return RetryStrategy(limit=str(limit), retry_policy="Always",
                         backoff=Backoff(duration="30s", factor="2", cap="5m"))


def step_container(step: RolloutStep, prefix: str = "", reason_env: bool = False) -> Container:
    args = ["rollout", step.command]
    for param in step.params:
        args += [f"--{param}", f"{{{{inputs.parameters.{param}}}}}"]
    args += ["--out", f"{{{{outputs.artifacts.{step.output}.path}}}}"]
    out_path = f"{OUTPUT_ROOT}/{step.output}"
    outputs: list[Artifact | Parameter] = [Artifact(name=step.output, path=out_path)]
    if step.command == "analyse":
        outputs.append(Parameter(name="decision", value_from=ValueFrom(path=f"{out_path}/decision")))
    env = [Env(name="SENTIMENTOPS_PROFILE", value="{{workflow.parameters.profile}}"),
           Env(name="SENTIMENTOPS_WORKFLOW_NAME", value="{{workflow.name}}")]
    if reason_env:
        env.insert(1, Env(name="SENTIMENTOPS_RUN_REASON", value="{{workflow.parameters.reason}}"))
    return Container(
        name=f"{prefix}{step.task}",
        image="{{workflow.parameters.image-registry}}/sentimentops-rollout:{{workflow.parameters.image-tag}}",
        command=["sentimentops"],
        args=args,
        inputs=[Parameter(name=p) for p in step.params],
        outputs=outputs,
        env=env,
        resources=Resources(cpu_request="100m", memory_request="256Mi"),
        retry_strategy=_retry(step.retry_limit),
        service_account_name=SERVICE_ACCOUNT,
    )


def add_rollout_tasks(prefix: str = "", after=None, when: str | None = None, reason_env: bool = False,
                      source=None) -> dict:
    """Inside an open DAG context: the four tasks, wired; `after`/`when` gate the first one; `source(param)` gives
    each argument's value (default: the workflow parameter of the same name)."""
    source = source or (lambda p: f"{{{{workflow.parameters.{p}}}}}")
    containers = {s.task: step_container(s, prefix, reason_env) for s in STEPS}
    tasks = {}
    for step in STEPS:
        args = [Parameter(name=p, value=source(p)) for p in step.params]
        tasks[step.task] = containers[step.task](name=f"{prefix}{step.task}", arguments=args)
    deploy, analyse = tasks["deploy-canary"], tasks["analyse"]
    if after is not None:
        after >> deploy
    if when:
        deploy.when = when
    # .Succeeded, not a bare dependency: a skipped deploy must skip the rest (Argo counts Skipped as satisfied).
    analyse.depends = f"{deploy.name}.Succeeded"
    decision = f"{{{{tasks.{analyse.name}.outputs.parameters.decision}}}}"
    for action in ("promote", "rollback"):
        tasks[action].depends = f"{analyse.name}.Succeeded"
        tasks[action].when = f"{decision} == {action}"
    return tasks


def build(pkg_version: str | None = None) -> WorkflowTemplate:
    """The `sentiment-rollout-v<version>` WorkflowTemplate."""
    pkg_version = pkg_version or package_version()
    params = [*rollout_params(), PROFILE_PARAM, *image_params(pkg_version)]
    with WorkflowTemplate(name=template_name(pkg_version), entrypoint="rollout",
                          **template_settings("rollout", pkg_version, params, SERVICE_ACCOUNT, ROLLOUT_MUTEX)) as wt, \
            DAG(name="rollout"):
        add_rollout_tasks()
    return wt
