#!/usr/bin/env bash
# The ClickHouse audit sink against a real server: installs Debian's
# clickhouse-server when it is missing, starts it on free loopback ports
# with its data in a temporary directory, runs the test that needs it
# (MCPGW_CLICKHOUSE_URL tells it where), and stops the server by pid.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v clickhouse-server >/dev/null; then
    echo "== installing clickhouse-server (Debian)"
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends clickhouse-server >/dev/null
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
dir=$(mktemp -d)
http_port=$(free_port)
tcp_port=$(free_port)
cp /etc/clickhouse-server/users.xml "$dir/users.xml"
cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>$dir/server.log</log><errorlog>$dir/server.err.log</errorlog><console>0</console></logger>
    <http_port>$http_port</http_port>
    <tcp_port>$tcp_port</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>5368709</mark_cache_size>
</yandex>
XML
clickhouse-server --config-file="$dir/config.xml" >"$dir/stdout" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
url="http://127.0.0.1:$http_port"
for _ in $(seq 1 200); do
    if curl -fs "$url/ping" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "clickhouse-server exited:" >&2
        cat "$dir/stdout" "$dir/server.err.log" >&2 || true
        exit 1
    fi
    sleep 0.1
done
curl -fs "$url/ping" >/dev/null
echo "== clickhouse-server $(curl -fs "$url" --data-binary 'SELECT version()') on $url"
MCPGW_CLICKHOUSE_URL="$url" cargo test --test observability audit_records_reach_clickhouse -- --nocapture
