#!/usr/bin/env bash
# Real single-node Apache Kafka (KRaft, broker+controller in one JVM) on
# 127.0.0.1 for machines without a Docker engine. Jars come from Maven Central
# via deploy/local/kafka/pom.xml; only java + mvn are needed.
#
#   deploy/local/kafka.sh start|stop|status|bootstrap
#
# Env: TRAINTRAIL_KAFKA_HOME (state, default $PWD/.traintrail/kafka),
#      TRAINTRAIL_KAFKA_PORT (19092), TRAINTRAIL_KAFKA_CONTROLLER_PORT (port+1),
#      TRAINTRAIL_KAFKA_JARS (jar cache), TRAINTRAIL_KAFKA_HEAP (512m),
#      TRAINTRAIL_KAFKA_START_TIMEOUT (seconds until ready, 60).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$SCRIPT_DIR/kafka/pom.xml"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n1)"
[[ -n "$VERSION" ]] || { echo "kafka.sh: cannot read kafka.version from $POM" >&2; exit 1; }

HOME_DIR="${TRAINTRAIL_KAFKA_HOME:-$PWD/.traintrail/kafka}"
[[ "$HOME_DIR" == /* ]] || HOME_DIR="$PWD/$HOME_DIR"  # pid check matches the absolute path
PORT="${TRAINTRAIL_KAFKA_PORT:-19092}"
CPORT="${TRAINTRAIL_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
JARS="${TRAINTRAIL_KAFKA_JARS:-${XDG_CACHE_HOME:-$HOME/.cache}/traintrail/kafka-$VERSION}"
JARS="${JARS%/}"
HEAP="${TRAINTRAIL_KAFKA_HEAP:-512m}"
TIMEOUT="${TRAINTRAIL_KAFKA_START_TIMEOUT:-60}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

PIDFILE="$HOME_DIR/broker.pid"
LOG="$HOME_DIR/broker.log"
PROPS="$HOME_DIR/server.properties"
DATA="$HOME_DIR/data"

die() { echo "kafka.sh: $1 failed, see $2" >&2; exit 1; }

# Pid of our broker if it is alive (checked against its cmdline, not just kill -0,
# so a recycled pid is not mistaken for the broker).
broker_pid() {
  local pid
  [[ -f "$PIDFILE" ]] || return 1
  pid="$(<"$PIDFILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "kafka.Kafka $PROPS" || return 1
  echo "$pid"
}

# kill -0 alone counts zombies (no init reaping in some containers) as alive.
alive() { kill -0 "$1" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The marker holds the pom's checksum: editing the pom re-resolves the cache.
POM_SUM="$(sha256sum "$POM" | cut -c1-16)"
jars_ok() { [[ -f "$JARS/.complete" && "$(<"$JARS/.complete")" == "$POM_SUM" ]]; }

resolve_jars() {
  jars_ok && return 0
  if [[ ! -f "$JARS/.complete" ]] && [[ -n "$(ls -A "$JARS" 2>/dev/null)" ]]; then
    echo "kafka.sh: jar cache $JARS is incomplete (no .complete marker); remove it" >&2; exit 1
  fi
  echo "resolving Apache Kafka $VERSION from Maven Central"
  mkdir -p "$(dirname "$JARS")"
  local tmp; tmp="$(mktemp -d "$JARS.tmp.XXXXXX")"
  if ! mvn -q -B -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$tmp" >"$HOME_DIR/mvn.log" 2>&1; then
    rm -rf "$tmp"; die "resolving jars" "$HOME_DIR/mvn.log"
  fi
  echo "$POM_SUM" >"$tmp/.complete"
  rmdir "$JARS" 2>/dev/null || true
  if [[ -d "$JARS" ]] && ! jars_ok; then  # stale cache from an older pom
    mv -T "$JARS" "$JARS.old.$$" 2>/dev/null && rm -rf "$JARS.old.$$"
  fi
  # mv -T refuses a non-empty target: a concurrent start that won the race keeps its copy.
  mv -T "$tmp" "$JARS" 2>/dev/null || rm -rf "$tmp"
}

write_config() {
  cat >"$PROPS" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
# few internal partitions: the first consumer group / transaction is ready sooner
offsets.topic.num.partitions=3
transaction.state.log.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  cat >"$HOME_DIR/log4j2.properties" <<EOF
appender.file.type=File
appender.file.name=FILE
appender.file.fileName=$LOG
appender.file.append=true
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=FILE
EOF
}

# Readiness that talks Kafka: an AdminClient describeCluster must return the
# broker. One JVM polls until the deadline or until the broker process dies.
build_ready_tool() {
  local src="$HOME_DIR/tools/KafkaReady.java"
  mkdir -p "$HOME_DIR/tools"
  [[ -f "$HOME_DIR/tools/KafkaReady.class" ]] && return 0
  cat >"$src" <<'EOF'
import java.nio.file.*;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
public class KafkaReady {
  static boolean alive(long pid) { // a zombie (exited, not yet reaped) is dead
    try { String s = Files.readString(Path.of("/proc/" + pid + "/stat"));
          return s.charAt(s.lastIndexOf(')') + 2) != 'Z'; }
    catch (Exception e) { return ProcessHandle.of(pid).map(ProcessHandle::isAlive).orElse(false); }
  }
  public static void main(String[] a) throws Exception {
    long deadline = System.currentTimeMillis() + Long.parseLong(a[1]) * 1000;
    long pid = Long.parseLong(a[2]);
    Properties p = new Properties();
    p.put("bootstrap.servers", a[0]);
    p.put("request.timeout.ms", "2000");
    p.put("default.api.timeout.ms", "2000");
    p.put("reconnect.backoff.max.ms", "200");
    try (Admin admin = Admin.create(p)) {
      while (true) {
        if (pid > 0 && !alive(pid)) {
          System.err.println("broker process " + pid + " exited"); System.exit(2);
        }
        try {
          if (!admin.describeCluster().nodes().get(2, TimeUnit.SECONDS).isEmpty()) System.exit(0);
        } catch (Exception e) {
          if (System.currentTimeMillis() > deadline) { System.err.println("not ready: " + e); System.exit(1); }
        }
        if (System.currentTimeMillis() > deadline) { System.err.println("not ready"); System.exit(1); }
        Thread.sleep(100);
      }
    }
  }
}
EOF
  command -v javac >/dev/null 2>&1 && javac -nowarn -cp "$JARS/*" -d "$HOME_DIR/tools" "$src" \
    >"$HOME_DIR/tools/javac.log" 2>&1 || rm -f "$HOME_DIR/tools/KafkaReady.class"
}

wait_ready() { # pid timeout_s
  local src="$HOME_DIR/tools/KafkaReady.java" main="KafkaReady"
  [[ -f "$HOME_DIR/tools/KafkaReady.class" ]] || main="$src"  # source launcher fallback
  "$JAVA" -Xmx64m -XX:TieredStopAtLevel=1 -Dlog4j2.level=OFF -cp "$HOME_DIR/tools:$JARS/*" \
    "$main" "127.0.0.1:$PORT" "$2" "$1" >>"$HOME_DIR/ready.log" 2>&1
}

cmd_start() {
  mkdir -p "$HOME_DIR"
  exec 9>"$HOME_DIR/.lock"
  flock -w "$((TIMEOUT + 60))" 9 || { echo "kafka.sh: another kafka.sh holds $HOME_DIR/.lock" >&2; exit 1; }
  local pid
  if pid="$(broker_pid)"; then
    resolve_jars
    build_ready_tool
    wait_ready "$pid" "$TIMEOUT" || die "readiness check" "$LOG"
    echo "broker already running on 127.0.0.1:$PORT (pid $pid)"
    return 0
  fi
  rm -f "$PIDFILE"
  for p in "$PORT" "$CPORT"; do
    if port_open "$p"; then
      echo "kafka.sh: port 127.0.0.1:$p is already in use by another process" >&2; exit 1
    fi
  done
  command -v "$JAVA" >/dev/null 2>&1 || { echo "kafka.sh: java not found (need Java 17+)" >&2; exit 1; }
  resolve_jars
  build_ready_tool &  # javac overlaps with formatting and broker boot
  local tool_job=$!
  write_config
  if [[ ! -f "$DATA/meta.properties" ]]; then
    echo "formatting KRaft storage"
    local fmtlog="$HOME_DIR/format.log" id
    id="$("$JAVA" -cp "$JARS/*" -Dlog4j2.configurationFile="$HOME_DIR/log4j2.properties" \
          kafka.tools.StorageTool random-uuid 2>>"$fmtlog")" || die "generating cluster id" "$fmtlog"
    echo "$id" >"$HOME_DIR/cluster.id"
    "$JAVA" -cp "$JARS/*" -Dlog4j2.configurationFile="$HOME_DIR/log4j2.properties" \
      kafka.tools.StorageTool format --standalone -t "$id" -c "$PROPS" >>"$fmtlog" 2>&1 \
      || die "formatting storage" "$fmtlog"
  fi
  echo "starting broker on 127.0.0.1:$PORT"
  # setsid: own session, so the broker outlives the caller's terminal/process group.
  setsid nohup "$JAVA" "-Xmx$HEAP" "-Xms$HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HOME_DIR/log4j2.properties" -Dkafka.logs.dir="$HOME_DIR" \
    -cp "$JARS/*" kafka.Kafka "$PROPS" >>"$LOG" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$PIDFILE"
  wait "$tool_job" || true
  if ! wait_ready "$pid" "$TIMEOUT"; then
    kill "$pid" 2>/dev/null || true
    die "broker start" "$LOG"
  fi
  echo "broker ready"
}

cmd_stop() {
  local pid
  if ! pid="$(broker_pid)"; then
    rm -f "$PIDFILE"; echo "broker not running"; return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 300); do
    alive "$pid" || { rm -f "$PIDFILE"; echo "broker stopped"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  while alive "$pid"; do sleep 0.1; done
  rm -f "$PIDFILE"
  echo "broker killed after 30 s"
}

cmd_status() {
  local pid
  if pid="$(broker_pid)"; then echo "running (pid $pid, 127.0.0.1:$PORT)"; exit 0; fi
  echo "stopped"; exit 3
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  bootstrap) echo "127.0.0.1:$PORT" ;;
  *) echo "usage: $0 start|stop|status|bootstrap" >&2; exit 2 ;;
esac
