//! `defpool`: one binary, one subcommand per role. Each subcommand is a thin wrapper over a
//! library crate; a subcommand is listed only once it really works.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use defpool_config::{ConfigError, EX_CONFIG};
use defpool_core::coin::CoinRegistry;
use defpool_core::Network;
use defpool_switch::backtest::{BacktestConfig, Request, RuleParams, Source, SweepGrid};
use defpool_switch::series::Day;
use defpool_switch::sim::SimParams;

mod admin_cli;
mod demo;
mod migrate_cmd;

#[derive(Parser)]
#[command(
    name = "defpool",
    version,
    about = "DefPool: a profit-switching mining pool"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// List the coin registry: built-in coins plus those a config file adds.
    Coins {
        /// Include the `[[coins]]` a config file adds (validated first).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Show this network's parameters.
        #[arg(long, default_value = "mainnet")]
        network: Network,
    },
    /// Replay market data or simulated runs: the switching rule versus the alternatives.
    ///
    /// Reports BTC earned by the rule (the decision engine), staying on each target, a greedy
    /// switcher, a fixed-margin rule and the hindsight oracle, and the number of switches.
    Backtest(Box<BacktestArgs>),
    /// Run the proxy: miners' SV1/SV2 ports, upstream connections, hot switching, the durable
    /// share outbox and the loopback admin endpoint (needs a `[proxy]` section).
    Proxy {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the server: the control plane proxies connect to (assignments out, batches applied
    /// exactly once into the store: SQLite or PostgreSQL by `server.database_url`).
    Server {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run every role the config file has in one process: server, coin adapters and proxy.
    /// This is the embedded default.
    Run {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the coin adapters (solo mode): an SV2 pool per `[[adapters]]` entry that turns its
    /// coin daemon's getblocktemplate into jobs and found blocks into submitblock.
    Adapter {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Run only the adapter with this name.
        #[arg(long)]
        name: Option<String>,
    },
    /// The whole pool on one machine: two Litecoin regtest chains as demo coins, server
    /// (SQLite), proxy, coin adapters and simulated miners, with a live status.
    Demo(demo::DemoArgs),
    /// Apply the store's migrations to `[server] database_url` (or `--database-url`) and
    /// print what was applied; a second run applies nothing.
    Migrate(migrate_cmd::MigrateArgs),
    /// Administer a running server through its admin API: whitelist, X/Y/dwell, pins,
    /// upstream terms, pool payouts, audit log.
    Admin(Box<admin_cli::AdminArgs>),
    /// Load generator: simulated miners that really hash, and a test upstream pool (loopback
    /// only, bounded in time and count).
    Loadgen {
        #[command(subcommand)]
        command: LoadgenCommand,
    },
}

#[derive(Subcommand)]
enum LoadgenCommand {
    /// N simulated miners against a proxy port (or a pool); prints a JSON report.
    Miners(Box<MinersArgs>),
    /// A test upstream pool serving valid synthetic work tagged `/coin:<TAG>/`.
    Pool(Box<PoolArgs>),
}

#[derive(clap::Args)]
struct MinersArgs {
    /// host:port on loopback (a `stratum+tcp://` or `stratum2+tcp://` prefix is accepted).
    #[arg(long)]
    url: String,
    /// sv1, sv1-xnsub, sv2-standard or sv2-extended.
    #[arg(long, default_value = "sv1")]
    kind: defpool_loadgen::MinerKind,
    #[arg(long, default_value_t = 1)]
    count: usize,
    #[arg(long, default_value = "sha256d")]
    algorithm: defpool_core::Algorithm,
    /// `<payout address>[.<worker>]` (miner i appends `.w<i>` without a worker).
    #[arg(long)]
    username: String,
    /// SV1 password, e.g. `d=0.000001` for a fixed test difficulty.
    #[arg(long, default_value = "x")]
    password: String,
    /// Upper bound of the run in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many answered shares.
    #[arg(long)]
    max_shares: Option<u64>,
    /// New connections per second while ramping up (0: all at once).
    #[arg(long, default_value_t = 0)]
    connect_rate: u32,
    /// SV2: the proxy's authority public key (base58).
    #[arg(long)]
    authority_public_key: Option<String>,
    /// Negotiate and roll version bits.
    #[arg(long)]
    version_rolling: bool,
    /// Connect and stay idle (memory measurements).
    #[arg(long)]
    idle: bool,
    /// Pace shares to about this many per second in total.
    #[arg(long)]
    shares_per_sec: Option<f64>,
    /// SV2: hashrate (H/s) announced per channel; 0 leaves the difficulty to the port.
    #[arg(long, default_value_t = 0.0)]
    nominal_hash_rate: f32,
    /// Command a switch after this many seconds: POST `--switch-assignment` to the admin URL.
    #[arg(long, requires_all = ["admin_url", "switch_assignment"])]
    switch_at: Option<f64>,
    #[arg(long)]
    admin_url: Option<String>,
    /// The proxy's admin token (or set DEFPOOL_ADMIN_TOKEN, which keeps it out of `ps`).
    #[arg(long)]
    admin_token: Option<String>,
    /// File with the assignment JSON to send.
    #[arg(long)]
    switch_assignment: Option<PathBuf>,
    /// Write the JSON report here (it is printed to stdout as well).
    #[arg(long)]
    report: Option<PathBuf>,
    /// A progress line on stderr every second.
    #[arg(long)]
    progress: bool,
    /// Also report the latency of the shares sent after this many seconds (steady state).
    #[arg(long)]
    latency_after: Option<f64>,
    /// Only connect and hold the connection (SV2: after the Noise handshake); sends nothing.
    /// For measuring the handshake's cost against a bare connection.
    #[arg(long)]
    handshake_only: bool,
}

#[derive(clap::Args)]
struct PoolArgs {
    /// host:port on loopback.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// sv1 or sv2.
    #[arg(long, default_value = "sv1")]
    protocol: defpool_loadgen::PoolProtocol,
    /// Coin tag written into every coinbase (`/coin:<TAG>/`).
    #[arg(long)]
    coin: String,
    #[arg(long, default_value = "sha256d")]
    algorithm: defpool_core::Algorithm,
    /// Share difficulty (stratum convention of the algorithm); default: very easy.
    #[arg(long)]
    difficulty: Option<f64>,
    #[arg(long, default_value_t = 4)]
    extranonce1_size: usize,
    #[arg(long, default_value_t = 8)]
    extranonce2_size: usize,
    /// Milliseconds between jobs.
    #[arg(long, default_value_t = 5000)]
    job_interval_ms: u64,
    /// SV2 authority key pair, base58 (generated when absent; the public key is printed).
    #[arg(long, requires = "authority_secret_key")]
    authority_public_key: Option<String>,
    #[arg(long)]
    authority_secret_key: Option<String>,
    /// Answer mining.configure with an error, as some pools do.
    #[arg(long)]
    ignore_configure: bool,
    /// Write the report as JSON here every second and at shutdown.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Stop after this many seconds (default: until SIGTERM / Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
}

#[derive(clap::Args)]
struct BacktestArgs {
    /// Directory with `<coin>.csv` files (date,price_btc,price_usd,difficulty,block_reward,blocks).
    #[arg(long, required_unless_present = "simulate")]
    data: Option<PathBuf>,
    /// Coins, each its own target (e.g. BTC,BCH,BSV).
    #[arg(long, value_delimiter = ',', conflicts_with = "targets")]
    coins: Vec<String>,
    /// Mining targets; `+` joins chains merge-mined on the first (e.g. LTC,LTC+DOGE).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// First earned day (YYYY-MM-DD); decisions on it use the day before.
    #[arg(long)]
    from: Option<String>,
    /// Last earned day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    to: Option<String>,
    /// Tune X / Y / dwell on a grid over the tuning period (or seeds) and report the choice on
    /// the evaluation period only.
    #[arg(long)]
    sweep: bool,
    #[arg(long, requires = "sweep")]
    tune_from: Option<String>,
    #[arg(long, requires = "sweep")]
    tune_to: Option<String>,
    /// The pool's hashrate, e.g. 1P, 250T, 10G [default: 1P for sha256d, 1G for scrypt].
    #[arg(long)]
    hashrate: Option<String>,
    /// Seconds of work lost per switch.
    #[arg(long, default_value_t = 30.0)]
    switch_cost_secs: f64,
    /// Fraction of the step after a switch lost as stale shares.
    #[arg(long, default_value_t = 0.01)]
    stale_fraction: f64,
    /// X: a challenger must beat the current target by more than X %.
    #[arg(long, default_value = "5")]
    x: rust_decimal::Decimal,
    /// Y: … continuously for this long (0, 90s, 30m, 2h, 1d).
    #[arg(long, default_value = "10m", value_parser = parse_secs)]
    y: u64,
    /// Minimum time between non-forced switches.
    #[arg(long, default_value = "30m", value_parser = parse_secs)]
    dwell: u64,
    /// M of the fixed-margin strategy, percent.
    #[arg(long, default_value_t = 5.0)]
    margin: f64,
    /// Grid of X values for --sweep (percent, comma-separated) [default: by step length].
    #[arg(long, value_delimiter = ',', requires = "sweep")]
    grid_x: Vec<rust_decimal::Decimal>,
    /// Grid of Y values for --sweep.
    #[arg(long, value_delimiter = ',', value_parser = parse_secs, requires = "sweep")]
    grid_y: Vec<u64>,
    /// Grid of dwell values for --sweep.
    #[arg(long, value_delimiter = ',', value_parser = parse_secs, requires = "sweep")]
    grid_dwell: Vec<u64>,
    /// Add the average fees per block (`extras/<coin>_fees.csv`) to the block reward.
    #[arg(long)]
    fees: bool,
    /// Show earnings relative to this target [default: the first].
    #[arg(long)]
    baseline: Option<String>,
    /// Use the seeded simulator instead of --data.
    #[arg(long, conflicts_with = "data")]
    simulate: bool,
    /// Number of simulated runs (seeds 1..=N).
    #[arg(long, default_value_t = 50)]
    seeds: u64,
    /// Number of seeds --sweep tunes on (1000001..), disjoint from the evaluation seeds.
    #[arg(long, default_value_t = 10)]
    tune_seeds: u64,
    /// Simulated coins.
    #[arg(long, default_value_t = 3)]
    sim_coins: usize,
    /// Simulated days.
    #[arg(long, default_value_t = 30.0)]
    sim_days: f64,
    /// Simulated step, seconds.
    #[arg(long, default_value_t = 60)]
    sim_step_secs: u64,
    /// Write the full report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate config files and print each effective config (file plus DEFPOOL_… environment
    /// overrides) with secrets redacted. Exits 78 on the first invalid file.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { files },
        } => config_check(&files),
        Command::Coins { config, network } => coins(config, network),
        Command::Backtest(args) => backtest(&args),
        Command::Proxy { config } => proxy(&config),
        Command::Adapter { config, name } => adapter(&config, name.as_deref()),
        Command::Run { config } => run_all(&config),
        Command::Server { config } => server(&config),
        Command::Loadgen {
            command: LoadgenCommand::Miners(args),
        } => loadgen_miners(&args),
        Command::Loadgen {
            command: LoadgenCommand::Pool(args),
        } => loadgen_pool(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Migrate(args) => migrate_cmd::run(&args),
        Command::Admin(args) => admin_cli::run(&args),
    }
}

fn adapter(file: &std::path::Path, name: Option<&str>) -> ExitCode {
    let valid = match defpool_config::load(file) {
        Ok(v) => v,
        Err(e) => return config_error(file, &e),
    };
    let adapters: Vec<_> = valid
        .config
        .adapters
        .iter()
        .filter(|a| name.is_none_or(|n| a.name == n))
        .cloned()
        .collect();
    if adapters.is_empty() {
        eprintln!(
            "defpool: invalid config {}: adapters: no [[adapters]] entry{}",
            file.display(),
            name.map(|n| format!(" named {n:?}")).unwrap_or_default()
        );
        return ExitCode::from(EX_CONFIG as u8);
    }
    init_logging(&valid.config.log);
    let result = run_roles(&valid, adapters, false, false);
    role_exit(file, "adapter", result)
}

/// Adapters first (the proxy's solo upstreams), then the proxy; all stop together.
fn run_all(file: &std::path::Path) -> ExitCode {
    let valid = match defpool_config::load(file) {
        Ok(v) => v,
        Err(e) => return config_error(file, &e),
    };
    if valid.config.proxy.is_none()
        && valid.config.adapters.is_empty()
        && valid.config.server.is_none()
    {
        eprintln!(
            "defpool: invalid config {}: the file has no [server], [proxy] or [[adapters]]",
            file.display()
        );
        return ExitCode::from(EX_CONFIG as u8);
    }
    init_logging(&valid.config.log);
    let adapters = valid.config.adapters.clone();
    let with_proxy = valid.config.proxy.is_some();
    let result = run_roles(&valid, adapters, with_proxy, valid.config.server.is_some());
    role_exit(file, "run", result)
}

/// Runs the given adapters (and the proxy) in one runtime until a stop signal or the first role
/// to end; then stops the rest.
fn run_roles(
    valid: &defpool_config::Validated,
    adapters: Vec<defpool_config::AdapterConfig>,
    with_proxy: bool,
    with_server: bool,
) -> Result<(), RoleError> {
    block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::<Result<(), RoleError>>::new();
        if with_server {
            let v = valid.clone();
            let mut stop = stop_rx.clone();
            tasks.spawn(async move {
                defpool_server::server::run(v, None, async move {
                    let _ = stop.changed().await;
                })
                .await
                .map_err(RoleError::from)
            });
        }
        for a in adapters {
            let v = valid.clone();
            let mut stop = stop_rx.clone();
            tasks.spawn(async move {
                defpool_adapter::adapter::run(&v, &a, None, async move {
                    let _ = stop.changed().await;
                })
                .await
                .map_err(RoleError::from)
            });
        }
        if with_proxy {
            let v = valid.clone();
            let mut stop = stop_rx.clone();
            tasks.spawn(async move {
                defpool_proxy::proxy::run(v, None, async move {
                    let _ = stop.changed().await;
                })
                .await
                .map_err(RoleError::from)
            });
        }
        let first = tokio::select! {
            _ = stop_signal() => None,
            r = tasks.join_next() => r,
        };
        let _ = stop_tx.send(true);
        let mut result = match first {
            Some(Ok(r)) => r,
            _ => Ok(()),
        };
        while let Some(r) = tasks.join_next().await {
            if let (Ok(Err(e)), Ok(())) = (r, &result) {
                result = Err(e);
            }
        }
        result
    })
}

/// Why a role stopped: configuration problems exit 78.
struct RoleError {
    config: bool,
    message: String,
}

impl std::fmt::Display for RoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl RoleError {
    fn is_config(&self) -> bool {
        self.config
    }
}

impl From<defpool_proxy::proxy::ProxyError> for RoleError {
    fn from(e: defpool_proxy::proxy::ProxyError) -> Self {
        RoleError {
            config: e.is_config(),
            message: e.to_string(),
        }
    }
}

impl From<defpool_server::server::ServerError> for RoleError {
    fn from(e: defpool_server::server::ServerError) -> Self {
        RoleError {
            config: e.is_config(),
            message: e.to_string(),
        }
    }
}

fn server(file: &std::path::Path) -> ExitCode {
    let valid = match defpool_config::load(file) {
        Ok(v) => v,
        Err(e) => return config_error(file, &e),
    };
    if valid.config.server.is_none() {
        eprintln!(
            "defpool: invalid config {}: server: the file has no [server] section",
            file.display()
        );
        return ExitCode::from(EX_CONFIG as u8);
    }
    init_logging(&valid.config.log);
    let result = block_on(defpool_server::server::run(valid, None, stop_signal()));
    role_exit(file, "server", result.map_err(RoleError::from))
}

fn role_exit(file: &std::path::Path, role: &str, result: Result<(), RoleError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_config() => {
            eprintln!("defpool: invalid config {}: {e}", file.display());
            ExitCode::from(EX_CONFIG as u8)
        }
        Err(e) => {
            tracing::error!(error = %e, "{role} stopped");
            eprintln!("defpool {role}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn loadgen_miners(a: &MinersArgs) -> ExitCode {
    let url = a.url.split_once("://").map_or(a.url.as_str(), |(_, r)| r);
    let Ok(url) = url.trim_end_matches('/').parse::<std::net::SocketAddr>() else {
        eprintln!("defpool loadgen: --url {:?} is not host:port", a.url);
        return ExitCode::from(2);
    };
    let mut o = defpool_loadgen::MinersOptions::new(url, a.kind, a.algorithm);
    o.count = a.count;
    o.username = a.username.clone();
    o.password = a.password.clone();
    o.duration = std::time::Duration::from_secs_f64(a.duration.max(0.1));
    o.max_shares = a.max_shares;
    o.connect_rate_per_sec = a.connect_rate;
    o.authority_public_key = a.authority_public_key.clone();
    o.version_rolling = a.version_rolling;
    o.hash = !a.idle;
    o.handshake_only = a.handshake_only;
    o.progress = a.progress;
    o.target_shares_per_sec = a.shares_per_sec;
    o.nominal_hash_rate = a.nominal_hash_rate;
    o.latency_after = a
        .latency_after
        .and_then(|s| std::time::Duration::try_from_secs_f64(s.max(0.0)).ok());
    let switch = match (a.switch_at, &a.admin_url, &a.switch_assignment) {
        (Some(at), Some(admin), Some(file)) => match std::fs::read_to_string(file) {
            Ok(json) => Some(defpool_loadgen::SwitchPlan {
                at: std::time::Duration::from_secs_f64(at),
                admin_url: admin.clone(),
                token: a
                    .admin_token
                    .clone()
                    .or_else(|| std::env::var("DEFPOOL_ADMIN_TOKEN").ok())
                    .unwrap_or_default(),
                assignment_json: json,
            }),
            Err(e) => {
                eprintln!("defpool loadgen: cannot read {}: {e}", file.display());
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    init_logging(&defpool_config::LogConfig::default());
    match block_on(defpool_loadgen::run_miners(o, switch)) {
        Ok(report) => {
            let json = serde_json::to_string_pretty(&report).expect("report serializes");
            if let Some(path) = &a.report {
                if let Err(e) = std::fs::write(path, &json) {
                    eprintln!("defpool loadgen: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            out(&format!("{json}\n"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("defpool loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn loadgen_pool(a: &PoolArgs) -> ExitCode {
    let mut o = defpool_loadgen::PoolOptions::new(a.listen, a.protocol, &a.coin, a.algorithm);
    if let Some(d) = a.difficulty {
        o.difficulty = d;
    }
    o.extranonce1_size = a.extranonce1_size;
    o.extranonce2_size = a.extranonce2_size;
    o.job_interval = std::time::Duration::from_millis(a.job_interval_ms.max(10));
    o.authority = a
        .authority_public_key
        .clone()
        .zip(a.authority_secret_key.clone());
    o.ignore_configure = a.ignore_configure;
    o.stats_path = a.stats.clone();
    init_logging(&defpool_config::LogConfig::default());
    let duration = a.duration;
    let result = block_on(async move {
        let stop = async move {
            match duration {
                Some(secs) => {
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs_f64(secs)) => {}
                        _ = stop_signal() => {}
                    }
                }
                None => stop_signal().await,
            }
        };
        defpool_loadgen::run_pool(o, stop).await
    });
    match result {
        Ok(report) => {
            out(&format!(
                "{}\n",
                serde_json::to_string_pretty(&report).expect("report serializes")
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("defpool loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, as text or JSON lines per config; `RUST_LOG` overrides the level.
fn init_logging(log: &defpool_config::LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match log.format {
        defpool_config::LogFormat::Json => builder.json().try_init(),
        _ => builder.try_init(),
    };
}

/// Runs a role to completion on a fresh runtime. Blocking work still in flight at the end (a
/// daemon long-poll, say) gets two seconds, so a stop signal really stops the process.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let out = runtime.block_on(future);
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    out
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn proxy(file: &std::path::Path) -> ExitCode {
    let valid = match defpool_config::load(file) {
        Ok(v) => v,
        Err(e) => return config_error(file, &e),
    };
    if valid.config.proxy.is_none() {
        eprintln!(
            "defpool: invalid config {}: proxy: the file has no [proxy] section",
            file.display()
        );
        return ExitCode::from(EX_CONFIG as u8);
    }
    init_logging(&valid.config.log);
    let result = block_on(defpool_proxy::proxy::run(valid, None, stop_signal()));
    role_exit(file, "proxy", result.map_err(RoleError::from))
}

/// Write to stdout; a closed pipe (`defpool coins | head`) ends output quietly instead of
/// panicking.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush());
}

fn config_error(file: &std::path::Path, e: &ConfigError) -> ExitCode {
    eprintln!("defpool: invalid config {}: {e}", file.display());
    ExitCode::from(EX_CONFIG as u8)
}

fn config_check(files: &[PathBuf]) -> ExitCode {
    for file in files {
        match defpool_config::load(file) {
            Ok(valid) => {
                out(&format!(
                    "# {}: valid; network {}; roles: {}\n{}\n",
                    file.display(),
                    valid.config.network,
                    valid.roles().join(", "),
                    valid.to_redacted_toml()
                ));
            }
            Err(e) => return config_error(file, &e),
        }
    }
    ExitCode::SUCCESS
}

fn coins(config: Option<PathBuf>, network: Network) -> ExitCode {
    let registry = match &config {
        Some(file) => match defpool_config::load(file) {
            Ok(valid) => valid.registry,
            Err(e) => return config_error(file, &e),
        },
        None => CoinRegistry::builtin(),
    };
    let mut table = format!(
        "{:<6} {:<14} {:<8} {:>6} {:>9} {:>16} {:<12} {:<14} merged on\n",
        "coin", "name", "algo", "block", "maturity", "subsidy@h0", "mask", "gbt rules"
    );
    for coin in registry.iter() {
        let Some(params) = coin.network(network) else {
            continue;
        };
        table.push_str(&format!(
            "{:<6} {:<14} {:<8} {:>5}s {:>9} {:>16} {:#010x}   {:<14} {}\n",
            coin.ticker,
            coin.name,
            coin.algorithm,
            coin.block_time_secs,
            params.coinbase_maturity,
            defpool_core::money::format_units(params.subsidy.at(0) as i128, coin.decimals),
            coin.version_rolling_mask,
            if coin.gbt_rules.is_empty() {
                "-".to_string()
            } else {
                coin.gbt_rules.join(",")
            },
            coin.merged_mining
                .as_ref()
                .map(|m| m.parent.to_string())
                .unwrap_or_else(|| "-".into()),
        ));
    }
    out(&table);
    ExitCode::SUCCESS
}

fn parse_secs(text: &str) -> Result<u64, String> {
    defpool_switch::backtest::parse_secs(text)
}

fn parse_day(flag: &str, text: Option<&String>) -> Result<Day, String> {
    let text = text.ok_or_else(|| format!("--{flag} is required with --data"))?;
    Day::parse(text).ok_or_else(|| format!("--{flag}: `{text}` is not a date (YYYY-MM-DD)"))
}

fn backtest_request(a: &BacktestArgs) -> Result<Request, String> {
    let source = if a.simulate {
        let sim = SimParams {
            coins: a.sim_coins,
            days: a.sim_days,
            step_secs: a.sim_step_secs,
            ..SimParams::default()
        };
        if sim.coins < 2 || sim.step_secs == 0 || sim.steps() == 0 {
            return Err("--sim-coins must be ≥ 2, --sim-step-secs and --sim-days > 0".into());
        }
        Source::Simulate {
            sim,
            seeds: (1..=a.seeds).collect(),
            tune_seeds: (1_000_001..=1_000_000 + a.tune_seeds).collect(),
        }
    } else {
        let targets = if a.targets.is_empty() {
            a.coins.clone()
        } else {
            a.targets.clone()
        };
        if targets.is_empty() {
            return Err("give --coins or --targets".into());
        }
        let tune = if a.sweep {
            Some((
                parse_day("tune-from", a.tune_from.as_ref())?,
                parse_day("tune-to", a.tune_to.as_ref())?,
            ))
        } else {
            None
        };
        Source::Market {
            dir: a
                .data
                .clone()
                .expect("clap requires --data without --simulate"),
            targets,
            from: parse_day("from", a.from.as_ref())?,
            to: parse_day("to", a.to.as_ref())?,
            fees: a.fees,
            tune,
        }
    };
    let hashrate_hs = a
        .hashrate
        .as_deref()
        .map(defpool_switch::backtest::parse_hashrate)
        .transpose()?;
    let grid = a.sweep.then(|| {
        let step = match &source {
            Source::Simulate { sim, .. } => sim.step_secs,
            Source::Market { .. } => 86_400,
        };
        let mut grid = SweepGrid::default_for(step);
        if !a.grid_x.is_empty() {
            grid.x_percent = a.grid_x.clone();
        }
        if !a.grid_y.is_empty() {
            grid.y_secs = a.grid_y.clone();
        }
        if !a.grid_dwell.is_empty() {
            grid.dwell_secs = a.grid_dwell.clone();
        }
        grid
    });
    Ok(Request {
        source,
        hashrate_hs,
        config: BacktestConfig {
            switch_cost_secs: a.switch_cost_secs,
            stale_fraction: a.stale_fraction,
            margin_percent: a.margin,
            baseline: a.baseline.clone(),
            ..BacktestConfig::default()
        },
        params: RuleParams {
            x_percent: a.x,
            y_secs: a.y,
            dwell_secs: a.dwell,
        },
        grid,
    })
}

fn backtest(args: &BacktestArgs) -> ExitCode {
    use std::io::IsTerminal;
    let request = match backtest_request(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("defpool backtest: {e}");
            return ExitCode::from(2);
        }
    };
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut progress = |phase: &str, done: usize, total: usize| {
        if tty && total > 1 {
            let width = 30;
            let filled = done * width / total.max(1);
            eprint!(
                "\r{phase} [{}{}] {done}/{total} {:.0}s ",
                "#".repeat(filled),
                " ".repeat(width - filled),
                started.elapsed().as_secs_f64()
            );
            if done == total {
                eprintln!();
            }
        }
    };
    let outcome = match defpool_switch::backtest::run(&request, &mut progress) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("defpool backtest: {e}");
            return ExitCode::FAILURE;
        }
    };
    out(&outcome.render());
    eprintln!(
        "defpool backtest: done in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    if let Some(file) = &args.json {
        let json = serde_json::to_string_pretty(&outcome).expect("reports serialize");
        if let Err(e) = std::fs::write(file, json + "\n") {
            eprintln!("defpool backtest: cannot write {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
