#!/usr/bin/env bash
# `make demo`: the whole pipeline on this machine, on the embedded store.
#   Kafka (local, or TRAINTRAIL_KAFKA_BOOTSTRAP) → collector (chDB under
#   .traintrail/store, or TRAINTRAIL_CLICKHOUSE_DSN) → agent → a real training
#   job with a learning-rate jump → the run, its loss curve and lineage read
#   back from ClickHouse → everything it started is stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh
ensure_venv "agent,collector,demo"
export PATH="$PWD/.venv/bin:$PATH"

RUN_DIR="$TT_STATE/run"
mkdir -p "$RUN_DIR"
export TRAINTRAIL_AGENT_SOCKET="$RUN_DIR/agent.sock"
export TRAINTRAIL_SDK_SPOOL_DIR="$TT_STATE/sdk-spool"
export TRAINTRAIL_SPOOL_DIR="$TT_STATE/spool"
export TRAINTRAIL_CLICKHOUSE_DSN="${TRAINTRAIL_CLICKHOUSE_DSN:-chdb://$TT_STATE/store}"
export TRAINTRAIL_API_PORT="${TRAINTRAIL_API_PORT:-0}"
export TRAINTRAIL_LOG_FORMAT=json

started_kafka=""
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$started_kafka" ]; then
        say "stopping Kafka"
        deploy/local/kafka.sh stop >>"$TT_LOGS/kafka.log" 2>&1 || true
    fi
}
trap cleanup EXIT

# wait_until SECONDS "what" LOGFILE PID command...: poll until command succeeds.
wait_until() {
    local seconds=$1 what=$2 logfile=$3 pid=$4
    shift 4
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || fail "$what: the process exited (see $logfile)"
        [ $SECONDS -lt $deadline ] || fail "$what: not ready after ${seconds}s (see $logfile)"
        sleep 0.2
    done
}

if [ -z "${TRAINTRAIL_KAFKA_BOOTSTRAP:-}" ]; then
    say "starting local Apache Kafka (jars from Maven Central, cached)"
    if ! deploy/local/kafka.sh start 2>&1 | tee -a "$TT_LOGS/kafka.log" | sed 's/^/    /'; then
        fail "starting Kafka (see $TT_LOGS/kafka.log and $TT_STATE/kafka/broker.log)"
    fi
    started_kafka=1
    TRAINTRAIL_KAFKA_BOOTSTRAP=$(deploy/local/kafka.sh bootstrap)
    export TRAINTRAIL_KAFKA_BOOTSTRAP
else
    say "using Kafka at $TRAINTRAIL_KAFKA_BOOTSTRAP"
fi

say "starting the collector (store: ${TRAINTRAIL_CLICKHOUSE_DSN%%\?*})"
rm -f "$RUN_DIR/collector.ready"
traintrail collector run --ready-file "$RUN_DIR/collector.ready" >>"$TT_LOGS/collector.log" 2>&1 &
pids+=($!)
wait_until 120 "starting the collector" "$TT_LOGS/collector.log" "${pids[-1]}" \
    test -s "$RUN_DIR/collector.ready"
API_URL=$(cat "$RUN_DIR/collector.ready")
export TRAINTRAIL_API_URL="$API_URL"

say "starting the agent (socket $TRAINTRAIL_AGENT_SOCKET)"
traintrail-agent run >>"$TT_LOGS/agent.log" 2>&1 &
pids+=($!)
wait_until 60 "starting the agent" "$TT_LOGS/agent.log" "${pids[-1]}" test -S "$TRAINTRAIL_AGENT_SOCKET"

say "training an MLP on scikit-learn's digits, learning rate jumps x20 halfway"
if ! python examples/train_digits.py --out "$TT_STATE/checkpoints" >"$RUN_DIR/train.out" 2> >(tee -a "$TT_LOGS/train.log" >&2); then
    fail "training (see $TT_LOGS/train.log)"
fi
RUN_ID=$(sed -n 's/^run_id=//p' "$RUN_DIR/train.out" | tail -n 1)
[ -n "$RUN_ID" ] || fail "training printed no run_id (see $RUN_DIR/train.out)"

say "waiting for run $RUN_ID to arrive in ClickHouse"
deadline=$((SECONDS + 120))
until traintrail runs show "$RUN_ID" --json 2>/dev/null | grep -q '"status": "finished"'; do
    [ $SECONDS -lt $deadline ] || fail "run $RUN_ID not finished in ClickHouse after 120s (see $TT_LOGS/collector.log, $TT_LOGS/agent.log)"
    sleep 0.5
done

say "traintrail runs list"
traintrail runs list --limit 10
echo
say "traintrail runs show $RUN_ID"
traintrail runs show "$RUN_ID"
echo
say "traintrail metrics $RUN_ID --name loss --every 40   (the jump after step 460 is the learning-rate x20)"
traintrail metrics "$RUN_ID" --name loss --every 40
echo
say "traintrail alerts list --run $RUN_ID   (what the detectors raised on the stream, seconds after it happened)"
traintrail alerts list --run "$RUN_ID"
echo
SHA=$(traintrail runs show "$RUN_ID" --json | python -c 'import json,sys; print(json.load(sys.stdin)["checkpoints"][-1]["sha256"])')
say "traintrail lineage $SHA   (which run, data, code and environment produced this checkpoint)"
traintrail lineage "$SHA"
echo
say "demo complete; state kept in $TT_STATE (run it again: the next run appears beside this one)"
