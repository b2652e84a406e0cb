# Sourced by bench/run.sh and bench/soak.sh: runs one of the Python harnesses in a private run
# directory and makes sure nothing it started outlives it.
#
#   supervise NAME SCRIPT ENVOY [ARGS...]
#
# The harness stops what it started and records every pid in $run/pids; if it is killed outright
# (or this shell is interrupted), those are killed here. Exits with the harness's status.
supervise() {
  local name=$1 script=$2 envoy=$3
  shift 3
  run=.run/$name-$$
  mkdir -p "$run"
  chmod 700 "$run"
  py=
  trap supervise_cleanup EXIT
  trap 'exit 130' INT TERM
  python3 "$script" --envoy "$envoy" --run-dir "$run" "$@" &
  py=$!
  local status=0
  wait "$py" || status=$?
  py=
  exit "$status"
}

supervise_cleanup() {
  if [[ -n $py ]]; then kill "$py" 2>/dev/null || true; wait "$py" 2>/dev/null || true; fi
  if [[ -f $run/pids ]]; then
    while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$run/pids"
  fi
  rm -rf "$run"
}
