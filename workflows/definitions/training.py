"""The training DAG, defined once in Hera: ingest -> validate -> version -> train -> evaluate -> register.

This is the only definition of the pipeline. `sentimentops.workflows.render` writes it to `workflows/rendered/` (committed,
golden-tested, schema-checked); Argo runs that YAML in the cluster and `sentimentops.workflows.runner.local_runner` interprets the
same YAML on a laptop. The stages are known here only by their CLI (docs/stages.md), never imported.

Images: one per stage, `{{workflow.parameters.image-registry}}/sentimentops-<stage>:{{workflow.parameters.image-tag}}`
(built from images/ with only that stage's extra installed); the tag defaults to the package version so a
template named `...-v0-1-0` runs the 0.1.0 images unless a submission overrides `image-tag`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
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
    Metadata,
    Mutex,
    PodGC,
    PodSecurityContext,
    Synchronization,
    Toleration,
    TTLStrategy,
    ValueFrom,
)

TEMPLATE_BASENAME = "sentiment-training"
# Artifacts live at fixed container paths; the args reference them through {{inputs/outputs.artifacts.X.path}},
# so the local runner can map them into its run folder without knowing these strings.
INPUT_ROOT = "/tmp/sentimentops/inputs"
OUTPUT_ROOT = "/tmp/sentimentops/outputs"
# GKE labels every node with its pool name; terraform/ creates the GPU pool as `gpu-pool` (tainted
# nvidia.com/gpu=present:NoSchedule, which GKE also adds by itself to GPU pools).
GPU_NODE_SELECTOR = {"cloud.google.com/gke-nodepool": "gpu-pool"}
GPU_TOLERATION = Toleration(key="nvidia.com/gpu", operator="Equal", value="present", effect="NoSchedule")
# One mutex name for every version of the template: a v0.1.0 and a v0.2.0 retrain must not overlap either
# (they would race on the MLflow `challenger` alias and on the GPU pool).
TRAINING_MUTEX = "sentiment-training"
TRAINING_SERVICE_ACCOUNT = "sentimentops-training"


def package_version() -> str:
    """The installed `sentimentops` version (the template name and the default image tag carry it)."""
    try:
        return version("sentimentops")
    except PackageNotFoundError:  # a bare checkout without `pip install -e .`
        return "0.0.0"


def dns_label(text: str) -> str:
    """Lower-case DNS-1123 label: `0.1.0` -> `0-1-0` (Kubernetes object names allow no dots in labels)."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:63].rstrip("-")


def template_name(pkg_version: str | None = None) -> str:
    return dns_label(f"{TEMPLATE_BASENAME}-v{pkg_version or package_version()}")


@dataclass(frozen=True)
class WorkflowParam:
    name: str
    default: str
    description: str
    enum: tuple[str, ...] = ()


PROFILE_PARAM = WorkflowParam("profile", "gke", "Config profile exported as SENTIMENTOPS_PROFILE (gke in the cluster)",
                              ("gke", "local"))


def image_params(pkg_version: str) -> list[WorkflowParam]:
    """Where every template's stage images come from (sentimentops-<stage>:<tag>)."""
    return [WorkflowParam("image-registry", "europe-west4-docker.pkg.dev/sentimentops/sentimentops",
                          "Registry holding the per-stage images sentimentops-<stage>"),
            WorkflowParam("image-tag", pkg_version, "Tag of the per-stage images (defaults to the package version)")]


def template_settings(component: str, pkg_version: str, params: list[WorkflowParam], service_account: str,
                      mutex: str) -> dict:
    """What every SentimentOps WorkflowTemplate shares: labels (also on every Workflow started from it, so `argo
    list -l` finds runs by version), its parameters, one run at a time (mutex), a success kept a day (the UI link
    in the Slack message stays valid) and a failure a week, successful pods removed at once (failed ones stay for
    `kubectl logs`), the chart's Workload Identity ServiceAccount, and pods that refuse root (the stage images run
    as uid 10001, images/; checkov CKV_ARGO_1/2)."""
    labels = {"app.kubernetes.io/name": "sentimentops", "app.kubernetes.io/component": component,
              "app.kubernetes.io/version": pkg_version}
    return {
        "labels": labels,
        "arguments": [Parameter(name=p.name, value=p.default, description=p.description, enum=list(p.enum) or None)
                      for p in params],
        "workflow_metadata": Metadata(labels=labels),
        "synchronization": Synchronization(mutexes=[Mutex(name=mutex)]),
        "ttl_strategy": TTLStrategy(seconds_after_success=86400, seconds_after_failure=604800),
        "pod_gc": PodGC(strategy="OnPodSuccess"),
        "service_account_name": service_account,
        "security_context": PodSecurityContext(run_as_non_root=True, run_as_user=10001, run_as_group=10001,
                                               fs_group=10001),
    }


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
    from sentimentops.workflows.definitions import rollout

    return [WorkflowParam(f"rollout-{p.name}", p.default, p.description, p.enum)
            for p in rollout.rollout_params() if p.name != "model"]


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
    # Exit 2 = bad source (a typo will not fix itself); any other failure (hub or GCS hiccup) is retried.
    Stage("ingest", "dataset", params=("source", "sample-size", "test-size", "val-fraction", "seed"),
          retry=_retry(3, "Always", "asInt(lastRetry.exitCode) != 2")),
    # Exit 1 = the dataset failed its expectations: a data failure, so only pod errors (eviction,
    # preemption) are retried, never the verdict.
    Stage("validate", "validation", inputs=("dataset",), retry=_retry(2, "OnError")),
    Stage("version", "version", inputs=("dataset",), retry=_retry(3, "Always")),
    # Always: GPU nodes are preemptible (pod Error) and CUDA/driver faults exit non-zero; two retries bound
    # the cost of a deterministic failure such as an OOM.
    Stage("train", "model", inputs=("dataset", "version"),
          params=("base-model", "epochs", "batch-size", "learning-rate", "max-length", "seed"),
          resources=Resources(cpu_request="4", memory_request="16Gi", gpus=1), gpu=True),
    Stage("evaluate", "evaluation", inputs=("dataset", "model"),
          resources=Resources(cpu_request="2", memory_request="8Gi")),
    Stage("register", "registration", inputs=("model", "evaluation", "version"), output_params=("promoted",)),
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
    from sentimentops.workflows.definitions import rollout

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
