#!/usr/bin/env bash
# Benchmarks. Usage: scripts/bench.sh ingest|route|realtime|deliver [SECONDS]
#
# ingest: starts `chat-router serve --demo` on a fresh local file, drives
# POST /webhook/message with oha (installed into .tools/ on first use), and prints
# latency at a fixed 2,000 requests per second (corrected for coordinated omission)
# and throughput and latency at full speed.
# Then it stops the server and checks that every acknowledged (202) message is in
# the database.
#
# route: the whole local product in one process (local/examples/bench_route.rs) on a
# fresh local file with the embedded classifier: new conversations posted over HTTP,
# routed through the in-process queue and assigned to available agents. Prints
# conversations routed per second and p50/p99 from the webhook's 202 to the
# committed assignment, at a steady 1,000/s and 2,000/s, at full speed, and for a
# backlog of 20,000 stored jobs drained by the router alone.
#
# deliver: the whole local product in one process (local/examples/bench_deliver.rs)
# and a receiver on 127.0.0.1 that verifies every signature: agents' replies to 400
# assigned conversations become signed deliveries. Prints deliveries per second and
# p50/p99 from the reply's commit to its receipt, at a steady 1,000 replies/s and at
# full speed, and fails unless every reply arrived once, signed and in order.
#
# realtime: the whole local product in one process (local/examples/bench_realtime.rs)
# with real WebSocket clients: p50/p99 from the webhook's 202 to the event on the
# agent's socket at a steady 200 messages/s, and one event fanned out to 1,000
# connected sockets.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-}
seconds=${2:-10}
case "$what" in
  ingest) ;;
  route)
    export RUST_LOG=error
    exec cargo run --quiet --profile fast --locked -p chat-router-local --example bench_route \
      -- "$seconds" 1000
    ;;
  realtime)
    export RUST_LOG=error
    exec cargo run --quiet --profile fast --locked -p chat-router-local --example bench_realtime \
      -- "$seconds" 200 1000
    ;;
  deliver)
    export RUST_LOG=error
    exec cargo run --quiet --profile fast --locked -p chat-router-local --example bench_deliver \
      -- "$seconds" 1000
    ;;
  *) echo "usage: scripts/bench.sh ingest|route|realtime|deliver [SECONDS]" >&2; exit 2 ;;
esac

OHA_VERSION=1.16.0
OHA=.tools/oha/bin/oha
if [ ! -x "$OHA" ] || ! "$OHA" --version | grep -q "$OHA_VERSION"; then
  echo "bench: installing oha $OHA_VERSION into .tools/oha (a few minutes, once)" >&2
  cargo install --locked --quiet --root .tools/oha oha --version "$OHA_VERSION"
fi

cargo build --quiet --profile fast --locked -p chat-router-local
bin=target/fast/chat-router

work=$(mktemp -d)
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

export DATABASE_URL="$work/bench.db" RUST_LOG=error
"$bin" serve --demo --addr 127.0.0.1:0 >"$work/ready" 2>"$work/server.log" &
server=$!
for _ in $(seq 100); do [ -s "$work/ready" ] && break; sleep 0.1; done
read -r addr business key < <(python3 -c '
import json, sys
d = json.loads(open(sys.argv[1]).readline())
print(d["listening"], d["demo"]["businessId"], d["demo"]["webhookKey"])' "$work/ready")

body="{\"businessId\": \"$business\", \"message\": \"I want to know the price of the premium plan\"}"
load() { # name, extra oha flags...
  local name=$1; shift
  "$OHA" --no-tui --output-format json -m POST -T application/json \
    -H "Authorization: Bearer $key" -d "$body" "$@" \
    "http://$addr/webhook/message" >"$work/$name.json"
}

# Latency at a steady 2,000/s first, then throughput at saturation, which leaves a
# checkpoint backlog behind that would weigh on a latency run that came after it.
load warmup -z 2s -c 16 -q 1000
load rate2000 -z "${seconds}s" -c 64 -q 2000 --latency-correction
load full -z "${seconds}s" -c 64

kill -TERM "$server"; wait "$server" || true; server=

python3 - "$work" "$DATABASE_URL" "$seconds" <<'PY'
import json, sqlite3, sys
work, db, seconds = sys.argv[1], sys.argv[2], sys.argv[3]
runs = {name: json.load(open(f"{work}/{name}.json")) for name in ("warmup", "full", "rate2000")}
acked = sum(r["statusCodeDistribution"].get("202", 0) for r in runs.values())
stored = sqlite3.connect(db).execute('SELECT count(*) FROM "Message"').fetchone()[0]

print(f"\ningest benchmark: POST /webhook/message, local file, {seconds}s per run")
print(f"{'run':<22}{'requests/s':>12}{'202s':>10}{'not 202':>9}{'p50 ms':>9}{'p99 ms':>9}")
for name, label in (("rate2000", "2,000/s, 64 conns"), ("full", "full speed, 64 conns")):
    r = runs[name]
    codes = r["statusCodeDistribution"]
    ok = codes.get("202", 0)
    other = sum(v for k, v in codes.items() if k != "202") + sum(r.get("errorDistribution", {}).values())
    p = r["latencyPercentiles"]
    print(f"{label:<22}{r['summary']['requestsPerSec']:>12.0f}{ok:>10}{other:>9}"
          f"{p['p50'] * 1000:>9.2f}{p['p99'] * 1000:>9.2f}")
print(f"\nacknowledged (202): {acked}   stored messages: {stored}")
if stored < acked:
    print("FAIL: acknowledged messages are missing from the database")
    sys.exit(1)
print("every acknowledged message is stored")
PY
