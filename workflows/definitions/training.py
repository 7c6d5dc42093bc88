"""The training DAG, defined once in Hera: ingest -> validate -> version -> train -> evaluate -> register.

This is the only definition of the pipeline. `sentimentops.workflows.render` writes it to `charts/sentimentops/files/workflows/` (committed,
golden-tested, schema-checked); Argo runs that YAML in the cluster and `sentimentops.workflows.runner.local_runner` interprets the
same YAML on a laptop. The stages are known here only by their CLI (docs/stages.md), never imported.

Images: one per stage, `{{workflow.parameters.image-registry}}/sentimentops-<stage>:{{workflow.parameters.image-tag}}`
(built from images/ with only that stage's extra installed); the tag defaults to the package version so a
template named `...-v0-1-0` runs the 0.1.0 images unless a submission overrides `image-tag`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

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
    Toleration,
    ValueFrom,
)

from sentimentops.workflows.definitions import rollout
from sentimentops.workflows.definitions.common import (
    INPUT_ROOT,
    OUTPUT_ROOT,
    PROFILE_PARAM,
    WorkflowParam,
    dns_label,
    image_params,
    package_version,
    template_settings,
)

TEMPLATE_BASENAME = "sentiment-training"
# GKE labels every node with its pool name; terraform/ creates the GPU pool as `gpu-pool` (tainted
# nvidia.com/gpu=present:NoSchedule, which GKE also adds by itself to GPU pools).
GPU_NODE_SELECTOR = {"cloud.google.com/gke-nodepool": "gpu-pool"}
GPU_TOLERATION = Toleration(key="nvidia.com/gpu", operator="Equal", value="present", effect="NoSchedule")
# One mutex name for every version of the template: a v0.1.0 and a v0.2.0 retrain must not overlap either
# (they would race on the MLflow `challenger` alias and on the GPU pool).
TRAINING_MUTEX = "sentiment-training"
TRAINING_SERVICE_ACCOUNT = "sentimentops-training"


def template_name(pkg_version: str | None = None) -> str:
    return dns_label(f"{TEMPLATE_BASENAME}-v{pkg_version or package_version()}")


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
        WorkflowParam("reason", "manual",
                      "Why this run started (manual, cron, drift: ...); exported as SENTIMENTOPS_RUN_REASON"),
        *image_params(pkg_version),
        # The canary rollout after a passing registration (workflows/rollout.py); `make run` passes rollout=skip.
        WorkflowParam("rollout", "canary", "After a registration that passes the promotion policy: canary (roll "
                      "the new version out and let the canary analysis move champion) or skip", ("canary", "skip")),
        *rollout_workflow_params(),
    ]


def rollout_workflow_params() -> list[WorkflowParam]:
    """The rollout template's parameters, as `rollout-<name>` here (the candidate is always `challenger`)."""

    return [WorkflowParam(f"rollout-{p.name}", p.default, p.description, p.enum)
            for p in rollout.rollout_params() if p.name != "model"]


# Argo's retry expression (expr-lang, not govaluate): retry a pod error (eviction, preemption: the exit code may be
# -1) or a stage's exit status 3 and above, never a data error (1) or a usage error (2); steps/core/errors.py holds
# the table. With retryPolicy Always, Argo retries only when the policy and the expression both allow it.
NOT_RETRIED = 'lastRetry.status == "Error" || asInt(lastRetry.exitCode) > 2'


def _retry(limit: int, policy: str, expression: str | None = None) -> RetryStrategy:
    # Exponential backoff 30 s, 60 s, ... capped at 5 min: long enough for a node to be replaced or a registry
    # or MLflow hiccup to pass, short enough not to stall a nightly run.
    return RetryStrategy(
        limit=str(limit),
        retry_policy=policy,
        expression=expression,
        backoff=Backoff(duration="30s", factor="2", cap="5m"),
    )


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


STAGES: tuple[Stage, ...] = (
    # Retries follow the stages' exit statuses (steps/core/errors.py): 1 (data) and 2 (usage) are deterministic and
    # never retried; 3 (anything else: hub, GCS or MLflow hiccup, a CUDA fault) and pod errors are (NOT_RETRIED).
    Stage("ingest", "dataset", params=("source", "sample-size", "test-size", "val-fraction", "seed"),
          retry=_retry(3, "Always", NOT_RETRIED)),
    # Exit 1 = the dataset failed its expectations: a data failure, so only pod errors (eviction,
    # preemption) are retried, never the verdict.
    Stage("validate", "validation", inputs=("dataset",), retry=_retry(2, "OnError")),
    Stage("version", "version", inputs=("dataset",), retry=_retry(3, "Always", NOT_RETRIED)),
    # Always: GPU nodes are preemptible (pod Error) and CUDA/driver faults exit 3; two retries bound the cost of a
    # deterministic failure such as an OOM.
    Stage("train", "model", inputs=("dataset", "version"),
          params=("base-model", "epochs", "batch-size", "learning-rate", "max-length", "seed"),
          retry=_retry(2, "Always", NOT_RETRIED),
          resources=Resources(cpu_request="4", memory_request="16Gi", gpus=1), gpu=True),
    Stage("evaluate", "evaluation", inputs=("dataset", "model"), retry=_retry(2, "Always", NOT_RETRIED),
          resources=Resources(cpu_request="2", memory_request="8Gi")),
    # evaluate builds the ONNX export and makes the paired int8 decision on the test rows it scores (its `onnx/`
    # output travels with the model); register gets the dataset itself to prove the lineage (content hash) and
    # to state it in the model card.
    Stage("register", "registration", inputs=("dataset", "model", "evaluation", "version"),
          retry=_retry(2, "Always", NOT_RETRIED), output_params=("promoted",)),
)


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
    return Container(
        name=stage.name,
        image=f"{{{{workflow.parameters.image-registry}}}}/sentimentops-{stage.name}"
        ":{{workflow.parameters.image-tag}}",
        command=["sentimentops"],
        args=args,
        inputs=[Parameter(name=p) for p in stage.params]
        + [Artifact(name=a, path=f"{INPUT_ROOT}/{a}") for a in stage.inputs],
        outputs=outputs,
        env=[
            Env(name="SENTIMENTOPS_PROFILE", value="{{workflow.parameters.profile}}"),
            Env(name="SENTIMENTOPS_RUN_REASON", value="{{workflow.parameters.reason}}"),
            Env(name="SENTIMENTOPS_WORKFLOW_NAME", value="{{workflow.name}}"),
        ],
        resources=stage.resources,
        retry_strategy=stage.retry,
        node_selector=GPU_NODE_SELECTOR if stage.gpu else None,
        tolerations=[GPU_TOLERATION] if stage.gpu else None,
    )


def add_rollout(register) -> None:
    """deploy-canary -> analyse -> promote | rollback after `register`, only when the policy passed and the
    `rollout` parameter asks for it (the same task builders as the sentiment-rollout template)."""

    def source(param: str) -> str:
        return "challenger" if param == "model" else f"{{{{workflow.parameters.rollout-{param}}}}}"

    gate = (f"{{{{tasks.{register.name}.outputs.parameters.promoted}}}} == true"
            " && {{workflow.parameters.rollout}} == canary")
    rollout.add_rollout_tasks(prefix="rollout-", after=register, when=gate, reason_env=True, source=source)


def build(pkg_version: str | None = None) -> WorkflowTemplate:
    """The `sentiment-training-v<version>` WorkflowTemplate."""
    pkg_version = pkg_version or package_version()
    # TRAINING_SERVICE_ACCOUNT: GSA sentimentops-training (buckets + MLflow, nothing else)
    with WorkflowTemplate(name=template_name(pkg_version), entrypoint="pipeline",
                          **template_settings("training", pkg_version, workflow_params(pkg_version),
                                              TRAINING_SERVICE_ACCOUNT, TRAINING_MUTEX)) as wt:
        containers = {s.name: stage_container(s) for s in STAGES}
        with DAG(name="pipeline"):
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
