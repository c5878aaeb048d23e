#!/usr/bin/env bash
# Proxy benchmarks of issue 5 (docs/benchmarks.md, section "Proxy (issue 5)").
#
#   bash scripts/bench-proxy.sh
#
# Builds the release binary once, then runs test pools (`defpool loadgen pool`), the proxy
# (`defpool proxy`) and the simulated miners (`defpool loadgen miners`) as separate processes on
# loopback, one phase after another, each with a fresh proxy and outbox:
#
#   switch-sv1, switch-sv2  10,000 idle miners (SV1; SV2 extended channels); switch BTC -> BCH
#                           (BCH a warm standby) commanded by the loadgen; command -> first job
#   stale                   500 hashing miners at 3,000 shares/s through a switch (SV1, SV2 ext.)
#   throughput              sha256d: 2,000 miners, 20,000 shares/s, 20 s window (SV1, SV2 ext.)
#   floor                   the throughput phase's SV1 miners straight to an SV1 test pool that
#                           checks and answers each share at once: the machine's floor under the
#                           throughput latency (no proxy, no outbox)
#   scrypt                  proxy CPU per scrypt share vs. the raw scrypt rate (cargo bench)
#   rss                     proxy VmRSS with 0, 5,000 and 10,000 idle miners, SV1 and SV2 ext.
#   handshake               proxy CPU per connection, 5,000 connections: SV2 (Noise) minus SV1,
#                           full setup (subscribe/authorize vs SetupConnection/channel open) and
#                           connection only (bare TCP vs the Noise handshake alone)
#
# The test pools serve jobs with nBits of difficulty 1 (LOADGEN_POOL_NBITS), so no share at the
# test difficulties is a block candidate and the pool's difficulty alone decides what the proxy
# forwards (miners' difficulty / pool difficulty = 1/1000 for sha256d, 1/100 for scrypt).
# Proxy CPU is utime+stime of the proxy process from /proc/<pid>/stat (all threads, 100 Hz
# ticks); RSS is VmRSS from /proc/<pid>/status. Every process runs bounded in time and is killed
# on exit. Results: one JSON report per phase and a summary in $BENCH_OUT (default: a new temp
# directory). Environment:
#   BENCH_OUT=DIR        where to write reports and logs
#   BENCH_PHASES="..."   a subset of the phases above (default: all, in that order)
#   CARGO_TARGET_DIR     as for cargo (the binary is $CARGO_TARGET_DIR/release/defpool)
#   BENCH_NO_BUILD=1     use the binary already built
#   BENCH_BIN=PATH       benchmark this defpool binary (e.g. a build of an earlier commit, for a
#                        before/after comparison in one session); implies BENCH_NO_BUILD=1.
#                        Name the file `defpool`: the proxy process is found by that name.
#   BENCH_LOADGEN_BIN=PATH  run the pools and miners from this binary instead (the same loadgen
#                        for both sides of a before/after comparison of the proxy)
#   BENCH_NICE=N         niceness of the benchmarked processes (default -10 as root, else 0),
#                        so that concurrent builds on the machine take less of their CPU
#   BENCH_QUIET_WAIT=S   before each phase wait up to S seconds (default 15) for the machine to
#                        be quiet (CPU pressure "some avg10" below 20 %); 0 disables
#   BENCH_RATE=N         shares/s offered in the throughput and floor phases (default 20000)
#   BENCH_LOADGEN_THREADS=N  worker threads of the simulated miners' runtime (default: one per
#                        core, as Tokio sets it)
#   BENCH_COMMIT_MS=N    the proxy's outbox_commit_interval_ms (default: the product's, 1 ms;
#                        0 commits at once)
#   BENCH_PERF=1         also `perf record -g` the proxy during each phase's measured window
#                        ($BENCH_OUT/<phase>/perf.data; `perf report -i` it)
# Not part of CI: about 10 minutes on a 2-core machine, plus the release and bench builds.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${BENCH_OUT:-$(mktemp -d -t defpool-bench-proxy.XXXXXX)}
mkdir -p "$OUT"
PHASES=${BENCH_PHASES:-"switch-sv1 switch-sv2 stale throughput floor scrypt rss handshake"}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=${BENCH_BIN:-$TARGET_DIR/release/defpool}
LOADGEN_BIN=${BENCH_LOADGEN_BIN:-$BIN}

# Test identity (regtest; users are paid in BTC, scrypt miners too) and SV2 keys, as in the
# proxy's end-to-end tests.
ADDRESS=bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080
PUB=9aubsUESvSxGovf93cGCKXsAQwoPGz8JAqLVH36e9wcGa1rPWQB
SEC=2Xifp7Jz6CPcphddKSKA9Pqga5mfk82powffv1mRkX1ijdETes
TOKEN=bench-admin-token-0123456789
HZ=$(getconf CLK_TCK)
if [ "$(id -u)" = 0 ]; then NICE=${BENCH_NICE:--10}; else NICE=${BENCH_NICE:-0}; fi
RUN=(nice -n "$NICE")

log() { printf '\n== %s\n' "$*" >&2; }
note() { printf '%s\n' "$*" | tee -a "$OUT/summary.txt" >&2; }

# ---- processes ------------------------------------------------------------------------------
PIDS=()
PERF_PIDS=()
cleanup() {
  local pid
  for pid in "${PERF_PIDS[@]}" "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  sleep 0.3
  for pid in "${PIDS[@]}"; do
    kill -9 "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop PID: SIGTERM, then SIGKILL after 5 s.
stop() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# A free loopback port below the ephemeral range (no socket uses it).
free_port() {
  local p lo
  lo=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range)
  while :; do
    p=$((10000 + RANDOM % (lo - 10000)))
    if [ -z "$(ss -Htan "sport = :$p" 2>/dev/null)" ]; then
      echo "$p"
      return
    fi
  done
}

# Wait up to $2 seconds for a TCP listener on 127.0.0.1:$1 (started by the last process).
wait_port() {
  local port=$1 secs=${2:-20} i
  for i in $(seq $((secs * 10))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if ! kill -0 "${PIDS[-1]}" 2>/dev/null; then
      echo "the process for 127.0.0.1:$port exited; see $PHASE_DIR" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$port after ${secs}s" >&2
  return 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# pool NAME COIN ALGORITHM DIFFICULTY JOB_MS [PROTOCOL] -> sets POOL_PORT, appends the pid to
# PIDS. PROTOCOL is sv2 (the default) or sv1.
pool() {
  local name=$1 coin=$2 alg=$3 diff=$4 job_ms=$5 protocol=${6:-sv2}
  POOL_PORT=$(free_port)
  # nBits of difficulty 1 instead of regtest's: no share at these test difficulties is a block
  # candidate, so the pool's share difficulty alone decides what the proxy forwards.
  LOADGEN_POOL_NBITS=1d00ffff "${RUN[@]}" timeout -s TERM 900 "$LOADGEN_BIN" loadgen pool \
    --listen "127.0.0.1:$POOL_PORT" --protocol "$protocol" --coin "$coin" --algorithm "$alg" --difficulty "$diff" --job-interval-ms "$job_ms" \
    --authority-public-key "$PUB" --authority-secret-key "$SEC" \
    >"$PHASE_DIR/pool-$name.json" 2>"$PHASE_DIR/pool-$name.log" &
  PIDS+=($!)
  wait_port "$POOL_PORT"
}

# start_proxy: pools BTC and BCH (sha256d) and LTC (scrypt), then the proxy with SV1 and SV2
# sha256d ports and an SV1 scrypt port. Sets PROXY_PID, SV1_PORT, SV2_PORT, SCRYPT_PORT,
# ADMIN_PORT, BTC_PORT, BCH_PORT.
# Arguments: sha256d pool difficulty, scrypt pool difficulty, pool job interval (ms).
start_proxy() {
  local sha_diff=$1 scrypt_diff=$2 job_ms=$3
  pool btc BTC sha256d "$sha_diff" "$job_ms"; BTC_PORT=$POOL_PORT
  pool bch BCH sha256d "$sha_diff" "$job_ms"; BCH_PORT=$POOL_PORT
  pool ltc LTC scrypt "$scrypt_diff" "$job_ms"; LTC_PORT=$POOL_PORT
  SV1_PORT=$(free_port); SV2_PORT=$(free_port); SCRYPT_PORT=$(free_port); ADMIN_PORT=$(free_port)
  cat >"$PHASE_DIR/proxy.toml" <<EOF
network = "regtest"
[log]
level = "warn"
[proxy]
id = "bench-proxy"
outbox_path = "$PHASE_DIR/outbox.db"
${BENCH_COMMIT_MS:+outbox_commit_interval_ms = $BENCH_COMMIT_MS}
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
start_difficulty = 0.00000001
min_difficulty = 0.000000001
shares_per_minute = 600
[[proxy.ports]]
algorithm = "scrypt"
protocol = "sv1"
listen = "127.0.0.1:$SCRYPT_PORT"
start_difficulty = 0.0001
min_difficulty = 0.000000001
$(upstream btc BTC "$BTC_PORT")
$(upstream bch BCH "$BCH_PORT")
$(upstream ltc LTC "$LTC_PORT")
EOF
  (
    ulimit -n 20000
    exec "${RUN[@]}" timeout -s TERM 900 "$BIN" proxy --config "$PHASE_DIR/proxy.toml"
  ) >"$PHASE_DIR/proxy.out" 2>"$PHASE_DIR/proxy.log" &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_port "$ADMIN_PORT"
  wait_port "$SV1_PORT"
  # `timeout` forks: measure the proxy itself.
  local child
  for _ in $(seq 20); do
    child=$(pgrep -P "$PROXY_PID" -x defpool || true)
    [ -n "$child" ] && break
    sleep 0.1
  done
  PROXY_PID=${child:-$PROXY_PID}
  # Upstreams connected and the first jobs in.
  sleep 1.5
}

upstream() {
  cat <<EOF
[[upstreams]]
name = "$1"
coin = "$2"
protocol = "sv2"
url = "stratum2+tcp://127.0.0.1:$3"
authority_public_key = "$PUB"
username = "defpool-proxy"
password = "x"
EOF
}

# assignment EPOCH NAME COIN PORT [STANDBY_NAME STANDBY_COIN STANDBY_PORT]: the sha256d group
# mines COIN at NAME; the standby upstream is kept connected for a fast next switch.
assignment() {
  local epoch=$1 name=$2 coin=$3 port=$4
  local sname=${5:-} scoin=${6:-} sport=${7:-0}
  jq -cn --argjson epoch "$epoch" --arg name "$name" --arg coin "$coin" \
    --arg url "stratum2+tcp://127.0.0.1:$port" --arg key "$PUB" \
    --arg sname "$sname" --arg scoin "$scoin" --arg surl "stratum2+tcp://127.0.0.1:$sport" '
    def up($n; $c; $u): {name: $n, coin: $c, kind: "sv2", address: $u,
      authority_public_key: $key, username: "defpool-proxy", password: "x"};
    {epoch: $epoch, group: "default", algorithm: "sha256d",
     targets: [{coin: $coin, weight: 1}],
     upstreams: [up($name; $coin; $url)],
     standby: (if $sname == "" then [] else [up($sname; $scoin; $surl)] end),
     issued_at_ms: 0, reason: "bench-proxy"}'
}

# assign JSON: POST an assignment to the proxy's admin endpoint; fails unless applied.
assign() {
  curl -sf -m 5 -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    --data-binary "$1" "http://127.0.0.1:$ADMIN_PORT/assign" | grep -q applied
}

status() { curl -sf -m 5 "http://127.0.0.1:$ADMIN_PORT/status"; }

# Proxy's miner count for the group of ALGORITHM.
group_miners() {
  status | jq -r --arg a "$1" '[.groups[] | select(.algorithm == $a) | .miners] | add // 0'
}

# Wait until the group has N miners (up to SECS seconds).
wait_miners() {
  local alg=$1 n=$2 secs=$3 i m=0
  for i in $(seq $((secs * 5))); do
    m=$(group_miners "$alg" || echo 0)
    [ "$m" -ge "$n" ] && return 0
    sleep 0.2
  done
  echo "only $m of $n miners connected after ${secs}s" >&2
  return 1
}

stop_all() {
  local pid
  for pid in "${PERF_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do stop "$pid"; done
  PIDS=()
  PERF_PIDS=()
}

# miners_bg NAME ARGS...: the loadgen in the background (bounded by its --duration; wait_miners_run
# kills it if it overstays). Report: $PHASE_DIR/NAME.json. Sets LOADGEN_PID.
miners_bg() {
  local name=$1
  shift
  env DEFPOOL_ADMIN_TOKEN="$TOKEN" ${BENCH_LOADGEN_THREADS:+TOKIO_WORKER_THREADS=$BENCH_LOADGEN_THREADS} "${RUN[@]}" "$LOADGEN_BIN" loadgen miners --report "$PHASE_DIR/$name.json" --progress "$@" \
    >/dev/null 2>"$PHASE_DIR/$name.log" &
  LOADGEN_PID=$!
  PIDS+=("$LOADGEN_PID")
}

# wait_loadgen SECS: wait for the loadgen to end (SIGTERM after SECS).
wait_loadgen() {
  local i
  for i in $(seq $(($1 * 5))); do
    kill -0 "$LOADGEN_PID" 2>/dev/null || break
    sleep 0.2
  done
  stop "$LOADGEN_PID"
}

# Busy CPU ticks of the whole machine (all cores), from /proc/stat.
machine_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# "pid ticks" of every benchmarked process (pools, proxy, loadgen, their `timeout` wrappers).
our_ticks() {
  local pid t
  for pid in "${PIDS[@]}" $(for p in "${PIDS[@]}"; do pgrep -P "$p" || true; done); do
    t=$(cpu_ticks "$pid" 2>/dev/null) && echo "$pid $t"
  done
}

# window_begin / window_end: proxy CPU, benchmarked processes' CPU (those alive at the end),
# the machine's CPU and wall time over a measured window. Percentages are of one core (the
# machine has 200 %).
window_begin() {
  W_T0=$(date +%s.%N)
  W_P0=$(cpu_ticks "$PROXY_PID")
  W_O0=$(our_ticks)
  W_M0=$(machine_busy)
}
window_end() {
  local o1
  W_SECS=$(calc "$(date +%s.%N) - $W_T0" 3)
  W_PROXY=$(( $(cpu_ticks "$PROXY_PID") - W_P0 ))
  o1=$(our_ticks)
  W_OURS=$(awk 'NR == FNR { t0[$1] = $2; next } { s += $2 - t0[$1] } END { print s + 0 }' \
    <(echo "$W_O0") <(echo "$o1"))
  W_MACHINE=$(( $(machine_busy) - W_M0 ))
  W_PROXY_PCT=$(calc "100 * $W_PROXY / $HZ / $W_SECS" 1)
  W_OTHERS_PCT=$(calc "100 * ($W_MACHINE - $W_OURS) / $HZ / $W_SECS" 1)
  W_LOAD="proxy $W_PROXY_PCT %, all benchmarked processes $(calc "100 * $W_OURS / $HZ / $W_SECS" 1) %, other processes $W_OTHERS_PCT % (of 200 %)"
}

# perf_window DELAY SECS: in the background, profile the proxy for SECS seconds after DELAY.
perf_window() {
  [ "${BENCH_PERF:-0}" = 1 ] && command -v perf >/dev/null || return 0
  (
    sleep "$1"
    exec timeout -s INT "$2" perf record -g -F 999 -p "$PROXY_PID" -o "$PHASE_DIR/perf.data"
  ) >/dev/null 2>&1 &
  PERF_PIDS+=($!)
}

# CPU pressure of the machine: percentage of the last 10 s in which some task waited for a CPU.
cpu_pressure() { awk '/^some/ {sub("avg10=", "", $2); print $2}' /proc/pressure/cpu 2>/dev/null || echo 0; }

wait_quiet() {
  local max=${BENCH_QUIET_WAIT:-15} i p
  for i in $(seq "$max"); do
    p=$(cpu_pressure)
    awk "BEGIN { exit !($p < 20) }" && break
    sleep 1
  done
}

begin_phase() {
  PHASE_DIR="$OUT/$1"
  rm -rf "$PHASE_DIR"
  mkdir -p "$PHASE_DIR"
  wait_quiet
  log "phase $1 (CPU pressure avg10 $(cpu_pressure) %)"
}

fmt() { printf "%.${2:-1}f" "$1"; }
calc() { awk "BEGIN { printf \"%.${2:-3}f\", $1 }"; }


# Accepted shares the proxy counted so far.
proxy_accepted() { status | jq -r '.counters.shares_accepted'; }

# The proxy's share answer-time buckets (`share_answer_us.buckets`, [upper µs, count]), or [] if
# this build has none.
answer_buckets() { status | jq -c '.share_answer_us.buckets // []'; }

# answer_note BEFORE AFTER: the proxy's own answer-time percentiles between two readings of
# answer_buckets (each bucket's upper bound, so within 25 % above the exact figure).
answer_note() {
  local line
  line=$(jq -nr --argjson a "$1" --argjson b "$2" '
    ($a | map({key: (.[0] | tostring), value: .[1]}) | from_entries) as $before
    | [$b[] | {us: .[0], n: (.[1] - ($before[.[0] | tostring] // 0))} | select(.n > 0)] as $d
    | ($d | map(.n) | add // 0) as $total
    | def pct(p): (p * $total | ceil) as $rank
        | first(foreach $d[] as $e (0; . + $e.n; if . >= $rank then $e.us else empty end)) // 0;
      if $total == 0 then empty
      else "p50 \(pct(0.5) / 10 | round / 100) ms, p99 \(pct(0.99) / 10 | round / 100) ms, p99.9 \(pct(0.999) / 10 | round / 100) ms over \($total) answers" end')
  [ -n "$line" ] && note "  proxy's own answer time in the window (submit handled -> answer written, commit included): $line"
  return 0
}

# ---- phases ---------------------------------------------------------------------------------

# 10,000 idle miners of KIND switched BTC -> BCH; the loadgen times command -> first BCH job.
phase_switch() {
  local kind=$1 n=10000 rate ramp port extra=()
  begin_phase "switch-$kind"
  start_proxy 0.000001 0.002 2000
  # BTC with BCH as a warm standby (as the server assigns), then the switch to BCH.
  assign "$(assignment 1 btc BTC "$BTC_PORT" bch BCH "$BCH_PORT")"
  sleep 1
  assignment 2 bch BCH "$BCH_PORT" btc BTC "$BTC_PORT" >"$PHASE_DIR/assign-bch.json"
  port=$SV1_PORT
  case $kind in
    sv1) rate=2500 ;;
    *) rate=1000; port=$SV2_PORT; extra=(--authority-public-key "$PUB") ;;
  esac
  ramp=$((n / rate + 6))
  miners_bg report --url "127.0.0.1:$port" --kind "$kind" --count $n \
    --username "$ADDRESS" --password d=0.000001 --idle --connect-rate $rate \
    --duration $((ramp + 7)) --switch-at "$ramp" \
    --admin-url "http://127.0.0.1:$ADMIN_PORT" --switch-assignment "$PHASE_DIR/assign-bch.json" \
    "${extra[@]}"
  perf_window $((ramp - 1)) 3
  sleep $((ramp - 1))
  window_begin
  sleep 3
  window_end
  wait_loadgen $((ramp + 40))
  status | jq '.groups[] | select(.algorithm == "sha256d") | .status.last_switch' \
    >"$PHASE_DIR/last_switch.json"
  stop_all
  local r="$PHASE_DIR/report.json" l="$PHASE_DIR/last_switch.json"
  note "switch $kind: $(jq -r --arg at "$ramp" '"\(.miners) miners, \(.connected) connected (the last \(.ramp_secs*10|round/10) s after the start, switch at \($at) s), \(.switch.miners_switched) switched, \(.disconnects) disconnects, \(.reconnects) reconnects, switch command HTTP \(.switch.http_status)"' "$r")"
  note "  loadgen command -> first BCH job: $(jq -r '.switch | "p50 \(.command_to_first_job_ms_p50*10|round/10) ms, p99 \(.command_to_first_job_ms_p99*10|round/10) ms, max \(.command_to_first_job_ms_max*10|round/10) ms"' "$r")"
  note "  proxy last_switch:            $(jq -r '"p50 \(.first_job_p50_us/100|round/10) ms, p99 \(.first_job_p99_us/100|round/10) ms, max \(.first_job_max_us/100|round/10) ms (\(.miners) miners, \(.extranonce_resets) extranonce resets, \(.reconnects) reconnects)"' "$l")"
  note "  CPU in [switch-1 s, switch+2 s]: $W_LOAD"
}

# Hashing miners through a switch: stale shares among those sent in the 5 s after the command.
phase_stale() {
  local kind=$1 n=500 port extra=()
  begin_phase "stale-$kind"
  start_proxy 0.000001 0.002 2000
  assign "$(assignment 1 btc BTC "$BTC_PORT" bch BCH "$BCH_PORT")"
  sleep 1
  assignment 2 bch BCH "$BCH_PORT" btc BTC "$BTC_PORT" >"$PHASE_DIR/assign-bch.json"
  port=$SV1_PORT
  [ "$kind" != sv1 ] && { port=$SV2_PORT; extra=(--authority-public-key "$PUB"); }
  miners_bg report --url "127.0.0.1:$port" --kind "$kind" --count $n \
    --username "$ADDRESS" --password d=0.00000001 --shares-per-sec 3000 \
    --duration 16 --switch-at 6 \
    --admin-url "http://127.0.0.1:$ADMIN_PORT" --switch-assignment "$PHASE_DIR/assign-bch.json" \
    "${extra[@]}"
  perf_window 5 3
  wait_loadgen 60
  stop_all
  local r="$PHASE_DIR/report.json"
  note "stale $kind: $(jq -r '"\(.miners) miners, \(.shares_accepted) accepted (\(.shares_per_sec|round)/s), \(.shares_rejected) rejected \(.rejects_by_reason|tojson), \(.disconnects) disconnects"' "$r")"
  note "  switch window (5 s): $(jq -r '.switch | "\(.stale_in_window) stale of \(.shares_in_window) shares = \(if .shares_in_window > 0 then (100000 * .stale_in_window / .shares_in_window | round / 1000) else "n/a" end) %; \(.miners_switched) miners switched, p99 first BCH job \(.command_to_first_job_ms_p99*10|round/10) ms"' "$r")"
  note "  work by coin: $(jq -c .accepted_work_by_coin "$r")"
}

# sha256d throughput: 2,000 miners at 20,000 shares/s in total for 28 s; the pool's difficulty is
# 1,000 times the miners', so about 20 shares/s are forwarded.
phase_throughput() {
  local kind=$1 n=2000 port extra=() a0 a1 c0 c1 h0 h1
  begin_phase "throughput-$kind"
  start_proxy 0.000001 0.002 5000
  port=$SV1_PORT
  # SV2 has no password options: the channel's difficulty follows the announced hashrate. 43 H/s
  # at the port's 600 shares/min is difficulty 1.0e-9, the SV1 miners' d=0.000000001, so both
  # kinds hash as little per share.
  [ "$kind" != sv1 ] && { port=$SV2_PORT; extra=(--authority-public-key "$PUB" --nominal-hash-rate 43); }
  miners_bg report --url "127.0.0.1:$port" --kind "$kind" --count $n \
    --username "$ADDRESS" --password d=0.000000001 --shares-per-sec "${BENCH_RATE:-20000}" --duration 28 \
    --connect-rate 1000 $(latency_after 4) \
    "${extra[@]}"
  perf_window 6 5
  sleep 4
  a0=$(proxy_accepted); c0=$(status | jq -r .outbox.commits); h0=$(answer_buckets)
  window_begin
  sleep 20
  window_end
  a1=$(proxy_accepted); c1=$(status | jq -r .outbox.commits); h1=$(answer_buckets)
  wait_loadgen 60
  stop_all
  local r="$PHASE_DIR/report.json"
  note "throughput $kind: $(jq -r '"\(.miners) miners, \(.shares_accepted) accepted over \(.elapsed_secs|round) s, \(.shares_rejected) rejected \(.rejects_by_reason|tojson), \(.shares_unanswered) unanswered, \(.disconnects) disconnects"' "$r")"
  note "  steady 20 s window: $(calc "($a1 - $a0) / $W_SECS" 0) shares/s accepted by the proxy, $(calc "($c1 - $c0) / $W_SECS" 0) outbox commits/s"
  note "  latency (whole run): $(jq -r '"p50 \(.latency_us_p50/10|round/100) ms, p99 \(.latency_us_p99/10|round/100) ms, max \(.latency_us_max/10|round/100) ms"' "$r")"
  steady_latency_note "$r"
  answer_note "$h0" "$h1"
  note "  CPU in the window: $W_LOAD; proxy $(calc "$W_PROXY / $HZ * 1000000 / ($a1 - $a0)" 1) us per share"
  note "  forwarded to the pool: $(jq -r '"\(.shares_accepted) accepted, \(.shares_rejected) rejected"' "$PHASE_DIR/pool-btc.json")"
}

# The floor under the throughput phase: the same SV1 miners at the same rate, connected straight
# to an SV1 test pool, which checks each share and answers at once (no proxy, no outbox, no
# upstream). What this machine gives a minimal validating stratum server next to the loadgen.
phase_floor() {
  local n=2000 pool_pid
  begin_phase throughput-floor
  pool floor BTC sha256d 0.000000001 5000 sv1
  pool_pid=${PIDS[-1]}
  PROXY_PID=$(pgrep -P "$pool_pid" -x defpool || echo "$pool_pid")
  miners_bg report --url "127.0.0.1:$POOL_PORT" --kind sv1 --count $n \
    --username "$ADDRESS" --password x --shares-per-sec "${BENCH_RATE:-20000}" --duration 28 \
    --connect-rate 1000 $(latency_after 4)
  sleep 4
  window_begin
  sleep 20
  window_end
  wait_loadgen 60
  stop_all
  local r="$PHASE_DIR/report.json"
  note "throughput floor (SV1 miners straight to an SV1 test pool): $(jq -r '"\(.miners) miners, \(.shares_accepted) accepted over \(.elapsed_secs|round) s, \(.shares_rejected) rejected \(.rejects_by_reason|tojson), \(.shares_unanswered) unanswered"' "$r")"
  steady_latency_note "$r"
  note "  CPU in the window: $W_LOAD (\"proxy\" is the test pool here)"
}

# latency_after S: the loadgen option for a steady-window latency (shares sent after S seconds of
# its run; here the start of the measured window), if this loadgen has it.
latency_after() {
  if "$LOADGEN_BIN" loadgen miners --help 2>/dev/null | grep -q -- --latency-after; then
    echo "--latency-after $1"
  fi
}

steady_latency_note() {
  jq -e .steady_latency "$1" >/dev/null 2>&1 || return 0
  note "  latency (steady, shares sent from $(jq -r .steady_latency.after_secs "$1") s on): $(jq -r '.steady_latency | "p50 \(.latency_us_p50/10|round/100) ms, p99 \(.latency_us_p99/10|round/100) ms, max \(.latency_us_max/10|round/100) ms over \(.shares) shares"' "$1")"
}

# scrypt: proxy CPU per share against the raw scrypt rate of `cargo bench` (same run, same machine).
# Miners at stratum difficulty 0.00002 (about 1.3 hashes per share: the loadgen hashes little more
# than the proxy checks); the pool at 100 times that, so about 1 % is forwarded.
phase_scrypt() {
  local n=200 a0 a1 raw_us
  begin_phase scrypt
  log "cargo bench -p defpool-core --bench share_check -- scrypt::raw_header_hash"
  cargo bench -p defpool-core --bench share_check --locked -- scrypt::raw_header_hash \
    >"$PHASE_DIR/cargo-bench.txt" 2>"$PHASE_DIR/cargo-bench.log"
  # divan: "raw_header_hash  <fastest> │ <slowest> │ <median> │ <mean> │ samples │ iters"
  raw_us=$(awk -F'│' '/raw_header_hash/ {
      split($3, f, " "); v = f[1]; u = f[2];
      if (u == "ms") v *= 1000; else if (u == "ns") v /= 1000;
      print v; exit }' "$PHASE_DIR/cargo-bench.txt")
  [ -n "$raw_us" ] || { echo "could not read the scrypt median from cargo bench" >&2; exit 1; }
  start_proxy 0.000001 0.002 5000
  miners_bg report --url "127.0.0.1:$SCRYPT_PORT" --kind sv1 --algorithm scrypt --count $n \
    --username "$ADDRESS" --password d=0.00002 --shares-per-sec 2000 --duration 26 $(latency_after 4)
  perf_window 6 5
  sleep 4
  a0=$(proxy_accepted)
  window_begin
  sleep 18
  window_end
  a1=$(proxy_accepted)
  wait_loadgen 60
  stop_all
  local r="$PHASE_DIR/report.json" per_share_us rate
  per_share_us=$(calc "$W_PROXY / $HZ * 1000000 / ($a1 - $a0)" 1)
  rate=$(calc "($a1 - $a0) / $W_SECS" 0)
  note "scrypt: raw scrypt_pow median $raw_us us (= $(calc "1000000 / $raw_us" 0) hashes per CPU-second, cargo bench, same run)"
  note "  proxy: $rate shares/s accepted over $(fmt "$W_SECS" 0) s, proxy CPU $W_PROXY_PCT % of a core = $per_share_us us per share = $(calc "1000000 / $per_share_us" 0) shares per proxy CPU-second"
  note "  => $(calc "100 * $raw_us / $per_share_us" 1) % of the raw scrypt rate per CPU-second; CPU in the window: $W_LOAD"
  note "  loadgen: $(jq -r '"\(.shares_accepted) accepted, \(.shares_rejected) rejected \(.rejects_by_reason|tojson), latency p50 \(.latency_us_p50/10|round/100) ms p99 \(.latency_us_p99/10|round/100) ms"' "$r"); pool: $(jq -r '"\(.shares_accepted) forwarded and accepted"' "$PHASE_DIR/pool-ltc.json")"
  steady_latency_note "$r"
}

# Proxy VmRSS with 0 and N idle miners (authorized / channel open, receiving a job a second).
phase_rss() {
  local kind=$1 n=$2 rate port extra=() r0 r1
  begin_phase "rss-$kind-$n"
  start_proxy 0.000001 0.002 1000
  rate=2500 port=$SV1_PORT
  [ "$kind" != sv1 ] && { rate=1000; port=$SV2_PORT; extra=(--authority-public-key "$PUB"); }
  sleep 2
  r0=$(rss_kb "$PROXY_PID")
  miners_bg report --url "127.0.0.1:$port" --kind "$kind" --count "$n" \
    --username "$ADDRESS" --password d=0.000001 --idle --connect-rate $rate \
    --duration $((n / rate + 12)) "${extra[@]}"
  wait_miners sha256d "$n" $((n / rate + 10))
  # A few jobs to every miner.
  sleep 3
  r1=$(rss_kb "$PROXY_PID")
  stop "$LOADGEN_PID"
  stop_all
  note "rss $kind: 0 miners $r0 kB, $n miners $r1 kB => $(calc "($r1 - $r0) * 1024 / $n" 0) bytes per miner"
}

# Proxy CPU per connection while N miners connect at a bounded rate (no new jobs meanwhile).
# `phase_handshake KIND`: the full setup (SV1 subscribe + authorize; SV2 Noise, SetupConnection,
# channel open). `phase_handshake KIND only`: the connection alone (SV1: TCP, nothing sent; SV2:
# the Noise handshake, nothing sent after it), so SV2 minus SV1 is the handshake itself.
phase_handshake() {
  local kind=$1 mode=${2:-full} n=5000 rate=1000 port extra=() i0 i1 idle_rate per done
  local name="handshake-$kind" var="HANDSHAKE_US_${kind//-/_}"
  [ "$mode" = only ] && { name="handshake-only-$kind"; var="HANDSHAKE_ONLY_US_${kind//-/_}"; }
  begin_phase "$name"
  start_proxy 0.000001 0.002 60000
  port=$SV1_PORT
  [ "$kind" != sv1 ] && { port=$SV2_PORT; extra=(--authority-public-key "$PUB"); }
  # The idle proxy's own CPU rate, subtracted below.
  i0=$(cpu_ticks "$PROXY_PID"); sleep 3; i1=$(cpu_ticks "$PROXY_PID")
  idle_rate=$(calc "($i1 - $i0) / 3" 3)
  window_begin
  if [ "$mode" = only ]; then
    miners_bg report --url "127.0.0.1:$port" --kind "$kind" --count $n \
      --username "$ADDRESS" --idle --handshake-only --connect-rate $rate \
      --duration $((n / rate + 4)) "${extra[@]}"
    perf_window 1 $((n / rate))
    # The proxy counts no miner before SetupConnection / subscribe: wait out the ramp.
    sleep $((n / rate + 1))
    window_end
    wait_loadgen $((n / rate + 10))
    done="$(jq -r .connected "$PHASE_DIR/report.json") of $n connections made and held"
  else
    miners_bg report --url "127.0.0.1:$port" --kind "$kind" --count $n \
      --username "$ADDRESS" --password d=0.000001 --idle --connect-rate $rate \
      --duration $((n / rate + 12)) "${extra[@]}"
    perf_window 1 $((n / rate))
    wait_miners sha256d "$n" $((n / rate + 10))
    window_end
    stop "$LOADGEN_PID"
    done="$n connections"
  fi
  stop_all
  per=$(calc "($W_PROXY - $idle_rate * $W_SECS) / $HZ * 1000000 / $n" 1)
  eval "$var=$per"
  note "$name: $done in $(fmt "$W_SECS" 1) s, proxy $W_PROXY ticks (idle $(calc "$idle_rate * $W_SECS" 1)) => $per us of proxy CPU per connection; CPU in the window: $W_LOAD"
}

if [ "${BENCH_NO_BUILD:-0}" != 1 ] && [ -z "${BENCH_BIN:-}" ]; then
  log "build (release)"
  cargo build --release -p defpool --locked >&2
fi
: >"$OUT/summary.txt"
note "bench-proxy $(date -u +%FT%TZ): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, $(rustc --version); load average before: $(cut -d' ' -f1-3 /proc/loadavg); bench processes at niceness $NICE"

for phase in $PHASES; do
  case $phase in
    switch-sv1) phase_switch sv1 ;;
    switch-sv2) phase_switch sv2-extended ;;
    stale) phase_stale sv1; phase_stale sv2-extended ;;
    throughput) phase_throughput sv1; phase_throughput sv2-extended ;;
    floor) phase_floor ;;
    scrypt) phase_scrypt ;;
    rss) phase_rss sv1 5000; phase_rss sv1 10000; phase_rss sv2-extended 5000; phase_rss sv2-extended 10000 ;;
    handshake)
      phase_handshake sv1
      phase_handshake sv2-extended
      note "handshake: SV2 (Noise NX + channel open) minus SV1 (subscribe + authorize): $(calc "$HANDSHAKE_US_sv2_extended - $HANDSHAKE_US_sv1" 1) us of proxy CPU"
      phase_handshake sv1 only
      phase_handshake sv2-extended only
      note "handshake-only: SV2 Noise NX handshake minus a bare SV1 connection: $(calc "$HANDSHAKE_ONLY_US_sv2_extended - $HANDSHAKE_ONLY_US_sv1" 1) us of proxy CPU"
      ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done
note "load average after: $(cut -d' ' -f1-3 /proc/loadavg); reports and logs in $OUT"
