#!/usr/bin/env bash
# Interoperability of `defpool proxy` with stratum implementations that are not ours (issue 5).
#
#   bash scripts/interop.sh
#
# On loopback only, against one proxy (SV1 and SV2 sha256d ports, regtest) in front of a test
# SV2 pool (`defpool loadgen pool`):
#
#   translator-aggregated   SRI translator_sv2 (Rust crate) on the proxy's SV2 port: Noise NX with
#                           the proxy's authority key, one shared extended channel; our loadgen SV1
#                           miners and an independent Python SV1 miner (scripts/interop/sv1_miner.py,
#                           hashlib, no code shared with DefPool) mine through it. The translator
#                           gets 2-byte extranonce2 for its miners (see translator-default).
#   translator-channels     the same translator with one extended channel per SV1 miner and the
#                           usual 4-byte extranonce2.
#   translator-default      SRI's default layout (aggregated channel, 4-byte extranonce2) asks
#                           for min_extranonce_size 6, more than the proxy's default 4 rolled
#                           bytes: granted out of the upstream's padding (the test pool offers
#                           12 bytes of extranonce2).
#   aiostratum-proxy        aiostratum-proxy (Python pkg) on the proxy's SV1 port (subscribe,
#                           extranonce.subscribe, authorize with d=0.000001, submit), with the
#                           Python SV1 miner behind it.
#
# Pass per step: the miners' shares are accepted (none rejected, no disconnect), the proxy's
# /status shows accepted shares for the translator's / aiostratum's worker identity and no
# rejects for it, and the proxy counts no protocol violation. Prints PASS/FAIL per step and exits
# non-zero if any step failed. Every step is bounded (<= 2 minutes); all children are killed on
# exit.
#
# It installs what it needs itself, into $INTEROP_CACHE (default: <target dir>/interop-cache):
# translator_sv2 with `cargo install --locked --no-default-features` (about 5 minutes of 2 cores
# the first time) and a Python venv with aiostratum-proxy. Needs cargo, python3 (>= 3.8, with
# venv) and curl. Environment:
#   INTEROP_OUT=DIR       logs, configs and reports (default: a new temp directory)
#   INTEROP_CACHE=DIR     where the installed tools are kept between runs
#   INTEROP_SECS=N        mining time per step (default 15)
#   INTEROP_STEPS="..."   a subset of the steps above (default: all, in that order)
#   INTEROP_NO_BUILD=1    use the defpool binary already built
#   CARGO_TARGET_DIR      as for cargo (the binary is $CARGO_TARGET_DIR/release/defpool)
# Not part of CI (see the README's "Interoperability" paragraph).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release/defpool"
CACHE=${INTEROP_CACHE:-$TARGET_DIR/interop-cache}
OUT=${INTEROP_OUT:-$(mktemp -d -t defpool-interop.XXXXXX)}
SECS=${INTEROP_SECS:-15}
STEPS=${INTEROP_STEPS:-"translator-aggregated translator-channels translator-default aiostratum-proxy"}
STEP_LIMIT=120
mkdir -p "$OUT" "$CACHE"
OUT=$(cd "$OUT" && pwd)
CACHE=$(cd "$CACHE" && pwd)

# Pinned versions of what is tested.
SRI_VERSION=0.6.0
AIOSTRATUM_VERSION=1.1
AIOJSONRPC2_VERSION=1.0.0
PYYAML_VERSION=6.0.4

# Test identity (regtest) and the proxy's SV2 authority key pair, as in the proxy's tests.
ADDRESS=bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080
PUB=9aubsUESvSxGovf93cGCKXsAQwoPGz8JAqLVH36e9wcGa1rPWQB
SEC=2Xifp7Jz6CPcphddKSKA9Pqga5mfk82powffv1mRkX1ijdETes
TOKEN=interop-admin-token-0123456789
PY=python3

log() { printf '\n== %s\n' "$*" >&2; }

# ---- processes ------------------------------------------------------------------------------
PIDS=()
# kill_tree PID SIGNAL: the process and its children (`timeout` wrappers have one), by id.
kill_tree() {
  local pid=$1 sig=$2 child
  for child in $(pgrep -P "$pid" 2>/dev/null || true); do
    kill_tree "$child" "$sig"
  done
  kill "-$sig" "$pid" 2>/dev/null || true
}
# Newest first: tools, then the proxy, then its pool.
cleanup() {
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill_tree "${PIDS[i]}" TERM
    sleep 0.2
  done
  sleep 0.3
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill_tree "${PIDS[i]}" KILL; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop PID: SIGTERM, then SIGKILL after 5 s; then it is no longer ours to clean up.
stop() {
  local pid=$1 i p keep=()
  kill_tree "$pid" TERM
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill_tree "$pid" KILL
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# A free loopback port below the ephemeral range (no socket uses it).
free_port() {
  local p lo
  lo=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range)
  while :; do
    p=$((10000 + RANDOM % (lo - 10000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
}

# wait_port PORT SECS PID: until something listens on 127.0.0.1:PORT, while PID lives.
wait_port() {
  local port=$1 secs=$2 pid=$3 i
  for i in $(seq $((secs * 10))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# ---- installs -------------------------------------------------------------------------------
build_defpool() {
  if [ "${INTEROP_NO_BUILD:-0}" = 1 ]; then
    [ -x "$BIN" ] || { echo "INTEROP_NO_BUILD=1 but $BIN is missing" >&2; exit 1; }
    return
  fi
  log "building defpool (release)"
  cargo build --release --locked -p defpool
}

TRANSLATOR="$CACHE/sri-$SRI_VERSION/bin/translator_sv2"
install_translator() {
  if "$TRANSLATOR" --version 2>/dev/null | grep -qx "translator_sv2 $SRI_VERSION"; then
    return
  fi
  log "installing translator_sv2 $SRI_VERSION (cargo install; about 5 minutes the first time)"
  # --no-default-features drops `monitoring` (ASIC telemetry and its HTTP stack), not needed
  # here. The build runs in cargo's own temp dir, not in our target dir.
  env -u CARGO_TARGET_DIR cargo install translator_sv2 --version "=$SRI_VERSION" --locked \
    --no-default-features --root "$CACHE/sri-$SRI_VERSION"
}

VENV="$CACHE/venv"
install_python() {
  local stamp="$VENV/.defpool-interop-$AIOSTRATUM_VERSION-$AIOJSONRPC2_VERSION-$PYYAML_VERSION"
  if [ -f "$stamp" ] && "$VENV/bin/python" -c 'import aiostratum_proxy, aiojsonrpc2, yaml' 2>/dev/null; then
    return
  fi
  log "installing aiostratum-proxy $AIOSTRATUM_VERSION into a venv"
  rm -rf "$VENV"
  $PY -m venv "$VENV"
  # aiostratum-proxy 1.1 pins PyYAML==3.12, which no longer builds on current Python: its two
  # dependencies are installed by hand (scripts/interop/aiostratum_run.py explains the rest).
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    "aiostratum-proxy==$AIOSTRATUM_VERSION" "aiojsonrpc2==$AIOJSONRPC2_VERSION" \
    "PyYAML==$PYYAML_VERSION"
  touch "$stamp"
}

# ---- the pool and the proxy -----------------------------------------------------------------
start_pool_and_proxy() {
  POOL_PORT=$(free_port)
  timeout -s TERM 1200 "$BIN" loadgen pool --listen "127.0.0.1:$POOL_PORT" --protocol sv2 \
    --coin BTC --job-interval-ms 5000 --authority-public-key "$PUB" --authority-secret-key "$SEC" \
    --extranonce2-size 12 \
    >"$OUT/pool.json" 2>"$OUT/pool.log" &
  POOL_PID=$!
  PIDS+=("$POOL_PID")
  wait_port "$POOL_PORT" 20 "$POOL_PID" || { echo "the test pool did not start; see $OUT/pool.log" >&2; exit 1; }

  SV1_PORT=$(free_port); SV2_PORT=$(free_port); ADMIN_PORT=$(free_port)
  cat >"$OUT/proxy.toml" <<EOF
network = "regtest"
[log]
level = "info"
[proxy]
id = "interop"
outbox_path = "$OUT/outbox.db"
admin_listen = "127.0.0.1:$ADMIN_PORT"
admin_token = "$TOKEN"
authority_public_key = "$PUB"
authority_secret_key = "$SEC"
grace_secs = 2
[[proxy.ports]]
algorithm = "sha256d"
protocol = "sv1"
listen = "127.0.0.1:$SV1_PORT"
start_difficulty = 0.000001
min_difficulty = 0.000000001
[[proxy.ports]]
algorithm = "sha256d"
protocol = "sv2"
listen = "127.0.0.1:$SV2_PORT"
start_difficulty = 0.000001
min_difficulty = 0.000000001
[[upstreams]]
name = "btc"
coin = "BTC"
protocol = "sv2"
url = "stratum2+tcp://127.0.0.1:$POOL_PORT"
authority_public_key = "$PUB"
username = "defpool-proxy"
password = "x"
EOF
  timeout -s TERM 1200 "$BIN" proxy --config "$OUT/proxy.toml" >"$OUT/proxy.out" 2>"$OUT/proxy.log" &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_port "$ADMIN_PORT" 20 "$PROXY_PID" && wait_port "$SV2_PORT" 20 "$PROXY_PID" \
    || { echo "the proxy did not start; see $OUT/proxy.log" >&2; exit 1; }
  # The upstream connected and its first job in.
  local i
  for i in $(seq 100); do
    [ "$(proxy_state '.groups[0].status.upstreams[0].state')" = active ] && return 0
    sleep 0.1
  done
  echo "the proxy's upstream did not become active; see $OUT/proxy.log" >&2
  exit 1
}

# proxy_state EXPR: a value from the proxy's /status (EXPR: a dotted path with [i] indices), or
# "workers PREFIX" for "accepted rejected" summed over ADDRESS's workers whose name starts with
# PREFIX, or "violations".
proxy_state() {
  curl -sf -m 5 "http://127.0.0.1:$ADMIN_PORT/status" | $PY -c '
import json, re, sys
d = json.load(sys.stdin)
q = sys.argv[1]
if q.startswith("workers "):
    prefix = q.split(" ", 1)[1]
    acc = rej = 0
    for w in d.get("workers", []):
        if w["user"] == sys.argv[2] and w["worker"].startswith(prefix):
            acc += w["stats"]["accepted_shares"]
            rej += sum(w["stats"]["rejected"].values())
    print(acc, rej)
elif q == "violations":
    print(d["counters"]["protocol_violations"])
else:
    v = d
    for part in re.findall(r"[^.\[\]]+", q):
        v = v[int(part)] if isinstance(v, list) else v[part]
    print(v)
' "$1" "$ADDRESS" 2>/dev/null || echo "?"
}

# ---- checks ---------------------------------------------------------------------------------
STEP_FAILS=()
fail() { STEP_FAILS+=("$*"); echo "  check failed: $*" >&2; }

# check_loadgen REPORT COUNT: all connected, no disconnect, shares accepted, none rejected.
check_loadgen() {
  local report=$1 count=$2 r
  r=$($PY -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(r["connected"], r["disconnects"], r["shares_accepted"], r["shares_rejected"], json.dumps(r["rejects_by_reason"]))
' "$report" 2>/dev/null) || { fail "no loadgen report $report"; return; }
  read -r connected disconnects accepted rejected reasons <<<"$r"
  echo "  loadgen: connected $connected/$count, disconnects $disconnects, accepted $accepted, rejected $rejected $reasons" >&2
  [ "$connected" = "$count" ] || fail "loadgen: $connected of $count miners connected"
  [ "$disconnects" = 0 ] || fail "loadgen: $disconnects disconnects"
  [ "$accepted" -gt 0 ] || fail "loadgen: no accepted share"
  [ "$rejected" = 0 ] || fail "loadgen: $rejected rejected $reasons"
}

# check_pyminer REPORT: its own verdict (>= 3 accepted, none rejected, not closed by the server).
check_pyminer() {
  local report=$1 r
  r=$($PY -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(r["pass"], r["accepted"], r["rejected"], r["closed_by_server"], r["jobs"], json.dumps(r["reject_reasons"]))
' "$report" 2>/dev/null) || { fail "no Python miner report $report"; return; }
  read -r ok accepted rejected closed jobs reasons <<<"$r"
  echo "  python miner: jobs $jobs, accepted $accepted, rejected $rejected $reasons, closed by server: $closed" >&2
  [ "$ok" = True ] || fail "python miner: accepted $accepted, rejected $rejected $reasons, closed $closed"
}

# check_proxy PREFIX ACC0 REJ0 VIOL0: the proxy credited PREFIX workers with new accepted shares,
# no new rejects for them, no new protocol violation.
check_proxy() {
  local prefix=$1 acc0=$2 rej0=$3 viol0=$4 acc rej viol
  read -r acc rej <<<"$(proxy_state "workers $prefix")"
  viol=$(proxy_state violations)
  echo "  proxy: worker $ADDRESS.$prefix* accepted +$((acc - acc0)), rejected +$((rej - rej0)); protocol violations +$((viol - viol0))" >&2
  [ $((acc - acc0)) -gt 0 ] || fail "proxy: no accepted share for worker $prefix*"
  [ $((rej - rej0)) = 0 ] || fail "proxy: $((rej - rej0)) rejected shares for worker $prefix*"
  [ $((viol - viol0)) = 0 ] || fail "proxy: $((viol - viol0)) protocol violations"
}

# ---- the tools under test -------------------------------------------------------------------
# start_translator NAME AGGREGATE EXTRANONCE2 USER_IDENTITY -> TP_PORT, TP_PID, TP_LOG
start_translator() {
  local name=$1 aggregate=$2 en2=$3 identity=$4
  TP_PORT=$(free_port)
  TP_LOG="$OUT/$name/translator.log"
  # Difficulty: vardiff from a 1 MH/s start (these CPU miners do 0.5-50 MH/s).
  cat >"$OUT/$name/translator.toml" <<EOF
downstream_address = "127.0.0.1"
downstream_port = $TP_PORT
max_supported_version = 2
min_supported_version = 2
downstream_extranonce2_size = $en2
verify_payout = false
aggregate_channels = $aggregate
supported_extensions = []

[downstream_difficulty_config]
min_individual_miner_hashrate = 1_000_000.0
shares_per_minute = 60.0
enable_vardiff = true
job_keepalive_interval_secs = 60

[[upstreams]]
address = "127.0.0.1"
port = $SV2_PORT
authority_pubkey = "$PUB"
user_identity = "$identity"
EOF
  timeout -s TERM "$STEP_LIMIT" "$TRANSLATOR" -c "$OUT/$name/translator.toml" >"$TP_LOG" 2>&1 &
  TP_PID=$!
  PIDS+=("$TP_PID")
  wait_port "$TP_PORT" 20 "$TP_PID" || fail "translator_sv2 did not open its SV1 port; see $TP_LOG"
}

loadgen_miners() { # URL COUNT USERNAME PASSWORD REPORT
  timeout -s TERM "$STEP_LIMIT" "$BIN" loadgen miners --url "$1" --kind sv1 --count "$2" \
    --username "$3" --password "$4" --duration "$SECS" --shares-per-sec 10 --report "$5" \
    >/dev/null 2>"${5%.json}.log" || true
}

pyminer() { # URL USERNAME PASSWORD REPORT [extra args]
  local url=$1 user=$2 pass=$3 report=$4
  shift 4
  timeout -s TERM "$STEP_LIMIT" $PY "$ROOT/scripts/interop/sv1_miner.py" --url "$url" \
    --username "$user" --password "$pass" --duration "$SECS" --rate 5 --report "$report" "$@" \
    >/dev/null 2>"${report%.json}.log" || true
}

# ---- steps ----------------------------------------------------------------------------------
step_translator_aggregated() {
  local d="$OUT/translator-aggregated" acc0 rej0 viol0
  # Aggregated mode sends `<address>.translator-proxy` as the channel's user identity.
  read -r acc0 rej0 <<<"$(proxy_state "workers translator-proxy")"; viol0=$(proxy_state violations)
  start_translator translator-aggregated true 2 "$ADDRESS.tp"
  [ ${#STEP_FAILS[@]} = 0 ] || return 0
  loadgen_miners "127.0.0.1:$TP_PORT" 2 "$ADDRESS.lg" x "$d/loadgen.json" &
  local lg=$!
  pyminer "127.0.0.1:$TP_PORT" "$ADDRESS.py" x "$d/pyminer.json"
  wait "$lg"
  check_loadgen "$d/loadgen.json" 2
  check_pyminer "$d/pyminer.json"
  check_proxy translator-proxy "$acc0" "$rej0" "$viol0"
  stop "$TP_PID"
}

step_translator_channels() {
  local d="$OUT/translator-channels" acc0 rej0 viol0
  # One channel per SV1 miner: user identity `<user_identity>.miner<N>`.
  read -r acc0 rej0 <<<"$(proxy_state "workers tpch.miner")"; viol0=$(proxy_state violations)
  start_translator translator-channels false 4 "$ADDRESS.tpch"
  [ ${#STEP_FAILS[@]} = 0 ] || return 0
  loadgen_miners "127.0.0.1:$TP_PORT" 2 "$ADDRESS.lg" x "$d/loadgen.json"
  check_loadgen "$d/loadgen.json" 2
  check_proxy tpch.miner "$acc0" "$rej0" "$viol0"
  stop "$TP_PID"
}

step_translator_default() {
  local d="$OUT/translator-default" acc0 rej0 viol0 acc rej
  read -r acc0 rej0 <<<"$(proxy_state "workers translator-proxy")"; viol0=$(proxy_state violations)
  start_translator translator-default true 4 "$ADDRESS.tp"
  [ ${#STEP_FAILS[@]} = 0 ] || return 0
  SECS=5 loadgen_miners "127.0.0.1:$TP_PORT" 1 "$ADDRESS.lg" x "$d/loadgen.json"
  stop "$TP_PID"
  read -r acc rej <<<"$(proxy_state "workers translator-proxy")"
  [ "$(proxy_state violations)" = "$viol0" ] || fail "proxy: protocol violations"
  [ $((acc - acc0)) -gt 0 ] || fail "no shares accepted through the default layout; see $TP_LOG"
  [ $((rej - rej0)) = 0 ] || fail "shares rejected through the default layout"
}

step_aiostratum_proxy() {
  local d="$OUT/aiostratum-proxy" acc0 rej0 viol0 port pid
  read -r acc0 rej0 <<<"$(proxy_state "workers pyaio")"; viol0=$(proxy_state violations)
  port=$(free_port)
  # max_workers: 1 (pass-through extranonce). With 256/65536 it appends a byte to extranonce1
  # for each miner but does not put it back into the submitted extranonce2 (its Bitcoin
  # protocol module is marked experimental): the proxy rejects those with bad-extranonce-size.
  # The pool account has no worker part, so the miner's worker (`pyaio`) is appended to it.
  cat >"$d/aiostratum.yaml" <<EOF
proxies:
- name: interop
  max_workers: 1
  extranonce_subscribe: true
  worker_class: aiostratum_proxy.protocols.stratum.StratumWorkerProtocol
  pool_class: aiostratum_proxy.protocols.stratum.StratumPoolProtocol
  listen:
  - host: 127.0.0.1
    port: $port
  pools:
  - name: defpool
    host: 127.0.0.1
    port: $SV1_PORT
    account_name: $ADDRESS
    account_password: d=0.000001
EOF
  timeout -s TERM "$STEP_LIMIT" "$VENV/bin/python" "$ROOT/scripts/interop/aiostratum_run.py" \
    -l -c "$d/aiostratum.yaml" >"$d/aiostratum.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port "$port" 20 "$pid" || { fail "aiostratum-proxy did not start; see $d/aiostratum.log"; return 0; }
  # aiostratum-proxy connects to the pool when its first miner arrives and passes on the pool's
  # set_difficulty / notify as they come; it does not replay them to later miners, so one miner.
  # (Its miners' side answers mining.extranonce.subscribe with "method not found", so the
  # miner does not send it; its pool side sends it to the proxy, logging only a refusal.)
  pyminer "127.0.0.1:$port" "x.pyaio" x "$d/pyminer.json"
  stop "$pid"
  check_pyminer "$d/pyminer.json"
  check_proxy pyaio "$acc0" "$rej0" "$viol0"
  if grep -q "doesn't support 'mining.extranonce.subscribe'" "$d/aiostratum.log"; then
    fail "the proxy did not answer aiostratum-proxy's mining.extranonce.subscribe"
  fi
}

# ---- main -----------------------------------------------------------------------------------
T0=$SECONDS
build_defpool
case " $STEPS " in *" translator-"*) install_translator ;; esac
case " $STEPS " in *" aiostratum-proxy "*) install_python ;; esac
echo "setup: $((SECONDS - T0)) s" >&2

log "test pool and proxy (logs and reports in $OUT)"
start_pool_and_proxy

RESULTS=()
FAILED=0
for step in $STEPS; do
  log "$step"
  mkdir -p "$OUT/$step"
  STEP_FAILS=()
  STEP_NOTE=""
  t=$SECONDS
  case $step in
    translator-aggregated) step_translator_aggregated ;;
    translator-channels) step_translator_channels ;;
    translator-default) step_translator_default ;;
    aiostratum-proxy) step_aiostratum_proxy ;;
    *) fail "unknown step $step" ;;
  esac
  if [ ${#STEP_FAILS[@]} -gt 0 ]; then
    RESULTS+=("FAIL  $step: ${STEP_FAILS[*]}")
    FAILED=1
  elif [ -n "$STEP_NOTE" ]; then
    RESULTS+=("$STEP_NOTE  $step")
  else
    RESULTS+=("PASS  $step")
  fi
  echo "  ($((SECONDS - t)) s)" >&2
done

log "results (translator_sv2 $SRI_VERSION, aiostratum-proxy $AIOSTRATUM_VERSION; $((SECONDS - T0)) s; logs in $OUT)"
printf '%s\n' "${RESULTS[@]}" | tee "$OUT/results.txt"
exit "$FAILED"
