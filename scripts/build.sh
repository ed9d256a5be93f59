#!/usr/bin/env bash
# Builds every Lambda function of template.yaml with `sam build`: SAM runs
# `cargo lambda build --release --bin <Binary>` once per function (BuildMethod
# rust-cargolambda) and puts each bootstrap under .aws-sam/build/<Function>/. Then checks
# that all six are there and prints their sizes.
#
# Slow: six release builds with fat LTO and one codegen unit take many minutes on two
# cores (the dependencies compile once, in the shared target/, and each binary links
# on its own). The tests never run this; scripts/check-template.sh checks the template.
#
#   scripts/build.sh                                        # x86_64, zig as the linker
#   CARGO_LAMBDA_COMPILER=cargo scripts/build.sh            # the host's own toolchain
#   scripts/build.sh --parameter-overrides Architecture=arm64   # needs the aarch64 target
#
# Extra arguments go to `sam build`. Needs scripts/setup.sh (SAM CLI, cargo-lambda and
# zig in .venv) and Rust via rustup.
set -euo pipefail
cd "$(dirname "$0")/.."

FUNCTIONS=(WebhookFunction ClassifyRouteFunction SweeperFunction WsConnectFunction
  WsDisconnectFunction WsBroadcastFunction)
# A bootstrap over this is too slow to start (and a sign of a debug build).
MAX_BYTES=$((10 * 1024 * 1024))

for tool in sam cargo-lambda; do
  [ -x ".venv/bin/$tool" ] || { echo "build: .venv/bin/$tool is missing: run scripts/setup.sh" >&2; exit 1; }
done
command -v cargo >/dev/null || { echo "build: cargo is required (https://rustup.rs)" >&2; exit 1; }

# SAM looks for cargo-lambda on PATH, and cargo-lambda finds zig as `python3 -m ziglang`,
# so the virtual environment comes first.
export PATH="$PWD/.venv/bin:$PATH" SAM_CLI_TELEMETRY=0

sam build --template-file template.yaml "$@"

status=0
for function in "${FUNCTIONS[@]}"; do
  bootstrap=".aws-sam/build/$function/bootstrap"
  if [ ! -x "$bootstrap" ]; then
    echo "build: $bootstrap is missing" >&2
    status=1
    continue
  fi
  bytes=$(stat -c %s "$bootstrap")
  printf '%-24s %6.1f MB  %s\n' "$function" "$(echo "$bytes" | awk '{print $1 / 1048576}')" "$bootstrap"
  if [ "$bytes" -gt "$MAX_BYTES" ]; then
    echo "build: $bootstrap is over 10 MB" >&2
    status=1
  fi
done
exit "$status"
