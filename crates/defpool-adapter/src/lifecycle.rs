//! Found blocks from acceptance to maturity or orphaning (pure: the daemon task feeds it the
//! node's confirmation counts).
//!
//! A block is *immature* while the node has it in the main chain with fewer than
//! `maturity + 1` confirmations (its coinbase becomes spendable `maturity` blocks after it),
//! *matured* from then on, and *orphaned* when the node reports it outside the main chain
//! (`confirmations: -1`). A reorg back makes an orphaned block immature or matured again: each
//! change is reported once, so the ledger can credit, reverse and re-credit exactly.

use defpool_control::BlockState;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedBlock {
    pub hash: String,
    pub height: u64,
    pub reward: u64,
    pub state: BlockState,
    pub confirmations: i64,
}

/// A reported change of a block's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub hash: String,
    pub height: u64,
    pub from: BlockState,
    pub to: BlockState,
    pub confirmations: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tracker {
    maturity: u32,
    blocks: Vec<TrackedBlock>,
}

/// Blocks this far past maturity (or orphaned this long ago, in heights) are no longer watched.
const FORGET_AFTER: i64 = 100;

impl Tracker {
    pub fn new(maturity: u32) -> Tracker {
        Tracker {
            maturity,
            blocks: Vec::new(),
        }
    }

    pub fn blocks(&self) -> &[TrackedBlock] {
        &self.blocks
    }

    /// A block the node accepted. Already-tracked hashes are ignored.
    pub fn found(&mut self, hash: &str, height: u64, reward: u64) -> bool {
        if self.blocks.iter().any(|b| b.hash == hash) {
            return false;
        }
        self.blocks.push(TrackedBlock {
            hash: hash.to_string(),
            height,
            reward,
            state: BlockState::Immature,
            confirmations: 1,
        });
        true
    }

    fn state_for(&self, confirmations: i64) -> BlockState {
        if confirmations < 0 {
            BlockState::Orphaned
        } else if confirmations > self.maturity as i64 {
            BlockState::Matured
        } else {
            BlockState::Immature
        }
    }

    /// The node's confirmation count for a tracked block; a transition if its state changed.
    pub fn observe(&mut self, hash: &str, confirmations: i64) -> Option<Transition> {
        let state = self.state_for(confirmations);
        let b = self.blocks.iter_mut().find(|b| b.hash == hash)?;
        b.confirmations = confirmations;
        if b.state == state {
            return None;
        }
        let from = b.state;
        b.state = state;
        Some(Transition {
            hash: b.hash.clone(),
            height: b.height,
            from,
            to: state,
            confirmations,
        })
    }

    /// Stops watching blocks that can no longer change in practice.
    pub fn prune(&mut self, tip_height: u64) {
        let maturity = self.maturity as i64;
        self.blocks.retain(|b| {
            let depth = tip_height as i64 - b.height as i64;
            match b.state {
                BlockState::Matured => b.confirmations <= maturity + FORGET_AFTER,
                BlockState::Orphaned => depth <= maturity + FORGET_AFTER,
                BlockState::Immature => true,
            }
        });
    }

    /// Hashes still watched.
    pub fn watched(&self) -> Vec<String> {
        self.blocks.iter().map(|b| b.hash.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn immature_then_matured_after_maturity_more_blocks() {
        let mut t = Tracker::new(100);
        assert!(t.found("aa", 440, 2_500_000_000));
        assert!(!t.found("aa", 440, 2_500_000_000));
        assert_eq!(t.observe("aa", 50), None);
        assert_eq!(t.observe("aa", 100), None);
        let tr = t.observe("aa", 101).unwrap();
        assert_eq!(
            (tr.from, tr.to),
            (BlockState::Immature, BlockState::Matured)
        );
        assert_eq!(t.observe("aa", 102), None);
    }

    #[test]
    fn orphaned_by_a_reorg_and_back() {
        let mut t = Tracker::new(100);
        t.found("bb", 500, 1);
        let tr = t.observe("bb", -1).unwrap();
        assert_eq!(tr.to, BlockState::Orphaned);
        assert_eq!(t.observe("bb", -1), None);
        let tr = t.observe("bb", 3).unwrap();
        assert_eq!(
            (tr.from, tr.to),
            (BlockState::Orphaned, BlockState::Immature)
        );
        // Matured, then orphaned by a deep reorg: reported, so the ledger reverses it.
        t.observe("bb", 200).unwrap();
        let tr = t.observe("bb", -1).unwrap();
        assert_eq!(
            (tr.from, tr.to),
            (BlockState::Matured, BlockState::Orphaned)
        );
    }

    #[test]
    fn unknown_hashes_and_pruning() {
        let mut t = Tracker::new(100);
        assert_eq!(t.observe("zz", 5), None);
        t.found("cc", 10, 1);
        t.observe("cc", 300);
        t.prune(310);
        assert!(t.watched().is_empty());
    }

    proptest! {
        /// Reported transitions chain: each starts where the previous ended, and the state is
        /// always the one the last observation implies.
        #[test]
        fn transitions_chain(obs in proptest::collection::vec(-1i64..300, 1..60)) {
            let mut t = Tracker::new(100);
            t.found("h", 1, 1);
            let mut state = BlockState::Immature;
            for c in obs {
                if let Some(tr) = t.observe("h", c) {
                    prop_assert_eq!(tr.from, state);
                    prop_assert_ne!(tr.from, tr.to);
                    state = tr.to;
                }
                let expect = if c < 0 { BlockState::Orphaned } else if c > 100 { BlockState::Matured } else { BlockState::Immature };
                prop_assert_eq!(state, expect);
            }
        }
    }
}
