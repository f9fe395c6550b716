#!/usr/bin/env bash
# A 3-node NATS JetStream cluster on loopback for walkie's NATS store (tests, CI, local runs).
#
# Usage:
#   scripts/nats-cluster.sh [start] [BASE_DIR]  start the nodes that are not running, wait until
#                                              every node is healthy and a JetStream meta leader
#                                              exists (NATS_WAIT_SECS, default 60 s, at most),
#                                              print the --store value
#   scripts/nats-cluster.sh stop [BASE_DIR]     stop every node (SIGTERM, then SIGKILL after 10 s)
#   scripts/nats-cluster.sh kill N [BASE_DIR]   kill -9 node N (1..3), for failure tests;
#                                              `start` brings it back with its data
#   scripts/nats-cluster.sh status [BASE_DIR]   which nodes run, and the cluster's health
#
# BASE_DIR defaults to /tmp/walkie-nats; node N keeps its JetStream data in BASE_DIR/nN, its log
# in BASE_DIR/nN.log and its pid in BASE_DIR/nN.pid. Node N listens on 127.0.0.1 only, on
# client port NATS_CLIENT_PORT+N-1 (default 14222..14224), cluster port NATS_CLUSTER_PORT+N-1
# (16222..16224) and monitor port NATS_MONITOR_PORT+N-1 (18222..18224). Not 4222: Debian's
# package may run a system server there, without JetStream.
#
# Starting is idempotent: a running node is left alone, a dead one (kill -9) is restarted on its
# own store dir and catches up from the others. The nodes are detached (setsid), so they outlive
# the shell that started them: stop them with `stop`. With NATS_OWNER_PID set, `start` also
# leaves a watcher that runs `stop` once that process has exited: the tests pass their own pid,
# so a test run leaves no server behind, however it ends.
set -euo pipefail

NODES=3
CLIENT_PORT=${NATS_CLIENT_PORT:-14222}
CLUSTER_PORT=${NATS_CLUSTER_PORT:-16222}
MONITOR_PORT=${NATS_MONITOR_PORT:-18222}
CLUSTER_NAME=${NATS_CLUSTER_NAME:-walkie}
WAIT_SECS=${NATS_WAIT_SECS:-60}

die() { echo "nats-cluster: $*" >&2; exit 1; }

# The pid of node $1 if it is running (per its pid file), else nothing.
node_pid() {
  local file="$BASE/n$1.pid" pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file" 2>/dev/null || true)
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if kill -0 "$pid" 2>/dev/null && grep -q nats-server "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"
  fi
}

# GET http://127.0.0.1:$1$2 with bash's /dev/tcp (no curl needed); prints the response.
http_get() {
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3
    cat <&3' _ "$1" "$2" 2>/dev/null
}

port_open() { timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null; }

servers() {
  local list="" n
  for n in $(seq 1 $NODES); do list+="${list:+,}127.0.0.1:$((CLIENT_PORT + n - 1))"; done
  echo "nats://$list"
}

start_node() {
  local n=$1 routes="" m
  for m in $(seq 1 $NODES); do
    [ "$m" = "$n" ] || routes+="${routes:+,}nats://127.0.0.1:$((CLUSTER_PORT + m - 1))"
  done
  local port=$((CLIENT_PORT + n - 1))
  if port_open "$port"; then
    die "port $port is in use by a process that is not node $n of $BASE (another cluster on the same ports?)"
  fi
  mkdir -p "$BASE/n$n"
  setsid nats-server -a 127.0.0.1 -p "$port" -n "n$n" -js -sd "$BASE/n$n" \
    --cluster_name "$CLUSTER_NAME" --cluster "nats://127.0.0.1:$((CLUSTER_PORT + n - 1))" \
    --routes "$routes" -m "$((MONITOR_PORT + n - 1))" \
    -l "$BASE/n$n.log" -P "$BASE/n$n.pid" </dev/null >/dev/null 2>&1 &
  echo "nats-cluster: started node n$n (client port $port, data $BASE/n$n)" >&2
}

# True when every node reports healthy and node 1 knows a meta leader.
healthy() {
  local n
  for n in $(seq 1 $NODES); do
    http_get "$((MONITOR_PORT + n - 1))" /healthz | grep -q '"status": *"ok"' || return 1
  done
  http_get "$MONITOR_PORT" /jsz | grep -Eq '"leader": *"[^"]+"'
}

# Says on stderr what each node answers about its health and the tail of its log, so that a
# start that times out (seen once on a fresh CI machine, never reproduced) can be diagnosed.
explain_unhealthy() {
  local n
  for n in $(seq 1 $NODES); do
    echo "nats-cluster: n$n pid '$(node_pid "$n")', /healthz: $(http_get "$((MONITOR_PORT + n - 1))" /healthz | tail -n 1)" >&2
    tail -n 8 "$BASE/n$n.log" 2>/dev/null | sed "s/^/nats-cluster:   n$n log: /" >&2 || true
  done
  echo "nats-cluster: meta leader seen by n1: $(http_get "$MONITOR_PORT" /jsz | grep -Eo '"leader": *"[^"]*"' | head -n 1)" >&2
}

cmd_start() {
  command -v nats-server >/dev/null ||
    die "nats-server is not installed: run scripts/install-deps.sh (or apt-get install -y nats-server)"
  mkdir -p "$BASE"
  local n
  for n in $(seq 1 $NODES); do
    [ -n "$(node_pid "$n")" ] || start_node "$n"
  done
  local started=$SECONDS
  until healthy; do
    for n in $(seq 1 $NODES); do
      # A node that is gone 2 s after the start failed (bad store dir, port taken, ...).
      if [ $((SECONDS - started)) -ge 2 ] && [ -z "$(node_pid "$n")" ]; then
        tail -n 5 "$BASE/n$n.log" >&2 || true
        die "node n$n exited; its log is $BASE/n$n.log"
      fi
    done
    if [ $((SECONDS - started)) -ge "$WAIT_SECS" ]; then
      explain_unhealthy
      die "the cluster in $BASE is not healthy after ${WAIT_SECS}s (logs: $BASE/n*.log)"
    fi
    sleep 0.2
  done
  if [ -n "${NATS_OWNER_PID:-}" ]; then watch_owner "$NATS_OWNER_PID"; fi
  servers
}

# Stops the cluster once process $1 has exited (one watcher per owner and base dir).
watch_owner() {
  local owner=$1 file="$BASE/owner"
  [[ "$owner" =~ ^[0-9]+$ ]] || die "NATS_OWNER_PID must be a process id, not '$owner'"
  if [ "$(cat "$file" 2>/dev/null || true)" = "$owner" ]; then return 0; fi
  echo "$owner" >"$file"
  setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec bash "$2" stop "$3"' \
    _ "$owner" "$(realpath "$0")" "$BASE" </dev/null >/dev/null 2>&1 &
}

cmd_stop() {
  local n pid pids=()
  for n in $(seq 1 $NODES); do
    pid=$(node_pid "$n")
    if [ -n "$pid" ]; then kill "$pid" && pids+=("$pid"); fi
  done
  local deadline=$((SECONDS + 10))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then kill -9 "$pid" 2>/dev/null || true; break; fi
      sleep 0.1
    done
  done
  rm -f "$BASE"/n*.pid "$BASE/owner"
  echo "nats-cluster: stopped ${#pids[@]} node(s) of $BASE" >&2
}

cmd_kill() {
  local n=$1 pid
  [[ "$n" =~ ^[1-9]$ ]] && [ "$n" -le $NODES ] || die "kill: node must be 1..$NODES, not '$n'"
  pid=$(node_pid "$n")
  [ -n "$pid" ] || die "node n$n of $BASE is not running"
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  echo "nats-cluster: killed node n$n (pid $pid)" >&2
}

cmd_status() {
  local n pid
  for n in $(seq 1 $NODES); do
    pid=$(node_pid "$n")
    echo "n$n: $(if [ -n "$pid" ]; then echo "running, pid $pid"; else echo stopped; fi), client port $((CLIENT_PORT + n - 1))"
  done
  if healthy; then echo "healthy: $(servers)"; else echo "not healthy"; return 1; fi
}

case "${1:-start}" in
  start) BASE=${2:-/tmp/walkie-nats}; cmd_start ;;
  stop) BASE=${2:-/tmp/walkie-nats}; cmd_stop ;;
  kill) [ $# -ge 2 ] || die "usage: $0 kill N [BASE_DIR]"; BASE=${3:-/tmp/walkie-nats}; cmd_kill "$2" ;;
  status) BASE=${2:-/tmp/walkie-nats}; cmd_status ;;
  /*) BASE=$1; cmd_start ;;
  *) die "usage: $0 [start|stop|status] [BASE_DIR] | $0 kill N [BASE_DIR]" ;;
esac
