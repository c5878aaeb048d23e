//! An in-memory control server double, for tests of proxies and of the protocol rules: it
//! authenticates proxies, hands out assignments (on connect and on every change), applies
//! batches exactly once and keeps the work it was sent. Not a server: no network, no storage.

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use defpool_core::secret::Secret;
use defpool_core::{Algorithm, Ticker};

use crate::assignment::Assignment;
use crate::batch::{Batch, ProxyId, Record, SequenceCheck, SequenceLedger};
use crate::wire::Message;

#[derive(Default)]
struct State {
    tokens: BTreeMap<ProxyId, Secret>,
    assignments: BTreeMap<(String, Algorithm), Assignment>,
    subscribers: Vec<(String, Sender<Assignment>)>,
    ledger: SequenceLedger,
    applied: Vec<Batch>,
}

/// The double. Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct MemoryServer {
    state: Arc<Mutex<State>>,
}

/// One connected proxy.
pub struct Session {
    server: MemoryServer,
    proxy_id: ProxyId,
    /// Assignments pushed after the Welcome.
    pub assignments: Receiver<Assignment>,
}

impl MemoryServer {
    pub fn new(tokens: impl IntoIterator<Item = (ProxyId, Secret)>) -> MemoryServer {
        let server = MemoryServer::default();
        server.lock().tokens = tokens.into_iter().collect();
        server
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic in another test thread must not hide this one's result.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handle a proxy's Hello: a session and the Welcome, or the Error to send back.
    pub fn connect(&self, hello: Message) -> Result<(Session, Message), Refused> {
        let Message::Hello {
            proxy_id,
            token,
            group,
            algorithms,
            ..
        } = hello
        else {
            return Err(Refused::new(
                "expected-hello",
                "the first message must be hello",
            ));
        };
        let mut state = self.lock();
        match state.tokens.get(&proxy_id) {
            Some(t) if t.matches(token.expose()) => {}
            _ => return Err(Refused::new("bad-token", "unknown proxy or wrong token")),
        }
        let (tx, rx) = channel();
        state.subscribers.push((group.clone(), tx));
        let assignments = algorithms
            .iter()
            .filter_map(|a| state.assignments.get(&(group.clone(), *a)).cloned())
            .collect();
        let welcome = Message::Welcome {
            assignments,
            last_applied_sequence: state.ledger.last_applied(&proxy_id),
        };
        Ok((
            Session {
                server: self.clone(),
                proxy_id,
                assignments: rx,
            },
            welcome,
        ))
    }

    /// Set a new assignment and push it to every connected proxy of its group. An assignment
    /// whose epoch is not above the current one is refused.
    pub fn publish(&self, assignment: Assignment) -> Result<(), u64> {
        let mut state = self.lock();
        let key = (assignment.group.clone(), assignment.algorithm);
        if let Some(cur) = state.assignments.get(&key) {
            if assignment.epoch <= cur.epoch {
                return Err(cur.epoch);
            }
        }
        state.assignments.insert(key, assignment.clone());
        state.subscribers.retain(|(group, tx)| {
            group != &assignment.group || tx.send(assignment.clone()).is_ok()
        });
        Ok(())
    }

    /// Every batch applied, in order.
    pub fn applied(&self) -> Vec<Batch> {
        self.lock().applied.clone()
    }

    /// Accepted work (including late work) per (user, coin) over all applied batches.
    pub fn work_by_user_and_coin(&self) -> BTreeMap<(String, Ticker), u128> {
        let mut totals = BTreeMap::new();
        for batch in &self.lock().applied {
            for record in &batch.records {
                if let Record::Work(w) = record {
                    *totals.entry((w.user.clone(), w.coin.clone())).or_insert(0) +=
                        w.accepted_work + w.late_work;
                }
            }
        }
        totals
    }
}

impl Session {
    /// Submit a batch: applied once and acknowledged, acknowledged again if already applied, or
    /// refused when one is missing before it.
    pub fn submit(&self, batch: Batch) -> Message {
        if batch.proxy_id != self.proxy_id {
            return error("wrong-proxy", "batch names another proxy than the session");
        }
        let mut state = self.server.lock();
        let sequence = batch.sequence;
        match state.ledger.check(&self.proxy_id, sequence) {
            SequenceCheck::Apply => {
                state.ledger.mark_applied(&self.proxy_id, sequence);
                state.applied.push(batch);
                Message::Ack { sequence }
            }
            SequenceCheck::Duplicate => Message::Ack { sequence },
            SequenceCheck::Gap { expected } => error(
                "gap",
                &format!("batch {sequence} arrived before {expected}"),
            ),
        }
    }
}

/// Why a connection was refused; [`Refused::into_message`] is what goes back on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub code: String,
    pub message: String,
}

impl Refused {
    fn new(code: &str, message: &str) -> Refused {
        Refused {
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn into_message(self) -> Message {
        Message::Error {
            code: self.code,
            message: self.message,
        }
    }
}

fn error(code: &str, message: &str) -> Message {
    Message::Error {
        code: code.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assignment::tests::assignment;
    use crate::batch::WorkRecord;

    fn hello(token: &str) -> Message {
        Message::Hello {
            proxy_id: ProxyId("p1".into()),
            token: Secret::new(token),
            group: "default".into(),
            algorithms: vec![Algorithm::Scrypt],
            last_acked_sequence: 0,
        }
    }

    fn batch(sequence: u64, work: u128) -> Batch {
        Batch {
            proxy_id: ProxyId("p1".into()),
            sequence,
            created_at_ms: 0,
            records: vec![Record::Work(WorkRecord {
                user: "u".into(),
                worker: "w".into(),
                coin: "LTC".parse().unwrap(),
                epoch: 1,
                upstream: "x".into(),
                accepted_work: work,
                accepted_shares: 1,
                late_work: 0,
                late_shares: 0,
                rejected: Default::default(),
                from_ms: 0,
                to_ms: 1,
            })],
        }
    }

    #[test]
    fn bad_token_is_refused() {
        let server = MemoryServer::new([(ProxyId("p1".into()), Secret::new("right"))]);
        let err = server.connect(hello("wrong")).err().unwrap();
        assert_eq!(err.code, "bad-token");
        assert!(matches!(err.into_message(), Message::Error { code, .. } if code == "bad-token"));
    }

    #[test]
    fn assignments_on_connect_and_on_change() {
        let server = MemoryServer::new([(ProxyId("p1".into()), Secret::new("t"))]);
        server.publish(assignment(1, "LTC")).unwrap();
        let (session, welcome) = server.connect(hello("t")).unwrap();
        assert!(
            matches!(welcome, Message::Welcome { ref assignments, .. } if assignments[0].epoch == 1)
        );
        assert_eq!(server.publish(assignment(1, "DOGE")), Err(1));
        server.publish(assignment(2, "DOGE")).unwrap();
        assert_eq!(session.assignments.try_recv().unwrap().epoch, 2);
    }

    #[test]
    fn batches_apply_once_even_when_resent() {
        let server = MemoryServer::new([(ProxyId("p1".into()), Secret::new("t"))]);
        let (session, _) = server.connect(hello("t")).unwrap();
        assert_eq!(session.submit(batch(1, 10)), Message::Ack { sequence: 1 });
        assert_eq!(session.submit(batch(1, 10)), Message::Ack { sequence: 1 });
        assert!(
            matches!(session.submit(batch(3, 5)), Message::Error { code, .. } if code == "gap")
        );
        assert_eq!(session.submit(batch(2, 5)), Message::Ack { sequence: 2 });
        let totals = server.work_by_user_and_coin();
        assert_eq!(totals[&("u".to_string(), "LTC".parse().unwrap())], 15);
        // A reconnecting proxy learns where the server's ledger stands.
        let (_, welcome) = server.connect(hello("t")).unwrap();
        assert!(matches!(
            welcome,
            Message::Welcome {
                last_applied_sequence: 2,
                ..
            }
        ));
    }
}
