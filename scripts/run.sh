#!/usr/bin/env bash
# Builds DefPool and runs what works today on the embedded default (one process, SQLite):
# validates the demo config and shows the coin registry it mines. The pool roles (proxy,
# adapter, server) are added to this script as they land; nothing here is simulated.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p defpool
bin=target/release/defpool
"$bin" config check config/demo.toml
"$bin" coins --network regtest
