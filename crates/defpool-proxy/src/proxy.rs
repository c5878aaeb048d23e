//! Starting and stopping a proxy: outbox, groups, listeners, admin endpoint.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use defpool_config::StratumProtocol;
use defpool_config::Validated;
use defpool_control::{Assignment, MiningTarget, ProxyId, UpstreamRef};
use defpool_core::secret::Secret;
use defpool_core::Algorithm;
use defpool_stratum::sv2::AuthorityKeypair;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};

use crate::admin::{self, AdminState};
use crate::context::{Context, PortSettings};
use crate::downstream;
use crate::group::{self, load_assignment, now_ms, RouterOptions};
use crate::layout::MinerSpace;
use crate::outbox::{Outbox, OutboxError, OutboxOptions};
use crate::upstream::{StallLimits, UpstreamConnector};

/// Why a proxy could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the configuration has no [proxy] section")]
    NotConfigured,
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// A configuration problem found at start (exit 78).
    #[error("{0}")]
    Sv2Keys(String),
}

impl ProxyError {
    /// Whether the cause is the configuration (the binary exits 78).
    pub fn is_config(&self) -> bool {
        matches!(self, ProxyError::Sv2Keys(_) | ProxyError::NotConfigured)
    }
}

/// Where the proxy listens once started (ports may be 0 in tests).
#[derive(Clone, Debug)]
pub struct Started {
    pub ports: Vec<(Algorithm, StratumProtocol, SocketAddr)>,
    pub admin: SocketAddr,
    pub authority_public_key: Option<String>,
}

/// The assignment a proxy starts with when neither a server nor a previous run gave one: the
/// first configured upstream's coin of the group's algorithm, with all its upstreams in order.
pub fn default_assignment(v: &Validated, group: &str, algorithm: Algorithm) -> Option<Assignment> {
    let ups: Vec<UpstreamRef> = v
        .config
        .upstreams
        .iter()
        .filter(|u| {
            v.registry
                .get(&u.coin)
                .is_some_and(|c| c.algorithm == algorithm)
        })
        .map(|u| u.to_upstream_ref())
        .collect();
    let coin = ups.first()?.coin.clone();
    Some(Assignment {
        epoch: 0,
        group: group.to_string(),
        algorithm,
        targets: vec![MiningTarget {
            coin,
            merged: vec![],
            weight: 1,
        }],
        upstreams: ups,
        standby: vec![],
        issued_at_ms: now_ms(),
        reason: "configured default (no server assignment yet)".into(),
    })
}

fn assignment_file(outbox: &std::path::Path, algorithm: Algorithm) -> PathBuf {
    let mut name = outbox.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".assignment-{}.json", algorithm.as_str()));
    outbox.with_file_name(name)
}

/// Runs the proxy until `shutdown` resolves. `started` learns the bound addresses.
pub async fn run(
    v: Validated,
    started: Option<oneshot::Sender<Started>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let cfg = v.config.proxy.clone().ok_or(ProxyError::NotConfigured)?;
    // Configuration problems the config crate cannot see: before anything starts.
    let sv2_keys = if cfg.ports.iter().any(|p| p.protocol == StratumProtocol::Sv2) {
        Some(Arc::new(sv2_keypair(
            "proxy",
            cfg.authority_public_key.as_deref(),
            cfg.authority_secret_key.as_ref(),
        )?))
    } else {
        None
    };
    let algorithms: Vec<Algorithm> = {
        let mut a: Vec<Algorithm> = cfg.ports.iter().map(|p| p.algorithm).collect();
        a.sort_by_key(|a| a.as_str());
        a.dedup();
        a
    };
    let groups = algorithms
        .iter()
        .map(|&algorithm| {
            let file = assignment_file(&cfg.outbox_path, algorithm);
            let initial = load_assignment(&file)
                .filter(|a| a.group == cfg.group && a.algorithm == algorithm)
                .or_else(|| default_assignment(&v, &cfg.group, algorithm));
            GroupSpec {
                algorithm,
                space: MinerSpace::default(),
                initial,
                assignment_file: Some(file),
            }
        })
        .collect();
    let spec = GatewaySpec {
        role: "proxy",
        id: cfg.id.clone(),
        group: cfg.group.clone(),
        network: v.config.network,
        registry: Arc::new(v.registry.clone()),
        outbox_path: cfg.outbox_path.clone(),
        outbox: None,
        outbox_commit_interval: Duration::from_millis(cfg.outbox_commit_interval_ms.into()),
        record_work: true,
        close_without_work: false,
        sv2_keys,
        ports: cfg.ports.clone(),
        groups,
        grace_secs: cfg.grace_secs,
        limits: StallLimits {
            no_job: Duration::from_secs(cfg.upstream_stall_job_secs as u64),
            no_submit_reply: Duration::from_secs(cfg.upstream_stall_submit_secs as u64),
            reject_streak: cfg.upstream_reject_streak as usize,
            ..StallLimits::default()
        },
        admin_listen: cfg.admin_listen,
        admin_token: cfg.admin_token.clone(),
        control: control_target(
            &v,
            &cfg.id,
            cfg.server_url.as_deref(),
            cfg.server_token.as_ref(),
        ),
        connector: None,
    };
    serve(spec, started, shutdown).await
}

/// Where a proxy or adapter sends its batches: its own `server_url`, or, when the same config
/// runs the server (the embedded default), that server's control listener with the token
/// `[[server.proxies]]` gives this id.
pub fn control_target(
    v: &Validated,
    id: &str,
    server_url: Option<&str>,
    server_token: Option<&Secret>,
) -> Option<(String, Secret)> {
    if let Some(u) = server_url {
        let address = u
            .trim_start_matches("tcp://")
            .trim_end_matches('/')
            .to_string();
        return Some((
            address,
            server_token.cloned().unwrap_or_else(|| Secret::new("")),
        ));
    }
    let server = v.config.server.as_ref()?;
    let token = server.proxies.iter().find(|p| p.id == id)?.token.clone()?;
    let mut addr = server.control_listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Some((addr.to_string(), token))
}

/// Parses and checks an SV2 authority key pair from config (`section` names the keys).
pub fn sv2_keypair(
    section: &str,
    public: Option<&str>,
    secret: Option<&Secret>,
) -> Result<AuthorityKeypair, ProxyError> {
    let (Some(public), Some(secret)) = (public, secret) else {
        return Err(ProxyError::Sv2Keys(format!(
            "{section}.authority_public_key and {section}.authority_secret_key are required for SV2 ports"
        )));
    };
    AuthorityKeypair::from_base58(public, secret.expose())
        .map_err(|e| ProxyError::Sv2Keys(format!("{section}.authority_secret_key: {e}")))
}

/// One algorithm group of a gateway.
pub struct GroupSpec {
    pub algorithm: Algorithm,
    pub space: MinerSpace,
    pub initial: Option<Assignment>,
    pub assignment_file: Option<PathBuf>,
}

/// Everything a stratum gateway needs: the proxy is one, the coin adapter (an SV2 pool whose
/// upstream is the coin daemon) is another.
pub struct GatewaySpec {
    /// "proxy" or "adapter", for logs.
    pub role: &'static str,
    pub id: String,
    pub group: String,
    pub network: defpool_core::Network,
    pub registry: Arc<defpool_core::CoinRegistry>,
    pub outbox_path: PathBuf,
    /// An outbox already opened on `outbox_path` (the adapter shares it with its daemon task).
    pub outbox: Option<Outbox>,
    /// The group commit window of an outbox opened here (not of `outbox`).
    pub outbox_commit_interval: Duration,
    /// Write accepted work to the outbox (the proxy); an adapter only reports block events.
    pub record_work: bool,
    /// See `Context::close_without_work`.
    pub close_without_work: bool,
    pub sv2_keys: Option<Arc<AuthorityKeypair>>,
    pub ports: Vec<defpool_config::PortConfig>,
    pub groups: Vec<GroupSpec>,
    pub grace_secs: u32,
    pub limits: StallLimits,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<Secret>,
    /// The server's control channel (`host:port`, token), if any.
    pub control: Option<(String, Secret)>,
    /// Runs every upstream of this gateway instead of the SV1/SV2 clients (the adapter's
    /// daemon).
    pub connector: Option<Arc<dyn UpstreamConnector>>,
}

/// Runs a gateway until `shutdown` resolves.
pub async fn serve(
    spec: GatewaySpec,
    started: Option<oneshot::Sender<Started>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let registry = spec.registry.clone();
    let outbox = match spec.outbox {
        Some(o) => o,
        None => {
            Outbox::open(
                &spec.outbox_path,
                ProxyId(spec.id.clone()),
                OutboxOptions {
                    commit_interval: spec.outbox_commit_interval,
                    ..OutboxOptions::default()
                },
            )
            .await?
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut groups = HashMap::new();
    let mut assign_txs = HashMap::new();
    for g in spec.groups {
        let algorithm = g.algorithm;
        let opts = RouterOptions {
            grace: Duration::from_secs(spec.grace_secs as u64),
            limits: spec.limits,
            space: g.space,
            assignment_file: g.assignment_file,
            connector: spec.connector.clone(),
        };
        let (mut router, shared, tx) = group::group(
            &spec.group,
            algorithm,
            registry.clone(),
            spec.network,
            outbox.clone(),
            opts,
        );
        match g.initial {
            Some(a) => {
                tracing::info!(algorithm = algorithm.as_str(), epoch = a.epoch, reason = %a.reason, "starting with an assignment");
                router.assign(a);
            }
            None => tracing::warn!(
                algorithm = algorithm.as_str(),
                "no assignment and no upstream for this algorithm yet: miners wait for work"
            ),
        }
        tokio::spawn(router.run(stop_rx.clone()));
        groups.insert(algorithm, shared);
        assign_txs.insert((spec.group.clone(), algorithm), tx);
    }
    let mut ctx = Context::new(
        registry.clone(),
        spec.network,
        outbox.clone(),
        spec.grace_secs,
        groups,
    );
    ctx.record_work = spec.record_work;
    ctx.close_without_work = spec.close_without_work;
    let ctx = Arc::new(ctx);
    let mut bound = Vec::new();
    for port in &spec.ports {
        let listener =
            TcpListener::bind(port.listen)
                .await
                .map_err(|source| ProxyError::Listen {
                    addr: port.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ProxyError::Listen {
            addr: port.listen,
            source,
        })?;
        bound.push((port.algorithm, port.protocol, addr));
        let settings = Arc::new(PortSettings::from(port));
        let group = ctx.groups[&port.algorithm].clone();
        let ctx = ctx.clone();
        let protocol = port.protocol;
        let limit = Arc::new(Semaphore::new(settings.max_connections.max(1)));
        let keys = spec.sv2_keys.clone();
        let mut stop = stop_rx.clone();
        tracing::info!(listen = %addr, algorithm = port.algorithm.as_str(), protocol = ?protocol, "miners' port open");
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = stop.changed() => break,
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tracing::warn!(peer = %peer, limit = settings.max_connections, "connection limit reached; refusing a miner");
                    drop(stream);
                    continue;
                };
                ctx.counters.connections.fetch_add(1, Ordering::Relaxed);
                let (ctx, settings, group, keys) =
                    (ctx.clone(), settings.clone(), group.clone(), keys.clone());
                // One spawn per protocol: a task is as large as its future, and one future
                // for both would size every SV1 miner's task for an SV2 session.
                match protocol {
                    StratumProtocol::Sv1 => tokio::spawn(downstream::sv1::serve(
                        stream, peer, settings, ctx, group, permit,
                    )),
                    // Spawned as it is: a wrapping `async` block would keep room for the
                    // arguments in the task of every idle miner.
                    StratumProtocol::Sv2 => tokio::spawn(downstream::sv2::serve(
                        stream,
                        peer,
                        settings,
                        ctx,
                        group,
                        keys.expect("SV2 keys checked at start"),
                        permit,
                    )),
                };
            }
        });
    }

    let admin_listener = TcpListener::bind(spec.admin_listen)
        .await
        .map_err(|source| ProxyError::Listen {
            addr: spec.admin_listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| ProxyError::Listen {
            addr: spec.admin_listen,
            source,
        })?;
    if let Some((address, token)) = spec.control.clone() {
        let client = crate::control::ControlClient {
            address,
            token,
            proxy_id: ProxyId(spec.id.clone()),
            group: spec.group.clone(),
            algorithms: ctx.groups.keys().copied().collect(),
            outbox: outbox.clone(),
            assign: assign_txs.clone(),
        };
        tokio::spawn(client.run(stop_rx.clone()));
    }
    let app = admin::router(AdminState {
        ctx: ctx.clone(),
        token: spec.admin_token.clone(),
        assign: assign_txs,
        proxy_id: spec.id.clone(),
    });
    let mut admin_stop = stop_rx.clone();
    tokio::spawn(async move {
        let _ = axum::serve(admin_listener, app)
            .with_graceful_shutdown(async move {
                let _ = admin_stop.changed().await;
            })
            .await;
    });
    tracing::info!(listen = %admin_addr, "admin endpoint open");
    let authority_public_key = spec.sv2_keys.as_ref().map(|k| k.public_key().to_base58());
    if let Some(key) = &authority_public_key {
        tracing::info!(role = spec.role, authority_public_key = %key, "SV2 authority public key");
    }
    if let Some(tx) = started {
        let _ = tx.send(Started {
            ports: bound,
            admin: admin_addr,
            authority_public_key,
        });
    }

    shutdown.await;
    tracing::info!(role = spec.role, "stopping");
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(ctx);
    outbox.close().await?;
    Ok(())
}
