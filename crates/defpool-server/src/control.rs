//! The server's side of the control plane. One task per connection:
//! `Hello` (proxy id + token, checked against `[[server.proxies]]`) → `Welcome` (current
//! assignments of the proxy's group, the last sequence applied for it) → then batches are
//! applied in order and acknowledged, and assignment changes are pushed as they happen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use defpool_control::{decode, encode, Message, ProxyId};
use defpool_core::secret::Secret;
use defpool_store::ApplyOutcome;
use defpool_stratum::sv1::LineReader;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};

use crate::state::Shared;

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
                    match self.shared.store.apply_batch(&batch).await {
                        Ok(ApplyOutcome::Gap { expected }) => {
                            let _ = send(&mut write, &Message::Error { code: "sequence-gap".into(), message: format!("expected batch {expected}, got {sequence}") }).await;
                            return format!("sequence gap: expected {expected}, got {sequence}");
                        }
                        Ok(outcome) => {
                            if let ApplyOutcome::Duplicate { .. } = outcome {
                                tracing::debug!(proxy = %proxy.0, sequence, "duplicate batch acknowledged again");
                            }
                            if let Err(e) = send(&mut write, &Message::Ack { sequence }).await {
                                return e;
                            }
                        }
                        Err(e) => {
                            // Not applied, not acknowledged: the proxy keeps it and resends.
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
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Missed changes: resend the current state.
                        if let Ok(all) = self.shared.store.assignments().await {
                            for a in all.into_iter().filter(|a| a.group == group) {
                                if let Err(e) = send(&mut write, &Message::Assign(a)).await {
                                    return e;
                                }
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

async fn send(write: &mut OwnedWriteHalf, message: &Message) -> Result<(), String> {
    let mut bytes = encode(message);
    bytes.push(b'\n');
    write
        .write_all(&bytes)
        .await
        .map_err(|e| format!("write failed: {e}"))
}
