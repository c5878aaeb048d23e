//! Market data for the decision loop: the sources of `[[server.market]]`, each polled on its own
//! `poll_secs` in a blocking task (the sources do blocking HTTP), their latest snapshots kept per
//! source and coin for the loop to combine.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use defpool_config::{MarketSourceConfig, MarketSourceKind, Validated};
use defpool_core::secret::Secret;
use defpool_core::Ticker;
use defpool_market::{
    BinanceSource, Clock, CsvReplay, DaemonSource, KrakenSource, KucoinSource, MarketSnapshot,
    MarketSource, SimulatorSource, WhatToMineSource,
};
use defpool_switch::sim::SimParams;
use tokio::sync::watch;

use crate::state::{Metrics, Shared};

/// One configured source, ready to poll.
pub struct PolledSource {
    /// `kind` and position in the config (`binance#0`), for logs.
    pub label: String,
    pub source: Arc<dyn MarketSource>,
    /// Coins it is asked about; empty: the coins the decision loop wants.
    pub coins: Vec<Ticker>,
    pub poll: Duration,
}

/// Builds every `[[server.market]]` source. A source that cannot be built (a CSV path that does
/// not exist, a daemon without a coin) is reported with its cause and left out; the others run.
pub fn build_sources(v: &Validated, clock: &Clock) -> (Vec<PolledSource>, Vec<String>) {
    let Some(server) = v.config.server.as_ref() else {
        return (Vec::new(), Vec::new());
    };
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for (i, m) in server.market.iter().enumerate() {
        let label = format!("{}#{i}", kind_name(m.kind));
        match build_one(v, m, clock) {
            Ok(source) => sources.push(PolledSource {
                label,
                source,
                coins: m.coins.clone(),
                poll: Duration::from_secs(u64::from(m.poll_secs.max(1))),
            }),
            Err(e) => errors.push(format!("market source {label}: {e}")),
        }
    }
    (sources, errors)
}

fn kind_name(kind: MarketSourceKind) -> &'static str {
    match kind {
        MarketSourceKind::Daemon => "daemon",
        MarketSourceKind::Binance => "binance",
        MarketSourceKind::Kraken => "kraken",
        MarketSourceKind::Kucoin => "kucoin",
        MarketSourceKind::Whattomine => "whattomine",
        MarketSourceKind::Csv => "csv",
        MarketSourceKind::Simulator => "simulator",
    }
}

fn build_one(
    v: &Validated,
    m: &MarketSourceConfig,
    clock: &Clock,
) -> Result<Arc<dyn MarketSource>, String> {
    let url = m.url.clone().unwrap_or_default();
    let whitelist = || {
        v.config
            .server
            .as_ref()
            .map(|s| s.whitelist.clone())
            .unwrap_or_default()
    };
    let coins = if m.coins.is_empty() {
        whitelist()
    } else {
        m.coins.clone()
    };
    Ok(match m.kind {
        MarketSourceKind::Binance => Arc::new(
            BinanceSource::new()
                .with_base_url(url)
                .with_clock(clock.clone()),
        ),
        MarketSourceKind::Kraken => Arc::new(
            KrakenSource::new()
                .with_base_url(url)
                .with_clock(clock.clone()),
        ),
        MarketSourceKind::Kucoin => Arc::new(
            KucoinSource::new()
                .with_base_url(url)
                .with_clock(clock.clone()),
        ),
        MarketSourceKind::Whattomine => Arc::new(
            WhatToMineSource::new()
                .with_registry(v.registry.clone())
                .with_base_url(url)
                .with_clock(clock.clone()),
        ),
        MarketSourceKind::Simulator => {
            if coins.is_empty() {
                return Err("a simulator needs coins (its own or the whitelist)".into());
            }
            let mut sim =
                SimulatorSource::new(coins, SimParams::default(), m.seed.unwrap_or(0), clock())
                    .with_clock(clock.clone());
            if let Some(step) = m.step_secs {
                sim = sim.with_wall_step_secs(u64::from(step));
            }
            Arc::new(sim)
        }
        MarketSourceKind::Csv => {
            let path = Path::new(&url);
            let mut replay = CsvReplay::new().with_clock(clock.clone());
            if path.is_dir() {
                replay
                    .load_dir(&v.registry, path, &coins)
                    .map_err(|e| e.to_string())?;
            } else {
                let coin = coins
                    .first()
                    .ok_or("a CSV file source needs its coin in `coins`")?;
                let decimals = v
                    .registry
                    .get(coin)
                    .map(|s| s.decimals)
                    .ok_or_else(|| format!("{coin} is not in the coin registry"))?;
                replay
                    .load_file(coin.clone(), path, decimals)
                    .map_err(|e| e.to_string())?;
            }
            Arc::new(replay)
        }
        MarketSourceKind::Daemon => {
            let (url, user, password) = daemon_login(v, m, &url)?;
            let coin = match m.coins.first() {
                Some(c) => c.clone(),
                None => v
                    .config
                    .adapters
                    .iter()
                    .find(|a| same_endpoint(&a.rpc_url, &url))
                    .map(|a| a.coin.clone())
                    .ok_or("a daemon source needs its coin in `coins`")?,
            };
            Arc::new(
                DaemonSource::new(&v.registry, &coin, v.config.network, url, user, password)
                    .map_err(|e| e.to_string())?
                    .with_clock(clock.clone()),
            )
        }
    })
}

fn same_endpoint(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// A daemon's RPC login: the adapter's of the same URL (user and password, or its cookie
/// file), else the source's `api_key` as the password. Credentials in the URL are moved out of
/// it so they never show in errors.
fn daemon_login(
    v: &Validated,
    m: &MarketSourceConfig,
    url: &str,
) -> Result<(String, String, Secret), String> {
    let mut parsed = url::Url::parse(url).map_err(|e| format!("`url`: {e}"))?;
    let url_user = parsed.username().to_string();
    let url_password = parsed.password().map(str::to_string);
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    let clean = parsed.to_string();
    if let Some(a) = v
        .config
        .adapters
        .iter()
        .find(|a| same_endpoint(&a.rpc_url, &clean) || same_endpoint(&a.rpc_url, url))
    {
        if let Some(cookie) = &a.rpc_cookie_file {
            let text = std::fs::read_to_string(cookie)
                .map_err(|e| format!("cannot read the cookie file of adapter {}: {e}", a.name))?;
            let (user, password) = text.trim().split_once(':').ok_or_else(|| {
                format!("the cookie file of adapter {} is not user:password", a.name)
            })?;
            return Ok((clean, user.to_string(), Secret::new(password)));
        }
        if let (Some(user), Some(password)) = (&a.rpc_user, &a.rpc_password) {
            return Ok((clean, user.clone(), password.clone()));
        }
    }
    let password = url_password
        .map(Secret::new)
        .or_else(|| m.api_key.clone())
        .unwrap_or_else(|| Secret::new(""));
    Ok((clean, url_user, password))
}

/// The latest snapshot of each (source, coin), filled by the pollers.
#[derive(Clone, Default)]
pub struct MarketFeed {
    latest: Arc<Mutex<BTreeMap<(usize, Ticker), MarketSnapshot>>>,
    wanted: Arc<watch::Sender<Vec<Ticker>>>,
}

impl MarketFeed {
    /// Starts one poller per source; they stop with `stop`.
    pub fn spawn(
        shared: Arc<Shared>,
        sources: Vec<PolledSource>,
        stop: watch::Receiver<bool>,
    ) -> MarketFeed {
        let feed = MarketFeed {
            latest: Arc::default(),
            wanted: Arc::new(watch::channel(Vec::new()).0),
        };
        for (index, source) in sources.into_iter().enumerate() {
            tokio::spawn(poll(
                shared.clone(),
                feed.clone(),
                index,
                source,
                stop.clone(),
            ));
        }
        feed
    }

    /// The coins the decision loop considers (sources without their own list are asked about
    /// these). A change wakes the pollers.
    pub fn want(&self, coins: Vec<Ticker>) {
        self.wanted.send_if_modified(|w| {
            if *w == coins {
                false
            } else {
                *w = coins;
                true
            }
        });
    }

    /// Every source's latest snapshot of every coin.
    pub fn snapshots(&self) -> Vec<MarketSnapshot> {
        self.latest
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

async fn poll(
    shared: Arc<Shared>,
    feed: MarketFeed,
    index: usize,
    source: PolledSource,
    mut stop: watch::Receiver<bool>,
) {
    let mut wanted = feed.wanted.subscribe();
    loop {
        let coins = if source.coins.is_empty() {
            wanted.borrow_and_update().clone()
        } else {
            source.coins.clone()
        };
        if coins.is_empty() {
            tokio::select! {
                _ = wanted.changed() => continue,
                _ = stop.changed() => return,
            }
        }
        let src = source.source.clone();
        let asked = coins.clone();
        match tokio::task::spawn_blocking(move || src.fetch_detailed(&asked)).await {
            Ok(Ok(fetched)) => {
                for (coin, e) in &fetched.failed {
                    tracing::debug!(source = %source.label, coin = %coin, error = %e, "no market data for a coin");
                }
                if let Ok(mut latest) = feed.latest.lock() {
                    for s in fetched.snapshots {
                        latest.insert((index, s.coin.clone()), s);
                    }
                }
                // New data: let the loop evaluate at once rather than at its next tick.
                shared.decide_now.notify_one();
            }
            Ok(Err(e)) => {
                Metrics::add(&shared.metrics.market_fetch_errors, 1);
                tracing::warn!(source = %source.label, error = %e, "market fetch failed");
            }
            Err(e) => {
                Metrics::add(&shared.metrics.market_fetch_errors, 1);
                tracing::error!(source = %source.label, error = %e, "market fetch task failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(source.poll) => {}
            _ = stop.changed() => return,
        }
    }
}
