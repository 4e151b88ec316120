#!/bin/sh
# Build-time pip for the images: `pip-install.sh deps EXTRA...` installs the project's dependencies
# (read from pyproject.toml, pinned by constraints.txt) before the source is copied, so that a
# source change does not reinstall torch; `pip-install.sh ARGS...` is a plain `pip install ARGS`.
# Honoured at build time only:
#   WHEELHOUSE_URL         install from this find-links URL alone (offline builds, see README)
#   /tmp/certs/*.crt|*.pem extra CA certificates, for pip behind a TLS-intercepting proxy
set -eu
PY=/opt/venv/bin/python

if [ "${1:-}" = deps ]; then
    shift
    extras=$*
    "$PY" - "$extras" >/tmp/requirements.txt <<'PYEOF'
import sys
import tomllib

project = tomllib.load(open("/tmp/build/pyproject.toml", "rb"))["project"]
wanted = list(project["dependencies"])
for extra in sys.argv[1].split():
    wanted += project["optional-dependencies"][extra]
# The project itself is installed later with --no-build-isolation, so its build backend goes in now.
wanted += ["setuptools>=68", "wheel"]
print("\n".join(wanted))
PYEOF
    set -- -r /tmp/requirements.txt -c /tmp/build/constraints.txt
fi

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
rm -f "$bundle" /tmp/requirements.txt
exit "$status"
