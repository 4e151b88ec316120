# PostgreSQL for docker-compose.scale.yml where the official image (postgres:15-bookworm) cannot be
# pulled: Debian bookworm's own postgresql package on any Debian bookworm base, with an entrypoint
# that honours POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB and /var/lib/postgresql/data as the
# official image does (docker/postgres-entrypoint.sh).
#   docker build -f docker/postgres.Dockerfile --build-arg BASE_IMAGE=... -t sharpzo-postgres .
#   SHARPZO_POSTGRES_IMAGE=sharpzo-postgres docker-compose -f docker-compose.yml -f docker-compose.scale.yml up
# scripts/compose_smoke.sh builds it in its scale mode (SMOKE_SCALE=1).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ENV LANG=C.UTF-8 \
    PG_MAJOR=15 \
    PGDATA=/var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:$PATH

# No cluster from the package's postinst: the entrypoint makes one on the data volume.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-common \
 && sed -ri 's/^#?[[:space:]]*(create_main_cluster)[[:space:]]*=.*$/\1 = false/' /etc/postgresql-common/createcluster.conf \
 && grep -q '^create_main_cluster = false' /etc/postgresql-common/createcluster.conf \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "postgresql-${PG_MAJOR}" \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && mkdir -p "$PGDATA" /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
 && chmod 700 "$PGDATA" \
 && chmod 3777 /var/run/postgresql \
 && pg_isready --version

COPY docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
RUN chmod 755 /usr/local/bin/postgres-entrypoint.sh

VOLUME /var/lib/postgresql/data
EXPOSE 5432
# postgres's fast shutdown, as the official image
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
