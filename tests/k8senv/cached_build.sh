# Sourced by the build scripts (build.sh, build_keda.sh): the shared frame of a cached,
# version-keyed Go build under $PD_CACHE, built atomically.
#
#   begin_cached_build NAME OUT_DIR LOCK_NAME REQUIRED...
#   ... build into $STAGE (bin/ is $STAGE/bin) ...
#   finish_cached_build
#
# OUT_DIR either holds a complete build or is absent: a build goes into a fresh temporary
# directory next to it ($STAGE), is checked against REQUIRED (paths relative to OUT_DIR; a
# directory must be non-empty) and only then stamped `.complete` and renamed into place. An
# interrupted build leaves a `.stage.*` directory that the next build removes, never a stamped
# OUT_DIR missing files. An OUT_DIR whose stamp or files are missing (an older, non-atomic
# build) is rebuilt; Go's module and build caches keep that cheap.
#
# begin_cached_build prints OUT_DIR/bin and exits 0 when the build is already complete.
# Otherwise it takes a lock (two sessions on a fresh machine wait for one build instead of
# racing it), sets the Go environment (caches under $PD_CACHE/go unless GOMODCACHE_OVERRIDE /
# GOCACHE_OVERRIDE are set, the machine's GOPROXY without `direct`), creates STAGE and WORK
# (both removed on exit unless renamed into place) and defines log().
# PD_NO_GO_BUILD=1 (set by `make test-fast`) turns a needed build into an error: the fast
# suite must never compile Go.

_cached_complete() {
  local out=$1 rel
  shift
  [[ -f "$out/.complete" ]] || return 1
  for rel in "$@"; do
    if [[ -d "$out/$rel" ]]; then
      [[ -n "$(ls -A "$out/$rel")" ]] || return 1
    else
      [[ -s "$out/$rel" ]] || return 1
    fi
  done
}

begin_cached_build() {
  local name=$1 out=$2 lock=$3
  shift 3
  CACHED_OUT=$out
  CACHED_REQUIRED=("$@")
  if _cached_complete "$out" "$@"; then echo "$out/bin"; exit 0; fi
  if [[ "${PD_NO_GO_BUILD:-}" == 1 ]]; then
    echo "$name: $out is not built and PD_NO_GO_BUILD=1 forbids building it here" >&2
    exit 3
  fi
  mkdir -p "$PD_CACHE"
  exec 9>"$PD_CACHE/$lock"
  flock 9
  if _cached_complete "$out" "$@"; then echo "$out/bin"; exit 0; fi
  command -v go >/dev/null || { echo "$name: go is not on PATH (needs Go >= 1.26)" >&2; exit 1; }
  # Keep the machine's GOPROXY; never fall back to direct VCS access (no network for it here).
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
  export GOMODCACHE="${GOMODCACHE_OVERRIDE:-$PD_CACHE/go/mod}"
  export GOCACHE="${GOCACHE_OVERRIDE:-$PD_CACHE/go/build}"
  GOPROXY=$(go env GOPROXY | sed -e 's/,direct$//' -e 's/|direct$//')
  export GOPROXY
  mkdir -p "$GOMODCACHE" "$GOCACHE"
  # Stages of interrupted builds (we hold the lock, so none is in progress).
  rm -rf "$out".stage.*
  STAGE=$(mktemp -d "$out.stage.XXXX")
  BIN="$STAGE/bin"
  WORK="$STAGE/.work"
  mkdir -p "$BIN" "$WORK"
  trap 'rm -rf "$STAGE"' EXIT
  BUILD_NAME=$name
  BUILD_START=$(date +%s)
}

finish_cached_build() {
  rm -rf "$WORK"
  local rel
  for rel in "${CACHED_REQUIRED[@]}"; do
    if [[ ! -e "$STAGE/$rel" ]] || { [[ -d "$STAGE/$rel" ]] && [[ -z "$(ls -A "$STAGE/$rel")" ]]; }; then
      echo "$BUILD_NAME: build finished without $rel; not installing it" >&2
      exit 1
    fi
  done
  touch "$STAGE/.complete"
  # A previous, incomplete OUT is moved aside first: rename(2) will not replace a non-empty
  # directory. Readers that find no OUT for this instant take the lock and wait for us.
  if [[ -e "$CACHED_OUT" ]]; then
    local old
    old=$(mktemp -d "$CACHED_OUT.stage.old.XXXX")
    mv "$CACHED_OUT" "$old/"
    mv "$STAGE" "$CACHED_OUT"
    rm -rf "$old"
  else
    mv "$STAGE" "$CACHED_OUT"
  fi
  trap - EXIT
  log "done in $(( $(date +%s) - BUILD_START ))s"
  echo "$CACHED_OUT/bin"
}

log() { echo "[$BUILD_NAME +$(( $(date +%s) - BUILD_START ))s] $*" >&2; }
