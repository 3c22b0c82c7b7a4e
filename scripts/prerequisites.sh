# Sourced by serve.sh and test.sh: fails with a clear message when the machine lacks what
# building Mainstay assumes — a Rust toolchain at least the workspace's rust-version, a C
# compiler (rusqlite builds SQLite from source), and, for the tests, python3.
need_rust=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
if ! command -v cargo >/dev/null; then
  echo "error: cargo not found. Install a Rust toolchain >= $need_rust (https://rustup.rs), then run this again." >&2
  exit 1
fi
have_rust=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need_rust" "$have_rust" | sort -V | head -n1)" != "$need_rust" ]; then
  echo "error: rustc $have_rust is older than the workspace's rust-version $need_rust; run 'rustup update'." >&2
  exit 1
fi
if ! command -v cc >/dev/null && ! command -v gcc >/dev/null && ! command -v clang >/dev/null; then
  echo "error: no C compiler (cc, gcc or clang) found; install one, e.g. 'apt-get install gcc'." >&2
  exit 1
fi
for tool in ${NEED_TOOLS:-}; do
  if ! command -v "$tool" >/dev/null; then
    echo "error: $tool not found; install it, e.g. 'apt-get install $tool'." >&2
    exit 1
  fi
done
