#!/usr/bin/env bash
# Instructions per `tools/call` in the servers of the loopback benchmark,
# counted by callgrind: the one measure on this shared machine that does not
# move with the host (the same binary gives the same count within a few
# dozen instructions, however busy the machine is).
#
#   scripts/instructions.sh                      # gateway, secure, full; JSON and SSE
#   scripts/instructions.sh gateway:sse full:json
#   MCPGW_INSTR_CONNS=1 scripts/instructions.sh  # at one connection (default 32)
#
# Each server runs twice under callgrind, with busy polling off (its polling
# rounds would be counted too), for 2 000 and for 6 000 calls; the
# difference of the totals over 4 000 is the cost of one call, without
# start-up and shutdown. User space only: the kernel's share (most of the
# CPU time on loopback) is not in these counts. At one connection a call
# also pays the runtime's park and wake-up, so counts are higher there.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || {
    echo "instructions.sh needs valgrind (apt-get install valgrind)" >&2
    exit 1
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] ||
    targets=(gateway:json gateway:sse secure:json secure:sse full:json full:sse)

exe=$(cargo bench --bench loopback --no-run 2>&1 |
    sed -n 's/.*Executable benches\/loopback.rs (\(.*\))/\1/p' | tail -n 1)
[ -x "$exe" ] || {
    echo "instructions.sh: no loopback bench executable found" >&2
    exit 1
}
case "$exe" in /*) ;; *) exe="$PWD/$exe" ;; esac

conns=${MCPGW_INSTR_CONNS:-32}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Total instructions of one run of `role` in `mode` for `calls` calls.
total() {
    local role=$1 mode=$2 calls=$3 log="$out/$1.$2.$3.log"
    (cd "$out" &&
        MCPGW_BENCH_WRAP="valgrind --tool=callgrind --callgrind-out-file=$out/$role.$mode.$calls.out" \
            MCPGW_BENCH_BUSY_POLL_US=0 MCPGW_BENCH_PROFILE="$role" MCPGW_BENCH_MODE="$mode" \
            MCPGW_BENCH_CONNS="$conns" MCPGW_BENCH_CALLS="$calls" timeout 600 "$exe" --bench >"$log" 2>&1) || {
        echo "instructions.sh: $role $mode ($calls calls) failed; its output:" >&2
        cat "$log" >&2
        exit 1
    }
    sed -n 's/.*I *refs: *\([0-9,]*\).*/\1/p' "$log" | tr -d ',' | tail -n 1
}

printf '%-10s %-5s %s\n' server mode "instructions per call ($conns connections)"
for t in "${targets[@]}"; do
    role=${t%%:*}
    mode=${t#*:}
    [ "$mode" != "$t" ] || mode=json
    small=$(total "$role" "$mode" 2000)
    large=$(total "$role" "$mode" 6000)
    [ -n "$small" ] && [ -n "$large" ] || {
        echo "instructions.sh: no instruction total for $role $mode" >&2
        exit 1
    }
    printf '%-10s %-5s %d\n' "$role" "$mode" $(((large - small) / 4000))
done
