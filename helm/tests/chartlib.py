"""Shared by the chart tests: rendering the chart offline with Helm's own engine
(helm-python-sdk: Helm v4's Go SDK as a shared library, no `helm` binary, no cluster, no
network), the flags and environment variables of `chatpipe <role> --help`, and the metric
names the alerts and the dashboard use.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

HELM_DIR = Path(__file__).resolve().parent.parent
CHART_DIR = HELM_DIR / "chatpipe"
PRODUCTION_VALUES = HELM_DIR / "examples" / "values-production.yaml"
BAD_VALUES_DIR = Path(__file__).resolve().parent / "bad-values"
DASHBOARD_FILE = CHART_DIR / "dashboards" / "chatpipe.json"

RELEASE = "chatpipe"
NAMESPACE = "chat"

# The subcommand words of each role's container, by role (the `app.kubernetes.io/component`).
ROLE_COMMANDS = {
    "ingest": ["ingest"],
    "processor": ["process"],
    "sink": ["sink"],
    "serve": ["serve"],
    "tables": ["tables", "create"],
}

# Helper variables the chart defines only to splice Secret values into
# CHATPIPE_KAFKA_OPTIONS with Kubernetes' $(VAR) expansion; they are not chatpipe flags.
HELPER_ENV = re.compile(r"^KAFKA_(SASL_USERNAME|SASL_PASSWORD|SECRET_OPTION_[0-9]+)$")

# Mirrors common/src/kafka.rs `is_secret_key` (file locations and URLs are not secrets).
SECRET_KEY = re.compile(r"password|secret|jaas|ssl\.key|oauthbearer\.config|token|credential", re.I)


def is_secret_kafka_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key)) and not re.search(r"\.(location|url)$", key)


def load_values(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


@dataclass
class Rendered:
    """The objects of one offline render, with the template each came from."""

    objects: list[dict[str, Any]]
    sources: list[str]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        for o in self.of_kind(kind):
            if o["metadata"]["name"] == name:
                return o
        raise KeyError(f"no {kind} {name}; have {[o['metadata']['name'] for o in self.of_kind(kind)]}")

    def workloads(self) -> list[dict[str, Any]]:
        """Deployments, StatefulSets and Jobs."""
        return [o for o in self.objects if o.get("kind") in ("Deployment", "StatefulSet", "Job")]


def render(values: dict[str, Any] | None = None) -> Rendered:
    """Renders the chart as `helm install` would (schema validation included)."""
    with helm.Chart.load(str(CHART_DIR)) as chart:
        manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects, sources, notes = [], [], ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
                sources.append(path)
    return Rendered(objects, sources, notes)


def render_production() -> Rendered:
    return render(load_values(PRODUCTION_VALUES))


def role_of(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


# --- `chatpipe <role> --help` -------------------------------------------------------------


@dataclass
class RoleHelp:
    """What `chatpipe <words> --help` declares."""

    flags: set[str] = field(default_factory=set)
    # env var → its flag
    env: dict[str, str] = field(default_factory=dict)
    # env var → the documented default, when there is one
    defaults: dict[str, str] = field(default_factory=dict)


_FLAG = re.compile(r"^\s*(?:-\w, )?(--[a-z0-9][a-z0-9-]*)")
_ENV = re.compile(r"\[env: ([A-Z0-9_]+)(?:=[^\]]*)?\]")
_DEFAULT = re.compile(r"\[default: ([^\]]*)\]")


def role_help(binary: str, words: list[str]) -> RoleHelp:
    out = subprocess.run([binary, *words, "--help"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise AssertionError(
            f"`chatpipe {' '.join(words)} --help` failed ({out.returncode}): the chart runs a subcommand "
            f"the binary does not have.\n{out.stderr.strip()}"
        )
    h = RoleHelp()
    flag = None
    default_of_flag: dict[str, str] = {}
    for line in out.stdout.splitlines():
        m = _FLAG.match(line)
        if m:
            flag = m.group(1)
            h.flags.add(flag)
        if flag is None:
            continue
        for e in _ENV.findall(line):
            h.env[e] = flag
        d = _DEFAULT.search(line)
        if d and not line.strip().startswith("Log format"):
            default_of_flag[flag] = d.group(1)
    h.defaults = {env: default_of_flag[fl] for env, fl in h.env.items() if fl in default_of_flag}
    return h


# --- metric names of alerts and panels ---------------------------------------------------

_METRIC = re.compile(r"\bchatpipe_[a-zA-Z0-9_:]+")


def _exprs_of_rules(rendered: Rendered) -> list[tuple[str, str]]:
    out = []
    for rule_obj in rendered.of_kind("PrometheusRule"):
        for group in rule_obj["spec"]["groups"]:
            for rule in group["rules"]:
                out.append((f"alert {rule.get('alert') or rule.get('record')}", rule["expr"]))
    return out


def _exprs_of_dashboard(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    out = []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            out.append((f"panel {p.get('title')!r}", t["expr"]))
    for v in dashboard.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        if isinstance(q, str) and v.get("type") == "query":
            out.append((f"variable ${v['name']}", q))
    return out


def metric_usages(rendered: Rendered) -> dict[str, list[str]]:
    """Every `chatpipe_*` series name in the alert expressions and dashboard queries, with
    where it is used. Histogram series keep their `_bucket`/`_sum`/`_count` suffix: a
    scrape of /metrics has exactly these sample names, so they are compared as they are."""
    dashboards = [json.loads(cm["data"]["chatpipe.json"]) for cm in rendered.of_kind("ConfigMap")
                  if "chatpipe.json" in cm.get("data", {})]
    usages: dict[str, list[str]] = {}
    exprs = _exprs_of_rules(rendered) + [e for d in dashboards for e in _exprs_of_dashboard(d)]
    for where, expr in exprs:
        for name in _METRIC.findall(expr):
            usages.setdefault(name, [])
            if where not in usages[name]:
                usages[name].append(where)
    return usages


def everything_enabled() -> Rendered:
    """The production render: alerts, dashboard and every role enabled."""
    r = render_production()
    kinds = {o["kind"] for o in r.objects}
    assert "PrometheusRule" in kinds, "the production values must enable prometheusRule"
    assert any("chatpipe.json" in cm.get("data", {}) for cm in r.of_kind("ConfigMap")), \
        "the production values must enable the dashboard"
    return r

