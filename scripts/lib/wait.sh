# Sourced by the scripts that start servers: wait_for FILE PATTERN prints
# the first match of PATTERN (grep -o) in FILE once a process has written
# it (within 30 s), or shows FILE and fails.
wait_for() {
  local m
  for _ in $(seq 1 300); do
    m=$(grep -o "$2" "$1" | head -n1 || true)
    [ -n "$m" ] && { echo "$m"; return 0; }
    sleep 0.1
  done
  printf 'no "%s" in %s:\n' "$2" "$1" >&2; cat "$1" >&2; return 1
}
