//! The server's side of the control plane. One task per connection:
//! `Hello` (proxy id + token, checked against `[[server.proxies]]`) → `Welcome` (current
//! assignments of the proxy's group, the last sequence applied for it) → then batches are
//! applied in order and acknowledged, and assignment changes are pushed as they happen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use defpool_control::{decode, encode, Batch, Message, ProxyId, Record};
use defpool_core::secret::Secret;
use defpool_store::{ApplyOutcome, ApplySummary};
use defpool_stratum::sv1::LineReader;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};

use crate::ledger::check_payable;
use crate::state::{FeedEvent, Metrics, Shared};

/// Who may connect: proxy id → token.
#[derive(Clone, Default)]
pub struct Credentials(pub HashMap<String, Secret>);

impl Credentials {
    fn check(&self, proxy: &ProxyId, token: &Secret) -> bool {
        self.0
            .get(&proxy.0)
            .is_some_and(|t| !t.is_empty() && t.matches(token.expose()))
    }
}

pub struct ControlPlane {
    pub shared: Arc<Shared>,
    pub credentials: Credentials,
}

impl ControlPlane {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "control accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            let me = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let reason = me.connection(stream, peer, stop).await;
                tracing::info!(peer = %peer, reason = %reason, "control connection closed");
            });
        }
    }

    async fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        mut stop: watch::Receiver<bool>,
    ) -> String {
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut lines = LineReader::new(
            BufReader::new(read),
            defpool_control::wire::MAX_MESSAGE_BYTES,
        );
        let hello = match tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await {
            Ok(Ok(Some(l))) => decode(l),
            Ok(Ok(None)) => return "closed before Hello".into(),
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return "no Hello in time".into(),
        };
        let (proxy, group) = match hello {
            Ok(Message::Hello {
                proxy_id,
                token,
                group,
                ..
            }) => {
                if !self.credentials.check(&proxy_id, &token) {
                    let _ = send(
                        &mut write,
                        &Message::Error {
                            code: "unauthorized".into(),
                            message: format!("unknown proxy {:?} or wrong token", proxy_id.0),
                        },
                    )
                    .await;
                    return format!("refused {:?}: bad credentials", proxy_id.0);
                }
                (proxy_id, group)
            }
            Ok(other) => return format!("expected Hello, got {other:?}"),
            Err(e) => {
                let _ = send(
                    &mut write,
                    &Message::Error {
                        code: "bad-message".into(),
                        message: e.to_string(),
                    },
                )
                .await;
                return format!("bad Hello: {e}");
            }
        };
        let mut changes = self.shared.assignments.subscribe();
        let (assignments, last) = match (
            self.shared.store.assignments().await,
            self.shared.store.last_sequence(&proxy).await,
        ) {
            (Ok(a), Ok(l)) => (a, l),
            (Err(e), _) | (_, Err(e)) => return format!("store: {e}"),
        };
        let welcome = Message::Welcome {
            assignments: assignments
                .into_iter()
                .filter(|a| a.group == group)
                .collect(),
            last_applied_sequence: last,
        };
        if let Err(e) = send(&mut write, &welcome).await {
            return e;
        }
        tracing::info!(proxy = %proxy.0, peer = %peer, last_applied = last, "proxy connected");
        let _connected = Connected::new(&self.shared.metrics);
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let msg = match line {
                        Ok(Some(l)) => decode(l),
                        Ok(None) => return "proxy closed the connection".into(),
                        Err(e) => return e.to_string(),
                    };
                    let batch = match msg {
                        Ok(Message::Batch(b)) => b,
                        Ok(other) => {
                            tracing::debug!(proxy = %proxy.0, ?other, "ignoring a control message");
                            continue;
                        }
                        Err(e) => {
                            let _ = send(&mut write, &Message::Error { code: "bad-message".into(), message: e.to_string() }).await;
                            return format!("bad message: {e}");
                        }
                    };
                    if batch.proxy_id != proxy {
                        let _ = send(&mut write, &Message::Error { code: "wrong-proxy".into(), message: "a batch of another proxy".into() }).await;
                        return "a batch of another proxy".into();
                    }
                    let sequence = batch.sequence;
                    let metrics = &self.shared.metrics;
                    match self.shared.store.apply_batch(&batch).await {
                        Ok(ApplyOutcome::Gap { expected }) => {
                            Metrics::add(&metrics.batches_gap, 1);
                            let _ = send(&mut write, &Message::Error { code: "sequence-gap".into(), message: format!("expected batch {expected}, got {sequence}") }).await;
                            return format!("sequence gap: expected {expected}, got {sequence}");
                        }
                        Ok(outcome) => {
                            match &outcome {
                                ApplyOutcome::Applied(summary) => {
                                    Metrics::add(&metrics.batches_applied, 1);
                                    Metrics::add(&metrics.work_records, summary.work_records as u64);
                                    self.after_applied(&batch, summary).await;
                                }
                                _ => {
                                    Metrics::add(&metrics.batches_duplicate, 1);
                                    tracing::debug!(proxy = %proxy.0, sequence, "duplicate batch acknowledged again");
                                }
                            }
                            if let Err(e) = send(&mut write, &Message::Ack { sequence }).await {
                                return e;
                            }
                        }
                        Err(e) => {
                            // Not applied, not acknowledged: the proxy keeps it and resends.
                            Metrics::add(&metrics.batch_errors, 1);
                            tracing::error!(proxy = %proxy.0, sequence, error = %e, "could not apply a batch");
                            return format!("store: {e}");
                        }
                    }
                }
                change = changes.recv() => match change {
                    Ok(a) if a.group == group => {
                        if let Err(e) = send(&mut write, &Message::Assign(a)).await {
                            return e;
                        }
                        Metrics::add(&self.shared.metrics.assignments_pushed, 1);
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Missed changes: resend the current state.
                        if let Ok(all) = self.shared.store.assignments().await {
                            for a in all.into_iter().filter(|a| a.group == group) {
                                if let Err(e) = send(&mut write, &Message::Assign(a)).await {
                                    return e;
                                }
                                Metrics::add(&self.shared.metrics.assignments_pushed, 1);
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return "server stopping".into(),
                },
                _ = stop.changed() => return "server stopping".into(),
            }
        }
    }
}

impl ControlPlane {
    /// After a batch committed: users' payout addresses checked again (an unpayable user's work
    /// stays on record, the ledger withholds their credits), block phase changes published and
    /// handed to the ledger service.
    async fn after_applied(&self, batch: &Batch, summary: &ApplySummary) {
        let cfg = &self.shared.config;
        for record in &batch.records {
            if let Record::User(u) = record {
                if let Err(cause) = check_payable(
                    &cfg.registry,
                    cfg.config.network,
                    &u.user,
                    u.payout_address.as_deref(),
                ) {
                    tracing::warn!(proxy = %batch.proxy_id, user = %u.user, cause = %cause, "user cannot be paid: work kept, credits withheld");
                }
            }
        }
        if summary.block_changes.is_empty() {
            return;
        }
        for change in &summary.block_changes {
            let height = match self.shared.store.block(&change.block_hash).await {
                Ok(b) => b.and_then(|b| b.height),
                Err(_) => None,
            };
            self.shared.publish(FeedEvent::Block {
                at_ms: self.shared.now_ms(),
                coin: change.coin.clone(),
                hash: change.block_hash.clone(),
                height,
                phase: change.to.as_str().to_string(),
            });
        }
        self.shared.ledger_now.notify_one();
    }
}

/// The `proxies_connected` gauge for one connection's life.
struct Connected<'a>(&'a Metrics);

impl<'a> Connected<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        Metrics::add(&metrics.proxies_connected, 1);
        Connected(metrics)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        Metrics::sub(&self.0.proxies_connected, 1);
    }
}

async fn send(write: &mut OwnedWriteHalf, message: &Message) -> Result<(), String> {
    let mut bytes = encode(message);
    bytes.push(b'\n');
    write
        .write_all(&bytes)
        .await
        .map_err(|e| format!("write failed: {e}"))
}
