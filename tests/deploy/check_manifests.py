#!/usr/bin/env python3
"""Checks of the rendered Kubernetes manifests that no schema can make.

Usage (tests/deploy/validate.sh runs it on every rendered kustomization):

    check_manifests.py --binary target/debug/truedat-auth-proxy --secret base/secret.example.yaml \
        native:rendered-base.yaml regular:rendered-no-native.yaml ...

`native:` files must run truedat-auth-proxy as a native sidecar (an init
container with restartPolicy: Always), `regular:` files as a plain container.
Each workload's effective proxy configuration comes from the binary itself:
`truedat-auth-proxy --config <the ConfigMap's file> --check-config` with the
container's TRUEDAT_PROXY_* variables, which also rejects unknown keys and
invalid values. Against it:

- listen.address stays on loopback; admin.address is reachable (not loopback);
- every probe, the admin containerPort, the prometheus.io/port annotation and
  the PodMonitor name the admin port; probes use /readyz (startup, readiness)
  and /healthz (liveness); the startup probe outlasts a login with backoff;
- the password comes from a Secret mounted as a directory (no subPath, so the
  kubelet updates it) at credentials.password_file, under the key the example
  Secret has; no password in the ConfigMap or in the environment;
- terminationGracePeriodSeconds > shutdown.delay + drain_timeout + login_timeout;
- every container has cpu and memory requests and limits, a hardened
  securityContext, and an image pinned to a tag or digest other than latest;
- native: init container with restartPolicy Always; regular: no restartPolicy,
  the first container, with `truedat-auth-proxy wait --config <the same file>`
  as its postStart hook (so the tool starts once the proxy holds a token) and
  a --timeout as long as the startup probe's budget, a shutdown.delay for
  Deployments, and a Job's tool POSTs /quitquitquit;
- a PrometheusRule's rules each have an alert name and a PromQL expression
  that parses and names only truedat_proxy_* metrics.

Prints one line per problem, naming the file, object and field; exits 1 if any.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import posixpath
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field

import yaml

try:  # installed by tests/deploy/validate.sh beside PyYAML
    import promql_parser
except ImportError:  # pragma: no cover - run by hand without it
    promql_parser = None

PROXY_NAME = "truedat-auth-proxy"
ENV_PREFIX = "TRUEDAT_PROXY_"
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# Kubernetes' default when a pod spec does not set it.
DEFAULT_GRACE_SECONDS = 30
# The units --check-config prints durations with (humantime's), and their
# usual spellings.
UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1, "sec": 1, "secs": 1, "m": 60,
         "min": 60, "mins": 60, "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600, "d": 86400,
         "day": 86400, "days": 86400}


def seconds(text: str) -> float:
    """A humantime duration ("250ms", "30s", "1m 30s") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-zµ]+)", text)
    if not parts or re.sub(r"[\d.\sa-zµ]", "", text):
        raise ValueError(f"not a duration: {text!r}")
    total = 0.0
    for number, unit in parts:
        if unit not in UNITS:
            raise ValueError(f"unknown unit {unit!r} in {text!r}")
        total += float(number) * UNITS[unit]
    return total


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    checked: int = 0

    def check(self, ok: bool, where: str, message: str) -> bool:
        self.checked += 1
        if not ok:
            self.problems.append(f"{where}: {message}")
        return ok


def load(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def name_of(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def effective_config(binary: str, toml_text: str, env: list[dict], where: str, report: Report) -> dict | None:
    """The configuration the binary would run with: its own defaults, then
    `toml_text` as --config, then the container's TRUEDAT_PROXY_* variables,
    as printed by `--check-config` (which also rejects unknown keys and bad
    values, exit 2, one line per problem)."""
    variables = {"PATH": os.environ.get("PATH", "")}
    for var in env:
        name = var.get("name", "")
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        if report.check("value" in var, where, f"env {name}: only literal values can be checked"):
            variables[name] = str(var["value"])
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(toml_text)
        f.flush()
        run = subprocess.run([binary, "--config", f.name, "--check-config"], env=variables,
                             capture_output=True, text=True, timeout=60)
    if not report.check(run.returncode == 0, where, "truedat-auth-proxy --check-config rejects the configuration: "
                        + " | ".join(run.stderr.strip().splitlines())):
        return None
    return tomllib.loads(run.stdout)


def port_number(port, container: dict) -> int | None:
    """A probe's or PodMonitor's port, by number or by the container's port name."""
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return declared.get("containerPort")
    return None


class Workload:
    """One object with a pod template that runs the proxy."""

    def __init__(self, path: str, obj: dict, config_maps: dict, binary: str, report: Report):
        self.path, self.obj, self.report = path, obj, report
        self.where = f"{path}: {name_of(obj)}"
        self.template = obj["spec"]["template"]
        self.pod = self.template["spec"]
        self.init = self.pod.get("initContainers", [])
        self.regular = self.pod.get("containers", [])
        proxies = [c for c in self.init + self.regular if c.get("name") == PROXY_NAME]
        report.check(len(proxies) == 1, self.where, f"expected one container named {PROXY_NAME}, found {len(proxies)}")
        self.proxy = proxies[0] if proxies else None
        self.config_path: str | None = None
        self.config = self.proxy_config(config_maps, binary) if self.proxy else None

    def at(self, container: dict) -> str:
        return f"{self.where}: container {container.get('name')}"

    def proxy_config(self, config_maps: dict, binary: str) -> dict | None:
        where, args = self.at(self.proxy), self.proxy.get("args", []) + self.proxy.get("command", [])
        env = self.proxy.get("env", [])
        path = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"), None)
        path = path or next((v.get("value") for v in env if v.get("name") == ENV_PREFIX + "CONFIG"), None)
        if not self.report.check(path is not None, where, "no --config PATH (nor TRUEDAT_PROXY_CONFIG)"):
            return None
        self.config_path = path
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        for mount in self.proxy.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            if "configMap" not in volume or posixpath.dirname(path) != mount["mountPath"].rstrip("/"):
                continue
            cm_name = volume["configMap"]["name"]
            key = mount.get("subPath") or posixpath.basename(path)
            data = config_maps.get(cm_name, {}).get("data", {})
            if not self.report.check(key in data, where, f"--config {path}: ConfigMap {cm_name} has no key {key}"):
                return None
            return effective_config(binary, data[key], env, where, self.report)
        self.report.check(False, where, f"--config {path} is not in a mounted ConfigMap")
        return None

    # ------------------------------------------------------------------ checks

    def check_all(self, variant: str, secret_keys: dict[str, set[str]]) -> None:
        if self.proxy is None:
            return
        self.check_containers()
        self.check_variant(variant)
        if self.config is None:
            return
        self.check_addresses_and_probes()
        self.check_password(secret_keys)
        self.check_grace()

    def check_containers(self) -> None:
        pod_sc = self.pod.get("securityContext", {})
        check = self.report.check
        for c in self.init + self.regular:
            where = self.at(c)
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    check(resource in c.get("resources", {}).get(kind, {}), where, f"no resources.{kind}.{resource}")
            image = c.get("image", "")
            tag = image.rsplit("/", 1)[-1]
            pinned = "@sha256:" in image or (":" in tag and not tag.endswith(":latest"))
            check(pinned, where, f"image {image!r} is not pinned to a tag or digest (or is :latest)")
            sc = {**pod_sc, **c.get("securityContext", {})}
            check(sc.get("runAsNonRoot") is True, where, "securityContext.runAsNonRoot is not true")
            check(sc.get("runAsUser", 0) != 0, where, "securityContext.runAsUser is root or unset")
            check(sc.get("readOnlyRootFilesystem") is True, where, "securityContext.readOnlyRootFilesystem is not true")
            check(sc.get("allowPrivilegeEscalation") is False, where, "securityContext.allowPrivilegeEscalation is not false")
            drop = c.get("securityContext", {}).get("capabilities", {}).get("drop", [])
            check("ALL" in drop, where, "securityContext.capabilities.drop lacks ALL")
            check(not c.get("securityContext", {}).get("capabilities", {}).get("add"), where, "adds capabilities")
            check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where, "seccompProfile is not RuntimeDefault")
        where = self.at(self.proxy)
        check(self.proxy.get("securityContext", {}).get("runAsUser", pod_sc.get("runAsUser")) == 65532, where,
              "runAsUser is not 65532 (the image's nonroot user)")

    def check_variant(self, variant: str) -> None:
        where, check = self.at(self.proxy), self.report.check
        if variant == "native":
            check(self.proxy in self.init, where, "not an init container: a native sidecar runs from initContainers")
            check(self.proxy.get("restartPolicy") == "Always", where, "restartPolicy is not Always (native sidecar)")
        else:
            check(self.proxy in self.regular, where, "not a regular container in this variant")
            check("restartPolicy" not in self.proxy, where, "restartPolicy on a container needs native sidecars")
            check(not any(c.get("restartPolicy") for c in self.init), self.where, "an init container has restartPolicy")
            check(bool(self.regular) and self.regular[0] is self.proxy, where,
                  "not the first container: the kubelet holds only later containers until its postStart hook returns")

    def check_post_start(self) -> None:
        """Without native sidecars: `truedat-auth-proxy wait` as the proxy's
        postStart hook, reading the proxy's own configuration file, for as long
        as the startup probe would wait."""
        where, check = self.at(self.proxy), self.report.check
        command = self.proxy.get("lifecycle", {}).get("postStart", {}).get("exec", {}).get("command", [])
        if not check(len(command) >= 2 and command[0].endswith(PROXY_NAME) and command[1] == "wait", where,
                     f"lifecycle.postStart is not an exec of `{PROXY_NAME} wait`: the tool would start before the proxy is ready"):
            return
        option = lambda name: next((command[i + 1] for i, a in enumerate(command[:-1]) if a == name), None)
        check(option("--config") == self.config_path, where,
              f"postStart wait --config {option('--config')!r} is not the proxy's --config {self.config_path!r}")
        timeout = seconds(option("--timeout") or "30s")
        startup = self.proxy.get("startupProbe", {})
        budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        check(timeout >= budget, where,
              f"postStart wait --timeout is {timeout:g} s, shorter than the startupProbe's {budget} s")

    def check_addresses_and_probes(self) -> None:
        where, check, config = self.at(self.proxy), self.report.check, self.config
        listen_host, listen_port = split_address(config["listen"]["address"])
        check(is_loopback(listen_host), where, f"listen.address {config['listen']['address']} is not loopback")
        check(config["listen"].get("allow_non_loopback") is not True, where, "listen.allow_non_loopback is true")
        admin_host, admin = split_address(config["admin"]["address"])
        check(not is_loopback(admin_host), where,
              f"admin.address {config['admin']['address']} is loopback: the kubelet's probes cannot reach it")
        declared = [p.get("containerPort") for p in self.proxy.get("ports", [])]
        check(admin in declared, where, f"admin port {admin} is not a containerPort (PodMonitor and probes name it)")
        check(listen_port not in declared, where, f"the loopback proxy port {listen_port} is declared as a containerPort")
        expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
        for probe_name, path in expected.items():
            probe = self.proxy.get(probe_name)
            if not check(probe is not None and "httpGet" in probe, where, f"no {probe_name} with httpGet"):
                continue
            get = probe["httpGet"]
            port = get.get("port")
            got = port_number(port, self.proxy)
            named = "" if isinstance(port, int) else f" (= {got})"
            check(got == admin, where, f"{probe_name} port {port!r}{named} is not admin.address's port {admin}")
            check(get.get("path") == path, where, f"{probe_name} path {get.get('path')!r}, expected {path}")
        startup = self.proxy.get("startupProbe", {})
        budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        needed = 2 * seconds(config["token"]["retry_max"]) + seconds(config["token"]["login_timeout"])
        check(budget >= needed, where,
              f"startupProbe allows {budget} s: less than two login retries at token.retry_max plus a login ({needed:.0f} s)")
        annotations = self.template.get("metadata", {}).get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            check(annotations.get("prometheus.io/port") == str(admin), self.where,
                  f"prometheus.io/port {annotations.get('prometheus.io/port')!r} is not the admin port {admin}")
            check(annotations.get("prometheus.io/path", "/metrics") == "/metrics", self.where,
                  "prometheus.io/path is not /metrics")

    def check_password(self, secret_keys: dict[str, set[str]]) -> None:
        where, check, creds = self.at(self.proxy), self.report.check, self.config["credentials"]
        check("password" not in creds, where, "credentials.password is set: use password_file and a Secret")
        env_names = {v.get("name") for v in self.proxy.get("env", [])}
        check(ENV_PREFIX + "CREDENTIALS__PASSWORD" not in env_names, where, "the password is passed in the environment")
        password_file = creds.get("password_file")
        if not check(bool(password_file), where, "credentials.password_file is not set"):
            return
        directory, filename = posixpath.split(password_file)
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        mounts = [m for m in self.proxy.get("volumeMounts", []) if m["mountPath"].rstrip("/") == directory]
        if not check(len(mounts) == 1, where, f"no single volume mounted at {directory} (credentials.password_file)"):
            return
        mount = mounts[0]
        secret = volumes.get(mount["name"], {}).get("secret")
        if not check(secret is not None, where, f"the volume at {directory} is not a Secret"):
            return
        check("subPath" not in mount, where, f"the Secret at {directory} uses subPath: the kubelet never updates it")
        check(mount.get("readOnly") is True, where, f"the Secret mount at {directory} is not readOnly")
        items = secret.get("items")
        keys = [i["key"] for i in items if i.get("path") == filename] if items else [filename]
        if not check(len(keys) == 1, where, f"Secret {secret.get('secretName')} puts nothing at {password_file}"):
            return
        name = secret.get("secretName")
        if name in secret_keys:
            check(keys[0] in secret_keys[name], where, f"Secret {name} (example) has no key {keys[0]!r}")
        else:
            check(False, where, f"Secret {name} matches no example Secret (secret.example.yaml)")
        mode = secret.get("defaultMode", 0o644)
        group_ok = mode & 0o040 and self.pod.get("securityContext", {}).get("fsGroup") is not None
        check(bool(mode & 0o004 or group_ok), where,
              f"Secret mode {oct(mode)} without fsGroup: user {self.proxy.get('securityContext', {}).get('runAsUser')} cannot read it")

    def check_grace(self) -> None:
        s = self.config["shutdown"]
        needed = seconds(s["delay"]) + seconds(s["drain_timeout"]) + seconds(self.config["token"]["login_timeout"])
        grace = self.pod.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
        self.report.check(grace > needed, self.where,
                          f"terminationGracePeriodSeconds {grace} is not above shutdown.delay + "
                          f"shutdown.drain_timeout + token.login_timeout = {needed:g} s")

    def check_regular_extras(self) -> None:
        """Without native sidecars: the postStart hold, a delay for Deployments,
        quitquitquit for Jobs."""
        if self.config is None:
            return
        self.check_post_start()
        if self.obj["kind"] == "Job":
            tools = [c for c in self.regular if c is not self.proxy]
            admin = split_address(self.config["admin"]["address"])[1]
            url = f"http://127.0.0.1:{admin}/quitquitquit"
            lines = [line for c in tools for arg in c.get("command", []) + c.get("args", []) for line in arg.splitlines()]
            says = any(url in line and "POST" in line for line in lines)
            self.report.check(says, self.where, f"no tool container POSTs http://127.0.0.1:{admin}/quitquitquit")
        else:
            self.report.check(seconds(self.config["shutdown"]["delay"]) > 0, self.at(self.proxy),
                              "shutdown.delay is 0 s: the proxy stops with the tool, cutting its last requests")


def check_pod_monitors(path: str, docs: list[dict], workloads: list[Workload], report: Report) -> None:
    for monitor in (d for d in docs if d.get("kind") == "PodMonitor"):
        where = f"{path}: {name_of(monitor)}"
        report.check(monitor.get("apiVersion") == "monitoring.coreos.com/v1", where, "apiVersion is not monitoring.coreos.com/v1")
        selector = monitor.get("spec", {}).get("selector", {}).get("matchLabels", {})
        selected = [w for w in workloads
                    if selector and selector.items() <= w.template.get("metadata", {}).get("labels", {}).items()]
        if not report.check(bool(selected), where, f"selector {selector} matches no pod template running the proxy"):
            continue
        endpoints = monitor["spec"].get("podMetricsEndpoints", [])
        report.check(bool(endpoints), where, "no podMetricsEndpoints")
        for w in selected:
            admin = split_address(w.config["admin"]["address"])[1] if w.config else None
            for e in endpoints:
                got = port_number(e.get("port"), w.proxy) if "port" in e else e.get("portNumber")
                report.check(got == admin, where, f"endpoint port {e.get('port', e.get('portNumber'))!r} is {got}, "
                             f"the admin port of {name_of(w.obj)} is {admin}")
                report.check(e.get("path", "/metrics") == "/metrics", where, "endpoint path is not /metrics")


def check_prometheus_rules(path: str, docs: list[dict], report: Report) -> None:
    for rule_set in (d for d in docs if d.get("kind") == "PrometheusRule"):
        where = f"{path}: {name_of(rule_set)}"
        report.check(rule_set.get("apiVersion") == "monitoring.coreos.com/v1", where,
                     "apiVersion is not monitoring.coreos.com/v1")
        rules = [r for g in rule_set.get("spec", {}).get("groups", []) for r in g.get("rules", [])]
        report.check(bool(rules), where, "no rules")
        for rule in rules:
            at = f"{where}: rule {rule.get('alert') or rule.get('record')}"
            expr = str(rule.get("expr", ""))
            report.check(bool(rule.get("alert")) and bool(expr), at, "an alert needs a name and an expr")
            if promql_parser is None:
                continue
            try:
                parsed = promql_parser.parse(expr)
            except ValueError as e:
                report.check(False, at, f"expr is not PromQL ({e}): {expr}")
                continue
            names: set[str] = set()
            promql_parser.walk(parsed, lambda n: names.add(n.name)
                               if isinstance(n, promql_parser.VectorSelector) and n.name else None)
            report.check(bool(names) and all(n.startswith("truedat_proxy_") for n in names), at,
                         f"expr names {sorted(names)}, not only truedat_proxy_* metrics")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", required=True, help="the truedat-auth-proxy binary, for --check-config")
    parser.add_argument("--secret", action="append", default=[], help="an example Secret manifest")
    parser.add_argument("rendered", nargs="+", help="native:FILE or regular:FILE")
    args = parser.parse_args()

    secret_keys = {}
    for path in args.secret:
        for doc in load(path):
            if doc.get("kind") == "Secret":
                keys = set(doc.get("data", {})) | set(doc.get("stringData", {}))
                secret_keys[doc["metadata"]["name"]] = keys

    report = Report()
    for spec in args.rendered:
        variant, _, path = spec.partition(":")
        if variant not in ("native", "regular"):
            parser.error(f"{spec}: expected native:FILE or regular:FILE")
        docs = load(path)
        config_maps = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
        workloads = [Workload(path, d, config_maps, args.binary, report) for d in docs if d.get("kind") in POD_TEMPLATE_KINDS]
        report.check(bool(workloads), path, "no workload runs the proxy")
        for w in workloads:
            w.check_all(variant, secret_keys)
            if variant == "regular":
                w.check_regular_extras()
        check_pod_monitors(path, docs, workloads, report)
        check_prometheus_rules(path, docs, report)

    for problem in report.problems:
        print(f"FAIL {problem}")
    print(f"check_manifests: {report.checked} checks on {len(args.rendered)} rendered kustomizations, "
          f"{len(report.problems)} failed")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
