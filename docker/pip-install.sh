#!/bin/sh
# `pip install "$@"` into the image's venv. Honoured at build time only:
#   WHEELHOUSE_URL         install from this find-links URL alone (offline builds, see README)
#   /tmp/certs/*.crt|*.pem extra CA certificates, for pip behind a TLS-intercepting proxy
set -eu
PY=/opt/venv/bin/python

if [ -n "${WHEELHOUSE_URL:-}" ]; then
    # pip ignores plain-http find-links on hosts it does not trust.
    host=$("$PY" -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).hostname or "")' "$WHEELHOUSE_URL")
    set -- --no-index --find-links "$WHEELHOUSE_URL" ${host:+--trusted-host "$host"} "$@"
fi

bundle=
for cert in /tmp/certs/*.crt /tmp/certs/*.pem; do
    [ -f "$cert" ] || continue
    if [ -z "$bundle" ]; then
        # PIP_CERT replaces pip's own CA bundle, so start from that one.
        bundle=$(mktemp)
        cat "$("$PY" -c 'from pip._vendor import certifi; print(certifi.where())')" >"$bundle"
    fi
    cat "$cert" >>"$bundle"
done
[ -z "$bundle" ] || export PIP_CERT="$bundle"

status=0
"$PY" -m pip install --no-cache-dir --disable-pip-version-check --no-warn-script-location "$@" || status=$?
[ -z "$bundle" ] || rm -f "$bundle"
exit "$status"
