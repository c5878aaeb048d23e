//! Every rule a configuration must meet before a process starts. The first broken rule is
//! reported with its key; rules run in file order so the message points where one would look.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use defpool_core::address::parse_payout_address_in;
use defpool_core::secret::Secret;
use defpool_core::{CoinRegistry, CoinSpec, Network, Ticker};

use crate::model::*;
use crate::ConfigError;

/// A configuration that passed every rule, with the coin registry it implies.
#[derive(Clone, Debug)]
pub struct Validated {
    pub config: Config,
    pub registry: CoinRegistry,
}

impl Validated {
    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string(&self.config).expect("the config model always serializes")
    }

    /// Roles this process runs, in start order.
    pub fn roles(&self) -> Vec<&'static str> {
        let mut roles = Vec::new();
        if self.config.server.is_some() {
            roles.push("server");
        }
        if !self.config.adapters.is_empty() {
            roles.push("adapter");
        }
        if self.config.proxy.is_some() {
            roles.push("proxy");
        }
        roles
    }
}

type Result<T> = std::result::Result<T, ConfigError>;

fn err<T>(key: impl Into<String>, reason: impl Into<String>) -> Result<T> {
    Err(ConfigError::new(key, reason))
}

impl Config {
    pub fn validate(self) -> Result<Validated> {
        if self.server.is_none() && self.proxy.is_none() && self.adapters.is_empty() {
            return err(
                "config",
                "runs nothing: add a [server], [proxy] or [[adapters]] section",
            );
        }
        check_log(&self.log)?;
        let registry = CoinRegistry::builtin()
            .with_additions(self.coins.clone())
            .map_err(|e| ConfigError::new("coins", e.to_string()))?;
        let ctx = Ctx {
            network: self.network,
            registry: &registry,
        };
        if let Some(server) = &self.server {
            check_server(&ctx, server)?;
        }
        if let Some(proxy) = &self.proxy {
            check_proxy(proxy, self.server.is_some())?;
        }
        check_upstreams(&ctx, &self.upstreams)?;
        check_adapters(&ctx, &self.adapters)?;
        check_listeners(&self)?;
        if let Some(proxy) = &self.proxy {
            check_proxy_covers_upstreams(&ctx, proxy, &self.upstreams)?;
        }
        Ok(Validated {
            config: self,
            registry,
        })
    }
}

struct Ctx<'a> {
    network: Network,
    registry: &'a CoinRegistry,
}

impl Ctx<'_> {
    fn coin(&self, key: &str, ticker: &Ticker) -> Result<&CoinSpec> {
        let coin = self.registry.get(ticker).ok_or_else(|| {
            let known: Vec<_> = self.registry.iter().map(|c| c.ticker.to_string()).collect();
            ConfigError::new(
                key,
                format!("unknown coin `{ticker}` (known: {})", known.join(", ")),
            )
        })?;
        if coin.network(self.network).is_none() {
            return err(
                key,
                format!("coin `{ticker}` has no {} parameters", self.network),
            );
        }
        Ok(coin)
    }
}

fn check_log(log: &LogConfig) -> Result<()> {
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    if !LEVELS.contains(&log.level.as_str()) {
        return err(
            "log.level",
            format!("`{}` is not one of {}", log.level, LEVELS.join(", ")),
        );
    }
    Ok(())
}

/// A secret that must be present and long enough to resist guessing.
fn require_secret(key: &str, secret: &Option<Secret>, min_len: usize) -> Result<()> {
    match secret {
        None => err(
            key,
            "is required (a secret: set it in the file or the environment)",
        ),
        Some(s) if s.is_empty() => err(key, "is empty"),
        Some(s) if s.expose().len() < min_len => {
            err(key, format!("is shorter than {min_len} characters"))
        }
        Some(_) => Ok(()),
    }
}

fn check_identifier(key: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        err(
            key,
            format!("`{value}` must be 1 to 64 letters, digits, `-`, `_` or `.`"),
        )
    }
}

fn in_range<T: PartialOrd + std::fmt::Display>(key: &str, value: T, min: T, max: T) -> Result<()> {
    if value >= min && value <= max {
        Ok(())
    } else {
        err(key, format!("{value} is outside {min}..={max}"))
    }
}

fn finite_in_range(key: &str, value: f64, min: f64, max: f64) -> Result<()> {
    if value.is_finite() && value >= min && value <= max {
        Ok(())
    } else {
        err(key, format!("{value} is outside {min}..={max}"))
    }
}

fn check_server(ctx: &Ctx<'_>, s: &ServerConfig) -> Result<()> {
    check_database_url("server.database_url", &s.database_url)?;
    require_secret("server.admin_token", &s.admin_token, 16)?;
    in_range("server.pool_fee_bps", s.pool_fee_bps, 0, 10_000)?;
    let threshold = defpool_core::money::parse_units(&s.default_payout_threshold_btc, 8)
        .map_err(|e| ConfigError::new("server.default_payout_threshold_btc", e.to_string()))?;
    if threshold == 0 {
        return err("server.default_payout_threshold_btc", "must be above zero");
    }
    let mut seen = BTreeSet::new();
    for (i, t) in s.whitelist.iter().enumerate() {
        let key = format!("server.whitelist[{i}]");
        ctx.coin(&key, t)?;
        if !seen.insert(t) {
            return err(key, format!("`{t}` is listed twice"));
        }
    }
    let sw = &s.switching;
    finite_in_range(
        "server.switching.hysteresis_percent",
        sw.hysteresis_percent,
        0.0,
        1000.0,
    )?;
    in_range(
        "server.switching.hysteresis_minutes",
        sw.hysteresis_minutes,
        0,
        24 * 60,
    )?;
    in_range(
        "server.switching.min_dwell_minutes",
        sw.min_dwell_minutes,
        0,
        7 * 24 * 60,
    )?;
    in_range(
        "server.switching.stale_after_secs",
        sw.stale_after_secs,
        30,
        7 * 24 * 3600,
    )?;
    let mut ids = BTreeSet::new();
    for (i, p) in s.proxies.iter().enumerate() {
        check_identifier(&format!("server.proxies[{i}].id"), &p.id)?;
        if !ids.insert(&p.id) {
            return err(
                format!("server.proxies[{i}].id"),
                format!("`{}` is listed twice", p.id),
            );
        }
        require_secret(&format!("server.proxies[{i}].token"), &p.token, 16)?;
    }
    for (i, m) in s.market.iter().enumerate() {
        check_market(ctx, &format!("server.market[{i}]"), m)?;
    }
    in_range(
        "server.rate_limit.requests_per_sec",
        s.rate_limit.requests_per_sec,
        1,
        1_000_000,
    )?;
    in_range("server.rate_limit.burst", s.rate_limit.burst, 1, 1_000_000)?;
    in_range("server.ingest_run_batches", s.ingest_run_batches, 1, 1_000)?;
    match s.pplns_window_factor.parse::<rust_decimal::Decimal>() {
        Ok(f) if f > rust_decimal::Decimal::ZERO && f <= rust_decimal::Decimal::from(1000) => {}
        Ok(f) => {
            return err(
                "server.pplns_window_factor",
                format!("{f} is outside (0, 1000]"),
            )
        }
        Err(e) => {
            return err(
                "server.pplns_window_factor",
                format!("`{}` is not a decimal: {e}", s.pplns_window_factor),
            )
        }
    }
    Ok(())
}

fn check_market(ctx: &Ctx<'_>, key: &str, m: &MarketSourceConfig) -> Result<()> {
    for (j, t) in m.coins.iter().enumerate() {
        ctx.coin(&format!("{key}.coins[{j}]"), t)?;
    }
    in_range(&format!("{key}.poll_secs"), m.poll_secs, 1, 86_400)?;
    if let Some(step) = m.step_secs {
        if m.kind != MarketSourceKind::Simulator {
            return err(
                format!("{key}.step_secs"),
                "only a simulator source has a step",
            );
        }
        in_range(&format!("{key}.step_secs"), step, 1, 86_400)?;
    }
    match m.kind {
        MarketSourceKind::Simulator => Ok(()),
        MarketSourceKind::Csv => match &m.url {
            Some(path) if !path.is_empty() => Ok(()),
            _ => err(
                format!("{key}.url"),
                "a CSV source needs the file path in `url`",
            ),
        },
        _ => match &m.url {
            Some(u) => check_url(&format!("{key}.url"), u, &["http", "https"]).map(|_| ()),
            None => err(format!("{key}.url"), "is required for this source"),
        },
    }
}

fn check_database_url(key: &str, value: &str) -> Result<()> {
    if let Some(path) = value.strip_prefix("sqlite:") {
        let path = path.trim_start_matches("//");
        if path.is_empty() {
            return err(key, "`sqlite:` needs a file path (`sqlite:defpool.db`)");
        }
        return Ok(());
    }
    check_url(key, value, &["postgres", "postgresql"]).map(|_| ())
}

/// Parse a URL and check its scheme and that it names a host.
fn check_url(key: &str, value: &str, schemes: &[&str]) -> Result<url::Url> {
    // The value may carry a password (`postgres://user:password@host/db`): never quote it whole.
    let shown = defpool_core::secret::redact_userinfo(value);
    let url = url::Url::parse(value)
        .map_err(|e| ConfigError::new(key, format!("`{shown}` is not a valid URL: {e}")))?;
    if !schemes.contains(&url.scheme()) {
        return err(
            key,
            format!(
                "scheme `{}` is not allowed here (use {})",
                url.scheme(),
                schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        return err(key, format!("`{shown}` names no host"));
    }
    Ok(url)
}

/// An SV2 authority public key: base58check of a 2-byte version and a 32-byte x-only key.
fn check_authority_public_key(key: &str, value: &str) -> Result<()> {
    match bs58::decode(value).with_check(None).into_vec() {
        Ok(bytes) if bytes.len() == 34 => Ok(()),
        Ok(bytes) => err(
            key,
            format!(
                "decodes to {} bytes, expected 34 (version + x-only key)",
                bytes.len()
            ),
        ),
        Err(e) => err(key, format!("is not a base58check key: {e}")),
    }
}

/// An SV2 authority secret key: base58check of 32 bytes.
fn check_authority_secret_key(key: &str, value: &Option<Secret>) -> Result<()> {
    require_secret(key, value, 1)?;
    let secret = value.as_ref().expect("checked above");
    match bs58::decode(secret.expose()).with_check(None).into_vec() {
        Ok(bytes) if bytes.len() == 32 => Ok(()),
        // The secret's content is never echoed, only its shape.
        Ok(bytes) => err(
            key,
            format!("decodes to {} bytes, expected 32", bytes.len()),
        ),
        Err(_) => err(key, "is not a base58check secret key"),
    }
}

fn check_proxy(p: &ProxyConfig, with_server: bool) -> Result<()> {
    check_identifier("proxy.id", &p.id)?;
    check_identifier("proxy.group", &p.group)?;
    // Without a server (in-process or by URL) a proxy runs standalone: it mines its last or
    // configured assignment and takes new ones from its admin endpoint.
    let _ = with_server;
    if let Some(u) = &p.server_url {
        check_url("proxy.server_url", u, &["tcp"])?;
        require_secret("proxy.server_token", &p.server_token, 16)?;
    }
    if !p.admin_listen.ip().is_loopback() {
        return err(
            "proxy.admin_listen",
            format!(
                "{} is not a loopback address: the admin endpoint stays local",
                p.admin_listen
            ),
        );
    }
    require_secret("proxy.admin_token", &p.admin_token, 16)?;
    in_range("proxy.grace_secs", p.grace_secs, 0, 300)?;
    // Every accepted share waits up to this long for its answer.
    in_range(
        "proxy.outbox_commit_interval_ms",
        p.outbox_commit_interval_ms,
        0,
        50,
    )?;
    in_range(
        "proxy.upstream_stall_job_secs",
        p.upstream_stall_job_secs,
        5,
        3600,
    )?;
    in_range(
        "proxy.upstream_stall_submit_secs",
        p.upstream_stall_submit_secs,
        2,
        600,
    )?;
    in_range(
        "proxy.upstream_reject_streak",
        p.upstream_reject_streak,
        1,
        20,
    )?;
    if p.ports.is_empty() {
        return err("proxy.ports", "a proxy needs at least one port");
    }
    let needs_noise = p
        .ports
        .iter()
        .any(|port| port.protocol == StratumProtocol::Sv2);
    if needs_noise {
        check_authority_secret_key("proxy.authority_secret_key", &p.authority_secret_key)?;
        match &p.authority_public_key {
            Some(k) => check_authority_public_key("proxy.authority_public_key", k)?,
            None => return err("proxy.authority_public_key", "is required for SV2 ports"),
        }
    }
    for (i, port) in p.ports.iter().enumerate() {
        check_port(&format!("proxy.ports[{i}]"), port)?;
    }
    Ok(())
}

fn check_port(key: &str, p: &PortConfig) -> Result<()> {
    finite_in_range(
        &format!("{key}.min_difficulty"),
        p.min_difficulty,
        1e-9,
        1e18,
    )?;
    finite_in_range(
        &format!("{key}.max_difficulty"),
        p.max_difficulty,
        1e-9,
        1e18,
    )?;
    if p.min_difficulty > p.max_difficulty {
        return err(
            format!("{key}.min_difficulty"),
            format!(
                "{} is above max_difficulty {}",
                p.min_difficulty, p.max_difficulty
            ),
        );
    }
    finite_in_range(
        &format!("{key}.start_difficulty"),
        p.start_difficulty,
        p.min_difficulty,
        p.max_difficulty,
    )?;
    finite_in_range(
        &format!("{key}.shares_per_minute"),
        p.shares_per_minute,
        0.1,
        600.0,
    )?;
    in_range(
        &format!("{key}.max_connections"),
        p.max_connections,
        1,
        1_000_000,
    )?;
    in_range(
        &format!("{key}.idle_timeout_secs"),
        p.idle_timeout_secs,
        5,
        86_400,
    )?;
    in_range(
        &format!("{key}.max_message_bytes"),
        p.max_message_bytes,
        512,
        1 << 24,
    )?;
    Ok(())
}

fn check_upstreams(ctx: &Ctx<'_>, upstreams: &[UpstreamConfig]) -> Result<()> {
    let mut names = BTreeSet::new();
    for (i, u) in upstreams.iter().enumerate() {
        let key = format!("upstreams[{i}]");
        check_identifier(&format!("{key}.name"), &u.name)?;
        if !names.insert(&u.name) {
            return err(format!("{key}.name"), format!("`{}` is used twice", u.name));
        }
        ctx.coin(&format!("{key}.coin"), &u.coin)?;
        let scheme = match u.protocol {
            UpstreamProtocol::Sv1 => "stratum+tcp",
            UpstreamProtocol::Sv2 | UpstreamProtocol::Adapter => "stratum2+tcp",
        };
        let url = check_url(&format!("{key}.url"), &u.url, &[scheme])?;
        if url.port().is_none() {
            return err(format!("{key}.url"), format!("`{}` names no port", u.url));
        }
        match (u.protocol, &u.authority_public_key) {
            (UpstreamProtocol::Sv1, Some(_)) => {
                return err(
                    format!("{key}.authority_public_key"),
                    "SV1 upstreams have no authority key",
                )
            }
            (UpstreamProtocol::Sv1, None) => {}
            (_, Some(k)) => check_authority_public_key(&format!("{key}.authority_public_key"), k)?,
            (_, None) => {
                return err(
                    format!("{key}.authority_public_key"),
                    "is required for SV2 and adapter upstreams (it authenticates the pool)",
                )
            }
        }
        in_range(&format!("{key}.fee_bps"), u.fee_bps, 0, 10_000)?;
        in_range(
            &format!("{key}.switch_cost_secs"),
            u.switch_cost_secs,
            0,
            7 * 86_400,
        )?;
        if u.protocol == UpstreamProtocol::Adapter && u.payout_scheme != PayoutScheme::Solo {
            return err(
                format!("{key}.payout_scheme"),
                "an adapter upstream mines our own blocks: use `solo`",
            );
        }
    }
    Ok(())
}

fn check_adapters(ctx: &Ctx<'_>, adapters: &[AdapterConfig]) -> Result<()> {
    let mut names = BTreeSet::new();
    for (i, a) in adapters.iter().enumerate() {
        let key = format!("adapters[{i}]");
        check_identifier(&format!("{key}.name"), &a.name)?;
        if !names.insert(&a.name) {
            return err(format!("{key}.name"), format!("`{}` is used twice", a.name));
        }
        let coin = ctx.coin(&format!("{key}.coin"), &a.coin)?;
        check_authority_secret_key(
            &format!("{key}.authority_secret_key"),
            &a.authority_secret_key,
        )?;
        match &a.authority_public_key {
            Some(k) => check_authority_public_key(&format!("{key}.authority_public_key"), k)?,
            None => return err(format!("{key}.authority_public_key"), "is required"),
        }
        check_url(&format!("{key}.rpc_url"), &a.rpc_url, &["http", "https"])?;
        if let Some(u) = &a.server_url {
            check_url(&format!("{key}.server_url"), u, &["tcp"])?;
            require_secret(&format!("{key}.server_token"), &a.server_token, 16)?;
        }
        match (&a.rpc_user, &a.rpc_password, &a.rpc_cookie_file) {
            (None, None, Some(_)) => {}
            (_, _, Some(_)) => {
                return err(
                    format!("{key}.rpc_cookie_file"),
                    "use either rpc_cookie_file or rpc_user/rpc_password, not both",
                )
            }
            (Some(_), pw, None) => require_secret(&format!("{key}.rpc_password"), pw, 1)?,
            (None, Some(_), None) => {
                return err(format!("{key}.rpc_user"), "is required with rpc_password")
            }
            (None, None, None) => {
                return err(
                    format!("{key}.rpc_password"),
                    "the daemon needs credentials: rpc_user and rpc_password, or rpc_cookie_file",
                )
            }
        }
        parse_payout_address_in(ctx.registry, &a.payout_address, coin, ctx.network)
            .map_err(|e| ConfigError::new(format!("{key}.payout_address"), e.to_string()))?;
        let tag = a.coinbase_tag.len();
        in_range(&format!("{key}.coinbase_tag"), tag, 0, 40).map_err(|_| {
            ConfigError::new(
                format!("{key}.coinbase_tag"),
                format!("is {tag} bytes; at most 40 fit the coinbase script beside height and extranonce"),
            )
        })?;
        // 2 bytes tell proxies apart; each proxy needs 7 for its miners (3 prefix + 4 rolled).
        in_range(&format!("{key}.extranonce_size"), a.extranonce_size, 9, 32)?;
        in_range(
            &format!("{key}.template_refresh_secs"),
            a.template_refresh_secs,
            1,
            3600,
        )?;
        if let Some(d) = a.block_target_difficulty {
            if ctx.network != Network::Regtest {
                return err(
                    format!("{key}.block_target_difficulty"),
                    format!(
                        "is a regtest-only option (network is {}): on a real chain every block meeting the network target must be submitted",
                        ctx.network
                    ),
                );
            }
            finite_in_range(&format!("{key}.block_target_difficulty"), d, 1e-12, 1e15)?;
        }
    }
    Ok(())
}

/// No two listeners on one port (an unspecified address clashes with every address).
fn check_listeners(c: &Config) -> Result<()> {
    let mut listeners: Vec<(String, SocketAddr)> = Vec::new();
    if let Some(s) = &c.server {
        listeners.push(("server.api_listen".into(), s.api_listen));
        listeners.push(("server.control_listen".into(), s.control_listen));
    }
    if let Some(p) = &c.proxy {
        listeners.push(("proxy.admin_listen".into(), p.admin_listen));
        for (i, port) in p.ports.iter().enumerate() {
            listeners.push((format!("proxy.ports[{i}].listen"), port.listen));
        }
    }
    for (i, a) in c.adapters.iter().enumerate() {
        listeners.push((format!("adapters[{i}].listen"), a.listen));
    }
    let mut by_port: BTreeMap<u16, Vec<(String, SocketAddr)>> = BTreeMap::new();
    for (key, addr) in listeners {
        if addr.port() == 0 {
            return err(key, "port 0 is not allowed: clients need a fixed port");
        }
        let same_port = by_port.entry(addr.port()).or_default();
        for (other_key, other) in same_port.iter() {
            let clash = other.ip() == addr.ip()
                || other.ip().is_unspecified()
                || addr.ip().is_unspecified();
            if clash {
                return err(key, format!("{addr} clashes with {other_key} ({other})"));
            }
        }
        same_port.push((key, addr));
    }
    Ok(())
}

/// Every upstream's coin must be minable on one of the proxy's ports.
fn check_proxy_covers_upstreams(
    ctx: &Ctx<'_>,
    proxy: &ProxyConfig,
    upstreams: &[UpstreamConfig],
) -> Result<()> {
    for (i, u) in upstreams.iter().enumerate() {
        let algorithm = ctx.coin("", &u.coin)?.algorithm;
        if !proxy.ports.iter().any(|p| p.algorithm == algorithm) {
            return err(
                format!("upstreams[{i}].coin"),
                format!(
                    "`{}` mines {algorithm}, but the proxy has no {algorithm} port",
                    u.coin
                ),
            );
        }
    }
    Ok(())
}
