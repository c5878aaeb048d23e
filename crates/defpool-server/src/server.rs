//! Starting and stopping the server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use defpool_config::Validated;
use defpool_store::{Store, StoreError};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::control::{ControlPlane, Credentials};
use crate::state::{system_clock, Shared};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the configuration has no [server] section")]
    NotConfigured,
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl ServerError {
    pub fn is_config(&self) -> bool {
        matches!(self, ServerError::NotConfigured)
    }
}

#[derive(Clone, Debug)]
pub struct Started {
    pub control: SocketAddr,
    pub api: SocketAddr,
}

/// Runs the server until `shutdown` resolves: the control plane, the decision loop, the ledger
/// service and the API share one [`Shared`]; on shutdown every task is told to stop and awaited
/// (briefly) before the store closes.
pub async fn run(
    v: Validated,
    started: Option<oneshot::Sender<Started>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let cfg = v.config.server.clone().ok_or(ServerError::NotConfigured)?;
    let store = Store::connect(&cfg.database_url).await?;
    let report = store.migrate().await?;
    tracing::info!(backend = ?store.backend(), ?report, "store ready");
    let shared = Shared::new(store.clone(), Arc::new(v), system_clock());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let plane = Arc::new(ControlPlane {
        shared: shared.clone(),
        credentials: Credentials(
            cfg.proxies
                .iter()
                .filter_map(|p| p.token.clone().map(|t| (p.id.clone(), t)))
                .collect(),
        ),
    });
    let (listener, control) = bind(cfg.control_listen).await?;
    tasks.push(tokio::spawn(plane.serve(listener, stop_rx.clone())));
    crate::stats::spawn(shared.clone(), stop_rx.clone());
    tracing::info!(listen = %control, "control plane open");

    tasks.push(tokio::spawn(crate::decision::run(
        shared.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::ledger::run(
        shared.clone(),
        stop_rx.clone(),
    )));

    let (api_listener, api) = bind(cfg.api_listen).await?;
    let app = crate::api::router(crate::api::ApiState {
        shared: shared.clone(),
        admin_token: cfg.admin_token.clone(),
    });
    let mut api_stop = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        let _ = axum::serve(api_listener, app)
            .with_graceful_shutdown(async move {
                let _ = api_stop.changed().await;
            })
            .await;
    }));
    tracing::info!(listen = %api, "API open");

    if let Some(tx) = started {
        let _ = tx.send(Started { control, api });
    }
    shutdown.await;
    tracing::info!("server stopping");
    let _ = stop_tx.send(true);
    let _ = shared.stopping.send(true);
    for task in tasks {
        // A task stuck in a store call must not hold the process: give up after a while.
        let _ = tokio::time::timeout(STOP_GRACE, task).await;
    }
    store.close().await;
    Ok(())
}

/// How long shutdown waits for each task.
const STOP_GRACE: Duration = Duration::from_secs(5);

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listen = |source| ServerError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen)?;
    let local = listener.local_addr().map_err(listen)?;
    Ok((listener, local))
}
