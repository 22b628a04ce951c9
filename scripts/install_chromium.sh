#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the report rendering test.
# Idempotent: does nothing when `chromium` is already on PATH. Needs root (or sudo).
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(command -v chromium)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "error: installing chromium needs root (or sudo); run: apt-get install -y chromium" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium

if ! command -v chromium >/dev/null 2>&1; then
    echo "error: apt-get finished but chromium is still not on PATH" >&2
    exit 1
fi
echo "installed $(chromium --version)"
