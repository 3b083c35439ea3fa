#!/usr/bin/env bash
# Validate recstream's deployment files offline: what CI runs.
#
#   deploy/validate.sh                       the repository's deploy/ (all checks)
#   deploy/validate.sh --k8s DIR [--compose FILE]   another tree (tests use it)
#
# 1. generated files are up to date with workers/roles.py (deploy/generate.py --check)
# 2. compose: loaded by compose-go, docker compose's own loader (schema + model)
# 3. every overlay in DIR/overlays renders (kustomize) and every resource is
#    valid against strict JSON schemas: Kubernetes 1.33 from kubernetes-validate
#    (PyPI), KEDA and Prometheus-operator CRDs from their Go modules (kubeconform)
# 4. security posture of every rendered overlay and the Dockerfile (checkov;
#    each skipped check has its reason in deploy/k8s/checkov.yaml or inline)
#
# Tools install on first use into $RECSTREAM_CACHE (default ~/.cache/recstream):
# go install for kustomize, kubeconform and deploy/tools/composecheck; a
# virtualenv for checkov and kubernetes-validate. Later runs take seconds.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${RECSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/recstream}
K8S_VERSION=1.33.0
KUSTOMIZE_VERSION=v5.7.1
KUBECONFORM_VERSION=v0.7.0
KEDA_VERSION=v2.21.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0
CHECKOV_VERSION=3.3.30
KUBERNETES_VALIDATE_VERSION=1.37.0

k8s_dir=$here/k8s
compose_file=$here/compose.yaml
whole_repo=1
while (($#)); do
  case $1 in
    --k8s) k8s_dir=$(cd "$2" && pwd); whole_repo=0; shift 2 ;;
    --compose) compose_file=$2; whole_repo=0; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

export GOPATH=$cache/go/path GOCACHE=$cache/go/build GOBIN=$cache/go/bin GOFLAGS=-modcacherw
tools=$cache/deploy-tools
bin=$GOBIN
log() { printf 'validate: %s\n' "$*" >&2; }

install_go_tool() {  # name module@version
  local stamp=$bin/.$1-${2##*@}
  [[ -x $bin/$1 && -f $stamp ]] && return 0
  log "installing $2 (go install, cached in $cache/go)"
  (cd /tmp && go install "$2") && touch "$stamp"
}

install_tools() {
  command -v go >/dev/null || { log "go not found (apt-get install golang, or the machine's Go)"; exit 1; }
  mkdir -p "$bin" "$tools"
  install_go_tool kustomize "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  install_go_tool kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  local sum; sum=$(cat "$here/tools/go.sum" "$here/tools/composecheck/main.go" | sha256sum | cut -c1-16)
  if [[ ! -x $bin/composecheck || ! -f $bin/.composecheck-$sum ]]; then
    log "building deploy/tools/composecheck (compose-go)"
    (cd "$here/tools" && go build -o "$bin/composecheck" ./composecheck) && touch "$bin/.composecheck-$sum"
  fi
  local venv=$tools/venv stamp=$tools/venv/.checkov-$CHECKOV_VERSION-kv-$KUBERNETES_VALIDATE_VERSION
  if [[ ! -f $stamp ]]; then
    log "installing checkov $CHECKOV_VERSION and kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check \
      "checkov==$CHECKOV_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    touch "$stamp"
  fi
  local schemas=$tools/schemas-$K8S_VERSION-keda-$KEDA_VERSION-po-$PROMETHEUS_OPERATOR_VERSION
  if [[ ! -f $schemas/.complete ]]; then
    log "laying out JSON schemas in $schemas"
    local keda po
    keda=$(cd /tmp && go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" | "$venv/bin/python" -c 'import json,sys;print(json.load(sys.stdin)["Dir"])')
    po=$(cd /tmp && go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | "$venv/bin/python" -c 'import json,sys;print(json.load(sys.stdin)["Dir"])')
    "$venv/bin/python" "$here/schemas.py" --k8s-version "$K8S_VERSION" --out "$schemas" \
      --crd "$keda/config/crd/bases/keda.sh_scaledobjects.yaml" \
      --crd "$keda/config/crd/bases/keda.sh_triggerauthentications.yaml" \
      --crd "$po/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"
    touch "$schemas/.complete"
  fi
  SCHEMAS=$schemas
  CHECKOV=$venv/bin/checkov
}

install_tools
failed=()
out=$(mktemp -d "${TMPDIR:-/tmp}/recstream-validate.XXXXXX")
trap 'rm -rf "$out"' EXIT

if ((whole_repo)); then
  python=$repo/.venv/bin/python; [[ -x $python ]] || python=python3
  if "$python" "$here/generate.py" --check; then log "generated files: up to date"
  else failed+=("generated files stale"); fi
  if "$CHECKOV" -f "$here/Dockerfile" --framework dockerfile --compact --quiet --skip-download >"$out/docker.txt" 2>&1; then
    log "Dockerfile: checkov $(grep -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$out/docker.txt")"
  else cat "$out/docker.txt" >&2; failed+=("Dockerfile: checkov"); fi
fi

if "$bin/composecheck" "$compose_file" >"$out/compose.txt" 2>&1; then log "compose: $(cat "$out/compose.txt")"
else cat "$out/compose.txt" >&2; failed+=("compose: $compose_file"); fi

shopt -s nullglob
overlays=("$k8s_dir"/overlays/*/)
((${#overlays[@]})) || { log "no overlays in $k8s_dir/overlays"; exit 1; }
for overlay in "${overlays[@]}"; do
  name=$(basename "$overlay")
  rendered=$out/k8s/$name.yaml
  mkdir -p "$out/k8s"
  if ! "$bin/kustomize" build "$overlay" >"$rendered" 2>"$out/$name.err"; then
    cat "$out/$name.err" >&2; failed+=("$name: kustomize build"); continue
  fi
  if "$bin/kubeconform" -strict -summary -kubernetes-version "$K8S_VERSION" \
      -schema-location "$SCHEMAS/{{ .NormalizedKubernetesVersion }}-local-strict/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
      "$rendered" >"$out/$name.kc" 2>&1; then
    log "$name: kubeconform $(tail -1 "$out/$name.kc")"
  else cat "$out/$name.kc" >&2; failed+=("$name: kubeconform"); fi
  if "$CHECKOV" -f "$rendered" --config-file "$here/k8s/checkov.yaml" >"$out/$name.ck" 2>&1; then
    log "$name: checkov $(grep -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$out/$name.ck")"
  else cat "$out/$name.ck" >&2; failed+=("$name: checkov"); fi
done

if ((${#failed[@]})); then
  log "FAILED: ${failed[*]}"
  exit 1
fi
log "all deployment files valid"
