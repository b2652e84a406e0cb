#!/usr/bin/env bash
# The benchmark: daytona-authz against the physical limit (Envoy alone) and against Daytona's
# official proxy samples, all in one run on this machine, all on 127.0.0.1. Writes BENCHMARKS.md.
#
#   bench/run.sh                 the full run (about 8 minutes of measuring on 2 cores)
#   bench/run.sh --quick         shorter windows (2 s), to check the harness itself
#   bench/run.sh --out FILE      write the report elsewhere (default: BENCHMARKS.md)
#
# Installs what it needs, idempotently: wrk and h2load (Debian `wrk`, `nghttp2-client`), Go with
# Debian's packages of the Go sample's two modules, Envoy (scripts/install-envoy); builds release
# binaries, among them the load tools (load-tools/: check_load, check_floor); builds the samples
# from a read-only copy in ../shared/peers/daytona-proxy-samples (or DAYTONA_PROXY_SAMPLES) in a
# temporary directory (TypeScript with npm; Go with Debian's go, no module downloads). Starts everything itself and
# stops it all on exit. Knobs: BENCH_DURATION, BENCH_WARMUP (seconds), BENCH_CONNECTIONS,
# BENCH_RATE (fixed-rate latency runs, requests/s), BENCH_ROUNDS, BENCH_BIN_DIR (measure the
# binaries of another build, e.g. a scratch copy with a change, instead of target/release).
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

case "${1:-}" in
  -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac

command -v python3 >/dev/null || die "python3 is needed"
command -v cargo >/dev/null || die "a Rust toolchain is needed"

# --- load generators and the Go toolchain, from Debian's packages -------------------------------
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v go >/dev/null || need+=(golang-go)
[[ -d /usr/share/gocode/src/github.com/joho/godotenv ]] || need+=(golang-github-joho-godotenv-dev)
[[ -d /usr/share/gocode/src/github.com/patrickmn/go-cache ]] || need+=(golang-github-patrickmn-go-cache-dev)
if ((${#need[@]})); then
  say "installing ${need[*]} (Debian)"
  [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null \
    || die "missing ${need[*]}; install them (Debian packages) or run as root"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 \
    || die "apt-get install ${need[*]} failed"
fi

say "installing Envoy (once)"
envoy=$(scripts/install-envoy | tail -n 1)

say "building release binaries (daytona-authz, the double and the load tools)"
cargo build --quiet --locked --release --bins

# shellcheck source=bench/supervise.sh
source bench/supervise.sh
supervise bench bench/bench.py "$envoy" "$@"
