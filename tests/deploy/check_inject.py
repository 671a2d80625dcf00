#!/usr/bin/env python3
"""`truedat-auth-proxy inject` and components/sidecar, seen by another YAML
reader: PyYAML, which reads YAML 1.1 as Kubernetes does (`0755` is octal).

Usage (tests/deploy/validate.sh runs it, with kubectl on PATH):

    check_inject.py --binary target/debug/truedat-auth-proxy --out DIR

1. Every fixture of tests/deploy/inject/ (a chart's output, a StatefulSet, a
   CronJob, a bare Pod, Lists in YAML and JSON), natively and with
   --no-native-sidecar: exit 0; the output less what inject adds equals the
   input, so every field inject did not add is unchanged; injecting the
   output again gives it back byte for byte; the added container is the
   base's (or the no-native-sidecar overlay's).
2. Refusals: a hostNetwork pod, a pod whose truedat-auth-proxy container
   differs, YAML and JSON that do not parse: exit 2, nothing on stdout, one
   line on stderr naming the object, or the line and column.
3. One source: the rendered base, no-native-sidecar and job overlays with the
   proxy taken out, injected again, give the renderings back.
4. components/sidecar: tests/deploy/inject/kustomization.yaml rendered with
   the component, less what the component adds, equals the fixtures rendered
   without it; its container is inject's, its volumes are inject's but for
   the Secret's mode; unlabelled workloads are left alone; the component on
   its own output changes nothing.
5. Writes the outputs to --out (native.yaml, regular.yaml, component.yaml,
   Lists flattened into their items) for kubernetes-validate.

Prints one line per problem; exits 1 if any.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "deploy", "inject")
COMPONENT = os.path.join(ROOT, "deploy", "kubernetes", "components", "sidecar")
PROXY = "truedat-auth-proxy"
VOLUMES = {"truedat-auth-proxy-config", "truedat-auth-proxy-password"}
LABEL = "truedat-auth-proxy/sidecar"
NO_PROXY = {"NO_PROXY", "no_proxy"}
# The image fixtures are injected with, so it can be told from the base's.
IMAGE = "registry.example.com/truedat-auth-proxy:9.9.9"
TEMPLATE_PATHS = {
    ("", "Pod"): [],
    ("apps", "Deployment"): ["spec", "template"],
    ("apps", "StatefulSet"): ["spec", "template"],
    ("apps", "DaemonSet"): ["spec", "template"],
    ("apps", "ReplicaSet"): ["spec", "template"],
    ("batch", "Job"): ["spec", "template"],
    ("batch", "CronJob"): ["spec", "jobTemplate", "spec", "template"],
}


class Report:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.checked = 0

    def check(self, ok: bool, where: str, message: str) -> bool:
        self.checked += 1
        if not ok:
            self.problems.append(f"{where}: {message}")
        return ok


def load(text: str, is_json: bool) -> list:
    if is_json:
        decoder, docs, at = json.JSONDecoder(), [], 0
        while text[at:].strip():
            at += len(text[at:]) - len(text[at:].lstrip())
            doc, at = decoder.raw_decode(text, at)
            docs.append(doc)
        return docs
    return [d for d in yaml.safe_load_all(text) if d is not None]


def objects(doc: dict):
    """The objects of a document: itself, or the items of a List."""
    if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
        for item in doc["items"]:
            yield from objects(item)
    else:
        yield doc


def template(obj: dict) -> dict | None:
    group = obj.get("apiVersion", "").rpartition("/")[0]
    path = TEMPLATE_PATHS.get((group, obj.get("kind")))
    if path is None:
        return None
    node = obj
    for key in path:
        node = node.get(key, {})
    return node


def name(obj: dict) -> str:
    meta = obj.get("metadata", {})
    return "/".join(p for p in (obj.get("kind"), meta.get("namespace"), meta.get("name")) if p)


def strip(doc: dict, before: dict | None, tool_env: set[str]) -> dict:
    """`doc` less what inject (or the component) adds. With `before` (the
    document as it was), only what `before` lacked; without, everything
    that looks like it (for the base manifests, which hold it all)."""
    doc = copy.deepcopy(doc)
    pairs = zip(objects(doc), objects(before)) if before is not None else ((o, None) for o in objects(doc))
    for obj, old in pairs:
        t = template(obj)
        if t is None:
            continue
        old_t = (template(old) if old is not None else None) or {}
        strip_pod(t.setdefault("spec", {}), old_t.get("spec", {}) if before is not None else None, tool_env)
        meta, old_meta = t.get("metadata", {}), old_t.get("metadata", {})
        labels = meta.get("labels", {})
        if before is None or LABEL not in old_meta.get("labels", {}):
            labels.pop(LABEL, None)
        drop_if_new(meta, "labels", old_meta)
        drop_if_new(t, "metadata", old_t)
    return doc


def drop_if_new(parent: dict, key: str, old: dict | None) -> None:
    """Removes `parent[key]` when it is empty now and `old` did not have it."""
    if key in parent and not parent[key] and (old is None or key not in old):
        del parent[key]


def strip_pod(spec: dict, old: dict | None, tool_env: set[str]) -> None:
    for key in ("initContainers", "containers"):
        if key in spec:
            spec[key] = [c for c in spec[key] if c.get("name") != PROXY]
            drop_if_new(spec, key, old)
    if "volumes" in spec:
        spec["volumes"] = [v for v in spec["volumes"] if v.get("name") not in VOLUMES]
        drop_if_new(spec, "volumes", old)
    sc = spec.get("securityContext")
    if sc is not None and (old is None or "fsGroup" not in old.get("securityContext", {})):
        sc.pop("fsGroup", None)
        drop_if_new(spec, "securityContext", old)
    if old is None:
        return  # the base manifests' own env is the tool's
    old_containers = {c.get("name"): c for c in old.get("initContainers", []) + old.get("containers", [])}
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        before = old_containers.get(c.get("name"), {})
        names = {e.get("name") for e in before.get("env", [])}
        added = (NO_PROXY | tool_env) - names
        if "env" in c:
            c["env"] = [e for e in c["env"] if e.get("name") not in added]
            drop_if_new(c, "env", before)


def proxies(doc: dict) -> list[tuple[str, dict, dict]]:
    """(object name, proxy container, pod spec) for every pod that has one."""
    found = []
    for obj in objects(doc):
        t = template(obj)
        spec = (t or {}).get("spec", {})
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            if c.get("name") == PROXY:
                found.append((name(obj), c, spec))
    return found


def run(binary: str, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "inject", *args], input=stdin, capture_output=True, text=True, timeout=60)


def render(directory: str) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", directory], capture_output=True, text=True, check=True).stdout
    return load(out, False)


def expected_container(rendered: list[dict], native: bool, image: str) -> tuple[dict, list[dict]]:
    """The proxy container and its volumes, as a rendered base shows them."""
    [(_, container, spec)] = [p for d in rendered for p in proxies(d)]
    container = copy.deepcopy(container)
    container["image"] = image
    volumes = [copy.deepcopy(v) for v in spec.get("volumes", []) if v.get("name") in VOLUMES]
    if native != ("restartPolicy" in container):
        raise SystemExit(f"the rendered base's proxy is not {'native' if native else 'regular'}")
    return container, volumes


def check_fixtures(binary: str, base: dict, report: Report, outputs: dict[str, list]) -> None:
    fixtures = sorted(f for f in os.listdir(FIXTURES) if f.endswith((".yaml", ".json")) and f != "kustomization.yaml")
    for fixture in fixtures:
        if fixture == "host-network.yaml":
            continue
        path = os.path.join(FIXTURES, fixture)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        is_json = fixture.endswith(".json")
        before = load(text, is_json)
        for variant, extra in (("native", []), ("regular", ["--no-native-sidecar"])):
            where = f"inject {' '.join(extra + [fixture])}"
            args = ["--image", IMAGE, "--tool-env", "TRUEDAT_URL", *extra]
            first = run(binary, [*args, path])
            if not report.check(first.returncode == 0, where, f"exit {first.returncode}: {first.stderr.strip()}"):
                continue
            try:
                after = load(first.stdout, is_json)
            except (yaml.YAMLError, json.JSONDecodeError) as e:
                report.check(False, where, f"the output does not parse ({'JSON' if is_json else 'YAML'}): {e}")
                continue
            report.check(len(after) == len(before), where, f"{len(before)} documents in, {len(after)} out")
            for i, (old, new) in enumerate(zip(before, after)):
                report.check(strip(new, old, {"TRUEDAT_URL"}) == old, f"{where}: document {i + 1}",
                             "a field inject did not add changed (or an addition is not one inject makes)")
            container, volumes = base[variant]
            for obj_name, proxy, spec in (p for d in after for p in proxies(d)):
                report.check(proxy == container, f"{where}: {obj_name}", "the proxy container is not the base's")
                ours = [v for v in spec.get("volumes", []) if v.get("name") in VOLUMES]
                report.check(ours == volumes, f"{where}: {obj_name}", f"the proxy's volumes are not the base's: {ours}")
            second = run(binary, [*args, "-"], first.stdout)
            report.check(second.returncode == 0 and second.stdout == first.stdout, where,
                         "injecting the output again changed it: not idempotent")
            outputs[variant].extend(after)


def check_refusals(binary: str, rendered_base: list[dict], report: Report) -> None:
    differs = copy.deepcopy(rendered_base)
    for _, proxy, _ in (p for d in differs for p in proxies(d)):
        proxy["image"] = "registry.example.com/truedat-auth-proxy:0.0.1"
    cases = [
        ("a hostNetwork pod", [os.path.join(FIXTURES, "host-network.yaml")], None, "DaemonSet/kube-system/node-agent"),
        ("a different truedat-auth-proxy container", ["-"], yaml.safe_dump_all(differs), "Deployment/legacy-tool"),
        ("YAML that does not parse", [], "kind: Pod\nmetadata:\n  name: x\n bad: 1\n", "line 4 column 2"),
        ("JSON that does not parse", ["-"], '{"kind": "Pod",\n "metadata": {"name": "x"}\n', "line 3 column 1"),
    ]
    for what, args, stdin, named in cases:
        done = run(binary, args, stdin)
        lines = done.stderr.strip().splitlines()
        report.check(done.returncode == 2, f"inject refuses {what}", f"exit {done.returncode}, expected 2")
        report.check(done.stdout == "", f"inject refuses {what}", "something was written on stdout")
        report.check(len(lines) == 1 and named in lines[0], f"inject refuses {what}",
                     f"stderr is not one line naming {named!r}: {done.stderr!r}")


def check_one_source(binary: str, overlays: dict[str, list[dict]], report: Report) -> None:
    """inject(rendering less the proxy) == rendering, for each rendered overlay."""
    for overlay, rendered in overlays.items():
        config_maps = [d["metadata"]["name"] for d in rendered if d.get("kind") == "ConfigMap"]
        [(_, proxy, _)] = [p for d in rendered for p in proxies(d)]
        args = ["--image", proxy["image"], "--config-map", config_maps[0]]
        if overlay != "base":
            args.append("--no-native-sidecar")
        bare = [strip(d, None, set()) for d in rendered]
        done = run(binary, [*args, "-"], yaml.safe_dump_all(bare))
        if report.check(done.returncode == 0, f"inject on {overlay} less the proxy", done.stderr.strip()):
            report.check(load(done.stdout, False) == rendered, f"inject on {overlay} less the proxy",
                         "does not give the rendering back: inject and deploy/kubernetes have drifted apart")


def check_component(binary: str, native: tuple[dict, list[dict]], report: Report, outputs: dict[str, list]) -> None:
    rendered = render(FIXTURES)
    with tempfile.TemporaryDirectory() as plain_dir:
        for f in os.listdir(FIXTURES):
            shutil.copy(os.path.join(FIXTURES, f), plain_dir)
        with open(os.path.join(plain_dir, "kustomization.yaml"), encoding="utf-8") as f:
            kustomization = yaml.safe_load(f)
        kustomization.pop("components")
        with open(os.path.join(plain_dir, "kustomization.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(kustomization, f)
        plain = render(plain_dir)
    where = "components/sidecar on tests/deploy/inject"
    report.check([name(d) for d in rendered] == [name(d) for d in plain], where, "not the same objects")
    for old, new in zip(plain, rendered):
        report.check(strip(new, old, set()) == old, f"{where}: {name(old)}", "a field the component did not add changed")
        labelled = old.get("metadata", {}).get("labels", {}).get("truedat-auth-proxy/inject") == "true"
        has_proxy = bool(proxies(new))
        if template(old) is not None:
            report.check(has_proxy == labelled, f"{where}: {name(old)}",
                         "labelled but not injected" if labelled else "injected but not labelled")
    container, volumes = native
    container = {**container, "image": PROXY}
    for obj_name, proxy, spec in (p for d in rendered for p in proxies(d)):
        report.check(proxy == container, f"{where}: {obj_name}", "the component's container is not inject's")
        report.check(proxy in spec.get("initContainers", []), f"{where}: {obj_name}", "not a native sidecar")
        ours = [copy.deepcopy(v) for v in spec.get("volumes", []) if v.get("name") in VOLUMES]
        for v in ours:
            if "secret" in v:
                report.check(v["secret"].get("defaultMode") == 0o444, f"{where}: {obj_name}",
                             "the Secret's mode is not 0444 (the component sets no fsGroup)")
                v["secret"]["defaultMode"] = 0o440
        report.check(ours == volumes, f"{where}: {obj_name}", f"the component's volumes are not inject's: {ours}")
    with tempfile.TemporaryDirectory() as again_dir:
        with open(os.path.join(again_dir, "rendered.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump_all(rendered, f)
        with open(os.path.join(again_dir, "kustomization.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump({"resources": ["rendered.yaml"], "components": [os.path.relpath(COMPONENT, again_dir)]}, f)
        report.check(render(again_dir) == rendered, where, "the component on its own output changes it: not idempotent")
    outputs["component"].extend(rendered)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--out", required=True, help="where to write the outputs to validate")
    args = parser.parse_args()

    report = Report()
    overlays = {o: render(os.path.join(ROOT, "deploy", "kubernetes", *o.split("/")))
                for o in ("base", "overlays/no-native-sidecar", "overlays/job")}
    base = {"native": expected_container(overlays["base"], True, IMAGE),
            "regular": expected_container(overlays["overlays/no-native-sidecar"], False, IMAGE)}
    for _, volumes in base.values():  # inject's default ConfigMap name, not the rendering's hashed one
        for volume in volumes:
            if "configMap" in volume:
                volume["configMap"]["name"] = "truedat-auth-proxy-config"
    outputs: dict[str, list] = {"native": [], "regular": [], "component": []}
    check_fixtures(args.binary, base, report, outputs)
    check_refusals(args.binary, overlays["base"], report)
    check_one_source(args.binary, overlays, report)
    check_component(args.binary, base["native"], report, outputs)

    os.makedirs(args.out, exist_ok=True)
    for variant, docs in outputs.items():
        with open(os.path.join(args.out, f"{variant}.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump_all([o for d in docs for o in objects(d)], f)
    for problem in report.problems:
        print(f"FAIL {problem}")
    print(f"check_inject: {report.checked} checks, {len(report.problems)} failed")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
