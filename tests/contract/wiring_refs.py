"""Readers for tests/contract/test_wiring.py: the repository's files as a platform engineer follows them before a
first `helm install` (the chart render, the Argo call graph, terraform, the GitHub workflows, the kind harness, the
runbook's table of what an operator creates).

Nothing here knows a name the repository defines: every list is read from the files at test time.

Repository root: this checkout, or `WIRING_REPO=<path>` (used to show that the wiring tests fail on an older
commit). Only under that override, and only when the tree has the layout from before the chart owned its files
(`workflows/rendered/` and `monitoring/`, copied into the chart by `charts/sync_files.py`), are those two old
locations used: see `Layout`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(os.environ.get("WIRING_REPO") or Path(__file__).resolve().parents[2]).resolve()
NAMESPACE = "sentimentops"  # the release namespace every render uses (tests/contract/test_chart.py does the same)
ARGO_KINDS = {"WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow", "Workflow"}


@dataclass(frozen=True)
class Layout:
    """Where things live. The old layout (before the chart owned its Argo and monitoring files) is recognised only
    under WIRING_REPO; its sole differences: rendered Argo YAML in workflows/rendered, monitoring files in
    monitoring/, and a chart that needs `python charts/sync_files.py --chart <copy>` before it renders them."""

    repo: Path
    chart: Path
    rendered: Path
    monitoring: Path
    sync_script: Path | None

    @classmethod
    def of(cls, repo: Path = REPO) -> Layout:
        chart = repo / "charts" / "sentimentops"
        legacy = bool(os.environ.get("WIRING_REPO")) and (repo / "workflows" / "rendered").is_dir() \
            and (repo / "charts" / "sync_files.py").is_file()
        if legacy:
            return cls(repo, chart, repo / "workflows" / "rendered", repo / "monitoring",
                       repo / "charts" / "sync_files.py")
        return cls(repo, chart, chart / "files" / "workflows", chart / "files" / "monitoring", None)


LAYOUT = Layout.of()


# ---- the chart ---------------------------------------------------------------------------------------------------

def chart_copy(dst: Path, sync: bool = True) -> Path:
    """A copy of the chart as a clone has it; under the old layout, with the copy step run (unless sync=False)."""
    target = dst / "sentimentops"
    shutil.copytree(LAYOUT.chart, target)
    if sync and LAYOUT.sync_script is not None:
        subprocess.run([sys.executable, str(LAYOUT.sync_script), "--chart", str(target)], cwd=LAYOUT.repo,
                       check=True, capture_output=True, text=True, timeout=120)
    return target


def render(chart: Path, values: dict | None, namespace: str = NAMESPACE) -> list[dict]:
    import helm_python as helm  # helm-python-sdk (the infra extra): Helm's Go SDK, the same engine as `helm template`

    out = helm.Chart.load(chart).render(values or {}, name="sentimentops", namespace=namespace, is_install=True)
    # NOTES.txt is printed, never applied (`helm template` leaves it out too).
    return [d for path, text in out.items() if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if isinstance(d, dict)]


def load_yaml(path: Path) -> dict:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def set_dotted(values: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = values
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def get_dotted(values: dict, dotted: str, default=None):
    node = values
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            return default
        node = node[k]
    return node


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def walk(node, path: str = "") -> Iterator[tuple[str, object, object]]:
    """(path, key, value) for every mapping entry and list item below node."""
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else str(k)
            yield p, k, v
            yield from walk(v, p)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            p = f"{path}[{i}]"
            yield p, i, v
            yield from walk(v, p)


def strings(node, skip: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """(path, value) of every string below node; keys in skip (e.g. `description`: prose, examples) left out."""
    for path, key, value in walk(node):
        if isinstance(value, str) and key not in skip and not any(f".{k}." in f".{path}." for k in skip):
            yield path, value


def doc_id(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def image_name(image: str) -> str:
    """`<registry>/<name>:<tag>` -> name (the repository's last path segment)."""
    last = image.rsplit("/", 1)[-1]
    return last.split("@", 1)[0].split(":", 1)[0]


# ---- the Argo call graph -----------------------------------------------------------------------------------------

_WF_PARAM = re.compile(r"workflow\.parameters(?:\.([A-Za-z0-9_-]+)|\[['\"]([^'\"]+)['\"]\])")
_BRACES = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


def workflow_parameters_used(node) -> set[str]:
    found = set()
    for _, text in strings(node):
        for inner in _BRACES.findall(text):
            for a, b in _WF_PARAM.findall(inner):
                name = a or b
                if name != "json":  # {{workflow.parameters.json}}: all of them, as JSON
                    found.add(name)
    return found


def params(args: dict | None) -> dict[str, str | None]:
    return {p["name"]: (str(p["value"]) if "value" in p else None)
            for p in ((args or {}).get("parameters") or [])}


@dataclass
class Reached:
    """A template reached from a submitted workflow, with the values its inputs and the workflow's parameters have
    on that path."""

    root: str
    owner: str
    template: dict
    inputs: dict[str, str | None]
    wf_params: dict[str, str | None]
    path: tuple[str, ...]
    chain: tuple[dict, ...] = ()  # the templates from the entrypoint (or onExit) down to this one, this one last

    def resolve(self, text: str) -> str:
        def rep(m: re.Match) -> str:
            expr = m.group(1).strip()
            for prefix, table in (("inputs.parameters.", self.inputs), ("workflow.parameters.", self.wf_params)):
                if expr.startswith(prefix) and table.get(expr[len(prefix):]) is not None:
                    return table[expr[len(prefix):]]
            return m.group(0)
        return _BRACES.sub(rep, text)

    @property
    def name(self) -> str:
        return f"{self.owner}/{self.template['name']}"


def mutexes(node: dict | None) -> set[str]:
    """Mutex names a `synchronization` block (spec or template level) holds."""
    sync = (node or {}).get("synchronization") or {}
    held = [sync["mutex"]] if isinstance(sync.get("mutex"), dict) else []
    return {m.get("name") for m in held + list(sync.get("mutexes") or []) if m.get("name")}


@dataclass
class CallGraph:
    reached: list[Reached] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (category, message)

    def add(self, category: str, message: str) -> None:
        self.problems.append((category, message))

    def of(self, category: str) -> list[str]:
        return sorted({m for c, m in self.problems if c == category})


ARTIFACT_SOURCES = {"s3", "gcs", "http", "git", "raw", "artifactory", "hdfs", "oss", "azure", "from", "huggingface"}


def roots(docs: list[dict]) -> list[tuple[str, dict, dict[str, str | None], str | None]]:
    """(root id, the WorkflowTemplate it runs, its workflow parameters, entrypoint) for every way a workflow is
    submitted here: each WorkflowTemplate itself, each CronWorkflow and each Sensor trigger that names one."""
    templates = by_kind(docs, "WorkflowTemplate")
    out = []
    for name, wt in templates.items():
        out.append((f"WorkflowTemplate/{name}", wt, params(wt["spec"].get("arguments")), None))
    submitted = [(doc_id(d), d["spec"].get("workflowSpec") or {}) for d in docs if d.get("kind") == "CronWorkflow"]
    for sensor in (d for d in docs if d.get("kind") == "Sensor"):
        for i, trigger in enumerate(sensor["spec"].get("triggers") or []):
            resource = trigger_workflow(trigger)
            if resource is not None:
                submitted.append((f"{doc_id(sensor)} trigger {i}", resource.get("spec") or {}))
    for rid, spec in submitted:
        ref = (spec.get("workflowTemplateRef") or {}).get("name")
        if ref in templates:
            merged = params(templates[ref]["spec"].get("arguments")) | params(spec.get("arguments"))
            out.append((rid, templates[ref], merged, spec.get("entrypoint")))
    return out


def trigger_workflow(trigger: dict) -> dict | None:
    """The Workflow a Sensor trigger submits (argoWorkflow or k8s trigger), or None."""
    tmpl = trigger.get("template") or {}
    for kind in ("argoWorkflow", "k8s"):
        resource = ((tmpl.get(kind) or {}).get("source") or {}).get("resource")
        if isinstance(resource, dict) and resource.get("kind") == "Workflow":
            return resource
    return None


def call_graph(docs: list[dict]) -> CallGraph:
    graph = CallGraph()
    templates = by_kind(docs, "WorkflowTemplate")
    for root, wt, wf_params, entrypoint in roots(docs):
        declared = set(wf_params)
        spec = wt["spec"]
        extra = {k: v for k, v in spec.items() if k not in {"templates", "arguments"}}
        for name in sorted(workflow_parameters_used(extra) - declared):
            graph.add("workflow-param", f"{root}: {doc_id(wt)} spec uses {{{{workflow.parameters.{name}}}}}"
                                                     f" which {root} does not declare")
        starts = [("entrypoint", entrypoint or spec.get("entrypoint"))]
        starts += [("onExit", spec.get("onExit"))] + [(f"hooks.{k}", h.get("template"))
                                                       for k, h in (spec.get("hooks") or {}).items()]
        for label, start in starts:
            if not start:
                continue
            tmpl = _template(wt, start)
            if tmpl is None:
                graph.add("missing-template", f"{root}: {label} `{start}` is not a template of {doc_id(wt)}")
                continue
            # Argo hands the workflow's spec.arguments to the entrypoint (and the onExit handler) as that template's
            # arguments (workflow/controller/operator.go: executeTemplate(..., execWf.Spec.Arguments, ...)).
            inputs = _bind(graph, f"{root} {label}", tmpl, dict(wf_params), set(), lenient=True)
            _visit(graph, templates, root, wt, tmpl, inputs, wf_params, (f"{wt['metadata']['name']}/{start}",), ())
    return graph


def _template(wt: dict, name: str) -> dict | None:
    return next((t for t in wt["spec"].get("templates") or [] if t.get("name") == name), None)


def _bind(graph: CallGraph, where: str, tmpl: dict, passed: dict[str, str | None], passed_artifacts: set[str],
          lenient: bool = False) -> dict[str, str | None]:
    """Input values of tmpl for a call passing `passed`; records undeclared and missing arguments. lenient: the
    workflow's own arguments feeding its entrypoint (Argo matches them by name; extra ones are global parameters)."""
    inputs = (tmpl.get("inputs") or {})
    declared = {p["name"]: p for p in inputs.get("parameters") or []}
    if not lenient:
        for name in sorted(set(passed) - set(declared)):
            graph.add("undeclared-argument", f"{where}: passes parameter `{name}` that template "
                                                          f"`{tmpl['name']}` does not declare (it declares "
                                                          f"{sorted(declared)})")
        artifacts = {a["name"]: a for a in inputs.get("artifacts") or []}
        for name in sorted(passed_artifacts - set(artifacts)):
            graph.add("undeclared-argument", f"{where}: passes artifact `{name}` that template "
                                                          f"`{tmpl['name']}` does not declare")
        for name, a in artifacts.items():
            if name not in passed_artifacts and not a.get("optional") and not (ARTIFACT_SOURCES & set(a)):
                graph.add("missing-argument", f"{where}: does not pass required artifact `{name}` "
                                                           f"of template `{tmpl['name']}`")
    bound: dict[str, str | None] = {}
    for name, p in declared.items():
        if "value" in p:
            bound[name] = str(p["value"])  # an input's own value wins over anything passed (Argo)
        elif name in passed:
            bound[name] = passed[name]
        elif "default" in p:
            bound[name] = str(p["default"])
        elif "valueFrom" in p:
            bound[name] = None
        else:
            bound[name] = None
            graph.add("missing-argument", f"{where}: does not pass required parameter `{name}` of "
                                                       f"template `{tmpl['name']}`")
    return bound


def _visit(graph: CallGraph, templates: dict[str, dict], root: str, owner: dict, tmpl: dict,
           inputs: dict[str, str | None], wf_params: dict[str, str | None], path: tuple[str, ...],
           chain: tuple[dict, ...]) -> None:
    reached = Reached(root, owner["metadata"]["name"], tmpl, inputs, wf_params, path, (*chain, tmpl))
    graph.reached.append(reached)
    used = workflow_parameters_used(tmpl)
    for name in sorted(used - set(wf_params)):
        graph.add("workflow-param", f"{root}: template {reached.name} uses {{{{workflow.parameters."
                                                 f"{name}}}}} which {root} does not declare (reached via "
                                                 f"{' -> '.join(path)})")
    tasks = list((tmpl.get("dag") or {}).get("tasks") or [])
    tasks += [s for group in tmpl.get("steps") or [] for s in (group if isinstance(group, list) else [group])]
    for task in tasks:
        where = f"{root}: {reached.name} task `{task.get('name')}`"
        args = task.get("arguments") or {}
        passed = {p["name"]: (reached.resolve(str(p["value"])) if "value" in p else None)
                  for p in args.get("parameters") or []}
        passed_artifacts = {a["name"] for a in args.get("artifacts") or []}
        if "templateRef" in task:
            ref = task["templateRef"]
            if ref.get("clusterScope"):
                graph.add("missing-template", f"{where}: templateRef to ClusterWorkflowTemplate "
                                                           f"`{ref.get('name')}` (the chart installs none)")
                continue
            target_owner = templates.get(ref.get("name"))
            if target_owner is None:
                graph.add("missing-template", f"{where}: templateRef names WorkflowTemplate "
                                                           f"`{ref.get('name')}`, which the chart does not render "
                                                           f"(it renders {sorted(templates)})")
                continue
        else:
            target_owner = owner
        name = (task.get("templateRef") or {}).get("template") if "templateRef" in task else task.get("template")
        target = _template(target_owner, name) if name else None
        if target is None:
            graph.add("missing-template", f"{where}: calls template `{name}`, which "
                                                       f"{doc_id(target_owner)} does not define")
            continue
        key = f"{target_owner['metadata']['name']}/{name}"
        if key in path:
            continue
        bound = _bind(graph, where, target, passed, passed_artifacts)
        _visit(graph, templates, root, target_owner, target, bound, wf_params, (*path, key), reached.chain)


def container_images(reached: Reached) -> list[tuple[str, str]]:
    """(where, resolved image) of every container a reached template runs."""
    t = reached.template
    out = []
    for key in ("container", "script"):
        if isinstance(t.get(key), dict) and "image" in t[key]:
            out.append((f"{reached.name}.{key}", reached.resolve(str(t[key]["image"]))))
    for key in ("initContainers", "sidecars"):
        out += [(f"{reached.name}.{key}.{c.get('name')}", reached.resolve(str(c["image"])))
                for c in t.get(key) or [] if "image" in c]
    for c in (t.get("containerSet") or {}).get("containers") or []:
        out.append((f"{reached.name}.containerSet.{c.get('name')}", reached.resolve(str(c["image"]))))
    return out


def chart_images(docs: list[dict]) -> list[tuple[str, str]]:
    """(where, image) of every container image in the non-Argo documents (Deployments, ServingRuntime, ...)."""
    out = []
    for doc in docs:
        if doc.get("kind") in ARGO_KINDS:
            continue
        for path, key, value in walk(doc):
            if key == "image" and isinstance(value, str):
                out.append((f"{doc_id(doc)} {path}", value))
    return out


# ---- terraform ---------------------------------------------------------------------------------------------------

def _clean(node):
    """python-hcl2 keeps HCL quotes and `__is_block__`/`__comments__` markers: strip them."""
    if isinstance(node, dict):
        return {_clean(k): _clean(v) for k, v in node.items() if k not in {"__is_block__", "__comments__"}}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    if isinstance(node, str) and len(node) >= 2 and node[0] == node[-1] == '"':
        return node[1:-1]
    return node


@dataclass
class Terraform:
    blocks: dict[str, list]

    @classmethod
    def load(cls, folder: Path) -> Terraform:
        import hcl2

        merged: dict[str, list] = {}
        for path in sorted(folder.glob("*.tf")):
            with open(path) as fh:
                for key, blocks in _clean(hcl2.load(fh)).items():
                    merged.setdefault(key, []).extend(blocks)
        return cls(merged)

    @property
    def locals(self) -> dict:
        out: dict = {}
        for block in self.blocks.get("locals", []):
            out.update(block)
        return out

    @property
    def variables(self) -> dict[str, dict]:
        return {name: body for block in self.blocks.get("variable", []) for name, body in block.items()}

    def resources(self, rtype: str) -> dict[str, dict]:
        return {name: body for block in self.blocks.get("resource", []) for name, body in block.get(rtype, {}).items()}

    def outputs(self) -> dict[str, dict]:
        return {name: body for block in self.blocks.get("output", []) for name, body in block.items()}

    def for_each(self, body: dict) -> dict[str, object] | None:
        """The keys (and values) a resource's for_each iterates, when it is a local map or a literal set."""
        expr = body.get("for_each")
        if not isinstance(expr, str):
            return None
        m = re.fullmatch(r"\$\{local\.(\w+)\}", expr)
        if m and isinstance(self.locals.get(m.group(1)), dict):
            return self.locals[m.group(1)]
        m = re.fullmatch(r"\$\{toset\(\[(.*)\]\)\}", expr)
        if m:
            return {s: s for s in re.findall(r'"([^"]*)"', m.group(1))}
        return None

    def expand(self, template: str, body: dict, use_defaults: bool = False,
               capture: dict[str, str] | None = None) -> list[tuple[str | None, str]]:
        """(each.key, regex) for a string attribute: each.key/each.value.X substituted per for_each entry; a
        resource attribute that is a literal substituted; anything else (variables, locals, functions) a
        wildcard, or a variable's default with use_defaults; capture: expression -> regex group name."""
        entries = self.for_each(body)
        out = []
        for key, value in (entries.items() if entries is not None else [(None, None)]):
            out.append((key, self._pattern(template, key, value, use_defaults, capture or {})))
        return out

    def _pattern(self, template: str, key, value, use_defaults: bool, capture: dict[str, str],
                 seen: set[str] | None = None, depth: int = 0) -> str:
        seen = set() if seen is None else seen
        parts, pos = [], 0
        for m in re.finditer(r"\$\{([^{}]*)\}", template):
            parts.append(re.escape(template[pos:m.start()]))
            expr = m.group(1).strip()
            if expr in capture and capture[expr] in seen:
                piece = f"(?P={capture[expr]})"
            else:
                piece = self._interp(expr, key, value, use_defaults, capture, seen, depth)
                if expr in capture:
                    piece = f"(?P<{capture[expr]}>{piece})"
                    seen.add(capture[expr])
            parts.append(piece)
            pos = m.end()
        parts.append(re.escape(template[pos:]))
        return "".join(parts)

    def _interp(self, expr: str, key, value, use_defaults: bool, capture: dict[str, str], seen: set[str],
                depth: int) -> str:
        wildcard = r"[A-Za-z0-9._-]+"
        if depth > 5:
            return wildcard
        if expr == "each.key" and key is not None:
            return re.escape(str(key))
        m = re.fullmatch(r"each\.value\.(\w+)", expr)
        if m and isinstance(value, dict) and isinstance(value.get(m.group(1)), str) and "${" not in value[m.group(1)]:
            return re.escape(value[m.group(1)])
        m = re.fullmatch(r"var\.(\w+)", expr)
        if m and use_defaults:
            default = self.variables.get(m.group(1), {}).get("default")
            if isinstance(default, str):
                return re.escape(default)
        m = re.fullmatch(r"local\.(\w+)", expr)
        if m and isinstance(self.locals.get(m.group(1)), str):
            text = self.locals[m.group(1)]
            if "${" in text and not re.fullmatch(r"\$\{[^{}]*\}", text) or re.fullmatch(r"\$\{[\w.]+\}", text):
                return self._pattern(text, key, value, use_defaults, capture, seen, depth + 1)
            if "${" not in text:
                return re.escape(text)
        m = re.fullmatch(r"(google_\w+)\.(\w+)\.(\w+)", expr)
        if m:
            attr = self.resources(m.group(1)).get(m.group(2), {}).get(m.group(3))
            if isinstance(attr, str) and "${" not in attr:
                return re.escape(attr)
            if isinstance(attr, str):
                return self._pattern(attr, key, value, use_defaults, capture, seen, depth + 1)
        return wildcard

    def kubernetes_objects(self) -> set[tuple[str, str]]:
        """(kind, name) of the Kubernetes objects terraform creates (kubernetes_* resources, kubernetes_manifest)."""
        kinds = {"service_account": "ServiceAccount", "secret": "Secret", "config_map": "ConfigMap",
                 "role": "Role", "role_binding": "RoleBinding", "persistent_volume_claim": "PersistentVolumeClaim",
                 "namespace": "Namespace", "cluster_role": "ClusterRole", "service": "Service"}
        out = set()
        for block in self.blocks.get("resource", []):
            for rtype, bodies in block.items():
                if not rtype.startswith("kubernetes_"):
                    continue
                base = re.sub(r"_v\d+$", "", rtype[len("kubernetes_"):])
                for body in bodies.values():
                    if base == "manifest":
                        manifest = body.get("manifest") or {}
                        if isinstance(manifest, dict):
                            out.add((manifest.get("kind"), (manifest.get("metadata") or {}).get("name")))
                        continue
                    meta = body.get("metadata")
                    meta = meta[0] if isinstance(meta, list) and meta else meta
                    if base in kinds and isinstance(meta, dict) and isinstance(meta.get("name"), str):
                        for _, pattern in self.expand(meta["name"], body, use_defaults=True):
                            out.add((kinds[base], pattern))
        return out


# ---- shell (GitHub workflow run steps, scripts/e2e/run.sh) -----------------------------------------------------

_SH_VAR = re.compile(r"\$\{(\w+|@:\d+)(?::-([^}]*)|//([^/}]*)/([^}]*))?\}|\$(\w+|@)")


def sh_subst(text: str, env: dict[str, str]) -> str:
    def rep(m: re.Match) -> str:
        name = m.group(1) or m.group(5)
        if name in env:
            value = env[name]
            if m.group(3) is not None:
                value = value.replace(m.group(3), m.group(4))
            return value
        if m.group(2) is not None:
            return sh_subst(m.group(2), env)
        return m.group(0)
    return _SH_VAR.sub(rep, text)


def _split_top(text: str, sep: str = ";") -> list[str]:
    parts, buf, quote = [], [], None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == sep:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    parts.append("".join(buf))
    return [p.strip() for p in parts if p.strip()]


def sh_commands(script: str, env: dict[str, str] | None = None) -> list[str]:
    """The script's command lines with simple variables, `for` loops and shell-function calls expanded (no
    execution): enough to read which images a script builds and which values it installs a chart with. A value
    that only running the script could know (`$(...)`) stays a `$NAME` in the output."""
    env = dict(env or {})
    lines = re.sub(r"\\\n\s*", " ", script).splitlines()
    functions: dict[str, list[str]] = {}
    return _run_lines([ln.strip() for ln in lines], env, functions)


def _run_lines(lines: list[str], env: dict[str, str], functions: dict[str, list[str]]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"(\w+)\(\)\s*\{(.*)\}\s*;?", line)
        if m:
            functions[m.group(1)] = _split_top(m.group(2).rstrip().rstrip(";"))
            continue
        m = re.fullmatch(r"(\w+)\(\)\s*\{\s*", line)
        if m:
            body = []
            while i < len(lines) and lines[i] != "}":
                body.append(lines[i])
                i += 1
            i += 1
            functions[m.group(1)] = body
            continue
        m = re.fullmatch(r"for (\w+) in (.*?); do (.*); done", line)
        if m:
            for item in shlex.split(sh_subst(m.group(2), env)):
                out += _run_lines(_split_top(m.group(3)), env | {m.group(1): item}, functions)
            continue
        m = re.fullmatch(r"for (\w+) in (.*?); do", line)
        if m:
            body, depth = [], 1
            while i < len(lines):
                if re.match(r"(for|while|until) .*; do$", lines[i]):
                    depth += 1
                if lines[i] == "done" or lines[i].startswith("done "):
                    depth -= 1
                    if depth == 0:
                        break
                body.append(lines[i])
                i += 1
            i += 1
            for item in shlex.split(sh_subst(m.group(2), env)):
                out += _run_lines(body, env | {m.group(1): item}, functions)
            continue
        m = re.fullmatch(r"(?:export\s+|readonly\s+|local\s+)?(\w+)=(\S.*)?", line)
        if m and not line.startswith("if "):
            raw = (m.group(2) or "").strip()
            if raw.startswith(("$(", "`", '"$(')):
                env.pop(m.group(1), None)
            else:
                try:
                    words = shlex.split(raw)
                except ValueError:
                    words = [raw]
                value = sh_subst(words[0] if len(words) == 1 else raw, env)
                env[m.group(1)] = value
            continue
        expanded = sh_subst(line, env)
        out.append(expanded)
        try:
            words = shlex.split(expanded)
        except ValueError:
            continue
        if words and words[0] in functions:
            positional = {str(n): w for n, w in enumerate(words[1:], start=1)}
            body = []
            args = words

            def rest(mm: re.Match, args: list[str] = args) -> str:
                return " ".join(shlex.quote(x) for x in args[int(mm.group(1)):])
            for b in functions[words[0]]:
                b = re.sub(r'"?\$\{@:(\d+)\}"?', rest, b)
                b = re.sub(r'"?\$@"?', " ".join(shlex.quote(x) for x in words[1:]).replace("\\", "\\\\"), b)
                body.append(b)
            out += _run_lines(body, env | positional, functions)
    return out


def shell_words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def flag_values(words: list[str], *names: str) -> list[str]:
    out = []
    for i, w in enumerate(words):
        for n in names:
            if w == n and i + 1 < len(words):
                out.append(words[i + 1])
            elif w.startswith(n + "="):
                out.append(w[len(n) + 1:])
    return out


def unresolved_to_regex(text: str) -> str:
    """A string with shell variables nobody could resolve without running the script -> a regex."""
    parts, pos = [], 0
    for m in _SH_VAR.finditer(text):
        parts += [re.escape(text[pos:m.start()]), ".+"]
        pos = m.end()
    parts.append(re.escape(text[pos:]))
    return "".join(parts)


# ---- GitHub workflows --------------------------------------------------------------------------------------------

_GH_EXPR = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")


def gh_matrix(job: dict) -> list[dict]:
    matrix = (job.get("strategy") or {}).get("matrix") or {}
    if not isinstance(matrix, dict):
        return [{}]
    include = matrix.get("include") or []
    axes = {k: v for k, v in matrix.items() if k not in {"include", "exclude"} and isinstance(v, list)}
    combos = [{}]
    for k, vals in axes.items():
        combos = [c | {k: v} for c in combos for v in vals]
    if include and not axes:
        return [dict(i) for i in include]
    return combos + [dict(i) for i in include if not axes]


def gh_subst(text: str, combo: dict) -> str:
    def rep(m: re.Match) -> str:
        expr = m.group(1)
        if expr.startswith("matrix.") and expr[len("matrix."):] in combo:
            return str(combo[expr[len("matrix."):]])
        return m.group(0)
    return _GH_EXPR.sub(rep, text)


def _gh_subst_all(node, combo: dict):
    if isinstance(node, dict):
        return {k: _gh_subst_all(v, combo) for k, v in node.items()}
    if isinstance(node, list):
        return [_gh_subst_all(v, combo) for v in node]
    return gh_subst(node, combo) if isinstance(node, str) else node


def gh_steps(workflow: dict) -> Iterator[tuple[str, dict, dict, dict]]:
    """(job id, job, step with matrix values substituted, env) for every step of every matrix combination."""
    for job_id, job in (workflow.get("jobs") or {}).items():
        for combo in gh_matrix(job):
            for step in job.get("steps") or []:
                subst = _gh_subst_all(step, combo)
                env = {**(workflow.get("env") or {}), **(job.get("env") or {}), **(step.get("env") or {})}
                yield job_id, job, subst, {k: str(v) for k, v in env.items()}


def images_built(workflow: dict) -> dict[str, set[str]]:
    """image name -> Dockerfiles it is built from, in a GitHub workflow (docker/build-push-action steps and
    `docker|podman build -f ... -t ...` run lines)."""
    out: dict[str, set[str]] = {}
    for _, _, step, env in gh_steps(workflow):
        uses = str(step.get("uses") or "")
        if uses.startswith("docker/build-push-action"):
            w = step.get("with") or {}
            tags = [t.strip() for t in re.split(r"[\n,]", str(w.get("tags") or "")) if t.strip()]
            dockerfile = str(w.get("file") or f"{str(w.get('context') or '.').rstrip('/')}/Dockerfile")
            for tag in tags:
                out.setdefault(image_name(_GH_EXPR.sub("X", tag)), set()).add(dockerfile)
        for line in sh_commands(str(step.get("run") or ""), env):
            words = shell_words(line)
            if "build" in words and (tags := flag_values(words, "-t", "--tag")):
                files = flag_values(words, "-f", "--file") or ["Dockerfile"]
                for tag in tags:
                    out.setdefault(image_name(_GH_EXPR.sub("X", tag)), set()).update(files)
    return out


_RETAG = re.compile(r"tags? add|docker tag\b|crane (?:tag|copy|cp)\b|imagetools create|skopeo copy|oras (?:tag|cp)")
STUBBED = ("gcloud", "helm", "kubectl", "docker", "podman", "crane", "skopeo", "oras", "kind", "argo", "curl")


def run_stubbed(script: str, env: dict[str, str], tmp: Path) -> list[list[str]]:
    """Run a GitHub step's shell script with every cloud, cluster and registry tool replaced by a stub that records
    its argv (and `python -m pip` a no-op): what the step would call, with its loops and command substitutions
    evaluated by bash itself. GitHub's `${{ ... }}` expressions become placeholders."""
    import stat

    bin_dir, log = tmp / "bin", tmp / "calls.log"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in STUBBED:
        stub = bin_dir / tool
        stub.write_text(f"#!/bin/sh\nprintf '%s\\037' \"$(basename \"$0\")\" \"$@\" >> '{log}'\necho >> '{log}'\n")
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    for name in ("python", "python3"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\n[ "$1" = -m ] && [ "$2" = pip ] && exit 0\nexec "{sys.executable}" "$@"\n')
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    placeholder = lambda text: _GH_EXPR.sub(lambda m: "gh-" + re.sub(r"[^a-z0-9]+", "-", m.group(1).lower()), text)
    run_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp), "GITHUB_OUTPUT": str(tmp / "output"),
               "GITHUB_ENV": str(tmp / "env"), "GITHUB_SHA": "0" * 40, "GITHUB_WORKSPACE": str(REPO),
               **{k: placeholder(v) for k, v in env.items()}}
    proc = subprocess.run(["bash", "-e", "-c", placeholder(script)], check=False, cwd=REPO, env=run_env, capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr[-800:]}")
    if not log.exists():
        return []
    return [line.split("\x1f")[:-1] for line in log.read_text().splitlines() if line]


def images_retagged(workflow: dict, tmp: Path) -> tuple[set[str], list[str]]:
    """(image names a GitHub workflow re-tags, problems): every step whose script re-tags (gcloud artifacts docker
    tags add, docker tag, crane, imagetools...) is run with stubbed tools and the re-tagged images read off the
    recorded calls."""
    out, problems = set(), []
    for n, (job_id, _, step, env) in enumerate(gh_steps(workflow)):
        script = str(step.get("run") or "")
        if not _RETAG.search(script):
            continue
        try:
            calls = run_stubbed(script, env, tmp / f"step{n}")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            problems.append(f"job {job_id} step {step.get('name')!r}: cannot be run with stubbed tools: {exc}")
            continue
        for argv in calls:
            if _RETAG.search(" ".join(argv)):
                out.update(image_name(a) for a in argv[1:] if "/" in a and not a.startswith("-"))
    return out, problems


# ---- docs/runbook.md: the table of what an operator creates -----------------------------------------------------

def markdown_tables(text: str) -> list[list[list[str]]]:
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.strip().startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells if c):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def runbook_objects(text: str) -> set[tuple[str | None, str, str | None]]:
    """(kind or None, name, namespace or None) from the runbook's table of objects an operator creates: any
    markdown table whose first header cell says `object` (or that has a `kind` column) and whose first column holds
    the names in backticks; `kind` and `namespace` columns, when there are, give each name its kind and namespace."""
    out: set[tuple[str | None, str, str | None]] = set()
    for table in markdown_tables(text):
        header = [h.lower() for h in table[0]]
        kind_col = next((i for i, h in enumerate(header) if re.search(r"\bkind\b", h)), None)
        ns_col = next((i for i, h in enumerate(header) if re.search(r"\bnamespace\b", h)), None)
        if not ("object" in header[0] or kind_col is not None):
            continue

        def cell(row: list[str], col: int | None) -> str | None:
            return (re.sub(r"[`\s]", "", row[col]) or None) if col is not None and col < len(row) else None
        for row in table[1:]:
            for name in re.findall(r"`([^`]+)`", row[0] if row else ""):
                out.add((cell(row, kind_col), name, cell(row, ns_col)))
    return out


def platform_namespace(chart: str, repo: Path = REPO) -> str | None:
    """Namespace charts/platform/versions.yaml installs a platform chart into (e.g. kube-prometheus-stack)."""
    releases = (load_yaml(repo / "charts" / "platform" / "versions.yaml").get("releases")) or []
    return next((r.get("namespace") for r in releases if r.get("chart") == chart), None)
