# Sourced by the build scripts (build.sh, build_keda.sh): the shared preamble of a cached,
# version-keyed Go build under $PD_CACHE.
#
#   begin_cached_build NAME OUT_DIR LOCK_NAME
#
# Sets BIN and STAMP; when the build is already complete prints BIN and exits 0. Otherwise takes
# a lock (two sessions on a fresh machine wait for one build instead of racing it), sets the Go
# environment (caches under $PD_CACHE/go unless GOMODCACHE_OVERRIDE/GOCACHE_OVERRIDE are set,
# the machine's GOPROXY without `direct`), creates WORK (removed on exit) and defines log().

begin_cached_build() {
  local name=$1 out=$2 lock=$3
  BIN="$out/bin"
  STAMP="$out/.complete"
  if [[ -f "$STAMP" ]]; then echo "$BIN"; exit 0; fi
  mkdir -p "$PD_CACHE"
  exec 9>"$PD_CACHE/$lock"
  flock 9
  if [[ -f "$STAMP" ]]; then echo "$BIN"; exit 0; fi
  command -v go >/dev/null || { echo "$name: go is not on PATH (needs Go >= 1.26)" >&2; exit 1; }
  # Keep the machine's GOPROXY; never fall back to direct VCS access (no network for it here).
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
  export GOMODCACHE="${GOMODCACHE_OVERRIDE:-$PD_CACHE/go/mod}"
  export GOCACHE="${GOCACHE_OVERRIDE:-$PD_CACHE/go/build}"
  GOPROXY=$(go env GOPROXY | sed -e 's/,direct$//' -e 's/|direct$//')
  export GOPROXY
  mkdir -p "$BIN" "$GOMODCACHE" "$GOCACHE"
  WORK=$(mktemp -d "$out/work.XXXX")
  trap 'rm -rf "$WORK"' EXIT
  BUILD_NAME=$name
  BUILD_START=$(date +%s)
}

log() { echo "[$BUILD_NAME +$(( $(date +%s) - BUILD_START ))s] $*" >&2; }
