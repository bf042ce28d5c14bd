#!/usr/bin/env bash
# A browser on another origin against the `mcp-gateway` binary: headless
# Chromium loads tests/peers/cors_page.html from one loopback port and runs an
# MCP exchange with fetch against the gateway on another (preflights, the
# session id read from a response header, a tool call, DELETE), as the MCP
# Inspector does in direct mode. It must succeed with --cors-origin naming the
# page's origin, and be blocked by the browser without it.
#
# Installs Debian's chromium when it is missing (apt-get; as root, or with
# sudo). Needs cargo and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[browser-cors] %s\n' "$*" >&2; }

if ! command -v chromium >/dev/null; then
  log "installing chromium (Debian)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }
fi

log "building the gateway and the fixture server"
cargo build --quiet --bin mcp-gateway --example conformance_server
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

. scripts/lib/wait.sh

"$TARGET/examples/conformance_server" --listen 127.0.0.1:0 >"$WORK/backend.log" 2>&1 & PIDS+=($!)
BACKEND=$(wait_for "$WORK/backend.log" 'http://[0-9.:]*/mcp')
mkdir -p "$WORK/site"
(cd "$WORK/site" && exec python3 -m http.server --bind 127.0.0.1 0) >"$WORK/site.log" 2>&1 & PIDS+=($!)
PAGE_PORT=$(wait_for "$WORK/site.log" 'port [0-9]*' | cut -d' ' -f2)
ORIGIN=http://127.0.0.1:$PAGE_PORT

# Started in this shell, not in the command substitution that reads the
# page: its pid must reach PIDS, which the cleanup kills.
gateway() { # name gateway-args...
  local name=$1; shift
  "$TARGET/mcp-gateway" --listen 127.0.0.1:0 --upstream "$BACKEND" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" & PIDS+=($!)
}

browse() { # name -> the page's #result text, through the gateway `name`
  local name=$1
  local gw
  gw=$(wait_for "$WORK/$name.out" 'http://[0-9.:]*/mcp')
  sed "s|GATEWAY_URL|$gw|" tests/peers/cors_page.html >"$WORK/site/$name.html"
  timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$WORK/profile-$name" --virtual-time-budget=20000 \
    --dump-dom "$ORIGIN/$name.html" 2>"$WORK/chromium-$name.log" \
    | grep -o '<pre id="result">[^<]*' | sed 's/<pre id="result">//'
}

status=0
gateway allowed --cors-origin "$ORIGIN"
allowed=$(browse allowed)
echo "browser-cors: with --cors-origin $ORIGIN: $allowed"
case "$allowed" in
  "ok session-id-readable echoed delete-204") ;;
  *) log "FAIL: the page on $ORIGIN could not use the gateway"; cat "$WORK/allowed.err" >&2; status=1 ;;
esac
gateway refused
refused=$(browse refused)
echo "browser-cors: without --cors-origin: $refused"
case "$refused" in
  blocked:*) ;;
  *) log "FAIL: the browser was not stopped without CORS"; status=1 ;;
esac
exit "$status"
