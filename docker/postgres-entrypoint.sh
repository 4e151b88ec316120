#!/usr/bin/env bash
# Entrypoint of docker/postgres.Dockerfile, after the official postgres image's, for what
# docker-compose.scale.yml uses:
#   POSTGRES_USER (default postgres), POSTGRES_PASSWORD (required unless
#   POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_DB (default $POSTGRES_USER), POSTGRES_INITDB_ARGS,
#   POSTGRES_HOST_AUTH_METHOD (default scram-sha-256), PGDATA (default /var/lib/postgresql/data),
#   /docker-entrypoint-initdb.d/*.sql and *.sh (run once, on a new cluster).
# An empty data directory gets initdb, the superuser's password, password auth for TCP and the
# database; then postgres runs in the foreground as the postgres user, listening on all addresses.
set -Eeuo pipefail
shopt -s nullglob

[ "$#" -gt 0 ] || set -- postgres
if [ "${1:0:1}" = "-" ]; then
    set -- postgres "$@"
fi

PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
    # the volume may arrive owned by root: hand it to postgres, then drop root for good
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    POSTGRES_USER=${POSTGRES_USER:-postgres}
    POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
    auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
        echo "postgres-entrypoint: the database is uninitialized and POSTGRES_PASSWORD is not set" >&2
        echo "  (set it, or POSTGRES_HOST_AUTH_METHOD=trust to allow every connection without one)" >&2
        exit 1
    fi
    if [ -n "$(ls -A "$PGDATA" 2>/dev/null)" ]; then
        echo "postgres-entrypoint: $PGDATA is not empty but holds no cluster (no PG_VERSION); refusing initdb" >&2
        exit 1
    fi

    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of flags
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host="$auth" ${POSTGRES_INITDB_ARGS:-}
    rm -f "$pwfile"
    # initdb's pg_hba.conf allows TCP from loopback only; the container's network is the boundary
    printf '\n# docker: TCP from any address, with a password\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"

    # a temporary server on the unix socket only, so nothing connects over TCP (the compose
    # healthcheck, the server) before the database exists
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" -w start
    export PGUSER=$POSTGRES_USER PGHOST=/var/run/postgresql
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --dbname=postgres --no-psqlrc -q \
            -c "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";"
    fi
    for init in /docker-entrypoint-initdb.d/*; do
        case "$init" in
            *.sql) echo "postgres-entrypoint: running $init"
                   psql -v ON_ERROR_STOP=1 --dbname="$POSTGRES_DB" --no-psqlrc -q -f "$init" ;;
            *.sh)  echo "postgres-entrypoint: running $init"
                   # shellcheck disable=SC1090
                   . "$init" ;;
            *)     echo "postgres-entrypoint: ignoring $init" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    unset PGUSER PGHOST
    echo "postgres-entrypoint: initialized $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB, TCP auth $auth)"
fi

if [ "$1" = postgres ]; then
    shift
    exec postgres -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql "$@"
fi
exec "$@"
