#!/usr/bin/env bash
# The soak run (issue #8): a bounded run at a steady rate through Envoy with a mix of valid,
# invalid and cold requests, each checked against its expected outcome; zero wrong decisions,
# zero 5xx and flat daytona-authz RSS required. Writes its section of BENCHMARKS.md (between
# <!-- soak:begin --> and <!-- soak:end -->; the rest of the file is left alone).
#
#   bench/soak.sh                          5 minutes at 200 requests/s
#   SOAK_DURATION=30 bench/soak.sh         a short run, to check the harness
#   bench/soak.sh --out FILE               write the section into another file
#
# Knobs (environment): SOAK_DURATION (seconds, default 300), SOAK_RATE (requests/s, default
# 200), SOAK_COLD_POOL (distinct cold sandboxes, cycled; default 768; above Envoy's `max_hosts`,
# 8,192 in envoy/envoy.yaml, Envoy answers 503 "DNS cache overflow"), SOAK_WARM_SANDBOXES
# (default 4), BENCH_BIN_DIR (binaries of another build).
# Installs Envoy (scripts/install-envoy), builds the release binaries (the `soak` tool among them, load-tools/),
# starts everything itself on 127.0.0.1 with free ports and stops it all on exit (Ctrl-C too).
# Raw results: .run/soak-results.json; the processes' logs: .run/soak-logs/.
# Exit status: 0 PASS, 1 FAIL (figures written, marked FAIL), 2 the run could not be made.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'soak: %s\n' "$*" >&2; exit 2; }

case "${1:-}" in
  -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac

command -v python3 >/dev/null || die "python3 is needed"
command -v cargo >/dev/null || die "a Rust toolchain is needed"

say "installing Envoy (once)"
envoy=$(scripts/install-envoy | tail -n 1)

say "building release binaries (daytona-authz, the double and the load tools)"
cargo build --quiet --locked --release --bins

# shellcheck source=bench/supervise.sh
source bench/supervise.sh
supervise soak bench/soak.py "$envoy" "$@"
