//! `defpool loadgen`: simulated miners that really hash and submit real shares, and a test
//! upstream pool that serves synthetic but valid work and checks every share.
//!
//! Both sides run on loopback only. The miners report shares/s, submit→reply latency, rejects
//! by reason, disconnects, accepted work per coin and, when a switch is commanded during the run,
//! how long each miner waited for its first job of the new coin. The pool counts accepted work
//! the same way, so a test can check that both sides agree share for share.
//!
//! **Coin tags.** Test pools put the ASCII bytes `/coin:<TAG>/` in coinbase1. A miner that finds
//! such a tag in the coinbase of a job credits the work of the shares it solved for that job to
//! `<TAG>`: whoever sits in between (the proxy) must deliver every share to the coin whose job it
//! solved.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use defpool_core::coin::Algorithm;
use serde::{Deserialize, Serialize};

mod http;
pub mod miner;
mod miner_sv2;
pub mod pool;
mod pool_sv2;
pub mod port;
mod search;

pub use miner::run_miners;
pub use pool::{run_pool, TestPool};
pub use port::free_loopback_port;

/// Why a load-generator run could not start or went wrong as a whole. Problems of single
/// connections are counted in the reports, not raised.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{what} {addr} is not a loopback address: loadgen runs on loopback only")]
    NotLoopback { what: &'static str, addr: String },
    #[error("invalid option {option}: {reason}")]
    Option {
        option: &'static str,
        reason: String,
    },
    #[error("{0} is not available in this build")]
    Unsupported(&'static str),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl LoadgenError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LoadgenError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn option(option: &'static str, reason: impl Into<String>) -> Self {
        LoadgenError::Option {
            option,
            reason: reason.into(),
        }
    }
}

/// Which protocol and dialect the simulated miners speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MinerKind {
    /// SV1 without `mining.extranonce.subscribe` (most installed hardware).
    Sv1,
    /// SV1 that sends `mining.extranonce.subscribe` and follows `mining.set_extranonce`.
    Sv1ExtranonceSubscribe,
    /// SV2 standard channel (header-only mining).
    Sv2Standard,
    /// SV2 extended channel (the miner rolls its own extranonce).
    Sv2Extended,
}

impl MinerKind {
    pub fn is_sv2(self) -> bool {
        matches!(self, MinerKind::Sv2Standard | MinerKind::Sv2Extended)
    }
}

impl std::str::FromStr for MinerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sv1" => Ok(MinerKind::Sv1),
            "sv1-xnsub" | "sv1-extranonce-subscribe" => Ok(MinerKind::Sv1ExtranonceSubscribe),
            "sv2-standard" => Ok(MinerKind::Sv2Standard),
            "sv2-extended" => Ok(MinerKind::Sv2Extended),
            other => Err(format!(
                "unknown miner kind `{other}` (known: sv1, sv1-xnsub, sv2-standard, sv2-extended)"
            )),
        }
    }
}

/// What `run_miners` does.
#[derive(Clone, Debug)]
pub struct MinersOptions {
    /// Where the miners connect (the proxy's port or a test pool); loopback only.
    pub url: SocketAddr,
    pub kind: MinerKind,
    /// Number of simulated miners.
    pub count: usize,
    pub algorithm: Algorithm,
    /// `<address>` or `<address>.<worker>`; miner `i` appends `.w{i}` when there is no worker.
    pub username: String,
    /// Sent as the SV1 password (e.g. `d=0.0001`); SV2 miners send it nowhere.
    pub password: String,
    /// Upper bound of the run.
    pub duration: Duration,
    /// Stop once this many shares have been submitted and answered.
    pub max_shares: Option<u64>,
    /// New connections per second while ramping up; 0 = all at once.
    pub connect_rate_per_sec: u32,
    /// SV2: the authority public key (base58) the server's certificate must be signed with.
    pub authority_public_key: Option<String>,
    /// SV1: negotiate BIP310 version rolling and roll bits within the granted mask. SV2: set the
    /// version-rolling flag and roll within the job's mask.
    pub version_rolling: bool,
    /// `false`: connect, authorize, receive jobs and stay idle (memory measurements).
    pub hash: bool,
    /// Only open the connection and hold it: SV1 connects and sends nothing, SV2 completes the
    /// Noise handshake and sends nothing (the handshake's cost, against a bare connection).
    pub handshake_only: bool,
    /// A progress line on stderr once per second.
    pub progress: bool,
    /// Pace submissions to about this many shares per second in total (spread evenly over the
    /// miners); `None` = as fast as the CPU finds them.
    pub target_shares_per_sec: Option<f64>,
    /// SV2: the hashrate announced when opening a channel (hashes/s). 0 leaves the difficulty
    /// to the server's start value; a server may derive the channel's target from it.
    pub nominal_hash_rate: f32,
    /// SV2 extended channels: the extranonce bytes the miner asks to roll.
    pub min_extranonce_size: u16,
    /// Also report the latency of the shares sent at or after this long from the start (the
    /// steady state, without the connect ramp); `None` reports the whole run only.
    pub latency_after: Option<Duration>,
}

impl MinersOptions {
    /// Defaults for everything but the target and the kind.
    pub fn new(url: SocketAddr, kind: MinerKind, algorithm: Algorithm) -> MinersOptions {
        MinersOptions {
            url,
            kind,
            count: 1,
            algorithm,
            username: "loadgen".into(),
            password: String::new(),
            duration: Duration::from_secs(10),
            max_shares: None,
            connect_rate_per_sec: 0,
            authority_public_key: None,
            version_rolling: false,
            hash: true,
            handshake_only: false,
            progress: false,
            target_shares_per_sec: None,
            nominal_hash_rate: 0.0,
            min_extranonce_size: 4,
            latency_after: None,
        }
    }
}

/// A coin switch commanded during a miners run, through the proxy's admin endpoint.
#[derive(Clone, Debug)]
pub struct SwitchPlan {
    /// When, from the start of the run.
    pub at: Duration,
    /// `http://127.0.0.1:3341` (loopback only); the body is POSTed to `{admin_url}/assign`.
    pub admin_url: String,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: String,
    pub assignment_json: String,
}

/// The window after a switch command in which rejected-as-stale shares are counted.
pub const SWITCH_WINDOW: Duration = Duration::from_secs(5);

/// What a commanded switch cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SwitchReport {
    /// HTTP status of the admin endpoint's answer (0 when it could not be reached).
    pub http_status: u16,
    /// Why the command failed, if it did.
    pub error: Option<String>,
    /// From the command (just before the request was sent) to each miner's first job whose coin
    /// tag differs from the one it had.
    pub command_to_first_job_ms_p50: f64,
    pub command_to_first_job_ms_p99: f64,
    pub command_to_first_job_ms_max: f64,
    /// Miners that received a job of another coin after the command.
    pub miners_switched: u64,
    /// Shares sent within [`SWITCH_WINDOW`] after the command and rejected as stale.
    pub stale_in_window: u64,
    /// Shares sent within [`SWITCH_WINDOW`] after the command.
    pub shares_in_window: u64,
}

/// The outcome of a miners run. Work is in expected hashes (`Target::work`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MinersReport {
    pub kind: Option<MinerKind>,
    pub miners: u64,
    /// Miners that completed the handshake (SV1 subscribe + authorize, SV2 channel open) at
    /// least once.
    pub connected: u64,
    /// Seconds from the start until the last miner completed its first handshake.
    pub ramp_secs: f64,
    /// Connections the other side closed (or broke) without asking for a reconnect.
    pub disconnects: u64,
    /// Reconnections the other side asked for (`client.reconnect`, SV2 Reconnect).
    pub reconnects: u64,
    /// Connection attempts that failed (refused, handshake error, authorization refused).
    pub connect_failures: u64,
    pub jobs_received: u64,
    pub shares_submitted: u64,
    /// Shares answered with `result: true` (SV2: covered by SubmitShares.Success).
    pub shares_accepted: u64,
    pub shares_rejected: u64,
    /// Shares without an answer when the run ended or their connection closed.
    pub shares_unanswered: u64,
    pub rejects_by_reason: BTreeMap<String, u64>,
    /// Accepted work per coin tag found in the coinbase (`untagged` without one).
    pub accepted_work_by_coin: BTreeMap<String, u128>,
    pub accepted_work_total: u128,
    pub elapsed_secs: f64,
    /// Accepted shares per second over the run.
    pub shares_per_sec: f64,
    /// Submit sent → reply received, for answered shares.
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_max: u64,
    /// The same for the shares sent at or after [`MinersOptions::latency_after`] (absent
    /// without it): the steady-state latency, which the connect ramp does not skew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steady_latency: Option<SteadyLatency>,
    pub switch: Option<SwitchReport>,
    /// Left to the caller, which can see the server's memory.
    pub idle_rss_bytes_per_miner: Option<u64>,
}

/// Submit → reply latency of the answered shares sent from `after_secs` on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SteadyLatency {
    pub after_secs: f64,
    /// Answered shares counted.
    pub shares: u64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_max: u64,
}

/// Protocol a test pool serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolProtocol {
    Sv1,
    Sv2,
}

impl std::str::FromStr for PoolProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sv1" => Ok(PoolProtocol::Sv1),
            "sv2" => Ok(PoolProtocol::Sv2),
            other => Err(format!("unknown pool protocol `{other}` (known: sv1, sv2)")),
        }
    }
}

/// What `run_pool` serves.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Loopback only; port 0 picks a free port (see [`TestPool::local_addr`]).
    pub listen: SocketAddr,
    pub protocol: PoolProtocol,
    /// Put in every coinbase as `/coin:<TAG>/`.
    pub coin_tag: String,
    pub algorithm: Algorithm,
    /// Share difficulty in the stratum convention of `algorithm` (SV2: sent as its target).
    pub difficulty: f64,
    /// SV1 extranonce1 / SV2 extranonce prefix size.
    pub extranonce1_size: usize,
    /// SV1 extranonce2 / SV2 extranonce size left to the client.
    pub extranonce2_size: usize,
    /// A new job this often (every 5th with clean_jobs / a new prev hash).
    pub job_interval: Duration,
    /// SV2 authority key pair (public, secret) in base58; `None` generates one.
    pub authority: Option<(String, String)>,
    /// SV1: answer `mining.configure` with an error, as some pools do.
    pub ignore_configure: bool,
    /// Write the report here as JSON every second and at shutdown (atomically).
    pub stats_path: Option<PathBuf>,
    /// The jobs' `nBits` (network target). The default, regtest's, is met by half of all
    /// hashes, so every share at a test difficulty is also a block candidate, which a proxy
    /// forwards whatever the pool's share target. A harder one (e.g. `0x1d00ffff`, difficulty 1)
    /// lets a pool's share difficulty decide what is forwarded, as in production. `new` takes it
    /// from the environment variable [`POOL_NBITS_ENV`] (hex) when set.
    pub nbits: u32,
    /// A block target stricter than `nbits` (difficulty, as a coin adapter's regtest
    /// `block_target_difficulty`): a share meeting `nbits` but not this one is an ordinary
    /// share, refused as low difficulty below the share target. `None`: `nbits` alone.
    pub block_difficulty: Option<f64>,
}

/// Environment variable (hex `nBits`, e.g. `1d00ffff`) that [`PoolOptions::new`] takes the test
/// pool's network target from.
pub const POOL_NBITS_ENV: &str = "LOADGEN_POOL_NBITS";

impl PoolOptions {
    /// Defaults for everything but the address, protocol, coin and algorithm.
    pub fn new(
        listen: SocketAddr,
        protocol: PoolProtocol,
        coin_tag: &str,
        algorithm: Algorithm,
    ) -> PoolOptions {
        PoolOptions {
            listen,
            protocol,
            coin_tag: coin_tag.to_string(),
            algorithm,
            difficulty: match algorithm {
                Algorithm::Sha256d => 1e-7,
                Algorithm::Scrypt => 1e-4,
            },
            extranonce1_size: 4,
            extranonce2_size: 8,
            job_interval: Duration::from_secs(5),
            authority: None,
            ignore_configure: false,
            stats_path: None,
            nbits: std::env::var(POOL_NBITS_ENV)
                .ok()
                .and_then(|v| u32::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
                .unwrap_or(pool::POOL_NBITS),
            block_difficulty: None,
        }
    }
}

/// What a test pool saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolReport {
    pub protocol: Option<PoolProtocol>,
    pub coin_tag: String,
    pub listen: String,
    /// SV2: the authority public key clients must expect.
    pub authority_public_key: Option<String>,
    /// Connections accepted since the start.
    pub connections: u64,
    pub connections_open: u64,
    pub jobs: u64,
    pub shares_accepted: u64,
    pub shares_rejected: u64,
    pub shares_rejected_by_reason: BTreeMap<String, u64>,
    /// Work of the accepted shares (expected hashes of the share target).
    pub accepted_work: u128,
    /// Accepted work per coin tag (one tag per pool; kept as a map to read like the miners').
    pub accepted_work_by_coin: BTreeMap<String, u128>,
    pub uptime_secs: f64,
}

/// The coin tag a coinbase carries: the text between `/coin:` and the next `/`.
pub fn coin_tag(coinbase: &[u8]) -> Option<&str> {
    const MARK: &[u8] = b"/coin:";
    let start = coinbase.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let rest = &coinbase[start..];
    let len = rest.iter().take(32).position(|b| *b == b'/')?;
    let tag = std::str::from_utf8(&rest[..len]).ok()?;
    (!tag.is_empty() && tag.bytes().all(|b| b.is_ascii_graphic())).then_some(tag)
}

/// The key under which untagged work is reported.
pub const UNTAGGED: &str = "untagged";

pub(crate) fn require_loopback(what: &'static str, addr: SocketAddr) -> Result<(), LoadgenError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(LoadgenError::NotLoopback {
            what,
            addr: addr.to_string(),
        })
    }
}

/// Raise the soft limit of open file descriptors to at least `want` (up to the hard limit).
/// Returns the soft limit in force afterwards.
// `rlim_t` is u64 on Linux but not everywhere: keep the casts.
#[allow(clippy::unnecessary_cast)]
pub fn raise_fd_limit(want: u64) -> Result<u64, LoadgenError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(LoadgenError::io(
            "getrlimit(RLIMIT_NOFILE)",
            std::io::Error::last_os_error(),
        ));
    }
    let want = want as libc::rlim_t;
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur as u64);
    }
    let mut new = lim;
    if lim.rlim_max < want {
        // Root may raise the hard limit too; others get what the hard limit allows.
        new.rlim_max = want;
    }
    new.rlim_cur = want;
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        new = lim;
        new.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(LoadgenError::io(
                "setrlimit(RLIMIT_NOFILE)",
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(new.rlim_cur as u64)
}

/// Percentile of sorted values (nearest rank); 0 for none.
pub(crate) fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_coin_tags() {
        assert_eq!(coin_tag(b"\x01\x02/coin:LTC/\x03"), Some("LTC"));
        assert_eq!(coin_tag(b"/coin:DOGE/x/coin:LTC/"), Some("DOGE"));
        assert_eq!(coin_tag(b"/coin:/"), None);
        assert_eq!(coin_tag(b"/coin:LTC"), None);
        assert_eq!(coin_tag(b"nothing here"), None);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile::<u64>(&[], 50.0), 0);
        assert_eq!(percentile(&[7u64], 99.0), 7);
    }

    #[test]
    fn kinds_parse() {
        assert_eq!("sv1-xnsub".parse(), Ok(MinerKind::Sv1ExtranonceSubscribe));
        assert!("sv3".parse::<MinerKind>().is_err());
    }

    #[test]
    fn fd_limit_can_be_raised() {
        let got = raise_fd_limit(1024).unwrap();
        assert!(got >= 1024);
    }
}
