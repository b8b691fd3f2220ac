#!/usr/bin/env bash
# scripts/run brings a crashed process back, and stops for good on a configuration error.
#
# Starts the real scripts/run (gateway, one pipeline consumer, scheduler, fake platform) against a
# vhost, a PostgreSQL database and a Redis database of its own, on free ports, then:
#   1. kill -9 the gateway: the output names the exit (status 137, signal 9) and the restart, and
#      /health answers again from a new process;
#   2. kill -9 it again at once: the backoff doubled (2 s);
#   3. SIGTERM scripts/run: it exits 0 within 30 s, no process of the run is left, nothing restarted;
#   4. a worker started with an unknown pool (a usage error, exit 64): scripts/run reports it, does
#      not restart it, stops everything and exits 64.
# Needs the servers of `scripts/services up` and FANFLOW_*_URL pointing at them (scripts/test does
# both); FANFLOW_RUN_BIN names the fanflow binary (default: the debug build).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
[ -x /opt/swift/usr/bin/swift ] && ! command -v swift >/dev/null && export PATH="/opt/swift/usr/bin:$PATH"

: "${FANFLOW_AMQP_URL:?eval \"\$(scripts/services env)\" first}" "${FANFLOW_DATABASE_URL:?}" "${FANFLOW_REDIS_URL:?}"
export FANFLOW_RUN_BIN=${FANFLOW_RUN_BIN:-$(swift build --show-bin-path)/fanflow}
[ -x "$FANFLOW_RUN_BIN" ] || { echo "run-restart: no fanflow binary at $FANFLOW_RUN_BIN (swift build first)" >&2; exit 1; }

work=$(mktemp -d)
tag="runtest$$"
vhost="fanflow-$tag" db="fanflow_$tag"
run_pid=""
failures=0
passes=0
fail() { echo "run-restart: FAIL: $*" >&2; failures=$((failures + 1)); }
pass() { echo "run-restart: ok: $*" >&2; passes=$((passes + 1)); }

cleanup() {
  if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then kill -TERM "$run_pid" 2>/dev/null; wait "$run_pid" 2>/dev/null; fi
  # Anything of ours still alive (the pid files name only processes this test started).
  for f in "$work"/pids*/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
  scripts/services rabbitmqctl delete_vhost "$vhost" >/dev/null 2>&1
  psql "${FANFLOW_DATABASE_URL%/*}/postgres" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { # a port nothing listens on, from a range the servers do not use
  local p
  for _ in $(seq 50); do
    p=$(( 20000 + RANDOM % 20000 ))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  return 1
}

scripts/services rabbitmqctl add_vhost "$vhost" >/dev/null || { echo "run-restart: cannot add vhost" >&2; exit 1; }
scripts/services rabbitmqctl set_permissions -p "$vhost" guest ".*" ".*" ".*" >/dev/null
psql "$FANFLOW_DATABASE_URL" -q -c "CREATE DATABASE $db" || exit 1
export FANFLOW_AMQP_URL="${FANFLOW_AMQP_URL%/*}/$vhost" FANFLOW_DATABASE_URL="${FANFLOW_DATABASE_URL%/*}/$db" \
  FANFLOW_REDIS_URL="${FANFLOW_REDIS_URL%/*}/9" FANFLOW_LOG_LEVEL=notice \
  FANFLOW_ADMIN_TOKEN="test-$tag-0123456789abcdef"
port=$(free_port); sched_port=$(free_port); fake_port=$(free_port)
export FANFLOW_HTTP_PORT=$port FANFLOW_SCHEDULER_PORT=$sched_port FANFLOW_RUN_FAKE_PLATFORM_PORT=$fake_port
health() { curl -sf -m 2 "http://127.0.0.1:$port/health" >/dev/null; }
wait_for() { # seconds, command…
  local deadline=$(( SECONDS + $1 )); shift
  until "$@"; do [ $SECONDS -ge $deadline ] && return 1; sleep 0.2; done
}
logged() { grep -qF "$1" "$work/run.log"; }

# ---- 1-3: crash, restart, backoff, clean stop
mkdir -p "$work/pids"
FANFLOW_RUN_PID_DIR="$work/pids" FANFLOW_RUN_POOLS="pipeline=1" setsid scripts/run > "$work/run.log" 2>&1 < /dev/null &
run_pid=$!
if ! wait_for 120 health; then cat "$work/run.log" >&2; echo "run-restart: gateway never answered /health" >&2; exit 1; fi
first=$(cat "$work/pids/gateway.pid")
kill -9 "$first"
if wait_for 30 logged "[run] gateway exited with status 137 (signal 9, KILL), restarting in 1 s"; then
  pass "the crash and the restart are named"
else fail "no restart line for the killed gateway"; fi
if wait_for 30 health; then
  second=$(cat "$work/pids/gateway.pid")
  if [ "$second" != "$first" ] && kill -0 "$second" 2>/dev/null; then pass "a new gateway ($second) answers /health after kill -9 of $first"
  else fail "/health answers but the gateway pid did not change ($first)"; fi
else fail "/health did not answer within 30 s of the kill"; fi

kill -9 "$(cat "$work/pids/gateway.pid")"
if wait_for 30 logged "[run] gateway exited with status 137 (signal 9, KILL), restarting in 2 s"; then pass "backoff doubled to 2 s"
else fail "the second crash in a row was not backed off 2 s"; fi
wait_for 30 health || fail "/health did not answer after the second restart"

workers=$(cat "$work/pids/worker.pid") scheduler=$(cat "$work/pids/scheduler.pid") gateway=$(cat "$work/pids/gateway.pid")
kill -TERM "$run_pid"
stopped=1
for _ in $(seq 150); do kill -0 "$run_pid" 2>/dev/null || { stopped=0; break; }; sleep 0.2; done
if [ $stopped = 0 ]; then
  wait "$run_pid"; status=$?
  [ "$status" = 0 ] && pass "SIGTERM stops the run with status 0" || fail "SIGTERM: scripts/run exited $status"
else fail "scripts/run still running 30 s after SIGTERM"; fi
run_pid=""
sleep 1
for pid in $workers $scheduler $gateway; do
  state=$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)
  [ -z "$state" ] || [ "$state" = Z ] || fail "process $pid still running after the stop"
done
if grep -q "restarting" <(sed -n '/\[run\] stopping/,$p' "$work/run.log"); then fail "something restarted while stopping"; else pass "nothing restarted while stopping"; fi
health && fail "/health still answers after the stop"

# ---- 4: a usage error is not restarted in a loop
mkdir -p "$work/pids4"
FANFLOW_RUN_PID_DIR="$work/pids4" FANFLOW_RUN_POOLS="pipeline=1 nosuchpool=1" setsid scripts/run > "$work/run4.log" 2>&1 < /dev/null &
run_pid=$!
ended=1
for _ in $(seq 600); do kill -0 "$run_pid" 2>/dev/null || { ended=0; break; }; sleep 0.2; done
if [ $ended = 0 ]; then
  wait "$run_pid"; status=$?
  [ "$status" = 64 ] && pass "a usage error stops the run with status 64" || { cat "$work/run4.log" >&2; fail "usage error: scripts/run exited $status, expected 64"; }
  grep -qF "[run] worker exited with status 64: a configuration or usage error, not restarting" "$work/run4.log" \
    && pass "the usage error is named" || fail "no line naming the usage error"
  grep -q "worker exited with status 64.*restarting in" "$work/run4.log" && fail "the usage error was restarted"
else fail "scripts/run kept running with a worker that cannot start"; fi
run_pid=""

[ $failures -gt 0 ] && { echo "--- scripts/run output" >&2; grep '^\[run\]' "$work/run.log" >&2; }
# The plain closing line a CI log reader counts.
echo "run-restart: $passes passed, $failures failed"
[ $failures -eq 0 ]
