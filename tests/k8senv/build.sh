#!/usr/bin/env bash
# Build the real Kubernetes control plane used by the e2e tests, once per machine.
#
# kind needs a container engine and setup-envtest downloads prebuilt binaries; neither works on
# our CI machines, so we compile the upstream components from the Go module proxy instead:
#   kube-apiserver, kube-controller-manager, kube-scheduler (k8s.io/kubernetes at $K8S_VERSION),
#   kubectl (same tag), etcd ($ETCD_VERSION) and kwok ($KWOK_VERSION).
# Everything (Go module cache, build cache, binaries) lives under $PD_CACHE, keyed by version, so
# only the first run on a machine pays for the build. Prints the bin directory on its last line.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.10}
ETCD_VERSION=${ETCD_VERSION:-v3.6.14}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
PD_CACHE=${PD_CACHE:-$HOME/.cache/pd-autoscaler}

KEY="k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-kwok-${KWOK_VERSION}"
OUT="$PD_CACHE/$KEY"
# shellcheck source=cached_build.sh
source "$(dirname "${BASH_SOURCE[0]}")/cached_build.sh"
begin_cached_build build.sh "$OUT" .build.lock \
  bin/kube-apiserver bin/kube-controller-manager bin/kube-scheduler bin/kubectl bin/etcd bin/kwok \
  stages/node/fast/node-initialize.yaml stages/pod/fast/pod-ready.yaml

# --- kube-apiserver, kube-controller-manager, kube-scheduler, kubectl --------------------------
# k8s.io/kubernetes replaces its staging modules with ./staging paths, which `go install pkg@ver`
# refuses; a scratch module that replaces each staging module by its published v0.Y.Z tag builds.
{
  log "resolving k8s.io/kubernetes@$K8S_VERSION"
  STG="v0.${K8S_VERSION#v1.}"
  MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)
  GOMOD=$(cd "$WORK" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  GODIR=$(sed -n 's/^go \(.*\)/\1/p' "$GOMOD")
  GODEBUG_LINE=$(grep '^godebug ' "$GOMOD" || true)
  mkdir -p "$WORK/k8s"
  cd "$WORK/k8s"
  printf 'module ci.local/kubebins\n\ngo %s\n\n%s\n\ntool (\n\tk8s.io/kubernetes/cmd/kube-apiserver\n\tk8s.io/kubernetes/cmd/kube-controller-manager\n\tk8s.io/kubernetes/cmd/kube-scheduler\n\tk8s.io/kubernetes/cmd/kubectl\n)\n\nrequire k8s.io/kubernetes %s\n' \
    "$GODIR" "$GODEBUG_LINE" "$K8S_VERSION" > go.mod
  for m in $(sed -n 's|^[[:space:]]*\(k8s.io/[^ ]*\) => \./staging/.*|\1|p' "$GOMOD"); do
    go mod edit "-replace=$m=$m@$STG"
  done
  log "go mod tidy (k8s)"
  go mod tidy
  LD="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LD="$LD -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$MINOR -X $p.gitTreeState=clean"
  done
  log "go build (k8s)"
  # -p 2: the link steps of these binaries need a few GB each; two at once fit in CI's memory.
  go build -p 2 -trimpath -tags selinux,notest,grpcnotrace -ldflags "$LD" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
  log "k8s built: $("$BIN/kube-apiserver" --version)"
}

# --- etcd ------------------------------------------------------------------------------------
# etcd's server module also uses local replaces, but its requires name real tags, so a scratch
# module that depends on it needs none.
{
  log "building etcd $ETCD_VERSION"
  mkdir -p "$WORK/etcd" && cd "$WORK/etcd"
  printf 'module ci.local/etcdbin\n\ngo 1.25.0\n\ntool go.etcd.io/etcd/server/v3\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
  go mod tidy
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
}

# --- kwok ------------------------------------------------------------------------------------
# The binary and its stage definitions (shipped in the module zip) are one unit: both land in
# the stage, and finish_cached_build checks both before the rename.
log "building kwok $KWOK_VERSION"
GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
mkdir -p "$STAGE/stages"
cp -r "$GOMODCACHE/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage/." "$STAGE/stages/"
chmod -R u+w "$STAGE/stages"

finish_cached_build
