//! The proxy's side of the control plane: it connects to the server (so proxies behind NAT
//! work), says who it is, applies the assignments it receives, and drains its outbox in
//! sequence, deleting a batch only after the server acknowledged it.
//!
//! Wire: one `defpool_control` envelope per line (JSON never contains a raw newline).

use std::collections::HashMap;
use std::time::Duration;

use defpool_control::{decode, encode, Message, Offer, ProxyId};
use defpool_core::secret::Secret;
use defpool_core::Algorithm;
use defpool_stratum::sv1::LineReader;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::group::AssignRequest;
use crate::outbox::Outbox;

/// Batches sent ahead of their acknowledgements: twice the server's default run
/// (`server.ingest_run_batches`), so that while the server commits one run of queued batches
/// the next run fills up behind it. With 32 the runs alternated between full and nearly empty;
/// 64 measured 90k → 130–140k records/s into PostgreSQL from one proxy (docs/benchmarks.md).
const WINDOW: usize = 64;

pub struct ControlClient {
    pub address: String,
    pub token: Secret,
    pub proxy_id: ProxyId,
    pub group: String,
    pub algorithms: Vec<Algorithm>,
    pub outbox: Outbox,
    pub assign: HashMap<(String, Algorithm), mpsc::Sender<AssignRequest>>,
}

impl ControlClient {
    /// Runs until `stop`; reconnects with backoff. Without a server the proxy keeps mining its
    /// last assignment and its outbox keeps the batches.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let session = self.session();
            let reason = tokio::select! {
                r = session => r,
                _ = stop.changed() => return,
            };
            tracing::warn!(server = %self.address, reason = %reason, retry_in = ?backoff, "control channel down; mining on the last assignment");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    async fn apply(&self, a: defpool_control::Assignment) {
        let key = (a.group.clone(), a.algorithm);
        let Some(tx) = self.assign.get(&key) else {
            tracing::warn!(group = %a.group, algorithm = a.algorithm.as_str(), "assignment for a group/algorithm this proxy does not serve");
            return;
        };
        let (reply, rx) = oneshot::channel();
        if tx.send((a, reply)).await.is_ok() {
            if let Ok(Offer::Stale { current_epoch }) = rx.await {
                tracing::info!(current_epoch, "ignored a stale assignment from the server");
            }
        }
    }

    async fn session(&self) -> String {
        let stream =
            match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&self.address))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return format!("cannot connect: {e}"),
                Err(_) => return "connect timed out".into(),
            };
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut lines = LineReader::new(
            BufReader::new(read),
            defpool_control::wire::MAX_MESSAGE_BYTES,
        );
        let acked = match self.outbox.totals().await {
            Ok(t) => t.acknowledged_sequence,
            Err(e) => return format!("outbox: {e}"),
        };
        let hello = Message::Hello {
            proxy_id: self.proxy_id.clone(),
            token: self.token.clone(),
            group: self.group.clone(),
            algorithms: self.algorithms.clone(),
            last_acked_sequence: acked,
        };
        if let Err(e) = send(&mut write, &hello).await {
            return e;
        }
        let welcome = match tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await {
            Ok(Ok(Some(line))) => decode(line),
            Ok(Ok(None)) => return "server closed the connection".into(),
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return "no Welcome from the server".into(),
        };
        let mut sent_through = match welcome {
            Ok(Message::Welcome {
                assignments,
                last_applied_sequence,
            }) => {
                tracing::info!(server = %self.address, last_applied_sequence, assignments = assignments.len(), "control channel up");
                if last_applied_sequence > acked {
                    // The server applied batches whose acknowledgement we never got.
                    if let Err(e) = self.outbox.acknowledge(last_applied_sequence).await {
                        return format!("server says {last_applied_sequence} applied: {e}");
                    }
                }
                for a in assignments {
                    self.apply(a).await;
                }
                last_applied_sequence.max(acked)
            }
            Ok(Message::Error { code, message }) => return format!("refused: {code}: {message}"),
            Ok(other) => return format!("expected Welcome, got {other:?}"),
            Err(e) => return format!("bad Welcome: {e}"),
        };
        let mut acked = sent_through;
        let mut sealed = self.outbox.sealed();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            // Send what is sealed and within the window.
            if sent_through < acked + WINDOW as u64 {
                let room = (acked + WINDOW as u64 - sent_through) as usize;
                match self.outbox.unacknowledged_after(sent_through, room).await {
                    Ok(batches) => {
                        for b in batches {
                            if b.sequence > acked + WINDOW as u64 {
                                break;
                            }
                            let seq = b.sequence;
                            if let Err(e) = send(&mut write, &Message::Batch(b)).await {
                                return e;
                            }
                            sent_through = seq;
                        }
                    }
                    Err(e) => return format!("outbox: {e}"),
                }
            }
            tokio::select! {
                line = lines.next_line() => {
                    let msg = match line {
                        Ok(Some(l)) => decode(l),
                        Ok(None) => return "server closed the connection".into(),
                        Err(e) => return e.to_string(),
                    };
                    match msg {
                        Ok(Message::Ack { sequence }) => {
                            if let Err(e) = self.outbox.acknowledge(sequence).await {
                                return format!("acknowledging {sequence}: {e}");
                            }
                            acked = acked.max(sequence);
                        }
                        Ok(Message::Assign(a)) => self.apply(a).await,
                        Ok(Message::Error { code, message }) => return format!("server error {code}: {message}"),
                        Ok(other) => tracing::debug!(?other, "ignoring a control message"),
                        Err(e) => return format!("bad control message: {e}"),
                    }
                }
                _ = sealed.changed() => {}
                _ = tick.tick() => {}
            }
        }
    }
}

async fn send(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    message: &Message,
) -> Result<(), String> {
    let mut bytes = encode(message);
    bytes.push(b'\n');
    write
        .write_all(&bytes)
        .await
        .map_err(|e| format!("write failed: {e}"))
}
