#!/usr/bin/env bash
# The official SDK clients, in their default modes, against the quickstart
# (the README's first command): the Python SDK (PyPI `mcp`, `Client(url)`:
# a 2026-07-28 `server/discover` probe, then the initialize handshake) and
# the TypeScript SDK v2 (`@modelcontextprotocol/client`). Each connects,
# lists the tools and calls `echo`; the run fails unless both get the echo
# back.
#
# Installs the clients from the registries into .cache/ (override with
# MCPGW_CACHE): a Python virtual environment with `mcp`, and the npm package.
# Needs cargo, python3 (with venv) and Node >= 20 with npm.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${MCPGW_CACHE:-$ROOT/.cache}
TS_SDK=2.4.0
. scripts/lib/python-sdk.sh
mkdir -p "$CACHE"
log() { printf '[sdk-clients] %s\n' "$*" >&2; }

# --- the clients ---------------------------------------------------------------
py_sdk
TSDIR=$CACHE/ts-sdk-$TS_SDK
if [ ! -f "$TSDIR/node_modules/@modelcontextprotocol/client/package.json" ]; then
  log "installing @modelcontextprotocol/client@$TS_SDK (npm) into $TSDIR"
  mkdir -p "$TSDIR"
  (cd "$TSDIR" && npm install --silent --no-audit --no-fund "@modelcontextprotocol/client@$TS_SDK" >/dev/null)
fi
# The script runs from the package's folder so that Node resolves it there.
cp tests/peers/ts_client.mjs "$TSDIR/ts_client.mjs"

# --- the quickstart --------------------------------------------------------------
log "building the quickstart"
cargo build --quiet --example quickstart
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
"$TARGET/debug/examples/quickstart" --listen 127.0.0.1:0 >"$WORK/quickstart.log" 2>&1 & PID=$!
. scripts/lib/wait.sh
URL=$(wait_for "$WORK/quickstart.log" 'MCP endpoint at http://[0-9.:]*/mcp' | sed 's/^MCP endpoint at //')
log "quickstart at $URL"

status=0
check() { # name expected-echo output-file
  if python3 - "$2" "$3" <<'PY'
import json, sys
want, path = sys.argv[1], sys.argv[2]
seen = json.loads(open(path).read().strip().splitlines()[-1])
assert seen["echo"] == [want], seen
assert not seen["is_error"], seen
assert "echo" in seen["tools"], seen
PY
  then echo "sdk-clients: $1 client OK ($(tail -n1 "$3" | cut -c1-120)…)"
  else log "FAIL: the $1 client: $(cat "$3")"; status=1
  fi
}
"$PY_SDK_PYTHON" tests/peers/python_client.py "$URL" >"$WORK/python.out" 2>"$WORK/python.err" \
  || { cat "$WORK/python.err" >&2; status=1; }
check python "hello from python" "$WORK/python.out"
(cd "$TSDIR" && node ts_client.mjs "$URL") >"$WORK/ts.out" 2>"$WORK/ts.err" \
  || { cat "$WORK/ts.err" >&2; status=1; }
check typescript "hello from typescript" "$WORK/ts.out"
exit "$status"
