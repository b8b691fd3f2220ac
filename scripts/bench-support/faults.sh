# `scripts/bench faults`: the fault matrix (sourced by scripts/bench, which sets SECONDS_PER, RATE,
# ONLY and SECONDS_GIVEN).
#
# The product runs under scripts/run (so its supervision is what brings killed processes back):
# gateway, workers (pipeline=2 orders=1 push=2), scheduler and the fake platform, in a
# vhost, a Redis database and a PostgreSQL database of the bench's own. For each fault in turn,
# `FanFlowBench fault-load` sends steady load for --seconds (default 40; longer where the fault
# lasts longer): RATE signed WeChat webhooks, RATE business events (batches of 5) and RATE
# flash-sale reservation attempts a second (default 100 each), against a sale of its own whose
# stock is 3/8 of the attempts, so it sells out after the fault even when many attempts fail
# (every attempt is a different member). The fault comes 8 s in. When the
# load ends and every work queue and the outbox are empty, the phase is checked from the database:
#   lost       accepted events (webhooks answered 2xx, events a /v1/events answer accepted) missing
#              from `events`, and reservations answered 201 missing from `flash_orders`, less those
#              found dead-lettered with a reason (`dead_letters`, or still in a `<queue>.dead` queue)
#   dup grants ledger rows sharing (event, rule, member, kind), over the whole ledger
#   oversold   units beyond the stock: in live orders, in 201 answers, or a negative `remaining` in
#              PostgreSQL's books or Redis
#   held min   the smallest of the sale's `reserved` (PostgreSQL and Redis) and every member's
#              `held` counter in Redis: must not be negative
#   units held reserved + paid in PostgreSQL's books / in Redis: more in PostgreSQL means Redis
#              gave back a unit that became an order (sold twice once the sale sells out)
#   orders without a 201   orders whose reservation was not answered 201 (no answer, or a 503)
#   over a cap grants beyond the daily check-in and community caps (cap counters live in Redis)
#   back after from the fault to the first 2xx after the last failed request (5xx or no answer)
#   drained    from the fault until the work queues' ready depth is back to its level before it
#
# It restarts, flushes and pauses the servers it runs on, so it runs only on servers this checkout
# started (`scripts/services up`, which honours FANFLOW_LOCAL_*_PORT): never on shared ones.

faults() {
  # Kills, failed waits and empty greps are expected here: errors are checked where they matter.
  set +e +o pipefail
  [ "$SECONDS_GIVEN" = 1 ] || SECONDS_PER=40
  scripts/services up
  eval "$(scripts/services env)"
  local redis_port=${FANFLOW_LOCAL_REDIS_PORT:-6379} pg_port=${FANFLOW_LOCAL_PG_PORT:-5432} amqp_port=${FANFLOW_LOCAL_AMQP_PORT:-5672}
  # Started from this checkout, all three: the faults below act on these processes only.
  [ -f .local/rabbitmq/rabbitmq.pid ] && kill -0 "$(cat .local/rabbitmq/rabbitmq.pid)" 2>/dev/null \
    && [ -f .local/redis/redis.pid ] && kill -0 "$(cat .local/redis/redis.pid)" 2>/dev/null \
    && [ -n "$(scripts/services postgres-pid)" ] \
    || { echo "[faults] the servers on ports $amqp_port/$redis_port/$pg_port were not started from this checkout; start your own (FANFLOW_LOCAL_*_PORT, scripts/services up)" >&2; exit 1; }

  local bindir
  if [ -n "${FANFLOW_BENCH_BINDIR:-}" ]; then
    bindir=$FANFLOW_BENCH_BINDIR
  else
    echo "[bench] building release" >&2
    swift build -c release --product fanflow >/dev/null
    swift build -c release --product FanFlowBench >/dev/null
    bindir="$(swift build -c release --show-bin-path)"
  fi
  local bin="$bindir/fanflow" bench="$bindir/FanFlowBench"

  # Not local: the EXIT trap runs after the function's locals are gone.
  fl_work=$(mktemp -d); fl_vhost="fanflow-bench-faults-$$"; fl_db="fanflow_bench_faults_$$"
  fl_run_pid=""; fl_watch_pid=""; fl_load_pid=""; fl_paused=""
  local w=$fl_work port=18086 fake_port=18087 sched_port=18088
  fl_cleanup() {
    [ -n "$fl_paused" ] && kill -CONT $fl_paused 2>/dev/null
    for pid in $fl_load_pid $fl_watch_pid; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    if [ -n "$fl_run_pid" ]; then
      kill -TERM "$fl_run_pid" 2>/dev/null
      for _ in $(seq 150); do kill -0 "$fl_run_pid" 2>/dev/null || break; sleep 0.2; done
      for f in "$fl_work"/pids/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
      wait "$fl_run_pid" 2>/dev/null
    fi
    # A phase stopped half way may have left a server stopped.
    scripts/services up >/dev/null 2>&1
    scripts/services rabbitmqctl delete_vhost "$fl_vhost" >/dev/null 2>&1
    redis-cli -p "${FANFLOW_LOCAL_REDIS_PORT:-6379}" -n 11 FLUSHDB >/dev/null 2>&1
    if [ -n "${FANFLOW_BENCH_KEEP:-}" ]; then
      echo "[faults] kept $fl_work and the database $fl_db" >&2
    else
      psql "${FANFLOW_DATABASE_URL%/*}/postgres" -q -c "DROP DATABASE IF EXISTS $fl_db WITH (FORCE)" >/dev/null 2>&1
      rm -rf "$fl_work"
    fi
    fl_run_pid=""; fl_paused=""
    # The wrapper's own scratch folder (this trap replaces its EXIT trap).
    [ -n "${WORK:-}" ] && rm -rf "$WORK"
  }
  trap fl_cleanup EXIT
  trap 'exit 130' INT TERM

  scripts/services rabbitmqctl add_vhost "$fl_vhost" >/dev/null
  scripts/services rabbitmqctl set_permissions -p "$fl_vhost" guest ".*" ".*" ".*" >/dev/null
  psql "$FANFLOW_DATABASE_URL" -q -c "CREATE DATABASE $fl_db"
  local token; token="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  local mgmt="${FANFLOW_AMQP_MANAGEMENT_URL:-http://guest:guest@127.0.0.1:15672}"
  export FANFLOW_AMQP_URL="${FANFLOW_AMQP_URL%/*}/$fl_vhost" FANFLOW_REDIS_URL="${FANFLOW_REDIS_URL%/*}/11" \
    FANFLOW_DATABASE_URL="${FANFLOW_DATABASE_URL%/*}/$fl_db" FANFLOW_LOG_LEVEL=warning \
    FANFLOW_HTTP_PORT=$port FANFLOW_SCHEDULER_PORT=$sched_port FANFLOW_RUN_FAKE_PLATFORM_PORT=$fake_port \
    FANFLOW_ADMIN_TOKEN="$token" FANFLOW_SECRET_KEY="$(head -c 32 /dev/urandom | base64)" \
    FANFLOW_FLASHSALE_RATE_PER_MEMBER=0 FANFLOW_RUN_BIN="$bin" FANFLOW_RUN_PID_DIR="$w/pids"
  mkdir -p "$w/pids"
  setsid scripts/run > "$w/run.log" 2>&1 < /dev/null &
  fl_run_pid=$!
  local gw="http://127.0.0.1:$port" auth="Authorization: Bearer $token"
  for _ in $(seq 300); do curl -sf -m 2 "$gw/ready" >/dev/null && break; sleep 0.2; done
  curl -sf "$gw/ready" >/dev/null || { tail -30 "$w/run.log" >&2; echo "[faults] the gateway did not become ready" >&2; exit 1; }
  curl -sf -X PUT "$gw/admin/v1/apps/wechat/wx-faults-hook" -H "$auth" -d '{"token":"faults-token"}' >/dev/null
  curl -sf -X PUT "$gw/admin/v1/apps/server/faults-shop" -H "$auth" -d '{"secret":"faults-shop-secret-0123456789"}' >/dev/null
  curl -sf -X POST "$gw/admin/v1/points-rules/presets/membership" -H "$auth" >/dev/null
  curl -sf -X POST "$gw/admin/v1/points-rules/presets/community" -H "$auth" >/dev/null
  local members=20000 first
  first=$(psql "$FANFLOW_DATABASE_URL" -qtA -c \
    "WITH m AS (INSERT INTO members (level) SELECT '' FROM generate_series(1, $members) RETURNING id) SELECT min(id) FROM m")
  q() { psql "$FANFLOW_DATABASE_URL" -qtA -c "$1" 2>/dev/null; }
  # The process a fault hits, as ps shows it: the log proves it was ours.
  show() {
    local pid
    for pid in "$@"; do
      local listening="" state recvq sendq address rest
      while read -r state recvq sendq address rest; do listening="$listening$address "; done < <(ss -Hltnp 2>/dev/null | grep "pid=$pid,")
      echo "[faults]   target: $(ps -o pid=,args= -p "$pid" | cut -c1-110) listening on $listening" >&2
    done
  }

  inject() { # fault, sale
    case $1 in
      worker-kill)
        local pid; pid=$(cat "$w/pids/worker.pid"); show "$pid"; kill -9 "$pid" ;;
      gateway-kill)
        local pid; pid=$(cat "$w/pids/gateway.pid"); show "$pid"; kill -9 "$pid" ;;
      rabbitmq-restart)
        show "$(cat .local/rabbitmq/rabbitmq.pid)"
        scripts/services rabbitmq-stop >&2; scripts/services rabbitmq-start >&2 ;;
      redis-restart)
        show "$(cat .local/redis/redis.pid)"
        scripts/services redis-stop >&2; scripts/services redis-start >&2 ;;
      redis-flush)
        show "$(cat .local/redis/redis.pid)"
        # FanFlow's database only: for FanFlow the same loss as FLUSHALL.
        redis-cli -p "$redis_port" -n 11 FLUSHDB >/dev/null
        # The runbook's recovery, at once: counters from the ledger, the sale from PostgreSQL.
        "$bin" rebuild-counters > "$w/rebuild-counters.log" 2>&1 || echo "[faults] rebuild-counters failed: $(tail -1 "$w/rebuild-counters.log")" >&2
        "$bin" reconcile flash-sale "$2" > "$w/$2.recovered.json" 2>&1 ;;
      postgres-restart)
        show "$(scripts/services postgres-pid)"
        scripts/services postgres-stop >&2; scripts/services postgres-start >&2 ;;
      postgres-pause)
        local pm; pm=$(scripts/services postgres-pid)
        fl_paused="$pm $(pgrep -P "$pm" | tr '\n' ' ')"
        show $fl_paused
        kill -STOP $fl_paused
        sleep 30
        kill -CONT $fl_paused; fl_paused="" ;;
    esac
  }

  local names="worker-kill gateway-kill rabbitmq-restart redis-restart redis-flush postgres-restart postgres-pause"
  [ -n "$ONLY" ] && names=$(echo "$ONLY" | tr ',' ' ')
  local warm=8
  for name in $names; do
    local span=0
    case $name in
      worker-kill|gateway-kill|redis-flush) span=0 ;;
      # A broker restart took 18-36 s on the loaded two cores: the load must outlast it.
      rabbitmq-restart) span=45 ;;
      redis-restart|postgres-restart) span=15 ;;
      postgres-pause) span=30 ;;
      *) echo "[faults] no fault called $name" >&2; exit 2 ;;
    esac
    local secs=$(( SECONDS_PER > warm + span + 15 ? SECONDS_PER : warm + span + 15 ))
    # Stock for 3/8 of the attempts: it sells out after the fault even when half the attempts fail.
    local sale="faults-$name" attempts=$(( RATE * secs )) stock=$(( RATE * secs * 3 / 8 ))
    local start end; start=$(date -u -d '-5 seconds' +%Y-%m-%dT%H:%M:%SZ); end=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)
    curl -sf -X PUT "$gw/admin/v1/flash-sales/$sale" -H "$auth" \
      -d '{"sku":"FAULTS","title":"faults","price":100,"stock":'"$stock"',"perMemberLimit":1,"startAt":"'"$start"'","endAt":"'"$end"'","paymentTimeoutSeconds":3600,"stockSlots":1}' >/dev/null \
      || { echo "[faults] could not create $sale" >&2; exit 1; }
    "$bench" flash-sale-requests --secret "$FANFLOW_SECRET_KEY" --first-member "$first" --members "$members" \
      --count "$attempts" --output "$w/$name.tokens"
    "$bench" queue-watch --seconds $(( secs + 400 )) --output "$w/$name.depth" 2>/dev/null &
    fl_watch_pid=$!
    echo "[faults] $name: ${secs}s of load (${RATE}/s webhooks, events, reservations), the fault at ${warm}s" >&2
    "$bench" fault-load --gateway "$gw" --seconds "$secs" --webhook-rate "$RATE" --event-rate "$RATE" --reservation-rate "$RATE" \
      --wechat-app wx-faults-hook --wechat-token faults-token --server-app faults-shop --server-secret faults-shop-secret-0123456789 \
      --sale "$sale" --reservations "$w/$name.tokens" --run "f$$-$name" --output "$w/$name" > "$w/$name.summary" 2>&1 &
    fl_load_pid=$!
    sleep "$warm"
    local t_fault; t_fault=$(date +%s%3N)
    inject "$name" "$sale"
    echo "[faults] $name: injected in $(( ($(date +%s%3N) - t_fault) ))ms" >&2
    wait "$fl_load_pid" || { cat "$w/$name.summary" >&2; echo "[faults] the load generator failed" >&2; exit 1; }
    fl_load_pid=""
    # Settled: every work queue empty (ready and unacknowledged) and the outbox empty, at most 300 s.
    "$bench" wait-settled --vhost "$fl_vhost" --timeout 300
    local t_drained; t_drained=$(date +%s%3N)
    kill "$fl_watch_pid" 2>/dev/null; wait "$fl_watch_pid" 2>/dev/null; fl_watch_pid=""
    sleep 1

    # From the database.
    psql "$FANFLOW_DATABASE_URL" -qtA -F' ' -v ON_ERROR_STOP=1 > "$w/$name.checks" <<SQL || { echo "[faults] $name: the checks failed" >&2; exit 1; }
CREATE TEMP TABLE acc (stream text, id text);
\copy acc FROM '$w/$name.accepted' WITH (FORMAT text, DELIMITER ' ')
CREATE TEMP TABLE missing AS
  SELECT DISTINCT a.id FROM acc a
   WHERE (a.stream <> 'reservation' AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = a.id))
      OR (a.stream = 'reservation' AND NOT EXISTS (SELECT 1 FROM flash_orders o WHERE o.reservation_id = a.id));
\copy missing TO '$w/$name.missing'
SELECT 'events', count(DISTINCT id) FROM acc WHERE stream <> 'reservation';
SELECT 'reserved', count(DISTINCT id) FROM acc WHERE stream = 'reservation';
SELECT 'missing', count(*) FROM missing;
-- Every worker's keeper moves dead letters from the <queue>.dead queues into dead_letters, with the reason.
SELECT 'deadrows', count(*) FROM missing m WHERE EXISTS (
  SELECT 1 FROM dead_letters d WHERE d.message_id = m.id OR position(m.id in convert_from(d.body, 'UTF8')) > 0);
SELECT 'grants', count(*) FROM ledger l WHERE l.event_id IN (SELECT id FROM acc);
SELECT 'dups', count(*) FROM (SELECT 1 FROM ledger WHERE event_id IS NOT NULL GROUP BY event_id, rule, member_id, kind HAVING count(*) > 1) d;
SELECT 'overcap', coalesce(sum(over), 0)::bigint FROM (
  SELECT count(*) - 1 AS over FROM ledger WHERE kind = 'grant' AND rule = 'member.checkin'
   GROUP BY member_id, (occurred_at AT TIME ZONE '${FANFLOW_TIMEZONE:-Asia/Shanghai}')::date HAVING count(*) > 1
  UNION ALL
  SELECT ceil((sum(points) - 15) / 3.0) FROM ledger WHERE kind = 'grant' AND rule IN ('community.post-comment', 'community.share-moments')
   GROUP BY member_id, rule, (occurred_at AT TIME ZONE '${FANFLOW_TIMEZONE:-Asia/Shanghai}')::date HAVING sum(points) > 15) o;
SELECT 'ordered', coalesce(sum(quantity), 0) FROM flash_orders WHERE sale_id = '$sale' AND status IN ('reserved', 'paid');
SQL
    "$bin" reconcile flash-sale "$sale" > "$w/$name.reconcile.json" 2>/dev/null
    # The row, from the checks, the dead-letter queues, the books, Redis's held counters and the logs.
    "$bench" faults-phase --name "$name" --sale "$sale" --stock "$stock" --fault-ms "$t_fault" --drained-ms "$t_drained" \
      --checks "$w/$name.checks" --missing "$w/$name.missing" --reconcile "$w/$name.reconcile.json" \
      --requests "$w/$name.requests" --depth "$w/$name.depth" --vhost "$fl_vhost" --state "$w/totals" --rows "$w/rows" \
      || { echo "[faults] $name: the row could not be computed" >&2; exit 1; }
    [ -n "${FANFLOW_BENCH_KEEP:-}" ] && [ -s "$w/$name.missing" ] && echo "[faults] missing ids in $w/$name.missing" >&2
  done

  local restarts; restarts=$(grep -c '^\[run\] .* restarting in' "$w/run.log" || true)
  echo
  echo "scripts/bench faults on $(nproc) cores, $(date -u +%Y-%m-%d): scripts/run (gateway, worker pipeline=2 orders=1 push=2, scheduler, fake platform), ${RATE}/s each of signed webhooks, business events (batches of 5) and reservation attempts; the fault ${warm}s into each phase"
  echo
  echo "| fault | requests | failed (5xx, no answer) | service back after s | backlog cleared after s | events accepted | reserved (201) / stock | orders without a 201 | ledger rows | grants over a cap | dead-lettered | lost | dup grants | oversold | held min | units held PG/Redis |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  cat "$w/rows"
  echo
  echo "scripts/run restarted processes $restarts time(s):"
  grep '^\[run\] .* exited' "$w/run.log" | sed 's/^/  /' || true
}
