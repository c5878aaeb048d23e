#!/usr/bin/env bash
# Capture real Litecoin blocks as test fixtures for defpool-core's block codec and share
# validation (crates/defpool-core/tests/real_blocks.rs).
#
# (a) The mainnet genesis block, from a mainnet litecoind with networking off.
# (b) A regtest block past MWEB activation (height 432 on regtest) holding a segwit transaction,
#     an MWEB peg-in, the HogEx and the MWEB extension block, mined by a private regtest node.
#
# Both daemons run in their own temporary data directories, bound to loopback, on non-default
# ports, with no peers; they are stopped when the script exits. Installs litecoind (Debian's
# package) if it is missing. Writes into crates/defpool-core/tests/fixtures/:
#   ltc-mainnet-genesis.hex      raw block, hex (`getblock <hash> 0`)
#   ltc-regtest-mweb-block.hex   raw block, hex
#   ltc-regtest-mweb-block.json  the same block, `getblock <hash> 1`
#   README.md                    where each fixture came from, and addresses the node produced
#
# Usage: scripts/capture-ltc-fixtures.sh   (re-running replaces the fixtures with new ones:
# regtest blocks differ on every run)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/crates/defpool-core/tests/fixtures"

# Non-default ports, loopback only.
MAIN_RPC_PORT=29332
REG_RPC_PORT=29443
REG_P2P_PORT=29444

if ! command -v litecoind >/dev/null 2>&1 || ! command -v litecoin-cli >/dev/null 2>&1; then
    echo "installing litecoind" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y litecoind
fi

WORK="$(mktemp -d)"
MAIN_DIR="$WORK/mainnet"
REG_DIR="$WORK/regtest"
mkdir -p "$MAIN_DIR" "$REG_DIR"

main_cli() { litecoin-cli -datadir="$MAIN_DIR" -rpcport="$MAIN_RPC_PORT" "$@"; }
reg_cli() { litecoin-cli -regtest -datadir="$REG_DIR" -rpcport="$REG_RPC_PORT" "$@"; }
wallet_cli() { reg_cli -rpcwallet=defpool "$@"; }
payer_cli() { reg_cli -rpcwallet=payer "$@"; }

stop_daemon() {
    # $1: the daemon's pid file, $2...: the cli command that reaches it
    local pidfile="$1" pid=""
    shift
    [[ -f "$pidfile" ]] && pid="$(cat "$pidfile")"
    "$@" stop >/dev/null 2>&1 || true
    [[ -n "$pid" ]] || return 0
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
}

cleanup() {
    stop_daemon "$MAIN_DIR/litecoind.pid" main_cli
    stop_daemon "$REG_DIR/litecoind.pid" reg_cli
    rm -rf "$WORK"
}
trap cleanup EXIT

COMMON=(-daemon -server -listen=0 -connect=0 -dnsseed=0 -upnp=0
    -rpcbind=127.0.0.1 -rpcallowip=127.0.0.1 -printtoconsole=0)

VERSION="$(litecoind -version | head -n 1)"
echo "using $VERSION" >&2

# --- (a) mainnet genesis ------------------------------------------------------------------
litecoind "${COMMON[@]}" -datadir="$MAIN_DIR" -rpcport="$MAIN_RPC_PORT" -disablewallet \
    -pid="$MAIN_DIR/litecoind.pid"
main_cli -rpcwait getblockcount >/dev/null
GENESIS_HASH="$(main_cli getblockhash 0)"
GENESIS_HEX="$(main_cli getblock "$GENESIS_HASH" 0)"
stop_daemon "$MAIN_DIR/litecoind.pid" main_cli
echo "mainnet genesis $GENESIS_HASH" >&2

# --- (b) regtest block with segwit + MWEB ---------------------------------------------------
litecoind "${COMMON[@]}" -regtest -datadir="$REG_DIR" -rpcport="$REG_RPC_PORT" \
    -port="$REG_P2P_PORT" -fallbackfee=0.0001 \
    -pid="$REG_DIR/litecoind.pid"
reg_cli -rpcwait getblockcount >/dev/null
reg_cli createwallet defpool >/dev/null

MINE_ADDR="$(wallet_cli getnewaddress "" bech32)"
BECH32_ADDR="$(wallet_cli getnewaddress "" bech32)"
LEGACY_ADDR="$(wallet_cli getnewaddress "" legacy)"
MWEB_ADDR="$(wallet_cli getnewaddress "" mweb)"

# Heights 1..431: pre-MWEB, and enough to mature the first coinbases.
wallet_cli generatetoaddress 431 "$MINE_ADDR" >/dev/null
# From height 432 every block needs a HogEx, which the miner only builds with an MWEB
# transaction in the mempool (otherwise `bad-txns-vin-empty`): peg in first.
wallet_cli sendtoaddress "$MWEB_ADDR" 1 >/dev/null
wallet_cli generatetoaddress 1 "$MINE_ADDR" >/dev/null

# A second wallet holding only canonical (non-MWEB) coins, so that its payment to an MWEB
# address is a real peg-in (the first wallet would pay from its MWEB coins instead).
reg_cli createwallet payer >/dev/null
PAYER_A="$(payer_cli getnewaddress "" bech32)"
PAYER_B="$(payer_cli getnewaddress "" bech32)"
wallet_cli sendmany "" "{\"$PAYER_A\": 10, \"$PAYER_B\": 10}" >/dev/null
wallet_cli generatetoaddress 1 "$MINE_ADDR" >/dev/null

# The captured block: a plain segwit payment and a peg-in, both spending P2WPKH coins.
SEGWIT_TXID="$(payer_cli sendtoaddress "$BECH32_ADDR" 2.5)"
PEGIN_TXID="$(payer_cli sendtoaddress "$MWEB_ADDR" 3)"
BLOCK_HASH="$(wallet_cli generatetoaddress 1 "$MINE_ADDR" | tr -d '[:space:]"[]')"
HEIGHT="$(reg_cli getblockcount)"
BLOCK_HEX="$(reg_cli getblock "$BLOCK_HASH" 0)"
BLOCK_JSON="$(reg_cli getblock "$BLOCK_HASH" 1)"
echo "regtest block $BLOCK_HASH at height $HEIGHT (segwit $SEGWIT_TXID, peg-in $PEGIN_TXID)" >&2
for txid in "$SEGWIT_TXID" "$PEGIN_TXID"; do
    if ! grep -q "\"$txid\"" <<<"$BLOCK_JSON"; then
        echo "transaction $txid is missing from block $BLOCK_HASH" >&2
        exit 1
    fi
done

mkdir -p "$OUT"
printf '%s\n' "$GENESIS_HEX" >"$OUT/ltc-mainnet-genesis.hex"
printf '%s\n' "$BLOCK_HEX" >"$OUT/ltc-regtest-mweb-block.hex"
printf '%s\n' "$BLOCK_JSON" >"$OUT/ltc-regtest-mweb-block.json"

cat >"$OUT/README.md" <<EOF
# Block fixtures

Real blocks for \`tests/real_blocks.rs\`, written by \`scripts/capture-ltc-fixtures.sh\` with
$VERSION (Debian's \`litecoind\` package). Re-running the script replaces them
(regtest blocks differ on every run).

| file | what | source |
| --- | --- | --- |
| \`ltc-mainnet-genesis.hex\` | Litecoin mainnet genesis block, raw hex | \`getblock $GENESIS_HASH 0\` on a mainnet node with networking off |
| \`ltc-regtest-mweb-block.hex\` | regtest block $HEIGHT, raw hex: coinbase, a segwit payment ($SEGWIT_TXID), an MWEB peg-in ($PEGIN_TXID), the HogEx, and the MWEB extension block | \`getblock $BLOCK_HASH 0\` on a private regtest node |
| \`ltc-regtest-mweb-block.json\` | the same block, decoded | \`getblock $BLOCK_HASH 1\` |

Bitcoin mainnet block 702861 comes from the \`bitcoin-test-data\` crate (a dev-dependency), and the
Bitcoin Cash block in the tests is synthetic, built inside the test.

Addresses the regtest node's wallet produced during the capture (valid on Litecoin regtest):

- MWEB: \`$MWEB_ADDR\`
- bech32 (P2WPKH): \`$BECH32_ADDR\`
- legacy (P2PKH): \`$LEGACY_ADDR\`
EOF

echo "fixtures written; addresses: mweb=$MWEB_ADDR bech32=$BECH32_ADDR legacy=$LEGACY_ADDR" >&2
