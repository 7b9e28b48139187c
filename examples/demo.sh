#!/usr/bin/env bash
# Builds jobsup and its example processors, then runs examples/jobs.ndjson through the
# `jobsup-flaky` example: one job for each outcome (ok, failed, timeout, killed, crashed,
# rejected). Records go to stdout, logs and the summary to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
code=0
target/release/jobsup run --ttl 5s --cleanup 2s -j 2 --input-format ndjson --keep-order \
  -- target/release/jobsup-flaky < examples/jobs.ndjson || code=$?
echo "jobsup exited with $code (137: at least one job had to be hard-killed)" >&2
