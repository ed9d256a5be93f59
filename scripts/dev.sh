#!/usr/bin/env bash
# Builds and runs chat-router locally with the demo tenant: one process, a SQLite
# file (DATABASE_URL, default ./chat-router.db), no cloud. Extra arguments go to
# `chat-router serve` (for example --addr 127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --profile fast --locked -p chat-router-local
exec target/fast/chat-router serve --demo "$@"
