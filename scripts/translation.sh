#!/usr/bin/env bash
# Protocol translation against real peers from the registries: stdio and
# legacy HTTP+SSE servers behind the gateway, legacy, session and
# stateless clients in front.
#
# Servers: the rmcp fixture (`conformance_server --stdio`),
# `@modelcontextprotocol/server-everything` in stdio and sse modes (npm),
# the Python SDK's legacy SSE server (PyPI `mcp`,
# tests/peers/legacy_sse_server.py), and the rmcp fixture over Streamable
# HTTP (a legacy client in front of a modern server).
# Clients: the Python SDK's legacy SSE client, its session client and its
# 2026-07-28 stateless client (tests/peers/translation_client.py), then the
# rmcp client (`cargo test --test translation -- --ignored`).
# Every run lists, calls, counts 50 x 20 progress notifications, and round
# trips sampling and elicitation; a stdio gateway must have no child left
# once its clients are gone.
#
# Installs into .cache/ (override with MCPGW_CACHE). Needs cargo, python3
# (with venv), Node >= 20 with npm.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${MCPGW_CACHE:-$ROOT/.cache}
EVERYTHING_VERSION=2026.8.31
. scripts/lib/python-sdk.sh
. scripts/lib/wait.sh
mkdir -p "$CACHE"
log() { printf '[translation] %s\n' "$*" >&2; }

py_sdk
NODE=$(command -v node)
EDIR=$CACHE/everything-$EVERYTHING_VERSION
EVERYTHING=$EDIR/node_modules/@modelcontextprotocol/server-everything/dist/index.js
if [ ! -f "$EVERYTHING" ]; then
  log "installing @modelcontextprotocol/server-everything@$EVERYTHING_VERSION (npm) into $EDIR"
  mkdir -p "$EDIR"
  (cd "$EDIR" && npm install --silent --no-audit --no-fund "@modelcontextprotocol/server-everything@$EVERYTHING_VERSION" >/dev/null)
fi

log "building the gateway and the rmcp fixture"
cargo build --quiet --bin mcp-gateway --example conformance_server
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- the servers that listen ----------------------------------------------------
"$TARGET/examples/conformance_server" --listen 127.0.0.1:0 >"$WORK/rmcp-http.log" 2>&1 & PIDS+=($!)
RMCP_HTTP=$(wait_for "$WORK/rmcp-http.log" 'conformance server on http://[0-9.:]*/mcp' | sed 's/^conformance server on //')
"$PY_SDK_PYTHON" tests/peers/legacy_sse_server.py >"$WORK/py-sse.log" 2>&1 & PIDS+=($!)
PY_SSE=$(wait_for "$WORK/py-sse.log" 'legacy sse server on http://[0-9.:]*/sse' | sed 's/^legacy sse server on //')
EPORT=$(free_port)
PORT=$EPORT "$NODE" "$EVERYTHING" sse >"$WORK/everything-sse.log" 2>&1 & PIDS+=($!)
wait_for "$WORK/everything-sse.log" "running on port $EPORT" >/dev/null

status=0
# gateway NAME PROFILE STDIO BACKEND-TOML [KINDS]: a gateway in front of
# one server, the Python clients through it (all three kinds by default).
gateway() {
  local name=$1 profile=$2 stdio=$3 backend=$4 kinds=${5:-sse session stateless}
  printf 'listen = "127.0.0.1:0"\n\n[limits]\nprincipal_in_flight = 0\n\n[backend]\n%s\n' "$backend" >"$WORK/$name.toml"
  "$TARGET/mcp-gateway" --config "$WORK/$name.toml" >"$WORK/$name.out" 2>"$WORK/$name.err" & local gw=$!
  PIDS+=($gw)
  local url
  url=$(wait_for "$WORK/$name.out" 'mcp-gateway listening on http://[0-9.:]*/mcp' | sed 's/^mcp-gateway listening on //')
  for kind in $kinds; do
    local u=$url
    [ "$kind" = sse ] && u=$url/sse
    if out=$("$PY_SDK_PYTHON" tests/peers/translation_client.py "$kind" "$u" "$profile" 2>"$WORK/$name-$kind.err"); then
      echo "translation: $name, python $kind client OK (${out:0:110}…)"
    else
      log "FAIL: $name, python $kind client: $(cat "$WORK/$name-$kind.err")"; status=1
    fi
  done
  local kids=""
  if [ "$stdio" = stdio ]; then
    # The legacy and session clients are gone (their sessions ended); the
    # stateless client's upstream session is the one child left.
    kids=$(ps -o pid= --ppid "$gw" || true)
    if [ "$(echo "$kids" | grep -c .)" -gt 1 ]; then log "FAIL: $name: children left: $kids"; status=1; fi
  fi
  kill "$gw"; wait "$gw" 2>/dev/null || true
  for k in $kids; do
    if kill -0 "$k" 2>/dev/null; then log "FAIL: $name: child $k outlived the gateway"; status=1; fi
  done
}
gateway stdio-rmcp rmcp stdio "command = [\"$TARGET/examples/conformance_server\", \"--stdio\"]"
gateway stdio-everything everything stdio "command = [\"$NODE\", \"$EVERYTHING\", \"stdio\"]"
gateway sse-everything everything sse "urls = [\"http://127.0.0.1:$EPORT/sse\"]
transport = \"sse\""
gateway sse-python pylegacy sse "urls = [\"$PY_SSE\"]
transport = \"sse\""
# A legacy client in front of a modern server. (rmcp's server answers
# 2026-07-28 requests without `resultType`, which the Python 2026-07-28
# client refuses: that pair is the server's to fix, not a translation.)
gateway http-rmcp rmcp http "urls = [\"$RMCP_HTTP\"]" "sse session"

log "the rmcp client through the gateway (cargo test --test translation -- --ignored)"
MCPGW_NODE=$NODE MCPGW_EVERYTHING=$EVERYTHING MCPGW_PYTHON=$PY_SDK_PYTHON \
  cargo test --quiet --test translation -- --ignored || status=1
exit "$status"
