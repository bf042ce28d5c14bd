#!/usr/bin/env bash
# Replicas sharing state through a real Redis: installs Debian's
# redis-server when it is missing and runs the tests that need it
# (tests/cluster.rs). Each test starts its own server on a free loopback
# port, with its data in a scratch directory, and kills it by pid.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null; then
    echo "== installing redis-server (Debian)"
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    # The package starts a system service on 6379; the tests use their own.
    $sudo systemctl stop redis-server >/dev/null 2>&1 || $sudo service redis-server stop >/dev/null 2>&1 || true
fi
echo "== $(redis-server --version)"
MCPGW_REQUIRE_REDIS=1 cargo test --test cluster -- --nocapture
