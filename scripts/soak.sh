#!/usr/bin/env bash
# Soak run of a real server (catch + maintenance + shed + breaker) under 10x overload with
# panics, failures, maintenance flips and breaker trips, over HTTP/1.1 and h2c
# (examples/soak.rs). Every request must get exactly one well-formed answer; RSS and the
# /healthz p99 are sampled each second.
#
#   scripts/soak.sh                 # 60 s
#   SOAK_SECS=600 scripts/soak.sh   # 10 minutes
#   SOAK_OUT=/tmp/soak scripts/soak.sh
#
# Writes $SOAK_OUT/soak.csv and three SVG plots (SOAK_OUT defaults to docs/, where the plots
# that BENCHMARKS.md shows live). Exits non-zero if any request broke a rule.
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_OUT="${SOAK_OUT:-docs}"
cargo build --release --example soak
exec "${CARGO_TARGET_DIR:-target}/release/examples/soak"
