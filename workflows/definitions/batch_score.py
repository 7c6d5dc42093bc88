"""Batch scoring, defined in Hera: plan -> score (one pod per shard, Argo `withParam`) -> join.

One WorkflowTemplate, `sentiment-batch-score` (docs/batch-scoring.md). `plan` reads the inputs once (a bad input
fails here, before any pod starts), splits their rows into at most `shards` contiguous shards and resolves the
model once (`models:/sentiment@champion` becomes `models:/sentiment/N`); its output parameters are the shard
descriptors, a JSON list, and that concrete model URI. `score` runs once per descriptor (`withParam`, `{{item}}`):
every pod scores its rows with the same version, even if champion moves mid-run, and writes its part beside the
output (`<output>.parts/`, shared storage: GCS in the cluster, the disk locally). `join` concatenates the parts
in shard order, which is the input order, into the output and writes a summary. The local runner runs the same
fan-out (workflows/runner/local_runner.py), one shard after the other.

The steps are `sentimentops score plan|run|join` (steps/score); this file knows them only by their CLI. They run in
the register image: MLflow to resolve the alias, ONNX Runtime + tokenizers for the CPU path the pods take, and CPU
torch (the image the registered ONNX export is built for). They run as the training ServiceAccount, whose Google
account reads and writes the buckets and reaches MLflow.
"""

from __future__ import annotations

from hera.workflows import (
    DAG,
    Artifact,
    Container,
    Env,
    Parameter,
    Resources,
    Task,
    WorkflowTemplate,
)
from hera.workflows.models import ValueFrom

from sentimentops.workflows.definitions.common import (
    ARGO_UI_URL,
    INPUT_ROOT,
    MLFLOW_TRACKING_URI,
    NOT_RETRIED,
    NOTIFY_TEMPLATE,
    OUTPUT_ROOT,
    PROFILE_PARAM,
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
from sentimentops.workflows.definitions.training import TRAINING_SERVICE_ACCOUNT

TEMPLATE_NAME = "sentiment-batch-score"
ENTRYPOINT = "batch-score"
IMAGE = "register"  # the stage image holding MLflow, ONNX Runtime, tokenizers and CPU torch (module docstring)
PLAN, SCORE, JOIN = "plan", "score", "join"
SHARDS_OUTPUT, MODEL_OUTPUT = "shards", "model-uri"  # plan's output parameters
SHARDS_FILE, MODEL_URI_FILE, SUMMARY_FILE = "shards.json", "model-uri", "summary.json"  # steps/score/cli.py
# A shard pod's CPUs: requested, and the threads its ONNX session uses (a pod sees every core of its node, not its
# request: without the setting 32 shards on one node would each run on all of them).
SHARD_CPUS = 2


def workflow_params(pkg_version: str) -> list[WorkflowParam]:
    return [
        WorkflowParam("input", "", "Reviews to score: a parquet/CSV/JSONL file, a folder of them, or gs://BUCKET/"
                      "PREFIX (every such file under it, in name order)"),
        WorkflowParam("output", "", "Parquet file to write (a path or gs://BUCKET/KEY); the shards' parts go to "
                      "<output>.parts/"),
        WorkflowParam("model-uri", "", "models:/NAME@ALIAS or models:/NAME/VERSION (empty: the registered model's "
                      "champion); an alias is resolved once, by plan"),
        WorkflowParam("shards", "8", "At most this many shards, one pod each (fewer when there are fewer rows)"),
        WorkflowParam("text-column", "text", "Input column holding the review text"),
        WorkflowParam("id-column", "id", "Input column copied to the output to identify each row (when an input "
                      "lacks it: the row's number, column `row`)"),
        PROFILE_PARAM,
        REASON_PARAM,
        *image_params(pkg_version),
        MLFLOW_TRACKING_URI,
        ARGO_UI_URL,
    ]


# Every step's environment: (variable, workflow parameter), as the training stages get it.
STEP_ENV = (("SENTIMENTOPS_PROFILE", PROFILE_PARAM.name), ("SENTIMENTOPS_RUN_REASON", REASON_PARAM.name),
            ("SENTIMENTOPS_MLFLOW_TRACKING_URI", MLFLOW_TRACKING_URI.name),
            ("SENTIMENTOPS_SCORE_TEXT_COLUMN", "text-column"), ("SENTIMENTOPS_SCORE_ID_COLUMN", "id-column"))


def _container(name: str, args: list[str], inputs: list, outputs: list, resources: Resources,
               env: tuple[Env, ...] = ()) -> Container:
    image = stage_image(IMAGE)
    return Container(
        name=name,
        image=image,
        command=["sentimentops"],
        args=args,
        inputs=inputs,
        outputs=outputs,
        env=[Env(name=var, value=f"{{{{workflow.parameters.{param}}}}}") for var, param in STEP_ENV]
        + [Env(name="SENTIMENTOPS_WORKFLOW_NAME", value="{{workflow.name}}"), *lineage_env(image), *env],
        resources=resources,
        # Every step is idempotent (a shard rewrites its own part whole): a pod error or an unexpected failure (3: GCS
        # or MLflow unreachable) retries; a data or usage error (no text column, an unknown version) would fail again.
        retry_strategy=retry(2, "Always", NOT_RETRIED),
    )


def _param(name: str) -> str:
    return f"{{{{inputs.parameters.{name}}}}}"


def build(pkg_version: str | None = None) -> WorkflowTemplate:
    """The `sentiment-batch-score` WorkflowTemplate (version: the app.kubernetes.io/version label)."""
    pkg_version = pkg_version or package_version()
    with WorkflowTemplate(name=TEMPLATE_NAME, entrypoint=ENTRYPOINT, on_exit=NOTIFY_TEMPLATE,
                          **template_settings("batch-score", pkg_version, workflow_params(pkg_version),
                                              TRAINING_SERVICE_ACCOUNT, mutex=None)) as wt:
        plan_out = f"{OUTPUT_ROOT}/plan"
        plan = _container(
            PLAN,
            ["score", "plan", "--input", _param("input"), "--shards", _param("shards"),
             "--model-uri", _param("model-uri"), "--out", "{{outputs.artifacts.plan.path}}"],
            inputs=[Parameter(name=p) for p in ("input", "shards", "model-uri")],
            outputs=[Artifact(name="plan", path=plan_out),
                     Parameter(name=SHARDS_OUTPUT, value_from=ValueFrom(path=f"{plan_out}/{SHARDS_FILE}")),
                     Parameter(name=MODEL_OUTPUT, value_from=ValueFrom(path=f"{plan_out}/{MODEL_URI_FILE}"))],
            resources=Resources(cpu_request="500m", memory_request="2Gi"))
        # One pod per shard: its SHARD_CPUS cores on one ONNX session (steps/score/core.py Scorer).
        shard = _container(
            "score-shard",
            ["score", "run", "--shard", _param("shard"), "--model-uri", _param("model-uri"),
             "--output", _param("output")],
            inputs=[Parameter(name=p) for p in ("shard", "model-uri", "output")],
            outputs=[],
            resources=Resources(cpu_request=str(SHARD_CPUS), memory_request="4Gi"),
            env=(Env(name="SENTIMENTOPS_SCORE_THREADS", value=str(SHARD_CPUS)),))
        join = _container(
            JOIN,
            ["score", "join", "--plan", "{{inputs.artifacts.plan.path}}", "--output", _param("output"),
             "--out", "{{outputs.artifacts.summary.path}}"],
            inputs=[Parameter(name="output"), Artifact(name="plan", path=f"{INPUT_ROOT}/plan")],
            outputs=[Artifact(name="summary", path=f"{OUTPUT_ROOT}/summary")],
            resources=Resources(cpu_request="500m", memory_request="2Gi"))
        notify_container()
        with DAG(name=ENTRYPOINT):
            planned = Task(name=PLAN, template=plan,
                           arguments=[Parameter(name=p, value=f"{{{{workflow.parameters.{p}}}}}")
                                      for p in ("input", "shards", "model-uri")])
            scored = Task(name=SCORE, template=shard,
                          with_param=f"{{{{tasks.{PLAN}.outputs.parameters.{SHARDS_OUTPUT}}}}}",
                          arguments=[Parameter(name="shard", value="{{item}}"),
                                     Parameter(name="model-uri",
                                               value=f"{{{{tasks.{PLAN}.outputs.parameters.{MODEL_OUTPUT}}}}}"),
                                     Parameter(name="output", value="{{workflow.parameters.output}}")])
            joined = Task(name=JOIN, template=join,
                          arguments=[Parameter(name="output", value="{{workflow.parameters.output}}"),
                                     planned.get_artifact("plan").with_name("plan")])
            planned >> scored
            scored >> joined
    return wt
