#!/usr/bin/env bash
# Sets up a fresh Debian machine and runs `mainstay serve` on the embedded default
# (SQLite in ./mainstay-data/, http://127.0.0.1:7070). Extra arguments go to `serve`.
# Building needs protoc (the etcd client generates its gRPC code); running needs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prerequisites.sh
missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
exec cargo run --release -- serve "$@"
