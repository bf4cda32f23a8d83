#!/usr/bin/env bash
# `make test`: create .venv, install traintrail[dev], run the whole suite.
# Kafka is started once for the session by the test fixtures (real Apache
# Kafka from Maven Central jars, or testcontainers where Docker answers).
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh
ensure_venv dev
say "running the test suite (real Kafka and ClickHouse; log of the install in $TT_LOGS/install.log)"
exec .venv/bin/python -m pytest "$@"
