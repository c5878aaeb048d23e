//! The server's side of the control plane. One task per connection:
//! `Hello` (proxy id + token, checked against `[[server.proxies]]`) → `Welcome` (current
//! assignments of the proxy's group, the last sequence applied for it) → then batches are
//! applied in order and acknowledged, and assignment changes are pushed as they happen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use defpool_control::{decode, encode, Assignment, Batch, Message, ProxyId, Record, WireError};
use defpool_core::secret::Secret;
use defpool_store::{ApplyOutcome, ApplySummary};
use defpool_stratum::sv1::LineReader;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};

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
        let run_batches = self.shared.server_config().ingest_run_batches.max(1) as usize;
        // Messages are read and decoded by their own task while batches are applied, so that
        // what arrives meanwhile is ready to join the next run. Bounded by bytes read ahead
        // (`READ_AHEAD_BYTES`): reading stops until handled messages free their share.
        let (inbox_tx, mut inbox) = mpsc::channel(READ_AHEAD);
        let _reader = AbortOnDrop(tokio::spawn(read_messages(lines, inbox_tx)));
        // A message read while gathering a run that is not part of it, handled next.
        let mut pending: Option<Read> = None;
        loop {
            tokio::select! {
                read = next_incoming(&mut inbox, &mut pending) => {
                    // The read-ahead budget of this iteration's messages, freed at its end.
                    let mut held = vec![read.held];
                    let batch = match read.incoming {
                        Incoming::Message(Ok(Message::Batch(b))) => b,
                        Incoming::Message(Ok(other)) => {
                            tracing::debug!(proxy = %proxy.0, ?other, "ignoring a control message");
                            continue;
                        }
                        Incoming::Message(Err(e)) => {
                            let _ = send(&mut write, &Message::Error { code: "bad-message".into(), message: e.to_string() }).await;
                            return format!("bad message: {e}");
                        }
                        Incoming::Closed => return "proxy closed the connection".into(),
                        Incoming::Failed(e) => return e,
                    };
                    if batch.proxy_id != proxy {
                        let _ = send(&mut write, &Message::Error { code: "wrong-proxy".into(), message: "a batch of another proxy".into() }).await;
                        return "a batch of another proxy".into();
                    }
                    // The batches the proxy has already sent behind this one, in sequence, join
                    // it in one transaction (the store applies each exactly once all the same);
                    // anything else read is handled next.
                    let mut run = vec![batch];
                    let mut records = run[0].records.len();
                    while run.len() < run_batches && records < RUN_RECORDS {
                        let next = match inbox.try_recv() {
                            Ok(next) => next,
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => Read { incoming: Incoming::Closed, held: None },
                        };
                        match next.incoming {
                            Incoming::Message(Ok(Message::Batch(b)))
                                if b.proxy_id == proxy
                                    && run.last().and_then(|l| l.sequence.checked_add(1)) == Some(b.sequence) =>
                            {
                                records += b.records.len();
                                run.push(b);
                                held.push(next.held);
                            }
                            other => {
                                pending = Some(Read { incoming: other, held: next.held });
                                break;
                            }
                        }
                    }
                    let metrics = &self.shared.metrics;
                    // Assignment changes still go out while the run is applied (a run, or a
                    // fold after it, can take a while).
                    let applied = {
                        let apply = self.shared.store.apply_batches(&run);
                        tokio::pin!(apply);
                        loop {
                            tokio::select! {
                                r = &mut apply => break r,
                                change = changes.recv() => {
                                    if let Err(e) = self.push_change(change, &group, &mut write).await {
                                        return e;
                                    }
                                }
                            }
                        }
                    };
                    let outcomes = match applied {
                        Ok(o) => o,
                        Err(e) => {
                            // Not applied, not acknowledged: the proxy keeps them and resends.
                            Metrics::add(&metrics.batch_errors, 1);
                            tracing::error!(proxy = %proxy.0, first = run[0].sequence, batches = run.len(), error = %e, "could not apply batches");
                            return format!("store: {e}");
                        }
                    };
                    if outcomes.iter().any(|o| matches!(o, ApplyOutcome::Applied(_))) {
                        Metrics::add(&metrics.batch_transactions, 1);
                    }
                    for (batch, outcome) in run.iter().zip(outcomes) {
                        let sequence = batch.sequence;
                        match outcome {
                            ApplyOutcome::Gap { expected } => {
                                Metrics::add(&metrics.batches_gap, 1);
                                let _ = send(&mut write, &Message::Error { code: "sequence-gap".into(), message: format!("expected batch {expected}, got {sequence}") }).await;
                                return format!("sequence gap: expected {expected}, got {sequence}");
                            }
                            ApplyOutcome::Applied(summary) => {
                                Metrics::add(&metrics.batches_applied, 1);
                                Metrics::add(&metrics.work_records, summary.work_records as u64);
                                self.after_applied(batch, &summary).await;
                            }
                            ApplyOutcome::Duplicate { .. } => {
                                Metrics::add(&metrics.batches_duplicate, 1);
                                tracing::debug!(proxy = %proxy.0, sequence, "duplicate batch acknowledged again");
                            }
                        }
                        if let Err(e) = send(&mut write, &Message::Ack { sequence }).await {
                            return e;
                        }
                    }
                }
                change = changes.recv() => {
                    if let Err(e) = self.push_change(change, &group, &mut write).await {
                        return e;
                    }
                }
                _ = stop.changed() => return "server stopping".into(),
            }
        }
    }
}

impl ControlPlane {
    /// Sends an assignment change of this proxy's group (after missed changes, the group's
    /// current assignments again); `Err` ends the connection.
    async fn push_change(
        &self,
        change: Result<Assignment, broadcast::error::RecvError>,
        group: &str,
        write: &mut OwnedWriteHalf,
    ) -> Result<(), String> {
        let pushes = match change {
            Ok(a) if a.group == group => vec![a],
            Ok(_) => Vec::new(),
            // Missed changes: resend the current state.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                match self.shared.store.assignments().await {
                    Ok(all) => all.into_iter().filter(|a| a.group == group).collect(),
                    Err(_) => Vec::new(),
                }
            }
            Err(broadcast::error::RecvError::Closed) => return Err("server stopping".into()),
        };
        for a in pushes {
            send(write, &Message::Assign(a)).await?;
            Metrics::add(&self.shared.metrics.assignments_pushed, 1);
        }
        Ok(())
    }

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

/// The most records gathered into one run of batches (see `server.ingest_run_batches`): bounds
/// a transaction's size whatever the batches hold.
const RUN_RECORDS: usize = 100_000;

/// What the connection read next.
enum Incoming {
    Message(Result<Message, WireError>),
    Closed,
    Failed(String),
}

/// Messages read ahead of the one being handled, at most.
const READ_AHEAD: usize = 128;
/// Bytes of messages read ahead, at most (a proxy's window of 64 typical batches is a few MB;
/// one message may be up to `MAX_MESSAGE_BYTES`).
const READ_AHEAD_BYTES: usize = 64 * 1024 * 1024;

/// A message read ahead, with its share of the read-ahead budget (held until it is handled).
struct Read {
    incoming: Incoming,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Reads and decodes the connection's messages until it closes, fails, or the connection's
/// task is gone; waits while the messages read ahead and not yet handled hold
/// `READ_AHEAD_BYTES`.
async fn read_messages<R: tokio::io::AsyncBufRead + Unpin>(
    mut lines: LineReader<R>,
    out: mpsc::Sender<Read>,
) {
    let budget = Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_BYTES));
    loop {
        let read = match lines.next_line().await {
            Ok(Some(l)) => {
                let bytes = l.len().clamp(1, READ_AHEAD_BYTES) as u32;
                let held = budget.clone().acquire_many_owned(bytes).await.ok();
                Read {
                    incoming: Incoming::Message(decode(l)),
                    held,
                }
            }
            Ok(None) => Read {
                incoming: Incoming::Closed,
                held: None,
            },
            Err(e) => Read {
                incoming: Incoming::Failed(e.to_string()),
                held: None,
            },
        };
        let last = !matches!(read.incoming, Incoming::Message(_));
        if out.send(read).await.is_err() || last {
            return;
        }
    }
}

/// The message set aside while gathering a run, else the next one read. Cancel-safe: a
/// set-aside message is taken only when returned, and a channel receive is cancel-safe.
async fn next_incoming(inbox: &mut mpsc::Receiver<Read>, pending: &mut Option<Read>) -> Read {
    if let Some(read) = pending.take() {
        return read;
    }
    inbox.recv().await.unwrap_or(Read {
        incoming: Incoming::Closed,
        held: None,
    })
}

/// Stops a task when its owner is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
