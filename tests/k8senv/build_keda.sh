#!/usr/bin/env bash
# Build a real KEDA operator and metrics adapter for the KEDA e2e test, once per machine.
#
# KEDA publishes container images only; our CI machines run no container engine, so we compile
# cmd/operator and cmd/adapter of github.com/kedacore/keda/v2 at $KEDA_VERSION from the Go module
# proxy. KEDA's go.mod pins module versions with `replace` directives, which `go install pkg@ver`
# refuses; a scratch module that requires KEDA and repeats those replaces verbatim builds.
# The CRDs (config/crd/bases of the same module zip) are copied to $OUT/crds.
# Module and build caches are shared with build.sh ($PD_CACHE/go); the binaries are keyed by
# version under $PD_CACHE/keda-$KEDA_VERSION. Prints the bin directory on its last line.
# A cold build downloads ~2 GB of modules and compiles ~2300 packages (cloud SDKs for all the
# scalers): ~10 min on 2 cores; see tests/k8senv/README.md.
set -euo pipefail

KEDA_VERSION=${KEDA_VERSION:-v2.20.2}
PD_CACHE=${PD_CACHE:-$HOME/.cache/pd-autoscaler}

OUT="$PD_CACHE/keda-${KEDA_VERSION}"
# KEDA_GOMODCACHE / KEDA_GOCACHE point the Go caches elsewhere (e.g. an earlier probe's).
GOMODCACHE_OVERRIDE=${KEDA_GOMODCACHE:-} GOCACHE_OVERRIDE=${KEDA_GOCACHE:-}
# shellcheck source=cached_build.sh
source "$(dirname "${BASH_SOURCE[0]}")/cached_build.sh"
begin_cached_build build_keda.sh "$OUT" .build-keda.lock \
  bin/keda-operator bin/keda-adapter crds/keda.sh_scaledobjects.yaml

MOD=github.com/kedacore/keda/v2
log "resolving $MOD@$KEDA_VERSION"
INFO=$(cd "$WORK" && go mod download -json "$MOD@$KEDA_VERSION")
GOMOD=$(echo "$INFO" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
SRC=$(echo "$INFO" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
GODIR=$(sed -n 's/^go \(.*\)/\1/p' "$GOMOD")

mkdir -p "$WORK/keda"
cd "$WORK/keda"
printf 'module ci.local/kedabins\n\ngo %s\n\ntool (\n\t%s/cmd/operator\n\t%s/cmd/adapter\n)\n\nrequire %s %s\n' \
  "$GODIR" "$MOD" "$MOD" "$MOD" "$KEDA_VERSION" > go.mod
# Every `old => new version` replace of KEDA's go.mod (single-line or inside a block); local
# path replaces (none at v2.20.2) could not be repeated and would fail the build loudly.
for r in $(sed -n 's|^[[:space:]]*\(replace[[:space:]]\+\)\{0,1\}\([^ /(][^ ]*\) => \([^ .][^ ]*\) \(v[^ ]*\)[[:space:]]*$|\2=\3@\4|p' "$GOMOD"); do
  go mod edit "-replace=$r"
done
log "go mod tidy ($(grep -c '=>' go.mod) replaces)"
go mod tidy
log "go build (operator, adapter)"
LD="-s -w -X $MOD/version.Version=${KEDA_VERSION#v}"
go build -p 2 -trimpath -ldflags "$LD" -o "$WORK/out/" "$MOD/cmd/operator" "$MOD/cmd/adapter"
mv "$WORK/out/operator" "$BIN/keda-operator"
mv "$WORK/out/adapter" "$BIN/keda-adapter"

mkdir -p "$STAGE/crds"
cp "$SRC"/config/crd/bases/*.yaml "$STAGE/crds/"
chmod -R u+w "$STAGE/crds"

finish_cached_build
