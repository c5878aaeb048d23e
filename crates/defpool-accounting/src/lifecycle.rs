//! A solo block's life in the ledger. The adapter reports a found block as immature, then
//! matured (spendable) or orphaned, and a reorg can move it back. The ledger follows the state
//! with two independent facts:
//!
//! * *recognised* (immature or matured): the reward sits in the pool's books —
//!   `recognize`: `chain:<coin>` −reward, `pool:immature:<coin>` +reward; undone by
//!   `writeoff`: the exact opposite.
//! * *credited* (matured): users have their shares — `credit`: `pool:immature:<coin>` −reward,
//!   `pool:fees` +fee, `pool:unattributed` +rest, `user:<u>` +share (the block's PPLNS
//!   [`Attribution`], fixed when the block was found); undone by `reverse`: the exact negation of
//!   the credit posting.
//!
//! A transition posts whatever changes these two facts, so after any sequence of states the
//! postings net to: nothing (orphaned, or never seen), the reward in `pool:immature:<coin>`
//! (immature), or the attribution in users' and the pool's accounts (matured). Every posting is
//! balanced, so the ledger sums to zero at every step, and `pool:immature:<coin>` never goes
//! negative.
//!
//! Transaction ids are `<hash>:<kind>:<n>` with `kind` one of `recognize`, `credit`, `reverse`,
//! `writeoff` and `n` the block's transition number (0 for the first state the server records,
//! +1 for every change after). Both come from state the server stores with the block, so
//! processing the same event again derives the same ids — and, once the new state is stored,
//! nothing at all (`from == to`). Ids never repeat within a block: each transition has its own
//! `n`, and a transition posts at most one posting of each kind. Block hashes are unique across
//! chains, so ids are unique across the ledger.

use defpool_control::BlockState;
use defpool_core::Ticker;
use serde::{Deserialize, Serialize};

use crate::account::Account;
use crate::posting::{Posting, MAX_AMOUNT};
use crate::scheme::{pplns, Attribution, SchemeError};

/// Why a block's earning could not be set up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Scheme(#[from] SchemeError),
    #[error("a block needs its hash")]
    NoHash,
    #[error("reward {reward} is above the largest ledger amount ({MAX_AMOUNT})")]
    RewardTooLarge { reward: u64 },
    #[error("the attribution divides {attributed} units, the block's reward is {reward}")]
    Mismatch { reward: u64, attributed: u128 },
}

/// A found block and how its reward divides among users: fixed when the block is found (the
/// PPLNS window is the work before it), so the credit and its reversal are always the same
/// amounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawBlockEarning", into = "RawBlockEarning")]
pub struct BlockEarning {
    coin: Ticker,
    hash: String,
    reward: u64,
    attribution: Attribution,
}

#[derive(Serialize, Deserialize)]
struct RawBlockEarning {
    coin: Ticker,
    hash: String,
    reward: u64,
    attribution: Attribution,
}

impl TryFrom<RawBlockEarning> for BlockEarning {
    type Error = BlockError;
    fn try_from(r: RawBlockEarning) -> Result<Self, Self::Error> {
        BlockEarning::with_attribution(r.coin, r.hash, r.reward, r.attribution)
    }
}

impl From<BlockEarning> for RawBlockEarning {
    fn from(b: BlockEarning) -> Self {
        RawBlockEarning {
            coin: b.coin,
            hash: b.hash,
            reward: b.reward,
            attribution: b.attribution,
        }
    }
}

impl BlockEarning {
    /// A block of `coin` with `hash` paying `reward`, attributed by PPLNS over the last
    /// `window_work` of work before it (`window`: `(user, work)` records, newest first).
    pub fn new(
        coin: Ticker,
        hash: impl Into<String>,
        reward: u64,
        window: &[(String, u128)],
        window_work: u128,
        fee_bps: u32,
    ) -> Result<BlockEarning, BlockError> {
        let attribution = pplns(reward, window, window_work, fee_bps)?;
        BlockEarning::with_attribution(coin, hash, reward, attribution)
    }

    /// A block with an attribution worked out before (say, loaded from the store); it must
    /// divide exactly the reward.
    pub fn with_attribution(
        coin: Ticker,
        hash: impl Into<String>,
        reward: u64,
        attribution: Attribution,
    ) -> Result<BlockEarning, BlockError> {
        let hash = hash.into();
        if hash.is_empty() {
            return Err(BlockError::NoHash);
        }
        if reward > MAX_AMOUNT {
            return Err(BlockError::RewardTooLarge { reward });
        }
        if attribution.total() != reward as u128 {
            return Err(BlockError::Mismatch {
                reward,
                attributed: attribution.total(),
            });
        }
        Ok(BlockEarning {
            coin,
            hash,
            reward,
            attribution,
        })
    }

    pub fn coin(&self) -> &Ticker {
        &self.coin
    }

    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn reward(&self) -> u64 {
        self.reward
    }

    pub fn attribution(&self) -> &Attribution {
        &self.attribution
    }

    fn txn_id(&self, kind: &str, n: u32) -> String {
        format!("{}:{kind}:{n}", self.hash)
    }

    /// `chain:<coin>` → `pool:immature:<coin>`, the whole reward. `None` for a zero reward.
    fn recognize(&self, n: u32) -> Option<Posting> {
        (self.reward > 0).then(|| {
            Posting::transfer(
                self.txn_id("recognize", n),
                &self.coin,
                Account::Chain(self.coin.clone()),
                Account::PoolImmature(self.coin.clone()),
                self.reward,
                format!("block {} found: reward immature", self.hash),
            )
            .expect("reward is non-zero and within MAX_AMOUNT")
        })
    }

    /// The opposite of [`Self::recognize`].
    fn writeoff(&self, n: u32) -> Option<Posting> {
        self.recognize(n).map(|p| {
            p.negated(
                self.txn_id("writeoff", n),
                format!("block {} orphaned: reward written off", self.hash),
            )
        })
    }

    /// The attribution, paid out of `pool:immature:<coin>`.
    fn credit(&self, n: u32) -> Option<Posting> {
        (self.reward > 0).then(|| {
            self.attribution
                .to_posting(
                    self.txn_id("credit", n),
                    &self.coin,
                    Account::PoolImmature(self.coin.clone()),
                )
                .expect("attribution divides the non-zero reward, within MAX_AMOUNT")
        })
    }

    /// The exact negation of [`Self::credit`].
    fn reverse(&self, n: u32) -> Option<Posting> {
        self.credit(n).map(|p| {
            p.negated(
                self.txn_id("reverse", n),
                format!("block {} no longer matured: credit reversed", self.hash),
            )
        })
    }
}

fn recognised(s: Option<BlockState>) -> bool {
    matches!(s, Some(BlockState::Immature | BlockState::Matured))
}

fn credited(s: Option<BlockState>) -> bool {
    matches!(s, Some(BlockState::Matured))
}

/// The postings for `block` moving from state `from` (`None`: not seen before; a `BlockFound`
/// event is a move to [`BlockState::Immature`]) to `to`, as the block's `n`-th transition.
/// In order: reverse the credit and write off the reward when leaving those states, recognise
/// the reward and credit users when entering them. Nothing when `from == to`; nothing for users
/// when a block is orphaned before it matured.
pub fn on_block_status(
    block: &BlockEarning,
    from: Option<BlockState>,
    to: BlockState,
    n: u32,
) -> Vec<Posting> {
    let to = Some(to);
    let mut out = Vec::new();
    if credited(from) && !credited(to) {
        out.extend(block.reverse(n));
    }
    if recognised(from) && !recognised(to) {
        out.extend(block.writeoff(n));
    }
    if !recognised(from) && recognised(to) {
        out.extend(block.recognize(n));
    }
    if !credited(from) && credited(to) {
        out.extend(block.credit(n));
    }
    out
}

/// What the server stores per block to drive [`on_block_status`]: its last state and how many
/// transitions it has had.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockBook {
    pub state: Option<BlockState>,
    pub transitions: u32,
}

impl BlockBook {
    /// Move to `to` and return the postings for it; store the new book with them, in one
    /// transaction. Reporting the current state again changes nothing and posts nothing.
    pub fn advance(&mut self, block: &BlockEarning, to: BlockState) -> Vec<Posting> {
        if self.state == Some(to) {
            return Vec::new();
        }
        let postings = on_block_status(block, self.state, to, self.transitions);
        self.state = Some(to);
        self.transitions += 1;
        postings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;
    use BlockState::*;

    fn ltc() -> Ticker {
        "LTC".parse().unwrap()
    }

    fn block() -> BlockEarning {
        let window = vec![("a".to_string(), 3u128), ("b".to_string(), 1)];
        BlockEarning::new(ltc(), "00ab", 1_000, &window, 4, 100).unwrap()
    }

    fn ids(ps: &[Posting]) -> Vec<&str> {
        ps.iter().map(|p| p.txn_id()).collect()
    }

    #[test]
    fn the_usual_life() {
        let b = block();
        let mut book = BlockBook::default();
        let mut l = Ledger::new();
        let user = |u: &str| Account::user(u);

        let ps = book.advance(&b, Immature);
        assert_eq!(ids(&ps), ["00ab:recognize:0"]);
        ps.iter().for_each(|p| assert!(l.apply(p)));
        assert_eq!(l.balance(&Account::PoolImmature(ltc()), &ltc()), 1_000);
        assert_eq!(l.balance(&user("a"), &ltc()), 0);
        assert!(book.advance(&b, Immature).is_empty());

        let ps = book.advance(&b, Matured);
        assert_eq!(ids(&ps), ["00ab:credit:1"]);
        ps.iter().for_each(|p| assert!(l.apply(p)));
        // Fee 10; 990 split 3:1.
        assert_eq!(l.balance(&Account::PoolFees, &ltc()), 10);
        assert_eq!(l.balance(&user("a"), &ltc()), 743);
        assert_eq!(l.balance(&user("b"), &ltc()), 247);
        assert_eq!(l.balance(&Account::PoolImmature(ltc()), &ltc()), 0);

        // A deep reorg: orphaned after crediting, then back.
        let ps = book.advance(&b, Orphaned);
        assert_eq!(ids(&ps), ["00ab:reverse:2", "00ab:writeoff:2"]);
        let credit = b.credit(1).unwrap();
        assert_eq!(ps[0].entries(), credit.negated("x", "").entries());
        ps.iter().for_each(|p| assert!(l.apply(p)));
        for (_, _, balance) in l.balances() {
            assert_eq!(balance, 0);
        }

        let ps = book.advance(&b, Matured);
        assert_eq!(ids(&ps), ["00ab:recognize:3", "00ab:credit:3"]);
        ps.iter().for_each(|p| assert!(l.apply(p)));
        assert_eq!(l.balance(&user("a"), &ltc()), 743);
        assert_eq!(l.total(&ltc()), 0);
    }

    #[test]
    fn orphaned_before_maturity_touches_no_user() {
        let b = block();
        let ps = on_block_status(&b, Some(Immature), Orphaned, 1);
        assert_eq!(ids(&ps), ["00ab:writeoff:1"]);
        assert!(ps[0]
            .entries()
            .iter()
            .all(|e| e.account.as_user().is_none()));
        assert!(on_block_status(&b, None, Orphaned, 0).is_empty());
        assert!(on_block_status(&b, Some(Matured), Matured, 5).is_empty());
        // Matured straight away (the server learnt of it late).
        assert_eq!(
            ids(&on_block_status(&b, None, Matured, 0)),
            ["00ab:recognize:0", "00ab:credit:0"]
        );
        // Back from matured to immature (a reorg): the credit is taken back, the reward stays.
        assert_eq!(
            ids(&on_block_status(&b, Some(Matured), Immature, 4)),
            ["00ab:reverse:4"]
        );
    }

    #[test]
    fn zero_reward_posts_nothing() {
        let b = BlockEarning::new(ltc(), "00", 0, &[], 10, 100).unwrap();
        assert!(on_block_status(&b, None, Matured, 0).is_empty());
        assert!(on_block_status(&b, Some(Matured), Orphaned, 1).is_empty());
    }

    #[test]
    fn refusals_and_serde() {
        assert_eq!(
            BlockEarning::new(ltc(), "", 1, &[], 1, 0),
            Err(BlockError::NoHash)
        );
        assert!(matches!(
            BlockEarning::with_attribution(ltc(), "h", 5, Attribution::default()),
            Err(BlockError::Mismatch { .. })
        ));
        let b = block();
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<BlockEarning>(&json).unwrap(), b);
        let bad = json.replace("\"reward\":1000", "\"reward\":1001");
        assert!(serde_json::from_str::<BlockEarning>(&bad).is_err());
    }
}
