"""The training DAG, defined once in Hera: ingest -> validate -> version -> train -> evaluate -> register.

This is the only definition of the pipeline. `sentimentops.workflows.render` writes it to `charts/sentimentops/files/workflows/` (committed,
golden-tested, schema-checked); Argo runs that YAML in the cluster and `sentimentops.workflows.runner.local_runner` interprets the
same YAML on a laptop. The stages are known here only by their CLI (docs/stages.md), never imported.

Images: one per stage, `{{workflow.parameters.image-registry}}/sentimentops-<stage>:{{workflow.parameters.image-tag}}`
(built from images/ with only that stage's extra installed); the tag defaults to the package version, the template
carries it as the `app.kubernetes.io/version` label, and its name `sentiment-training` never changes: the chart,
the cron and the Sensor name it across releases. After `register`, the canary rollout is called the Argo way,
through `templateRef` to the `sentiment-rollout` template's `rollout` DAG (workflows/definitions/rollout.py), which
holds the rollout mutex; `onExit: notify` posts the outcome to Slack; workflow metrics record the last success and
count failures (alerts TrainingWorkflowFailed, NoSuccessfulRetrain).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from hera.workflows import (
    DAG,
    Artifact,
    Container,
    Counter,
    Env,
    Gauge,
    Parameter,
    Resources,
    RetryStrategy,
    Task,
    WorkflowTemplate,
)
from hera.workflows.models import (
    MetricLabel,
    TemplateRef,
    Toleration,
    ValueFrom,
)

from sentimentops.workflows.definitions import rollout
from sentimentops.workflows.definitions.common import (
    ARGO_UI_URL,
    DVC_REMOTE,
    INFERENCE_SERVICE,
    INPUT_ROOT,
    MLFLOW_ARTIFACTS_DESTINATION,
    MLFLOW_TRACKING_URI,
    NOT_RETRIED,
    NOTIFY_TEMPLATE,
    OUTPUT_ROOT,
    PRODUCTION_STORE,
    PROFILE_PARAM,
    PROMETHEUS_URL,
    REASON_PARAM,
    WorkflowParam,
    image_params,
    lineage_env,
    notify_container,
    package_version,
    stage_image,
    template_settings,
)
from sentimentops.workflows.definitions.common import (
    retry as _retry,
)

TEMPLATE_NAME = "sentiment-training"
ENTRYPOINT = "pipeline"
# GKE labels every node with its pool name; terraform/ creates the GPU pool as `gpu-pool` (tainted
# nvidia.com/gpu=present:NoSchedule, which GKE also adds by itself to GPU pools).
GPU_NODE_SELECTOR = {"cloud.google.com/gke-nodepool": "gpu-pool"}
GPU_TOLERATION = Toleration(key="nvidia.com/gpu", operator="Equal", value="present", effect="NoSchedule")
# One retrain at a time: two would race on the MLflow `challenger` alias and on the GPU pool.
TRAINING_MUTEX = "sentiment-training"
TRAINING_SERVICE_ACCOUNT = "sentimentops-training"
ROLLOUT_TASK = "rollout"  # the task calling the rollout template; its steps show as rollout/<step> locally


def workflow_params(pkg_version: str) -> list[WorkflowParam]:
    """Submission parameters: one per stage flag (docs/stages.md maps them one-to-one) plus run context."""
    return [
        WorkflowParam("source", "hf:stanfordnlp/imdb",
                      "Dataset source: hf:<dataset id>, a gs:// or local parquet/CSV/JSONL file or folder, or auto"),
        WorkflowParam("sample-size", "0", "Training reviews to sample (0 = all)"),
        WorkflowParam("test-size", "0", "Test reviews to sample (0 = all)"),
        WorkflowParam("val-fraction", "0.1", "Fraction of train carved out for validation (never the test split)"),
        WorkflowParam("seed", "42", "Random seed for sampling, the split and training"),
        WorkflowParam("base-model", "distilbert-base-uncased", "Hugging Face model id or path to fine-tune"),
        WorkflowParam("epochs", "2", "Training epochs"),
        WorkflowParam("batch-size", "0", "Training batch size per GPU step; 0 = chosen by data size (256/128/64 on "
                      "a GPU, keeping at least 300 optimizer steps; 32 on CPU), with the learning rate scaled"),
        WorkflowParam("learning-rate", "5e-5", "Peak AdamW learning rate"),
        WorkflowParam("max-length", "512", "Maximum tokens per review (longer reviews are truncated)"),
        PROFILE_PARAM,
        REASON_PARAM,
        *image_params(pkg_version),
        MLFLOW_TRACKING_URI,
        MLFLOW_ARTIFACTS_DESTINATION,
        DVC_REMOTE,
        PRODUCTION_STORE,
        PROMETHEUS_URL,
        INFERENCE_SERVICE,
        ARGO_UI_URL,
        # The canary rollout after a passing registration (definitions/rollout.py); `make run` passes rollout=skip.
        WorkflowParam("rollout", "canary", "After a registration that passes the promotion policy: canary (roll "
                      "the new version out and let the canary analysis move champion) or skip", ("canary", "skip")),
        *rollout_behaviour_params(),
    ]


def rollout_behaviour_params() -> list[WorkflowParam]:
    """The rollout template's behaviour parameters, as `rollout-<name>` here (the candidate is always
    `challenger`; the InferenceService and Prometheus are the deployment's, same names in both templates)."""
    return [WorkflowParam(f"rollout-{p.name}", p.default, p.description, p.enum) for p in rollout.behaviour_params()]


# The GPU train step's deadline. Measured on one H100, an epoch of the 25k IMDB reviews takes 10-41 s
# (docs/measurements.md, "GPU"); a T4/L4 of the GPU pool is about 10-20x slower, so the default 2 epochs take well
# under 30 min with the model download. 2 h leaves room for more epochs or a larger base model, and bounds what a
# hung CUDA call, NCCL wait or stuck download can cost: the deadline kill is not retried (NOT_RETRIED).
TRAIN_DEADLINE_S = 2 * 3600


@dataclass(frozen=True)
class Stage:
    """One stage container: its CLI flags (from workflow parameters), input artifacts and output folder."""

    name: str
    output: str
    inputs: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    retry: RetryStrategy = field(default_factory=lambda: _retry(2, "Always"))
    resources: Resources = field(default_factory=lambda: Resources(cpu_request="1", memory_request="2Gi"))
    gpu: bool = False
    output_params: tuple[str, ...] = ()
    deadline_s: int | None = None
    env: tuple[tuple[str, str], ...] = ()  # (variable, workflow parameter) besides the common ones


STAGES: tuple[Stage, ...] = (
    # Retries follow the stages' exit statuses (steps/core/errors.py): 1 (data) and 2 (usage) are deterministic and
    # never retried; 3 (anything else: hub, GCS or MLflow hiccup, a CUDA fault) and pod errors are (NOT_RETRIED).
    # The production store's feedback joins the base corpus (steps/ingest.py), so a drift-triggered or scheduled
    # retrain, which passes only `reason`, learns from the traffic by default.
    Stage("ingest", "dataset", params=("source", "sample-size", "test-size", "val-fraction", "seed"),
          retry=_retry(3, "Always", NOT_RETRIED),
          env=(("SENTIMENTOPS_PRODUCTION_STORE", PRODUCTION_STORE.name),)),
    # Exit 1 = the dataset failed its expectations: a data failure, so only pod errors (eviction,
    # preemption) are retried, never the verdict.
    Stage("validate", "validation", inputs=("dataset",), retry=_retry(2, "OnError")),
    Stage("version", "version", inputs=("dataset",), retry=_retry(3, "Always", NOT_RETRIED),
          env=(("SENTIMENTOPS_VERSION_REMOTE", DVC_REMOTE.name),)),
    # Always: GPU nodes are preemptible (pod Error) and CUDA/driver faults exit 3; two retries bound the cost of a
    # deterministic failure such as an OOM.
    Stage("train", "model", inputs=("dataset", "version"),
          params=("base-model", "epochs", "batch-size", "learning-rate", "max-length", "seed"),
          retry=_retry(2, "Always", NOT_RETRIED),
          resources=Resources(cpu_request="4", memory_request="16Gi", gpus=1), gpu=True, deadline_s=TRAIN_DEADLINE_S),
    Stage("evaluate", "evaluation", inputs=("dataset", "model"), retry=_retry(2, "Always", NOT_RETRIED),
          resources=Resources(cpu_request="2", memory_request="8Gi")),
    # evaluate builds the ONNX export and makes the paired int8 decision on the test rows it scores (its `onnx/`
    # output travels with the model); register gets the dataset itself to prove the lineage (content hash) and
    # to state it in the model card.
    Stage("register", "registration", inputs=("dataset", "model", "evaluation", "version"),
          retry=_retry(2, "Always", NOT_RETRIED), output_params=("promoted",),
          env=(("SENTIMENTOPS_MLFLOW_ARTIFACTS_DESTINATION", MLFLOW_ARTIFACTS_DESTINATION.name),)),
)


# Every stage's environment: (variable, workflow parameter). MLflow's location reaches every stage (any may log or
# read the registry); the DVC remote only `version`, the artifacts destination only `register` (Stage.env).
STAGE_ENV = (("SENTIMENTOPS_PROFILE", PROFILE_PARAM.name), ("SENTIMENTOPS_RUN_REASON", REASON_PARAM.name),
             ("SENTIMENTOPS_MLFLOW_TRACKING_URI", MLFLOW_TRACKING_URI.name))


def stage_container(stage: Stage) -> Container:
    """A container template calling `sentimentops <stage> --flag {{inputs.parameters.flag}} ... --out OUT`."""
    args: list[str] = [stage.name]
    for param in stage.params:
        args += [f"--{param}", f"{{{{inputs.parameters.{param}}}}}"]
    for art in stage.inputs:
        args += [f"--{art}", f"{{{{inputs.artifacts.{art}.path}}}}"]
    args += ["--out", f"{{{{outputs.artifacts.{stage.output}.path}}}}"]
    out_path = f"{OUTPUT_ROOT}/{stage.output}"
    outputs: list[Artifact | Parameter] = [Artifact(name=stage.output, path=out_path)]
    # Output parameters are files inside the stage's output folder (register writes `promoted` there).
    outputs += [Parameter(name=p, value_from=ValueFrom(path=f"{out_path}/{p}")) for p in stage.output_params]
    image = stage_image(stage.name)
    return Container(
        name=stage.name,
        image=image,
        command=["sentimentops"],
        args=args,
        inputs=[Parameter(name=p) for p in stage.params]
        + [Artifact(name=a, path=f"{INPUT_ROOT}/{a}") for a in stage.inputs],
        outputs=outputs,
        env=[Env(name=var, value=f"{{{{workflow.parameters.{param}}}}}") for var, param in (*STAGE_ENV, *stage.env)]
        + [Env(name="SENTIMENTOPS_WORKFLOW_NAME", value="{{workflow.name}}"), *lineage_env(image)],
        resources=stage.resources,
        retry_strategy=stage.retry,
        active_deadline_seconds=stage.deadline_s,
        node_selector=GPU_NODE_SELECTOR if stage.gpu else None,
        tolerations=[GPU_TOLERATION] if stage.gpu else None,
    )


def add_rollout(register) -> Task:
    """The canary rollout after `register`, only when the policy passed and the `rollout` parameter asks for it:
    a call to the `sentiment-rollout` template's `rollout` DAG, which holds the rollout mutex (Argo's templateRef;
    the same DAG a standalone rollout runs)."""

    def value(name: str) -> str:
        if name == rollout.MODEL_PARAM.name:
            return "challenger"  # what register just aliased
        behaviour = {p.name for p in rollout.behaviour_params()}
        return f"{{{{workflow.parameters.{'rollout-' + name if name in behaviour else name}}}}}"

    gate = (f"{{{{tasks.{register.name}.outputs.parameters.promoted}}}} == true"
            " && {{workflow.parameters.rollout}} == canary")
    task = Task(name=ROLLOUT_TASK, template_ref=TemplateRef(name=rollout.TEMPLATE_NAME, template=rollout.ENTRYPOINT),
                arguments=rollout.call_arguments(value), when=gate)
    register >> task
    return task


# Workflow metrics (docs/metrics.md; Argo prefixes custom names with `argo_workflows_`, and its Prometheus exporter
# adds `_total` to counters). Workflow-level metrics are emitted once the workflow is complete, with
# {{workflow.status}} set to Succeeded, Failed or Error (operator.go, after the exit handler) and
# {{workflow.creationTimestamp.s}} the creation time in Unix seconds (setGlobalParameters); `when` is the same
# govaluate condition as a task's. The alerts TrainingWorkflowFailed and NoSuccessfulRetrain read these series.
METRIC_LABELS = [MetricLabel(key="template", value=TEMPLATE_NAME)]
LAST_SUCCESS_METRIC = "sentimentops_training_last_success_timestamp"
FAILURES_METRIC = "sentimentops_training_failures"


def workflow_metrics() -> list:
    return [
        Gauge(name=LAST_SUCCESS_METRIC, help="Creation time (Unix seconds) of the last training workflow that "
              "succeeded", labels=METRIC_LABELS, when="{{workflow.status}} == Succeeded",
              value="{{workflow.creationTimestamp.s}}", realtime=False),
        Counter(name=FAILURES_METRIC, help="Training workflows that did not succeed (Failed or Error)",
                labels=METRIC_LABELS, when="{{workflow.status}} != Succeeded", value="1"),
    ]


def build(pkg_version: str | None = None) -> WorkflowTemplate:
    """The `sentiment-training` WorkflowTemplate (version: the app.kubernetes.io/version label)."""
    pkg_version = pkg_version or package_version()
    # TRAINING_SERVICE_ACCOUNT: GSA sentimentops-training (buckets + MLflow, nothing else)
    with WorkflowTemplate(name=TEMPLATE_NAME, entrypoint=ENTRYPOINT, on_exit=NOTIFY_TEMPLATE,
                          metrics=workflow_metrics(),
                          **template_settings("training", pkg_version, workflow_params(pkg_version),
                                              TRAINING_SERVICE_ACCOUNT, TRAINING_MUTEX)) as wt:
        containers = {s.name: stage_container(s) for s in STAGES}
        notify_container()
        with DAG(name=ENTRYPOINT):
            tasks = {}
            producer: dict[str, str] = {}  # artifact name -> task that writes it
            for stage in STAGES:
                arguments: list[Artifact | Parameter] = [
                    Parameter(name=p, value=f"{{{{workflow.parameters.{p}}}}}") for p in stage.params
                ]
                arguments += [tasks[producer[a]].get_artifact(a).with_name(a) for a in stage.inputs]
                tasks[stage.name] = containers[stage.name](name=stage.name, arguments=arguments)
                producer[stage.output] = stage.name
            # Linear on purpose: version only a dataset that passed validation, train only a versioned one.
            chain = [tasks[s.name] for s in STAGES]
            for upstream, downstream in pairwise(chain):
                upstream >> downstream
            add_rollout(tasks["register"])
    return wt
