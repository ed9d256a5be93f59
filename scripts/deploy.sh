#!/usr/bin/env bash
# Deploys chat-router to AWS: migrates the remote database, builds every function
# (scripts/build.sh, slow) and runs `sam deploy --guided`, which asks for the stack
# name, region and each parameter, and saves the answers to samconfig.toml. Once that
# file exists, later runs deploy with it without asking (pass --guided to be asked
# again); parameters not given then keep the stack's previous values.
#
# Guided mode asks for the NoEcho parameters (DatabaseAuthToken, LlmApiKey,
# CallbackSecretKey) itself, with hidden input, and ignores any value given for them
# here; it takes no empty answer, so type "none" for one you do not use. Never saved to
# samconfig.toml.
#
# The parameters come from the environment and are offered as the guided defaults:
#
#   DATABASE_URL          required: the remote libsql database, libsql://… or https://…
#                         (Turso, or a self-hosted sqld). It is migrated first.
#   DATABASE_AUTH_TOKEN   its token, used for the migration and passed as the
#                         DatabaseAuthToken parameter, unless
#   DATABASE_AUTH_TOKEN_PARAMETER  is set: then that goes to the stack instead, e.g.
#                         '{{resolve:secretsmanager:chat-router/database:SecretString:token}}'
#                         so the token itself stays in Secrets Manager.
#   LLM_BASE_URL, LLM_MODEL, LLM_API_KEY, LLM_TIMEOUT_MS
#                         the optional LLM classifier (LlmBaseUrl, LlmModel, LlmApiKey,
#                         LlmTimeoutMs); unset: the embedded classifier decides.
#   LOG_LEVEL             LogLevel: trace, debug, info (default), warn or error.
#   ARCHITECTURE          Architecture: x86_64 (default) or arm64 (needs the
#                         aarch64-unknown-linux-gnu Rust target for the build).
#   STAGE_NAME            StageName of the WebSocket API (default prod).
#   AGENT_LEASE_SECONDS   AgentLeaseSeconds (default 120).
#   DELIVERY_MAX_ATTEMPTS DeliveryMaxAttempts (default 8).
#
# CallbackSecretKey (NoEcho, asked by guided mode like the other secrets) must be the
# CALLBACK_SECRET_KEY that `chat-router business callback` stored the signing secrets
# under; "none" leaves deliveries pending.
#
# Extra arguments go to `sam deploy` (e.g. --stack-name chat-router --region eu-west-1).
# AWS credentials come from the usual places (AWS_PROFILE, environment, SSO).
#
#   DATABASE_URL=libsql://chat-router-you.turso.io DATABASE_AUTH_TOKEN=… scripts/deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

: "${DATABASE_URL:?set DATABASE_URL to the remote libsql database (libsql://… or https://…)}"
if ! [[ "$DATABASE_URL" =~ ^(libsql|https?)://[^[:space:]]+$ ]]; then
  echo "deploy: DATABASE_URL must be a remote libsql URL (libsql://, https:// or http://):" \
    "a local SQLite file cannot be shared between Lambda functions" >&2
  exit 1
fi
[ -x .venv/bin/sam ] || { echo "deploy: .venv/bin/sam is missing: run scripts/setup.sh" >&2; exit 1; }
export SAM_CLI_TELEMETRY=0

# The stack's parameters, checked before the slow steps. Only the variables that are set
# become overrides; the template's defaults hold for the rest.
overrides=()
# add NAME VALUE: one Name=Value override, when VALUE is set. SAM's Name=Value form ends
# a value at a space or quote, and no parameter needs either, so they are refused.
add() {
  [ -n "${2:-}" ] || return 0
  if [[ "$2" =~ [[:space:]\"\'] ]]; then
    echo "deploy: the value for $1 contains a space or a quote" >&2
    exit 1
  fi
  overrides+=("$1=$2")
}
add DatabaseUrl "$DATABASE_URL"
add DatabaseAuthToken "${DATABASE_AUTH_TOKEN_PARAMETER:-${DATABASE_AUTH_TOKEN:-}}"
add LlmBaseUrl "${LLM_BASE_URL:-}"
add LlmModel "${LLM_MODEL:-}"
add LlmApiKey "${LLM_API_KEY:-}"
add LlmTimeoutMs "${LLM_TIMEOUT_MS:-}"
add LogLevel "${LOG_LEVEL:-}"
add Architecture "${ARCHITECTURE:-}"
add StageName "${STAGE_NAME:-}"
add AgentLeaseSeconds "${AGENT_LEASE_SECONDS:-}"
add DeliveryMaxAttempts "${DELIVERY_MAX_ATTEMPTS:-}"

# 1. Migrate the remote database with the admin binary (`chat-router migrate` is safe to
#    repeat). CHAT_ROUTER names a binary already built; otherwise it is built here (a
#    no-op when target/release/chat-router is up to date).
chat_router=${CHAT_ROUTER:-}
if [ -z "$chat_router" ]; then
  echo "deploy: building chat-router (cargo build --release -p chat-router-local)" >&2
  cargo build --release --locked -p chat-router-local
  chat_router=target/release/chat-router
fi
echo "deploy: migrating $DATABASE_URL" >&2
DATABASE_URL="$DATABASE_URL" DATABASE_AUTH_TOKEN="${DATABASE_AUTH_TOKEN:-}" "$chat_router" migrate

# 2. Build every function's bootstrap.
build_args=()
if [ -n "${ARCHITECTURE:-}" ]; then
  build_args=(--parameter-overrides "Architecture=$ARCHITECTURE")
fi
scripts/build.sh "${build_args[@]}"

# 3. Deploy. CAPABILITY_AUTO_EXPAND: the WebSocket API is two nested stacks
#    (AWS::Serverless::Application); CAPABILITY_IAM: one role per function.
guided=()
[ -f samconfig.toml ] || guided=(--guided)
PATH="$PWD/.venv/bin:$PATH" sam deploy "${guided[@]}" \
  --template-file .aws-sam/build/template.yaml \
  --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND \
  --parameter-overrides "${overrides[@]}" \
  "$@"
