//! Merkle trees over transaction ids: the full root for block building, and the branch a miner
//! needs to fold its coinbase into the root.

use crate::hash::{merkle_parent, Hash32};

/// The merkle root of `txids` (internal byte order), duplicating the last node of odd levels as
/// Bitcoin does. The root of a single transaction is its txid; of none, all zeros.
pub fn merkle_root(txids: &[Hash32]) -> Hash32 {
    if txids.is_empty() {
        return [0; 32];
    }
    let mut level = txids.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| merkle_parent(&pair[0], pair.get(1).unwrap_or(&pair[0])))
            .collect();
    }
    level[0]
}

/// The branch that folds the first transaction (the coinbase) into the root: the sibling at each
/// level, bottom up. `txids[0]` itself is not used, so callers may pass any placeholder for it.
pub fn coinbase_branch(txids: &[Hash32]) -> Vec<Hash32> {
    let mut branch = Vec::new();
    if txids.len() <= 1 {
        return branch;
    }
    let mut level = txids.to_vec();
    while level.len() > 1 {
        branch.push(*level.get(1).unwrap_or(&level[0]));
        level = level
            .chunks(2)
            .map(|pair| merkle_parent(&pair[0], pair.get(1).unwrap_or(&pair[0])))
            .collect();
    }
    branch
}

/// Fold a coinbase txid up a branch to the merkle root.
pub fn fold_branch(coinbase_txid: Hash32, branch: &[Hash32]) -> Hash32 {
    branch
        .iter()
        .fold(coinbase_txid, |acc, sibling| merkle_parent(&acc, sibling))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha256d;
    use proptest::prelude::*;

    #[test]
    fn small_trees() {
        let a = sha256d(b"a");
        let b = sha256d(b"b");
        let c = sha256d(b"c");
        assert_eq!(merkle_root(&[a]), a);
        assert_eq!(merkle_root(&[a, b]), merkle_parent(&a, &b));
        let ab = merkle_parent(&a, &b);
        let cc = merkle_parent(&c, &c);
        assert_eq!(merkle_root(&[a, b, c]), merkle_parent(&ab, &cc));
        assert_eq!(coinbase_branch(&[a, b, c]), vec![b, cc]);
        assert!(coinbase_branch(&[a]).is_empty());
    }

    proptest! {
        #[test]
        fn folding_the_branch_gives_the_root(seeds in prop::collection::vec(any::<u64>(), 1..70)) {
            let txids: Vec<Hash32> = seeds.iter().map(|s| sha256d(&s.to_le_bytes())).collect();
            let branch = coinbase_branch(&txids);
            prop_assert_eq!(fold_branch(txids[0], &branch), merkle_root(&txids));
            // The branch is as long as the tree is deep.
            let depth = (usize::BITS - (txids.len() - 1).leading_zeros()) as usize;
            prop_assert_eq!(branch.len(), depth);
        }

        #[test]
        fn the_branch_does_not_depend_on_the_coinbase(seeds in prop::collection::vec(any::<u64>(), 2..40), other: u64) {
            let mut txids: Vec<Hash32> = seeds.iter().map(|s| sha256d(&s.to_le_bytes())).collect();
            let branch = coinbase_branch(&txids);
            txids[0] = sha256d(&other.to_le_bytes());
            prop_assert_eq!(coinbase_branch(&txids), branch);
        }
    }
}
