#!/usr/bin/env bash
# README's first command: sets up what the demo needs, builds DefPool and runs `defpool demo`:
# two Litecoin regtest chains (litecoind from Debian's packages) registered as the demo coins
# DEMOA and DEMOB, the server on SQLite, a proxy, a coin adapter per chain and simulated SV1/SV2
# miners, with a live status every few seconds. Ctrl-C stops everything.
# Idempotent; extra arguments go to `defpool demo` (e.g. --duration 120 --report out.json).
# The run directory (chains, store, logs) is ./demo-run; a second start resumes from it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v litecoind >/dev/null 2>&1 && [ ! -x /usr/lib/litecoin/litecoind ]; then
  echo "== installing litecoind (Debian's package) for the regtest chains"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y litecoind
fi

echo "== building defpool (release)"
cargo build --release --locked -p defpool
bin="${CARGO_TARGET_DIR:-target}/release/defpool"
"$bin" config check config/demo.toml >/dev/null
exec "$bin" demo "$@"
