//! The control protocol between DefPool proxies and the server, so neither invents it alone.
//!
//! * The server owns desired state: per proxy group and algorithm an [`Assignment`] with an epoch;
//!   a proxy applies the highest epoch it has seen ([`AssignmentSlot`]).
//! * Proxies report share work, new users and [`Event`]s in [`Batch`]es keyed by
//!   `(proxy_id, sequence)`; the server applies each batch exactly once ([`SequenceCheck`]) and
//!   acknowledges it, and only then does the proxy drop it from its outbox.
//! * Every message travels in a versioned [`Envelope`] ([`encode`] / [`decode`]).
//! * [`memory::MemoryServer`] is an in-memory server double for tests.

pub mod assignment;
pub mod batch;
pub mod memory;
pub mod wire;

pub use assignment::{Assignment, AssignmentSlot, MiningTarget, Offer, UpstreamKind, UpstreamRef};
pub use batch::{
    Batch, BlockState, Event, HealthState, ProxyId, Record, SequenceCheck, SequenceLedger,
    UserRecord, WorkRecord,
};
pub use wire::{decode, encode, Envelope, Message, WireError, PROTOCOL_VERSION};
