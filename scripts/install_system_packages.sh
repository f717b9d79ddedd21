#!/usr/bin/env bash
# Debian packages some tests need: Chromium and its driver for the browser test, PostgreSQL for
# the instance-storage test. Needs root (CI runs as root).
set -euo pipefail
if ! command -v apt-get >/dev/null; then
    echo "apt-get not found: install chromium, chromium-driver and postgresql by hand" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver postgresql >/dev/null
