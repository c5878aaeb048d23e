//! Assignments: what a proxy group mines for one algorithm, and the rule for applying them.

use defpool_core::secret::{exposed, Secret};
use defpool_core::{Algorithm, Ticker};
use serde::{Deserialize, Serialize};

/// The protocol an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// An external Stratum V2 pool.
    Sv2,
    /// An external Stratum V1 pool.
    Sv1,
    /// DefPool's own coin adapter (an SV2 pool over a coin daemon: solo mode).
    Adapter,
}

/// One upstream a proxy may send work to, with the credentials it logs in with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamRef {
    /// Unique name, as in the config (`ltc-solo`, `viabtc-bch`, …).
    pub name: String,
    pub coin: Ticker,
    pub kind: UpstreamKind,
    /// `host:port`.
    pub address: String,
    /// SV2 authority public key the upstream must present (SV2 and adapter).
    #[serde(default)]
    pub authority_public_key: Option<String>,
    pub username: String,
    /// Carried in clear on the control channel only; redacted everywhere else.
    #[serde(with = "exposed", default)]
    pub password: Secret,
}

/// A coin to mine, with the chains merge-mined on its work, and its share of hashrate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MiningTarget {
    pub coin: Ticker,
    /// Chains merge-mined on this coin's work (DOGE on LTC).
    #[serde(default)]
    pub merged: Vec<Ticker>,
    /// Relative weight when hashrate is split across several targets (1 when alone).
    pub weight: u32,
}

/// What the proxies of one group mine for one algorithm, from `epoch` on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Strictly increasing per (group, algorithm); a higher epoch always wins.
    pub epoch: u64,
    /// Proxy group the assignment is for (`default` unless the operator defines groups).
    pub group: String,
    pub algorithm: Algorithm,
    /// One target, or several with weights.
    pub targets: Vec<MiningTarget>,
    /// Upstreams to use, in order of preference (failover walks this list).
    pub upstreams: Vec<UpstreamRef>,
    /// Upstreams to keep connected for a fast next switch.
    #[serde(default)]
    pub standby: Vec<UpstreamRef>,
    /// When the server decided (Unix milliseconds).
    pub issued_at_ms: u64,
    /// The decision's human-readable reason.
    pub reason: String,
}

impl Assignment {
    /// The coin of the heaviest target (the one a single-coin proxy mines).
    pub fn primary_coin(&self) -> Option<&Ticker> {
        self.targets
            .iter()
            .max_by_key(|t| t.weight)
            .map(|t| &t.coin)
    }

    /// Upstreams for one coin, in order.
    pub fn upstreams_for<'a>(&'a self, coin: &'a Ticker) -> impl Iterator<Item = &'a UpstreamRef> {
        self.upstreams.iter().filter(move |u| &u.coin == coin)
    }
}

/// What happened when an assignment was offered to a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Newer than what the slot had: apply it.
    Applied,
    /// The same epoch again (a reconnect resends the current assignment): nothing to do.
    Unchanged,
    /// Older than the slot's: ignored.
    Stale { current_epoch: u64 },
    /// For another group or algorithm than the slot's.
    WrongSlot,
}

/// The assignment a proxy currently follows for one (group, algorithm). A higher epoch wins,
/// whichever path it came by (server control channel, local admin endpoint); applying is
/// idempotent.
#[derive(Clone, Debug)]
pub struct AssignmentSlot {
    group: String,
    algorithm: Algorithm,
    current: Option<Assignment>,
}

impl AssignmentSlot {
    pub fn new(group: impl Into<String>, algorithm: Algorithm) -> AssignmentSlot {
        AssignmentSlot {
            group: group.into(),
            algorithm,
            current: None,
        }
    }

    pub fn current(&self) -> Option<&Assignment> {
        self.current.as_ref()
    }

    pub fn offer(&mut self, assignment: Assignment) -> Offer {
        if assignment.group != self.group || assignment.algorithm != self.algorithm {
            return Offer::WrongSlot;
        }
        match &self.current {
            Some(cur) if assignment.epoch < cur.epoch => Offer::Stale {
                current_epoch: cur.epoch,
            },
            Some(cur) if assignment.epoch == cur.epoch => Offer::Unchanged,
            _ => {
                self.current = Some(assignment);
                Offer::Applied
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn assignment(epoch: u64, coin: &str) -> Assignment {
        Assignment {
            epoch,
            group: "default".into(),
            algorithm: Algorithm::Scrypt,
            targets: vec![MiningTarget {
                coin: coin.parse().unwrap(),
                merged: vec![],
                weight: 1,
            }],
            upstreams: vec![UpstreamRef {
                name: format!("{coin}-solo"),
                coin: coin.parse().unwrap(),
                kind: UpstreamKind::Adapter,
                address: "127.0.0.1:34255".into(),
                authority_public_key: None,
                username: "defpool".into(),
                password: Secret::new("pw"),
            }],
            standby: vec![],
            issued_at_ms: 1,
            reason: "test".into(),
        }
    }

    #[test]
    fn higher_epoch_wins_and_reapplying_is_idempotent() {
        let mut slot = AssignmentSlot::new("default", Algorithm::Scrypt);
        assert_eq!(slot.offer(assignment(2, "LTC")), Offer::Applied);
        assert_eq!(slot.offer(assignment(2, "LTC")), Offer::Unchanged);
        assert_eq!(
            slot.offer(assignment(1, "DOGE")),
            Offer::Stale { current_epoch: 2 }
        );
        assert_eq!(
            slot.current().unwrap().primary_coin().unwrap().as_str(),
            "LTC"
        );
        let mut sha = assignment(9, "BTC");
        sha.algorithm = Algorithm::Sha256d;
        assert_eq!(slot.offer(sha), Offer::WrongSlot);
    }

    proptest! {
        #[test]
        fn the_slot_ends_on_the_highest_epoch_in_any_order(epochs in prop::collection::vec(0u64..50, 1..30)) {
            let mut slot = AssignmentSlot::new("default", Algorithm::Scrypt);
            for e in &epochs {
                slot.offer(assignment(*e, "LTC"));
            }
            prop_assert_eq!(slot.current().unwrap().epoch, *epochs.iter().max().unwrap());
        }
    }
}
