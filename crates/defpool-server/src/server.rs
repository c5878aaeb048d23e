//! Starting and stopping the server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

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

/// Runs the server until `shutdown` resolves.
pub async fn run(
    v: Validated,
    started: Option<oneshot::Sender<Started>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let cfg = v.config.server.clone().ok_or(ServerError::NotConfigured)?;
    let store = Store::connect(&cfg.database_url).await?;
    let report = store.migrate().await?;
    tracing::info!(backend = ?store.backend(), ?report, "store ready");
    let credentials = Credentials(
        cfg.proxies
            .iter()
            .filter_map(|p| p.token.clone().map(|t| (p.id.clone(), t)))
            .collect(),
    );
    let shared = Shared::new(store.clone(), Arc::new(v), system_clock());
    let plane = Arc::new(ControlPlane {
        shared: shared.clone(),
        credentials,
    });
    let listener = TcpListener::bind(cfg.control_listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: cfg.control_listen,
            source,
        })?;
    let control = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: cfg.control_listen,
            source,
        })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(plane.serve(listener, stop_rx.clone()));
    tracing::info!(listen = %control, "control plane open");
    let api_listener =
        TcpListener::bind(cfg.api_listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: cfg.api_listen,
                source,
            })?;
    let api = api_listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: cfg.api_listen,
            source,
        })?;
    let app = crate::api::router(crate::api::ApiState {
        shared: shared.clone(),
        admin_token: cfg.admin_token.clone(),
    });
    let mut api_stop = stop_rx.clone();
    tokio::spawn(async move {
        let _ = axum::serve(api_listener, app)
            .with_graceful_shutdown(async move {
                let _ = api_stop.changed().await;
            })
            .await;
    });
    tracing::info!(listen = %api, "API open");
    if let Some(tx) = started {
        let _ = tx.send(Started { control, api });
    }
    shutdown.await;
    tracing::info!("server stopping");
    let _ = stop_tx.send(true);
    store.close().await;
    Ok(())
}
