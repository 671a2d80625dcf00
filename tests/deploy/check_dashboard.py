#!/usr/bin/env python3
"""Checks of the Grafana dashboard that need no Grafana.

Usage: check_dashboard.py deploy/grafana/truedat-auth-proxy.json

- a `datasource` template variable of type datasource (Prometheus), and every
  panel and query using it (`${datasource}`), so the dashboard imports into
  any Grafana whatever its data source is called;
- panel ids unique, every panel placed (gridPos);
- every query (panel `expr`, `label_values(…)` of a query variable) parses
  as PromQL (promql-parser, the Rust parser's Python binding), after
  Grafana's interval variables are replaced by a duration;
- the metric names the queries use are printed. Whether the binary exports
  them is checked against its real /metrics output by tests/it/deploy.rs.

Prints one line per problem; exits 1 if any.
"""

from __future__ import annotations

import json
import re
import sys

import promql_parser

DATASOURCE = "${datasource}"
# Grafana's built-in interval variables; everything else ($namespace, $pod)
# only appears inside label matcher strings, where PromQL accepts it as text.
INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", re.S)


def panels_of(items: list[dict]):
    for panel in items:
        yield panel
        yield from panels_of(panel.get("panels", []))


def metric_names(expr) -> set[str]:
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(expr, visit)
    return names


def parse(query: str, where: str, problems: list[str], used: set[str]) -> None:
    text = INTERVALS.sub("5m", query)
    try:
        used |= metric_names(promql_parser.parse(text))
    except ValueError as e:
        problems.append(f"{where}: not PromQL ({e}): {query}")


def main() -> int:
    path = sys.argv[1]
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    problems: list[str] = []
    used: set[str] = set()
    queries = 0

    variables = dashboard.get("templating", {}).get("list", [])
    ds_vars = [v for v in variables if v.get("name") == "datasource"]
    if not (ds_vars and ds_vars[0].get("type") == "datasource" and ds_vars[0].get("query") == "prometheus"):
        problems.append("templating: no variable `datasource` of type datasource with query prometheus")
    for var in variables:
        if var.get("type") != "query":
            continue
        where = f"variable {var.get('name')}"
        if var.get("datasource", {}).get("uid") != DATASOURCE:
            problems.append(f"{where}: datasource is not {DATASOURCE}")
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        match = LABEL_VALUES.match(query)
        if match:
            queries += 1
            parse(match.group(1), where, problems, used)
        else:
            problems.append(f"{where}: expected label_values(<selector>, <label>), got {query!r}")

    ids = set()
    for panel in panels_of(dashboard.get("panels", [])):
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        if panel.get("id") in ids:
            problems.append(f"{where}: id used twice")
        ids.add(panel.get("id"))
        if not all(k in panel.get("gridPos", {}) for k in ("h", "w", "x", "y")):
            problems.append(f"{where}: no gridPos")
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") != DATASOURCE:
            problems.append(f"{where}: datasource is not {DATASOURCE}")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"{where}: no queries")
        for target in targets:
            if target.get("datasource", {}).get("uid") != DATASOURCE:
                problems.append(f"{where} query {target.get('refId')}: datasource is not {DATASOURCE}")
            if not target.get("expr"):
                problems.append(f"{where} query {target.get('refId')}: no expr")
                continue
            queries += 1
            parse(target["expr"], f"{where} query {target.get('refId')}", problems, used)

    for problem in problems:
        print(f"FAIL {path}: {problem}")
    print(f"check_dashboard: {len(ids)} panels, {queries} queries, metrics used: {', '.join(sorted(used))}")
    print(f"check_dashboard: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
