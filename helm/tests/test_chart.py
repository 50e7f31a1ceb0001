"""Tests of the chatpipe Helm chart, run by tests/tests/helm_chart.rs (`cargo test`).

Renders the chart offline with Helm v4's engine (helm-python-sdk) for the default values
and helm/examples/values-production.yaml, lints it, validates every rendered object against
the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors), and
checks the rendered objects against the real binary: `CHATPIPE_BINARY` names the
`chatpipe` executable whose `--help` the roles' args and env must match.

    CHATPIPE_BINARY=target/debug/chatpipe $VENV/bin/python -m unittest -v helm/tests/test_chart.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helm_python as helm  # noqa: E402
import kubernetes_validate  # noqa: E402

import chartlib  # noqa: E402
from chartlib import HELPER_ENV, ROLE_COMMANDS, Rendered  # noqa: E402

# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest that
# kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ["1.25.0", "1.37.0"]
# Custom resources of the Prometheus Operator have no schema in kubernetes-validate; they
# are checked structurally below.
CRD_GROUP = "monitoring.coreos.com/"

# Settings the chart sets on purpose to something else than the binary's default.
DELIBERATE_OVERRIDES = {
    "CHATPIPE_INGEST_LISTEN",  # 0.0.0.0, not 127.0.0.1: reachable from the Service
    "CHATPIPE_INGEST_METRICS_LISTEN",
    "CHATPIPE_METRICS_LISTEN",
    "CHATPIPE_SINK_METRICS_LISTEN",
    "CHATPIPE_SERVE_LISTEN",
    "CHATPIPE_SERVE_METRICS_LISTEN",
    "CHATPIPE_STATE_DIR",  # the mounted volume
    "CHATPIPE_KAFKA_BROKERS",  # the cluster's, not 127.0.0.1:9092
    "CHATPIPE_HBASE_THRIFT",
}


def binary() -> str:
    b = os.environ.get("CHATPIPE_BINARY", "")
    if not b or not os.access(b, os.X_OK):
        raise AssertionError(f"CHATPIPE_BINARY must name the chatpipe executable (got {b!r})")
    return b


# Roles and flags the chart deploys that are being added to the binary by other work
# (static membership's CHATPIPE_GROUP_INSTANCE_ID, issue 14). While the binary under test
# lacks one, the checks against `--help` skip it and say so; once the binary has it, it is
# checked like everything else.
PENDING_ROLES: set[str] = set()
PENDING_ENV = {"CHATPIPE_GROUP_INSTANCE_ID"}
_SUBCOMMANDS: set[str] = set()


def binary_subcommands() -> set[str]:
    if not _SUBCOMMANDS:
        out = subprocess.run([binary(), "--help"], capture_output=True, text=True, timeout=60).stdout
        lines = out.splitlines()
        start = next(i for i, l in enumerate(lines) if l.startswith("Commands:"))
        for line in lines[start + 1:]:
            if not line.startswith("  "):
                break
            _SUBCOMMANDS.add(line.split()[0])
    return _SUBCOMMANDS


def pending_role(role: str) -> bool:
    """A role the chart deploys that the binary under test does not have yet."""
    if role in PENDING_ROLES and ROLE_COMMANDS[role][0] not in binary_subcommands():
        print(f"NOTE: the binary has no `{ROLE_COMMANDS[role][0]}` yet: its flags are not checked", file=sys.stderr)
        return True
    return False


def pending_env(name: str) -> bool:
    """An env var the chart sets that no role of the binary under test declares yet."""
    if name in PENDING_ENV and not any(name in help_of(r).env for r in ("processor", "sink")):
        print(f"NOTE: no role of the binary declares {name} yet: not checked", file=sys.stderr)
        return True
    return False


_RENDERS: dict[str, Rendered] = {}


def renders() -> dict[str, Rendered]:
    if not _RENDERS:
        _RENDERS["default values"] = chartlib.render()
        _RENDERS["production values"] = chartlib.render_production()
    return _RENDERS


_HELP: dict[str, chartlib.RoleHelp] = {}


def help_of(role: str) -> chartlib.RoleHelp:
    if role not in _HELP:
        _HELP[role] = chartlib.role_help(binary(), ROLE_COMMANDS[role])
    return _HELP[role]


def configmap_env(r: Rendered, container: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        cm = r.named("ConfigMap", src["configMapRef"]["name"])
        env.update(cm.get("data", {}))
    return env


def expect_of(path: Path) -> tuple[str, str]:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    m = re.match(r"^# expect-(schema|render): (.+)$", first)
    assert m, f"{path.name}: the first line must be '# expect-schema: …' or '# expect-render: …'"
    return m.group(1), m.group(2)


def validate_prometheus_rule(obj: dict) -> list[str]:
    errors = []
    spec = obj.get("spec", {})
    groups = spec.get("groups")
    if not isinstance(groups, list) or not groups:
        return ["spec.groups must be a non-empty list"]
    names = set()
    for g in groups:
        if not isinstance(g.get("name"), str) or g["name"] in names:
            errors.append(f"group name missing or repeated: {g.get('name')!r}")
        names.add(g.get("name"))
        for rule in g.get("rules", []):
            where = f"group {g.get('name')} rule {rule.get('alert') or rule.get('record')}"
            if ("alert" in rule) == ("record" in rule):
                errors.append(f"{where}: exactly one of alert/record")
            if not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
                errors.append(f"{where}: expr must be a non-empty string")
                continue
            extra = set(rule) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
            if extra:
                errors.append(f"{where}: unknown fields {sorted(extra)}")
            if "for" in rule and not re.fullmatch(r"(0|([0-9]+(ms|s|m|h|d|w|y))+)", str(rule["for"])):
                errors.append(f"{where}: bad duration for: {rule['for']!r}")
            for k in ("labels", "annotations"):
                if not all(isinstance(v, str) for v in rule.get(k, {}).values()):
                    errors.append(f"{where}: {k} values must be strings")
            # PromQL is not parsed here; at least its brackets must balance.
            stack, pairs = [], {")": "(", "]": "[", "}": "{"}
            for ch in re.sub(r'"(\\.|[^"\\])*"', '""', rule["expr"]):
                if ch in "([{":
                    stack.append(ch)
                elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
                    errors.append(f"{where}: unbalanced {ch!r} in expr")
                    break
            if stack:
                errors.append(f"{where}: unclosed brackets in expr")
    return errors


def validate_service_monitor(obj: dict, services: list[dict]) -> list[str]:
    errors = []
    spec = obj.get("spec", {})
    sel = spec.get("selector", {}).get("matchLabels")
    if not sel:
        return ["spec.selector.matchLabels is required"]
    endpoints = spec.get("endpoints")
    if not endpoints:
        return ["spec.endpoints must be a non-empty list"]
    matched = [s for s in services if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
    if not matched:
        errors.append(f"selector {sel} matches no Service")
    for ep in endpoints:
        extra = set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings"}
        if extra:
            errors.append(f"endpoint has unknown fields {sorted(extra)}")
        for s in matched:
            if ep.get("port") not in [p.get("name") for p in s["spec"]["ports"]]:
                errors.append(f"Service {s['metadata']['name']} has no port named {ep.get('port')!r}")
    return errors


class RenderAndValidate(unittest.TestCase):
    """The chart renders with Helm's engine and every object is valid Kubernetes."""

    def test_default_and_production_values_render(self):
        for label, r in renders().items():
            kinds = sorted({o["kind"] for o in r.objects})
            with self.subTest(values=label):
                for kind in ("StatefulSet", "Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy"):
                    self.assertIn(kind, kinds)
        prod = renders()["production values"]
        for kind in ("HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule", "Job"):
            self.assertIn(kind, {o["kind"] for o in prod.objects}, "production values enable it")

    def test_every_object_validates_against_kubernetes_schemas(self):
        for label, r in renders().items():
            services = r.of_kind("Service")
            for obj, src in zip(r.objects, r.sources):
                what = f"{label}: {obj['kind']}/{obj['metadata']['name']} ({src})"
                with self.subTest(object=what):
                    if obj["apiVersion"].startswith(CRD_GROUP):
                        check = {"PrometheusRule": lambda o: validate_prometheus_rule(o),
                                 "ServiceMonitor": lambda o: validate_service_monitor(o, services)}[obj["kind"]]
                        self.assertEqual(obj["apiVersion"], "monitoring.coreos.com/v1")
                        self.assertTrue(obj["metadata"].get("name"))
                        self.assertEqual(check(obj), [], what)
                        continue
                    for version in KUBERNETES_VERSIONS:
                        try:
                            kubernetes_validate.validate(obj, version, strict=True)
                        except kubernetes_validate.ValidationError as e:
                            path = ".".join(str(p) for p in e.caught.absolute_path)
                            self.fail(f"{what} is invalid for Kubernetes {version}: {path}: {e.caught.message}")

    def test_helm_lint_passes_strictly(self):
        for label, values in (("default values", None),
                              ("production values", chartlib.load_values(chartlib.PRODUCTION_VALUES))):
            with self.subTest(values=label):
                report = helm.lint(str(chartlib.CHART_DIR), values, strict=True, kube_version="v1.34.0")
                serious = [m for m in report["messages"] if m["severity"] >= 2]
                self.assertEqual(report["errors"], [], report)
                self.assertEqual(serious, [], report)

    def test_schema_rejects_bad_values(self):
        files = sorted(chartlib.BAD_VALUES_DIR.glob("*.yaml"))
        self.assertGreaterEqual(len(files), 5)
        with helm.Chart.load(str(chartlib.CHART_DIR)) as chart:
            chart.validate_schema(None)  # the defaults pass
            chart.validate_schema(chartlib.load_values(chartlib.PRODUCTION_VALUES))
            for path in files:
                stage, expected = expect_of(path)
                values = chartlib.load_values(path)
                with self.subTest(file=path.name):
                    if stage == "schema":
                        with self.assertRaises(helm.HelmValuesError) as caught:
                            chart.validate_schema(values)
                        self.assertIn(expected, str(caught.exception))
                        report = helm.lint(str(chartlib.CHART_DIR), values, strict=True)
                        self.assertTrue(report["errors"], f"lint accepted {path.name}")
                    else:
                        chart.validate_schema(values)  # valid shape, refused by the templates
                    with self.assertRaises(helm.HelmError) as caught:
                        chart.render(values=values, name=chartlib.RELEASE, namespace=chartlib.NAMESPACE)
                    self.assertIn(expected, str(caught.exception))

    def test_every_value_has_a_description_in_the_schema(self):
        schema = json.loads((chartlib.CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
        defs = schema.get("definitions", {})

        def resolve(node):
            while "$ref" in node:
                node = {**defs[node["$ref"].split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
            return node

        def walk(values, node, path):
            node = resolve(node)
            self.assertTrue(node.get("description"), f"{path or '(root)'} has no description")
            self.assertTrue("type" in node or "oneOf" in node, f"{path} has no type")
            if isinstance(values, dict) and "properties" in node:
                for k, v in values.items():
                    self.assertIn(k, node["properties"], f"{path}.{k} is not in the schema")
                    walk(v, node["properties"][k], f"{path}.{k}".lstrip("."))

        schema = {**schema, "description": schema.get("description", schema["title"])}
        walk(chartlib.load_values(chartlib.CHART_DIR / "values.yaml"), schema, "")


class MatchesTheBinary(unittest.TestCase):
    """Every role's args and env are flags that `chatpipe <role> --help` really has."""

    def test_args_and_env_are_real_flags(self):
        for label, r in renders().items():
            for w in r.workloads():
                role = chartlib.role_of(w)
                if pending_role(role):
                    continue
                h = help_of(role)
                for c in chartlib.pod_spec(w)["containers"]:
                    with self.subTest(values=label, role=role):
                        words = ROLE_COMMANDS[role]
                        self.assertEqual(c["args"][: len(words)], words)
                        rest = c["args"][len(words):]
                        for a in rest:
                            if a.startswith("--"):
                                self.assertIn(a.split("=", 1)[0], h.flags,
                                              f"{role}: flag {a} is not in `chatpipe {' '.join(words)} --help`")
                        env = list(configmap_env(r, c)) + [e["name"] for e in c.get("env", [])]
                        options = next((e.get("value", "") for e in c.get("env", [])
                                        if e["name"] == "CHATPIPE_KAFKA_OPTIONS"), "")
                        for name in env:
                            if HELPER_ENV.match(name):
                                self.assertIn(f"$({name})", options, f"{role}: helper {name} is not used")
                                continue
                            if pending_env(name):
                                continue
                            self.assertIn(name, h.env, f"{role}: {name} is not an env var of "
                                                       f"`chatpipe {' '.join(words)} --help`")

    def test_default_settings_equal_the_binary_defaults(self):
        r = renders()["default values"]
        checked = 0
        for w in r.workloads():
            role = chartlib.role_of(w)
            if pending_role(role):
                continue
            h = help_of(role)
            for c in chartlib.pod_spec(w)["containers"]:
                env = configmap_env(r, c) | {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
                for name, value in env.items():
                    if name in h.defaults and name not in DELIBERATE_OVERRIDES:
                        checked += 1
                        with self.subTest(role=role, env=name):
                            self.assertEqual(value, h.defaults[name],
                                             f"values.yaml default of {name} drifted from `chatpipe {role} --help`")
        self.assertGreater(checked, 30)

    def test_rendered_configuration_is_accepted_by_the_binary(self):
        """Each role started with exactly the rendered env and args (secrets replaced by
        dummies, paths and addresses made local) parses its configuration and keeps
        running; the Kafka and HBase addresses are unreachable, which the roles retry."""
        prod = chartlib.load_values(chartlib.PRODUCTION_VALUES)
        # The binary's librdkafka is built without OpenSSL (see the expected failure
        # below): run the production settings with SASL PLAIN over plaintext and no CA.
        prod["kafka"]["sasl"].update(securityProtocol="SASL_PLAINTEXT", mechanism="PLAIN")
        prod["kafka"]["tls"]["caSecret"] = ""
        for label, r in (("default values", renders()["default values"]), ("production values", chartlib.render(prod))):
            roles = [chartlib.role_of(w) for w in r.workloads() if not pending_role(chartlib.role_of(w))]
            for role, running, code, stderr in run_roles(r, roles):
                with self.subTest(values=label, role=role):
                    self.assertNotIn("try '--help'", stderr, f"{role} refused its configuration:\n{stderr[-2000:]}")
                    if role == "tables":
                        # a one-shot command: it fails on the unreachable HBase, not on its flags
                        self.assertNotEqual(code, 2, stderr[-2000:])
                    else:
                        self.assertTrue(running, f"{role} exited with {code}:\n{stderr[-2000:]}")

    def test_binary_supports_sasl_ssl_and_scram(self):
        """The production values use SASL_SSL with SCRAM: the binary (rdkafka built with
        its `ssl` feature against the system OpenSSL) must start with them."""
        prod = chartlib.load_values(chartlib.PRODUCTION_VALUES)
        prod["kafka"]["tls"]["caSecret"] = ""  # the system CA bundle
        for role, running, code, stderr in run_roles(chartlib.render(prod), ["processor"]):
            self.assertTrue(running, f"{role} exited with {code}:\n{stderr[-2000:]}")


def run_roles(r: Rendered, roles: list[str], seconds: float = 4.0) -> list[tuple[str, bool, int | None, str]]:
    """Starts the binary as the rendered pods of `roles` would run it, for `seconds`;
    returns (role, still running, exit code, stderr) of each."""
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp, "etc/chatpipe/api-keys")
        keys.mkdir(parents=True)
        (keys / "api-keys").write_text("test:0123456789abcdef\n")
        Path(tmp, "var/lib/chatpipe/processor").mkdir(parents=True)
        procs = []
        for w in r.workloads():
            role = chartlib.role_of(w)
            if role not in roles:
                continue
            c = chartlib.pod_spec(w)["containers"][0]
            env = {k: local(v, tmp) for k, v in configmap_env(r, c).items()}
            for e in c.get("env", []):
                if "valueFrom" in e:
                    env[e["name"]] = "dummy-secret"
                else:  # Kubernetes' $(VAR) expansion of earlier variables
                    value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
                    env[e["name"]] = local(value, tmp)
            for k in list(env):
                if k.endswith("LISTEN"):
                    env[k] = "127.0.0.1:0"
            env.update(CHATPIPE_KAFKA_BROKERS="127.0.0.1:1", CHATPIPE_HBASE_THRIFT="127.0.0.1:1")
            full_env = {"PATH": os.environ.get("PATH", "/usr/bin"), "HOME": tmp, **env}
            p = subprocess.Popen([binary(), *c["args"]], env=full_env, cwd=tmp,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            procs.append((role, p))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and any(p.poll() is None for _, p in procs):
            time.sleep(0.2)
        out = []
        for role, p in procs:
            running = p.poll() is None
            if running:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            stderr = p.stderr.read() if p.stderr else ""
            if p.stderr:
                p.stderr.close()
            out.append((role, running, None if running else p.returncode, stderr))
        return out


def local(value: str, tmp: str) -> str:
    """Container paths of mounted volumes, moved under a temporary directory."""
    for prefix in ("/etc/chatpipe/", "/var/lib/chatpipe/"):
        value = value.replace(prefix, f"{tmp}{prefix}")
    return value


class PodsAndSecrets(unittest.TestCase):
    """Probes, secrets and security context of the rendered pods."""

    def test_probes_point_at_the_metrics_port(self):
        for label, r in renders().items():
            for w in r.workloads():
                if w["kind"] == "Job":
                    continue
                role = chartlib.role_of(w)
                for c in chartlib.pod_spec(w)["containers"]:
                    with self.subTest(values=label, role=role):
                        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                        listen = [v for k, v in configmap_env(r, c).items() if k.endswith("METRICS_LISTEN")]
                        self.assertEqual(len(listen), 1, "one metrics address per role")
                        self.assertEqual(int(listen[0].rsplit(":", 1)[1]), ports["metrics"])
                        self.assertEqual(c["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "metrics"})
                        self.assertEqual(c["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "metrics"})
                        svc = r.named("Service", f"{w['metadata']['name']}-metrics")
                        self.assertEqual(svc["spec"]["ports"][0]["targetPort"], "metrics")
                        self.assertEqual(svc["spec"]["selector"], w["spec"]["selector"]["matchLabels"])
            for role in ("ingest", "serve"):
                svc = r.named("Service", f"{chartlib.RELEASE}-{role}")
                self.assertEqual(svc["spec"]["ports"][0]["targetPort"], "http")

    def test_no_secret_values_in_configmaps_or_manifests(self):
        for label, r in renders().items():
            with self.subTest(values=label):
                self.assertEqual(r.of_kind("Secret"), [], "the chart references Secrets, it never creates them")
                for cm in r.of_kind("ConfigMap"):
                    for k, v in cm.get("data", {}).items():
                        self.assertFalse(chartlib.is_secret_kafka_key(k) or re.search(r"API_KEY(?!S_FILE)", k),
                                         f"ConfigMap {cm['metadata']['name']} has secret-looking key {k}")
                        self.assertNotEqual(k, "CHATPIPE_KAFKA_OPTIONS", "Kafka options may splice secrets")
                        self.assertNotRegex(v, r"(?i)sasl\.password|sasl\.username=", k)
                for w in r.workloads():
                    for c in chartlib.pod_spec(w)["containers"]:
                        defined_secret = set()
                        for e in c.get("env", []):
                            if HELPER_ENV.match(e["name"]):
                                self.assertIn("secretKeyRef", e.get("valueFrom", {}), e["name"])
                                defined_secret.add(e["name"])
                            if e["name"] == "CHATPIPE_KAFKA_OPTIONS":
                                lines = e["value"].split("\n")
                                self.assertNotIn("", lines, "an empty line is a parse error of --kafka-option")
                                for line in lines:
                                    key, _, value = line.partition("=")
                                    if chartlib.is_secret_kafka_key(key):
                                        m = re.fullmatch(r"\$\((\w+)\)", value)
                                        self.assertTrue(m and m.group(1) in defined_secret,
                                                        f"{key} must come from a Secret defined before it")
        prod = renders()["production values"]
        ingest = prod.named("StatefulSet", f"{chartlib.RELEASE}-ingest")
        vols = {v["name"]: v for v in chartlib.pod_spec(ingest)["volumes"]}
        self.assertEqual(vols["api-keys"]["secret"]["secretName"], "chatpipe-api-keys")
        c = chartlib.pod_spec(ingest)["containers"][0]
        keys_file = configmap_env(prod, c)["CHATPIPE_INGEST_API_KEYS_FILE"]
        mount = next(m for m in c["volumeMounts"] if m["name"] == "api-keys")
        self.assertTrue(keys_file.startswith(mount["mountPath"] + "/") and mount["readOnly"])
        sink = prod.named("StatefulSet", f"{chartlib.RELEASE}-sink")
        env = {e["name"]: e for e in chartlib.pod_spec(sink)["containers"][0]["env"]}
        self.assertEqual(env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"],
                         {"name": "chatpipe-kafka-sasl", "key": "password"})
        self.assertIn("sasl.password=$(KAFKA_SASL_PASSWORD)", env["CHATPIPE_KAFKA_OPTIONS"]["value"].split("\n"))

    def test_pods_run_as_non_root_with_a_read_only_root_filesystem(self):
        for label, r in renders().items():
            for w in r.workloads():
                spec = chartlib.pod_spec(w)
                with self.subTest(values=label, workload=w["metadata"]["name"]):
                    self.assertTrue(spec["securityContext"]["runAsNonRoot"])
                    self.assertFalse(spec["automountServiceAccountToken"])
                    for c in spec["containers"]:
                        sc = c["securityContext"]
                        self.assertTrue(sc["readOnlyRootFilesystem"])
                        self.assertFalse(sc["allowPrivilegeEscalation"])
                        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
                        self.assertIn("requests", c["resources"])
                        self.assertIn("/tmp", [m["mountPath"] for m in c["volumeMounts"]])

    def test_workload_shapes(self):
        prod = renders()["production values"]
        ingest = prod.named("StatefulSet", f"{chartlib.RELEASE}-ingest")
        self.assertEqual(ingest["spec"]["podManagementPolicy"], "Parallel")
        self.assertNotIn("replicas", ingest["spec"], "the HPA owns the replica count")
        ingest_env = configmap_env(prod, chartlib.pod_spec(ingest)["containers"][0])
        self.assertNotIn("CHATPIPE_INGEST_WORKER_ID", ingest_env, "the worker id is the pod ordinal")
        hpa = prod.of_kind("HorizontalPodAutoscaler")[0]
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["kind"], "StatefulSet")
        self.assertLessEqual(hpa["spec"]["maxReplicas"], 1024)
        processor = prod.named("StatefulSet", f"{chartlib.RELEASE}-processor")
        self.assertEqual(processor["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "state")
        pc = chartlib.pod_spec(processor)["containers"][0]
        self.assertEqual(configmap_env(prod, pc)["CHATPIPE_STATE_DIR"],
                         next(m["mountPath"] for m in pc["volumeMounts"] if m["name"] == "state"))
        default_proc = renders()["default values"].named("StatefulSet", f"{chartlib.RELEASE}-processor")
        self.assertIn("emptyDir", next(v for v in chartlib.pod_spec(default_proc)["volumes"] if v["name"] == "state"))
        job = prod.of_kind("Job")[0]
        self.assertIn("pre-install", job["metadata"]["annotations"]["helm.sh/hook"])
        self.assertEqual(len(prod.of_kind("PodDisruptionBudget")), 4)


class ImageMembershipNetworkAndServe(unittest.TestCase):
    """The chart on the repository's image, static membership, NetworkPolicies, serve."""

    def test_default_image_is_the_one_the_dockerfile_builds(self):
        """values.yaml's image is what tests/tests/image.rs builds and runs
        (`chatpipe/chatpipe:<version>`), the appVersion is the crate version, and the
        image's user is the pods' runAsUser."""
        chart = chartlib.load_values(chartlib.CHART_DIR / "Chart.yaml")
        cargo = (chartlib.HELM_DIR.parent / "Cargo.toml").read_text(encoding="utf-8")
        version = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', cargo, re.M | re.S).group(1)
        self.assertEqual(chart["appVersion"], version, "Chart.yaml appVersion is the release of the binary")
        image_test = (chartlib.HELM_DIR.parent / "tests/tests/image.rs").read_text(encoding="utf-8")
        repository = re.search(r'const REPOSITORY: &str = "([^"]+)";', image_test).group(1)
        r = renders()["default values"]
        for w in r.workloads():
            for c in chartlib.pod_spec(w)["containers"]:
                self.assertEqual(c["image"], f"{repository}:{version}", w["metadata"]["name"])
                self.assertEqual(c["command"], ["chatpipe"])
        dockerfile = (chartlib.HELM_DIR.parent / "Dockerfile").read_text(encoding="utf-8")
        users = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)
        self.assertEqual(len(users), 1, "one USER line in the Dockerfile")
        values = chartlib.load_values(chartlib.CHART_DIR / "values.yaml")
        self.assertEqual((int(users[0][0]), int(users[0][1])),
                         (values["podSecurityContext"]["runAsUser"], values["podSecurityContext"]["runAsGroup"]))
        self.assertIn('ENTRYPOINT ["/usr/local/bin/chatpipe"]', dockerfile)
        prod = renders()["production values"]
        self.assertEqual(chartlib.pod_spec(prod.workloads()[0])["containers"][0]["image"],
                         "registry.example.com/chat/chatpipe:0.1.0")

    def test_processor_and_sink_pods_use_static_membership_from_their_pod_names(self):
        for label, r in renders().items():
            for kind, role in (("StatefulSet", "processor"), ("StatefulSet", "sink")):
                w = r.named(kind, f"{chartlib.RELEASE}-{role}")
                with self.subTest(values=label, role=role):
                    self.assertEqual(w["spec"]["podManagementPolicy"], "Parallel")
                    env = {e["name"]: e for e in chartlib.pod_spec(w)["containers"][0]["env"]}
                    self.assertEqual(env["CHATPIPE_GROUP_INSTANCE_ID"]["valueFrom"],
                                     {"fieldRef": {"fieldPath": "metadata.name"}})
        off = chartlib.render({"processor": {"staticMembership": False}, "sink": {"staticMembership": False}})
        for w in off.workloads():
            names = [e["name"] for c in chartlib.pod_spec(w)["containers"] for e in c.get("env", [])]
            self.assertNotIn("CHATPIPE_GROUP_INSTANCE_ID", names, w["metadata"]["name"])
        # ingest's worker id is its ordinal; serve has no consumer group: neither gets it
        for w in renders()["production values"].workloads():
            if chartlib.role_of(w) not in ("processor", "sink"):
                names = [e["name"] for c in chartlib.pod_spec(w)["containers"] for e in c.get("env", [])]
                self.assertNotIn("CHATPIPE_GROUP_INSTANCE_ID", names, w["metadata"]["name"])

    def _policies_by_role(self, r: Rendered) -> dict[str, dict]:
        out = {}
        for np in r.of_kind("NetworkPolicy"):
            out[np["metadata"]["labels"]["app.kubernetes.io/component"]] = np
        return out

    def test_network_policies_admit_each_port_only_from_its_peers(self):
        for label, r in renders().items():
            values = (chartlib.load_values(chartlib.PRODUCTION_VALUES) if label == "production values" else {})
            np_values = {**chartlib.load_values(chartlib.CHART_DIR / "values.yaml")["networkPolicy"],
                         **values.get("networkPolicy", {})}
            policies = self._policies_by_role(r)
            for w in r.workloads():
                role = chartlib.role_of(w)
                with self.subTest(values=label, role=role):
                    np = policies[role]
                    labels = w["spec"]["template"]["metadata"]["labels"]
                    sel = np["spec"]["podSelector"]["matchLabels"]
                    self.assertTrue(all(labels.get(k) == v for k, v in sel.items()), "the policy selects the pods")
                    others = [x for x in r.workloads() if chartlib.role_of(x) != role]
                    for o in others:
                        ol = o["spec"]["template"]["metadata"]["labels"]
                        self.assertFalse(all(ol.get(k) == v for k, v in sel.items()),
                                         f"the {role} policy also selects {o['metadata']['name']}")
                    self.assertEqual(np["spec"]["policyTypes"], ["Ingress"])
                    rules = np["spec"]["ingress"]
                    container_ports = {p["name"] for c in chartlib.pod_spec(w)["containers"] for p in c.get("ports", [])}
                    admitted = {}
                    for rule in rules:
                        for p in rule["ports"]:
                            admitted[p["port"]] = rule.get("from")
                    # exactly the pod's ports, each from its peers
                    self.assertEqual(set(admitted), container_ports)
                    if "metrics" in admitted:
                        self.assertEqual(admitted["metrics"], np_values["metricsFrom"] or None)
                    if "http" in admitted:
                        peers = np_values["ingestFrom" if role == "ingest" else "serveFrom"]
                        self.assertEqual(admitted["http"], peers or None)
        prod = self._policies_by_role(renders()["production values"])
        self.assertEqual(prod["tables"]["spec"]["ingress"], [], "the tables Job accepts nothing")
        self.assertEqual(prod["processor"]["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"],
                         {"kubernetes.io/metadata.name": "monitoring"})
        self.assertEqual(chartlib.render({"networkPolicy": {"enabled": False}}).of_kind("NetworkPolicy"), [])

    def test_serve_has_its_service_autoscaler_disruption_budget_and_probes_and_can_be_off(self):
        prod = renders()["production values"]
        name = f"{chartlib.RELEASE}-serve"
        d = prod.named("Deployment", name)
        c = chartlib.pod_spec(d)["containers"][0]
        self.assertEqual(c["args"][0], "serve")
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        env = configmap_env(prod, c)
        self.assertEqual(env["CHATPIPE_SERVE_LISTEN"], f"0.0.0.0:{ports['http']}")
        self.assertEqual(env["CHATPIPE_SERVE_METRICS_LISTEN"], f"0.0.0.0:{ports['metrics']}")
        self.assertEqual(env["CHATPIPE_HBASE_THRIFT"], "hbase-thrift.data.svc:9090")
        self.assertEqual(env["CHATPIPE_SERVE_INBOX_CACHE_TTL"], "30s")
        keys = env["CHATPIPE_SERVE_API_KEYS_FILE"]
        mount = next(m for m in c["volumeMounts"] if m["name"] == "api-keys")
        self.assertTrue(keys.startswith(mount["mountPath"] + "/") and mount["readOnly"])
        self.assertNotIn("replicas", d["spec"], "the HPA owns the replica count")
        svc = prod.named("Service", name)
        self.assertEqual(svc["spec"]["selector"], d["spec"]["selector"]["matchLabels"])
        hpa = prod.named("HorizontalPodAutoscaler", name)
        self.assertEqual(hpa["spec"]["scaleTargetRef"], {"apiVersion": "apps/v1", "kind": "Deployment", "name": name})
        self.assertEqual(prod.named("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"],
                         d["spec"]["selector"]["matchLabels"])
        self.assertEqual(c["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "metrics"})
        prod.named("Service", f"{name}-metrics")
        self.assertIn("Deployment", {o["kind"] for o in renders()["default values"].objects}, "on by default")
        off = chartlib.render({"serve": {"enabled": False}})
        self.assertFalse([o for o in off.objects if o["metadata"]["name"].startswith(name)],
                         "serve.enabled=false deploys nothing of serve")


class AlertsAndDashboard(unittest.TestCase):
    """The dashboard parses and the alerts and panels name chatpipe's metrics."""

    def test_dashboard_json_parses_and_ships_unchanged(self):
        text = chartlib.DASHBOARD_FILE.read_text(encoding="utf-8")
        dash = json.loads(text)
        self.assertEqual(dash["uid"], "chatpipe-overview")
        panels = [p for p in dash["panels"] if p["type"] != "row"]
        self.assertGreaterEqual(len(panels), 10)
        for p in panels:
            self.assertTrue(p["targets"], p["title"])
            for t in p["targets"]:
                self.assertIn("$namespace", t["expr"], f"panel {p['title']!r} ignores the namespace variable")
        cms = [cm for cm in renders()["production values"].of_kind("ConfigMap") if "chatpipe.json" in cm.get("data", {})]
        self.assertEqual(len(cms), 1)
        self.assertEqual(json.loads(cms[0]["data"]["chatpipe.json"]), dash)
        self.assertEqual(cms[0]["metadata"]["labels"]["grafana_dashboard"], "1")

    def test_alerts_and_panels_cover_the_issue(self):
        usages = chartlib.metric_usages(chartlib.everything_enabled())
        alerts = {w for ws in usages.values() for w in ws if w.startswith("alert ")}
        for alert in ("ChatpipeProcessorConsumerLagGrowing", "ChatpipeSinkConsumerLagGrowing",
                      "ChatpipeProcessorDlqRate", "ChatpipeSinkDlqRate", "ChatpipeSinkHbaseErrors",
                      "ChatpipeSinkHbaseRetries", "ChatpipeIngest5xx", "ChatpipeIngestUnavailable",
                      "ChatpipeEndToEndLatencyHigh", "ChatpipeProcessorRestoreSlow"):
            self.assertIn(f"alert {alert}", alerts)
        for name in usages:
            self.assertRegex(name, r"^chatpipe_(ingest|processor|sink)_[a-z0-9_]+$")

    def test_alert_runbook_links_name_sections_of_operations_md(self):
        ops = (chartlib.HELM_DIR.parent / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
        anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                   for h in re.findall(r"^#+ (.+)$", ops, flags=re.M)}
        for rule_obj in renders()["production values"].of_kind("PrometheusRule"):
            for g in rule_obj["spec"]["groups"]:
                for rule in g["rules"]:
                    url = rule["annotations"]["runbook_url"]
                    self.assertIn(url.rsplit("#", 1)[1], anchors, f"OPERATIONS.md has no section {rule['alert']}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
