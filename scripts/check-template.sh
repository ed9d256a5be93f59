#!/usr/bin/env bash
# Checks the SAM template offline, in a few seconds: cfn-lint over the template and its
# nested stacks, `sam validate --lint`, and SAM CLI's local route discovery
# (scripts/sam_routes.py: the HTTP API's routes are found, the WebSocket routes do not
# break `sam local start-api`). Needs scripts/setup.sh's .venv. Prints one line per
# check (and the tool's output when it fails); exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv/bin
TEMPLATES=(template.yaml websocket-api.yaml websocket-routes.yaml)
for tool in cfn-lint sam python; do
  [ -x "$VENV/$tool" ] || { echo "check-template: $VENV/$tool is missing: run scripts/setup.sh" >&2; exit 1; }
done

# No AWS call may happen: dummy credentials, no instance metadata, no telemetry. SAM
# CLI also asks PyPI for a newer version once a week; a private config folder that says
# it just did keeps that off the network (and leaves ~/.aws-sam alone).
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
  AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true SAM_CLI_TELEMETRY=0
unset AWS_PROFILE AWS_SESSION_TOKEN
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/sam"
printf '{"telemetryEnabled": false, "lastVersionCheck": %s}\n' "$(date +%s)" >"$work/sam/metadata.json"
export __SAM_CLI_APP_DIR="$work/sam"

failed=0
# run NAME COMMAND...: one line, with the output kept for a failure.
run() {
  local name=$1
  shift
  if "$@" >"$work/out" 2>&1; then
    echo "ok   $name"
  else
    echo "FAIL $name"
    sed 's/^/     /' "$work/out"
    failed=1
  fi
}

run "cfn-lint ${TEMPLATES[*]}" "$VENV/cfn-lint" -- "${TEMPLATES[@]}"
run "sam validate --lint" "$VENV/sam" validate --lint --template-file template.yaml

# sam_routes.py proves it line by line; its last line sums it up.
if "$VENV/python" scripts/sam_routes.py template.yaml >"$work/routes" 2>&1; then
  echo "ok   $(tail -n 1 "$work/routes")"
else
  echo "FAIL sam local route discovery (scripts/sam_routes.py)"
  sed 's/^/     /' "$work/routes"
  failed=1
fi

exit "$failed"
