//! Starting a coin adapter: an SV2 pool for proxies (the proxy's gateway with the coin daemon
//! as its one upstream), its event outbox and block tracker.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use defpool_config::{AdapterConfig, PortConfig, StratumProtocol, Validated};
use defpool_control::{Assignment, MiningTarget, ProxyId, UpstreamKind, UpstreamRef};
use defpool_core::address::parse_payout_address_in;
use defpool_core::secret::Secret;
use defpool_core::work::Target;
use defpool_proxy::group::now_ms;
use defpool_proxy::layout::MinerSpace;
use defpool_proxy::outbox::{Outbox, OutboxOptions};
use defpool_proxy::proxy::{self, GatewaySpec, GroupSpec, ProxyError, Started};
use defpool_proxy::upstream::StallLimits;
use tokio::sync::oneshot;

use crate::daemon::{DaemonConnector, DaemonSettings};
use crate::{DaemonRpc, RpcAuth};

/// Bytes of the adapter's extranonce that tell its proxies apart.
pub const PROXY_PREFIX_BYTES: usize = 2;

pub fn outbox_path(a: &AdapterConfig) -> PathBuf {
    a.outbox_path
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("defpool-adapter-{}.db", a.name)))
}

/// Runs one adapter until `shutdown` resolves.
pub async fn run(
    v: &Validated,
    a: &AdapterConfig,
    started: Option<oneshot::Sender<Started>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let key = format!("adapters[{}]", a.name);
    let keys = proxy::sv2_keypair(
        &key,
        a.authority_public_key.as_deref(),
        a.authority_secret_key.as_ref(),
    )?;
    let coin = v
        .registry
        .get(&a.coin)
        .ok_or_else(|| ProxyError::Sv2Keys(format!("{key}.coin: unknown coin")))?
        .clone();
    let params = coin
        .network(v.config.network)
        .ok_or_else(|| ProxyError::Sv2Keys(format!("{key}.coin: no {} network", v.config.network)))?
        .clone();
    let payout = parse_payout_address_in(&v.registry, &a.payout_address, &coin, v.config.network)
        .map_err(|e| ProxyError::Sv2Keys(format!("{key}.payout_address: {e}")))?;
    let auth = match (&a.rpc_cookie_file, &a.rpc_user, &a.rpc_password) {
        (Some(cookie), _, _) => RpcAuth::Cookie(cookie.clone()),
        (None, Some(user), Some(password)) => RpcAuth::UserPass {
            user: user.clone(),
            password: password.clone(),
        },
        _ => {
            return Err(ProxyError::Sv2Keys(format!(
                "{key}: rpc_cookie_file or rpc_user and rpc_password are required"
            )))
        }
    };
    let rpc = DaemonRpc::new(a.rpc_url.clone(), auth, Duration::from_secs(30))
        .with_longpoll_timeout(Duration::from_secs(120));
    let outbox_path = outbox_path(a);
    let outbox = Outbox::open(
        &outbox_path,
        ProxyId(a.name.clone()),
        OutboxOptions::default(),
    )
    .await?;
    let mut tracker_file = outbox_path.clone().into_os_string();
    tracker_file.push(".blocks.json");
    let extranonce_size = a.extranonce_size as usize;
    let settings = DaemonSettings {
        adapter: a.name.clone(),
        coin: a.coin.clone(),
        rules: coin.gbt_rules.clone(),
        payout_script: payout.script_pubkey.clone(),
        tag: a.coinbase_tag.clone(),
        extranonce_size,
        block_target: a.block_target_difficulty.and_then(Target::from_difficulty),
        refresh: Duration::from_secs(a.template_refresh_secs.max(1) as u64),
        maturity: params.coinbase_maturity,
        tracker_file: tracker_file.into(),
    };
    let connector = Arc::new(DaemonConnector::new(rpc, settings, outbox.clone()));
    let port = PortConfig {
        algorithm: coin.algorithm,
        protocol: StratumProtocol::Sv2,
        listen: a.listen,
        // Proxies announce their hashrate; the channel target follows it, capped by the block
        // target so every block candidate reaches us.
        start_difficulty: 1.0,
        min_difficulty: 1e-9,
        max_difficulty: 1e15,
        shares_per_minute: 30.0,
        max_connections: 1024,
        idle_timeout_secs: 600,
        max_message_bytes: 256 * 1024,
    };
    let assignment = Assignment {
        epoch: 1,
        group: "default".into(),
        algorithm: coin.algorithm,
        targets: vec![MiningTarget {
            coin: a.coin.clone(),
            merged: vec![],
            weight: 1,
        }],
        upstreams: vec![UpstreamRef {
            name: a.name.clone(),
            coin: a.coin.clone(),
            kind: UpstreamKind::Adapter,
            address: a.rpc_url.clone(),
            authority_public_key: None,
            username: String::new(),
            password: Secret::new(""),
        }],
        standby: vec![],
        issued_at_ms: now_ms(),
        reason: "the adapter's own coin daemon".into(),
    };
    let spec = GatewaySpec {
        role: "adapter",
        id: a.name.clone(),
        group: "default".into(),
        network: v.config.network,
        registry: Arc::new(v.registry.clone()),
        outbox_path,
        outbox: Some(outbox),
        outbox_commit_interval: OutboxOptions::default().commit_interval,
        record_work: false,
        close_without_work: true,
        sv2_keys: Some(Arc::new(keys)),
        ports: vec![port],
        groups: vec![GroupSpec {
            algorithm: coin.algorithm,
            space: MinerSpace {
                prefix_bytes: PROXY_PREFIX_BYTES,
                rolled_bytes: extranonce_size - PROXY_PREFIX_BYTES,
            },
            initial: Some(assignment),
            assignment_file: None,
        }],
        grace_secs: 5,
        limits: StallLimits {
            // The daemon task reports its own trouble; a quiet chain is not a stall.
            no_job: Duration::from_secs(3600),
            ..StallLimits::default()
        },
        admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_token: None,
        // Block events go to the server: found, matured, orphaned.
        control: proxy::control_target(
            v,
            &a.name,
            a.server_url.as_deref(),
            a.server_token.as_ref(),
        ),
        connector: Some(connector),
    };
    tracing::info!(adapter = %a.name, coin = %a.coin.as_str(), listen = %a.listen, rpc = %a.rpc_url, payout = %payout.text, "coin adapter starting");
    proxy::serve(spec, started, shutdown).await
}
