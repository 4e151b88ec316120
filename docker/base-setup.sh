#!/bin/sh
# Shared first layer of both images: the unprivileged user, its volume mount points and the venv.
# Works on python:3.11-slim and on a bare Debian base made with debootstrap.
set -eu
if ! python3 -c 'import ensurepip' 2>/dev/null; then
    # Debian's python3 without python3-venv (a minimal debootstrap base)
    apt-get update
    apt-get install -y --no-install-recommends python3-venv
    rm -rf /var/lib/apt/lists/*
fi
useradd --uid 1000 --create-home --shell /bin/sh sharpzo
python3 -m venv /opt/venv
mkdir -p /data /cache /weights /runs
chown sharpzo:sharpzo /data /cache /weights /runs
