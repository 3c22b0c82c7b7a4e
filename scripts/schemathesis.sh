#!/usr/bin/env bash
# Fuzzes `mainstay serve` from its own generated OpenAPI document with schemathesis, every
# check on, twice: on the embedded default without a token, and with a bearer token (so
# the auth checks run too). Called by scripts/test.sh; takes the mainstay binary's path.
#
# Each server runs in a fresh temp dir with --allowed-participants naming only a closed
# port, so generated saga steps and 2PC participants can never make it call out anywhere,
# and with --max-wait 1s, so generated waits stay short (the document states the bound).
# The SSE routes that stream until the client leaves (election observe, $all subscribe)
# are left out: a fuzzer's request to them would never end.
set -euo pipefail
bin=$(realpath "$1")
cd "$(dirname "$0")/.."
config=$(realpath scripts/schemathesis.toml)
examples=${MAINSTAY_SCHEMATHESIS_EXAMPLES:-100}

run() {
  local what=$1; shift
  local dir; dir=$(mktemp -d)
  "$bin" serve --listen 127.0.0.1:0 --addr-file "$dir/addr" --data-dir "$dir/data" \
    --allowed-participants http://127.0.0.1:9 --max-wait 1s "${SERVE_ARGS[@]}" \
    >"$dir/serve.log" 2>&1 &
  local pid=$!
  for _ in $(seq 300); do [ -s "$dir/addr" ] && break; sleep 0.1; done
  if [ ! -s "$dir/addr" ]; then
    echo "schemathesis ($what): mainstay serve did not start:" >&2
    cat "$dir/serve.log" >&2
    kill "$pid" 2>/dev/null || true
    return 1
  fi
  local addr; addr=$(cat "$dir/addr")
  local status=0
  # One worker: CPython 3.11's ast module is not thread-safe under schemathesis's workers.
  st --config-file "$config" run "http://$addr/v1/openapi.json" \
    --checks all --phases examples,coverage,fuzzing --max-examples "$examples" \
    --workers 1 --request-timeout 10 --seed 20261203 \
    --exclude-path-regex '/(observe|subscribe)$' "$@" || status=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  if [ "$status" -ne 0 ]; then
    echo "schemathesis ($what) failed" >&2
    return "$status"
  fi
}

SERVE_ARGS=()
run "embedded, no token"
SERVE_ARGS=(--token schemathesis-token)
run "embedded, bearer token" --header "Authorization: Bearer schemathesis-token"
