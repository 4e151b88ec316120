#!/usr/bin/env bash
# make scale-smoke: the scaled stack natively on loopback. PostgreSQL in a temporary folder, a 2-node Ray cluster
# (head and second node as separate `ray start` processes) with one sharpzo replica on each, a tuning run through
# Ray's proxy with SIGKILLs of replica workers mid-run; then checks that the run finished, both first replicas
# served traffic, and the ledger charged exactly what the client counted. Stops every process it started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=$VENV/bin/python
BUDGET=${SCALE_SMOKE_BUDGET:-3000}
KILLS=${SCALE_SMOKE_KILLS:-2}
export SHARPZO_MODEL=${SHARPZO_MODEL:-sharpzo-tiny} SHARPZO_PRETRAINED=${SHARPZO_PRETRAINED:-none}
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
# as sharpzo serve --engine ray sets for a local cluster: Serve's controller runs under `ray start`'s environment
export RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S=${RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S:-30}
started=$(date +%s)
work=$(mktemp -d /tmp/sharpzo-scale-XXXXXX)
chmod 755 "$work"
serve_pid=""
pg_pid=""
sessions=" "  # Ray's daemons and workers re-title themselves; each `ray start` runs in a session of its own

say() { printf '[scale-smoke %3ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Runs a command as the leader of a new session and notes the session (its id is the leader's PID).
in_session() { setsid -w bash -c 'echo $$ >"$0"; exec "$@"' "$work/sid" "$@"; }
note_session() { while [ ! -s "$work/sid" ]; do sleep 0.2; done; sessions+="$(cat "$work/sid") "; rm "$work/sid"; }
ray_pids() { ps -eo pid=,sid= | awk -v s="$sessions" 'index(s, " " $2 " ") {print $1}'; }
replica_pids() { ps -eo pid=,sid=,args= | awk -v s="$sessions" 'index(s, " " $2 " ") && /ray::ServeReplica/ {print $1}'; }
pg() { if [ "$(id -u)" = 0 ]; then runuser -u sharpzo-pg -- "$@"; else "$@"; fi; }

cleanup() {
  set +e
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null
  local pids
  pids=$(ray_pids)
  [ -n "$pids" ] && kill $pids 2>/dev/null && sleep 3
  pids=$(ray_pids)
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null && sleep 1
  [ -n "$pg_pid" ] && pg "$pgbin/pg_ctl" -D "$work/pg" -m fast -w stop >/dev/null
  for pid in $(ray_pids); do
    ps -o stat= -p "$pid" | grep -qv Z && echo "scale-smoke: process $pid outlived the cleanup" >&2
  done
  rm -rf "$work"
}
trap cleanup EXIT

# --- PostgreSQL (initdb refuses root: a dedicated user, as the tests' fixture does)
pgbin=$(dirname "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | sort -r | head -1)")
if [ "$(id -u)" = 0 ]; then
  id sharpzo-pg >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin sharpzo-pg
fi
mkdir -m 700 "$work/pg"
[ "$(id -u)" = 0 ] && chown sharpzo-pg "$work/pg"
pg_port=$(free_port)
pg "$pgbin/initdb" -D "$work/pg" -U sharpzo --auth=trust --no-sync >/dev/null
pg "$pgbin/pg_ctl" -D "$work/pg" -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1" -l "$work/pg/log" -w start >/dev/null
pg_pid=$(head -1 "$work/pg/postmaster.pid")
ledger="postgresql://sharpzo@127.0.0.1:$pg_port/postgres"
say "PostgreSQL $pg_pid on 127.0.0.1:$pg_port"
SHARPZO_LEDGER=$ledger "$VENV/bin/sharpzo" keys add smoke --quota $(( BUDGET * 10 )) >"$work/key"
key=$(head -1 "$work/key")

# --- Ray: a head node and a second node, one CPU each, so one replica lands on each; every Ray process of this
# cluster (nodes, driver) authenticates with this run's token
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
RAY_AUTH_TOKEN=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')
ray_port=$(free_port)
http_port=$(free_port)
in_session "$VENV/bin/ray" start --head --node-ip-address 127.0.0.2 --port "$ray_port" --num-cpus 1 --temp-dir "$work/ray" \
  --include-dashboard false --disable-usage-stats >"$work/ray-head.log" 2>&1 || { note_session; tail -5 "$work/ray-head.log"; exit 1; }
note_session
# Ray 2.60 on loopback: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 also refuses a second node, and with it at 1 Ray
# rewrites 127.0.0.1 (not other loopback addresses) to the interface's address. So: nodes on 127.0.0.2 and .3.
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 in_session "$VENV/bin/ray" start --address "127.0.0.2:$ray_port" --node-ip-address 127.0.0.3 --num-cpus 1 \
  --disable-usage-stats >"$work/ray-node.log" 2>&1 || { note_session; tail -5 "$work/ray-node.log"; exit 1; }
note_session
say "Ray head on 127.0.0.2:$ray_port and a second node on 127.0.0.3"
in_session "$PY" -m sharpzo.server.ray_serve --ray-address "127.0.0.2:$ray_port" --node-ip-address 127.0.0.2 --replicas 2 --replica-cpus 1 \
  --max-replicas-per-node 1 --proxy-location HeadOnly --port "$http_port" --ledger "$ledger" --auth on \
  >"$work/serve.log" 2>&1 &
serve_pid=$!
note_session
url="http://127.0.0.1:$http_port"
for _ in $(seq 1 600); do
  [ "$(replica_pids | wc -l)" -ge 2 ] && curl -sf "$url/v1/health" >/dev/null && break
  kill -0 "$serve_pid" 2>/dev/null || { tail -30 "$work/serve.log"; exit 1; }
  sleep 1
done
curl -sf "$url/v1/health" >/dev/null || { echo "scale-smoke: no healthy replica"; tail -30 "$work/serve.log"; exit 1; }
first_replicas=$(replica_pids | tr '\n' ' ')
say "serving on $url, replica workers: $first_replicas"

# --- tune through the proxy, SIGKILLing a replica worker mid-run
"$VENV/bin/sharpzo" tune --server "$url" --api-key "$key" --dataset groceries --shots 4 --method zo-sgd \
  --budget "$BUDGET" --eval-every 0 --seed 0 --out "$work/run" >"$work/tune.log" 2>&1 &
tune_pid=$!
kills=0
while kill -0 "$tune_pid" 2>/dev/null; do
  sleep 2
  done_lines=$( (wc -l <"$work/run/log.jsonl") 2>/dev/null || echo 0)
  if [ "$kills" -lt "$KILLS" ] && [ "$done_lines" -gt $(( kills * 400 + 20 )) ]; then
    victim=$(replica_pids | head -1)
    if [ -n "$victim" ]; then
      kill -9 "$victim" && kills=$((kills + 1)) && say "SIGKILLed replica worker $victim after $done_lines steps"
    fi
  fi
done
tune_rc=0
wait "$tune_pid" || tune_rc=$?
[ "$tune_rc" = 0 ] || { echo "scale-smoke: the run failed ($tune_rc)"; tail -30 "$work/tune.log"; exit 1; }

# --- checks
client=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["budget"]["total_queries"])' "$work/run/result.json")
charged=$(curl -sf -H "Authorization: Bearer $key" "$url/v1/usage" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["queries"])')
in_db=$("$PY" -c 'import psycopg, sys; print(psycopg.connect(sys.argv[1]).execute(
    "SELECT queries FROM usage WHERE account = %s", ("smoke",)).fetchone()[0])' "$ledger")
# Ray logs each request a replica answered in its own file under logs/serve
served=$(grep -c 'POST /v1/logits 200' "$work"/ray/session_latest/logs/serve/replica_*.log 2>/dev/null || true)
serving=$(printf '%s\n' "$served" | awk -F: '$NF > 0' | wc -l)
say "kills tried: $kills; client counted $client queries, the ledger charged $in_db (usage says $charged)"
say "scoring requests per replica log: $(printf '%s\n' "$served" | sed 's#.*/replica_##' | tr '\n' ' ')"
lost=$(( client - in_db ))
[ "$kills" -ge 1 ] || { echo "scale-smoke: no replica was killed"; exit 1; }
[ "$in_db" = "$client" ] && [ "$charged" = "$client" ] || { echo "scale-smoke: charged $in_db != counted $client"; exit 1; }
[ "$serving" -ge 2 ] || { echo "scale-smoke: only $serving replica(s) served traffic"; exit 1; }
say "OK: queries lost 0, charged twice 0 (difference $lost); $serving of $(printf '%s\n' "$served" | wc -l) replica processes served; $(( $(date +%s) - started )) s"
