#!/usr/bin/env bash
# Sets up a fresh Debian machine and runs every check: fmt, clippy -D warnings, all tests
# (against real Redis, PostgreSQL, etcd, ZooKeeper and NATS started on free loopback ports), doc
# tests, and the doc build with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
NEED_TOOLS=python3 . scripts/prerequisites.sh

# 1. Debian packages the tests need, installed only when missing.
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v nats-server >/dev/null || missing+=(nats-server)
[ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
command -v java >/dev/null || missing+=(default-jre-headless)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
# The CDC TLS test makes its certificates with the openssl CLI.
command -v openssl >/dev/null || missing+=(openssl)
# schemathesis (PyPI) fuzzes the HTTP API from its generated OpenAPI document.
if ! command -v st >/dev/null || [ "$(st --version 2>/dev/null | awk '{print $NF}')" != "4.32.5" ]; then
  echo "installing: schemathesis 4.32.5 (PyPI)"
  python3 -m pip install -q --disable-pip-version-check "schemathesis==4.32.5" 2>&1 | grep -v "Running pip as the 'root' user" || true
  command -v st >/dev/null || { echo "error: schemathesis installed but 'st' is not on PATH" >&2; exit 1; }
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Static checks.
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings

# 3. Tests: one shared set of servers for the whole run; each test takes a fresh
#    database / key prefix / root. Fault tests start private servers of their own.
cargo build -q -p mainstay-testkit --bin mainstay-testkit
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
runner=(cargo test --workspace --all-features --no-fail-fast)
if cargo nextest --version >/dev/null 2>&1; then
  runner=(cargo nextest run --workspace --all-features --no-fail-fast --profile ci)
fi
"$target_dir/debug/mainstay-testkit" run -- "${runner[@]}"
# The HTTP API against its own generated OpenAPI document (schemathesis, every check).
cargo build -q -p mainstay
./scripts/schemathesis.sh "$target_dir/debug/mainstay"
cargo test -q --workspace --all-features --doc
# The CQRS examples run end to end (they assert their results).
cargo run -q -p mainstay-cqrs --example bank_account >/dev/null
cargo run -q -p mainstay-cqrs --example order_summary >/dev/null
# The README's run command resolves to the mainstay binary from the workspace root.
cargo run -q -- --help >/dev/null
RUSTDOCFLAGS="-D warnings" cargo doc -q --workspace --no-deps --all-features
