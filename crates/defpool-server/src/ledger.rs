//! The ledger service: block phase changes and recorded pool payouts become postings.
//!
//! * **Solo blocks**: a block in phase `matured` is credited once: its reward comes out of
//!   `chain:<coin>` and is divided by PPLNS over the last `pplns_window_factor × D` work units on
//!   that coin before the block (D: the coin's network difficulty, see [`window_difficulty`]),
//!   minus the pool fee. A credited block that leaves `matured` (orphaned, a reorg) gets the
//!   exact negation of its credit. Transaction ids are `block:<hash>:credit:<k>` and
//!   `block:<hash>:reverse:<k>` (`k` counts earlier credits / reversals of that block), so a
//!   repeated reconcile posts nothing and a crash between applying a batch and posting loses
//!   nothing: [`reconcile`] runs at start, on `ledger_now` and every 10 s, and derives what is
//!   owed from the stored blocks and the ledger alone.
//! * **Pool payouts** ([`record_pool_payout`]): PROP over the period's work, id
//!   `payout:<coin>:<upstream>:<reference>`.
//! * **Unpayable users**: a user whose payout address does not validate on the server (BTC of
//!   the configured network) keeps their work on record, but their share of an earning goes to
//!   `pool:unattributed` (logged with the cause), where an operator sees it and can re-attribute
//!   it with an ordinary posting once the user is fixed. Nothing is lost: every posting still
//!   sums to zero.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use defpool_accounting::{pplns, prop, Account, Attribution};
use defpool_core::address::parse_payout_address;
use defpool_core::coin::{CoinRegistry, Network};
use defpool_core::Ticker;
use defpool_store::{BlockInfo, BlockPhase, LedgerEntry, PostOutcome, Store};
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use rust_decimal::Decimal;
use tokio::sync::watch;

use crate::state::{FeedEvent, Metrics, PoolPayout, Shared};

/// How often the ledger reconciles without being asked.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(10);

/// Users are paid in BTC: payout addresses are BTC addresses of the configured network.
const PAYOUT_COIN: &str = "BTC";
/// Usernames this long are addresses; shorter ones are account names (the proxy's rule).
const ADDRESS_MIN_LEN: usize = 25;
const MAX_ACCOUNT_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{0}")]
    Invalid(String),
    #[error("store: {0}")]
    Store(#[from] defpool_store::StoreError),
}

/// What recording a pool payout did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PayoutRecorded {
    pub txn_id: String,
    /// `false`: this reference was recorded before; nothing new was posted.
    pub posted: bool,
    pub users: u64,
    pub users_amount: i64,
    pub fee_amount: i64,
}

/// The ledger transaction id of a pool payout.
pub fn payout_txn_id(payout: &PoolPayout) -> String {
    format!(
        "payout:{}:{}:{}",
        payout.coin, payout.upstream, payout.reference
    )
}

/// Attributes an external pool payout by PROP over the period and posts it (idempotent per
/// reference). The work is the users' work on the coin sent to that upstream in the period; if
/// none of the period's work names that upstream, all of the coin's work in the period.
pub async fn record_pool_payout(
    shared: &Shared,
    payout: &PoolPayout,
) -> Result<PayoutRecorded, LedgerError> {
    if shared.config.registry.get(&payout.coin).is_none() {
        return Err(LedgerError::Invalid(format!(
            "unknown coin {}: not in the coin registry",
            payout.coin
        )));
    }
    if payout.amount <= 0 {
        return Err(LedgerError::Invalid(format!(
            "amount must be above zero smallest units, got {}",
            payout.amount
        )));
    }
    if payout.from_ms >= payout.to_ms {
        return Err(LedgerError::Invalid(format!(
            "the period must end after it starts: from_ms {} >= to_ms {}",
            payout.from_ms, payout.to_ms
        )));
    }
    if payout.upstream.trim().is_empty() || payout.reference.trim().is_empty() {
        return Err(LedgerError::Invalid(
            "upstream and reference must not be empty".into(),
        ));
    }
    let txn_id = payout_txn_id(payout);
    if let Some(txn) = shared.store.ledger_txn(&txn_id).await? {
        let (users, users_amount, fee_amount) = summarize(&txn.entries);
        return Ok(PayoutRecorded {
            txn_id,
            posted: false,
            users,
            users_amount,
            fee_amount,
        });
    }
    let store = &shared.store;
    let mut work = store
        .work_by_user(
            &payout.coin,
            Some(&payout.upstream),
            payout.from_ms,
            payout.to_ms,
        )
        .await?;
    if work.values().all(|w| *w == 0) {
        work = store
            .work_by_user(&payout.coin, None, payout.from_ms, payout.to_ms)
            .await?;
    }
    if work.values().all(|w| *w == 0) {
        return Err(LedgerError::Invalid(format!(
            "no work on {} in the period {}..{} ms: nothing to attribute the payout to",
            payout.coin, payout.from_ms, payout.to_ms
        )));
    }
    let fee_bps = shared.server_config().pool_fee_bps;
    // `amount > 0` was checked.
    let attribution = prop(payout.amount as u64, &work, fee_bps)
        .map_err(|e| LedgerError::Invalid(format!("cannot attribute the payout: {e}")))?;
    let attribution = withhold_unpayable(shared, attribution).await?;
    let memo = format!(
        "pool payout {} from {} for {}..{} ms (reference {}): PROP, fee {}, {} users, unattributed {}",
        payout.amount,
        payout.upstream,
        payout.from_ms,
        payout.to_ms,
        payout.reference,
        attribution.fee,
        attribution.shares.len(),
        attribution.unattributed
    );
    let entries = attribution_entries(
        &attribution,
        &payout.coin,
        &Account::External(payout.upstream.clone()),
    );
    let outcome = store.post_entries(&txn_id, &entries, &memo).await?;
    let (users, users_amount, fee_amount) = summarize(&entries);
    let posted = outcome == PostOutcome::Posted;
    if posted {
        Metrics::add(&shared.metrics.ledger_postings, 1);
        shared.publish(FeedEvent::Earnings {
            at_ms: shared.now_ms(),
            coin: payout.coin.clone(),
            txn_id: txn_id.clone(),
            source: "pool_payout".into(),
            users_amount,
            fee_amount,
            users,
        });
        tracing::info!(txn = %txn_id, users, users_amount, fee_amount, "pool payout posted");
    }
    Ok(PayoutRecorded {
        txn_id,
        posted,
        users,
        users_amount,
        fee_amount,
    })
}

/// Whether `user` may be credited: an address (by length) must be a BTC address of `network`,
/// and a payout address the store holds for it must be one too; a short name must be a valid
/// account name. The error names the cause.
pub fn check_payable(
    registry: &CoinRegistry,
    network: Network,
    user: &str,
    payout_address: Option<&str>,
) -> Result<(), String> {
    let btc = registry
        .by_ticker(PAYOUT_COIN)
        .ok_or_else(|| "BTC is not in the coin registry".to_string())?;
    let address = |text: &str| {
        parse_payout_address(text, btc, network)
            .map(|_| ())
            .map_err(|e| {
                format!("payout address {text:?} is not a BTC address on {network:?}: {e}")
            })
    };
    if let Some(a) = payout_address {
        address(a)?;
    }
    if user.len() >= ADDRESS_MIN_LEN {
        return address(user);
    }
    if user.is_empty()
        || user.len() > MAX_ACCOUNT_LEN
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "user {user:?} is neither a BTC address nor an account name (letters, digits, '_', '-', at most {MAX_ACCOUNT_LEN})"
        ));
    }
    Ok(())
}

/// Moves the shares of users who cannot be paid to `unattributed` (logged with the cause).
async fn withhold_unpayable(
    shared: &Shared,
    mut attribution: Attribution,
) -> Result<Attribution, LedgerError> {
    let known: HashMap<String, Option<String>> = shared
        .store
        .users()
        .await?
        .into_iter()
        .map(|u| (u.user, u.payout_address))
        .collect();
    let network = shared.config.config.network;
    let mut withheld = Vec::new();
    for user in attribution.shares.keys() {
        let address = known.get(user).and_then(|a| a.as_deref());
        if let Err(cause) = check_payable(&shared.config.registry, network, user, address) {
            tracing::warn!(user = %user, cause = %cause, "share withheld: the user cannot be paid");
            withheld.push(user.clone());
        }
    }
    for user in withheld {
        if let Some(s) = attribution.shares.remove(&user) {
            attribution.unattributed += s;
        }
    }
    Ok(attribution)
}

/// The store entries of an attribution: `source` gives the whole, the fee, the unattributed
/// rest and each user's share are credited (zero amounts left out).
fn attribution_entries(a: &Attribution, coin: &Ticker, source: &Account) -> Vec<LedgerEntry> {
    let mut entries = Vec::with_capacity(a.shares.len() + 3);
    let mut push = |account: String, amount: i64| {
        if amount != 0 {
            entries.push(LedgerEntry {
                account,
                coin: coin.clone(),
                amount,
            });
        }
    };
    // Each part is at most the earning, which is at most i64::MAX (checked by the scheme).
    push(source.to_string(), -(a.total() as i64));
    push(Account::PoolFees.to_string(), a.fee as i64);
    push(Account::PoolUnattributed.to_string(), a.unattributed as i64);
    for (user, &share) in &a.shares {
        push(Account::user(user.clone()).to_string(), share as i64);
    }
    entries
}

/// `(users credited, their total, the fee)` of a transaction's entries.
fn summarize(entries: &[LedgerEntry]) -> (u64, i64, i64) {
    let fees = Account::PoolFees.to_string();
    let mut users = 0;
    let mut users_amount = 0i64;
    let mut fee = 0i64;
    for e in entries {
        if e.account.starts_with("user:") {
            users += 1;
            users_amount += e.amount;
        } else if e.account == fees {
            fee += e.amount;
        }
    }
    (users, users_amount, fee)
}

// ---- solo blocks ----

/// What one reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub credited: u64,
    pub reversed: u64,
    /// Blocks that could not be posted (logged with the cause, retried next time).
    pub failed: u64,
}

/// Blocks checked before, by hash: the phase and update time they were settled at (a block
/// unchanged since is not looked at again).
#[derive(Debug, Default)]
pub struct Settled(HashMap<String, (BlockPhase, u64)>);

/// Runs the ledger service until `stop`: reconcile at start, on `ledger_now`, every 10 s.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut settled = Settled::default();
    loop {
        if let Err(e) = reconcile(&shared, &mut settled).await {
            tracing::error!(error = %e, "ledger reconcile failed; retrying");
        }
        tokio::select! {
            _ = shared.ledger_now.notified() => {}
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Brings the ledger in line with the stored blocks: credits matured blocks not credited yet,
/// reverses credited blocks that are no longer matured. Idempotent.
pub async fn reconcile(
    shared: &Shared,
    settled: &mut Settled,
) -> Result<ReconcileReport, LedgerError> {
    let mut report = ReconcileReport::default();
    let blocks = shared.store.blocks(None, u32::MAX).await?;
    for block in blocks {
        let key = (block.phase, block.updated_at_ms);
        if settled.0.get(&block.block_hash) == Some(&key) {
            continue;
        }
        // One block that cannot be posted (say, a coin without difficulty data) must not hold
        // up the others; it is retried at the next reconcile.
        match reconcile_block(shared, &block, &mut report).await {
            Ok(()) => {
                settled.0.insert(block.block_hash.clone(), key);
            }
            Err(e @ LedgerError::Store(_)) => return Err(e),
            Err(e) => {
                report.failed += 1;
                tracing::error!(block = %block.block_hash, coin = %block.coin, error = %e, "block not posted; retrying at the next reconcile");
            }
        }
    }
    Ok(report)
}

fn block_txn(hash: &str, kind: &str, k: u32) -> String {
    format!("block:{hash}:{kind}:{k}")
}

/// How many transactions `block:<hash>:<kind>:0..` exist.
async fn count_txns(store: &Store, hash: &str, kind: &str) -> Result<u32, LedgerError> {
    let mut k = 0;
    while store.ledger_txn(&block_txn(hash, kind, k)).await?.is_some() {
        k += 1;
    }
    Ok(k)
}

async fn reconcile_block(
    shared: &Shared,
    block: &BlockInfo,
    report: &mut ReconcileReport,
) -> Result<(), LedgerError> {
    let store = &shared.store;
    let hash = &block.block_hash;
    let credits = count_txns(store, hash, "credit").await?;
    if credits == 0 && block.phase != BlockPhase::Matured {
        return Ok(());
    }
    let reversals = count_txns(store, hash, "reverse").await?;
    let credited = credits > reversals;
    if block.phase == BlockPhase::Matured && !credited {
        let reward = block.reward.unwrap_or(0);
        if reward == 0 {
            tracing::warn!(block = %hash, coin = %block.coin, "matured block without a reward: nothing to credit");
            return Ok(());
        }
        let txn_id = block_txn(hash, "credit", credits);
        let (attribution, memo) = block_attribution(shared, block, reward).await?;
        let entries = attribution_entries(
            &attribution,
            &block.coin,
            &Account::Chain(block.coin.clone()),
        );
        if store.post_entries(&txn_id, &entries, &memo).await? == PostOutcome::Posted {
            report.credited += 1;
            Metrics::add(&shared.metrics.ledger_postings, 1);
            let (users, users_amount, fee_amount) = summarize(&entries);
            tracing::info!(txn = %txn_id, users, users_amount, fee_amount, "matured block credited");
            shared.publish(FeedEvent::Earnings {
                at_ms: shared.now_ms(),
                coin: block.coin.clone(),
                txn_id,
                source: "block".into(),
                users_amount,
                fee_amount,
                users,
            });
        }
    } else if block.phase != BlockPhase::Matured && credited {
        let credit_id = block_txn(hash, "credit", reversals);
        let Some(credit) = store.ledger_txn(&credit_id).await? else {
            return Err(LedgerError::Invalid(format!(
                "credit {credit_id} vanished while reversing it"
            )));
        };
        let entries: Vec<LedgerEntry> = credit
            .entries
            .iter()
            .map(|e| LedgerEntry {
                account: e.account.clone(),
                coin: e.coin.clone(),
                amount: -e.amount,
            })
            .collect();
        let txn_id = block_txn(hash, "reverse", reversals);
        let memo = format!(
            "block {hash} is {} after it was credited: {credit_id} reversed",
            block.phase
        );
        if store.post_entries(&txn_id, &entries, &memo).await? == PostOutcome::Posted {
            report.reversed += 1;
            Metrics::add(&shared.metrics.ledger_postings, 1);
            let (users, users_amount, fee_amount) = summarize(&entries);
            tracing::info!(txn = %txn_id, users, users_amount, "block credit reversed");
            shared.publish(FeedEvent::Earnings {
                at_ms: shared.now_ms(),
                coin: block.coin.clone(),
                txn_id,
                source: "block_reversal".into(),
                users_amount,
                fee_amount,
                users,
            });
        }
    }
    Ok(())
}

/// PPLNS over the window before the block, minus the fee, unpayable users withheld; and the
/// memo that records how the window was sized.
async fn block_attribution(
    shared: &Shared,
    block: &BlockInfo,
    reward: u64,
) -> Result<(Attribution, String), LedgerError> {
    let cfg = shared.server_config();
    let factor = Decimal::from_str(cfg.pplns_window_factor.trim())
        .ok()
        .filter(|f| *f > Decimal::ZERO)
        .unwrap_or(Decimal::TWO);
    let (difficulty, source) = window_difficulty(shared, &block.coin).await?;
    let window_work = pplns_window_work(factor, difficulty);
    let until = block.found_at_ms.unwrap_or(block.first_seen_ms);
    let window = shared
        .store
        .work_window_before(&block.coin, None, until, window_work)
        .await?;
    let records: Vec<(String, u128)> = window.per_user.into_iter().collect();
    let attribution = pplns(reward, &records, window_work, cfg.pool_fee_bps)
        .map_err(|e| LedgerError::Invalid(format!("block {}: {e}", block.block_hash)))?;
    let attribution = withhold_unpayable(shared, attribution).await?;
    let memo = format!(
        "block {} ({}) matured: reward {reward}, PPLNS over {window_work} work ({factor} x difficulty {difficulty} from {source}; {} on record), fee {}, {} users, unattributed {}",
        block.block_hash,
        block.coin,
        window.total,
        attribution.fee,
        attribution.shares.len(),
        attribution.unattributed
    );
    Ok((attribution, memo))
}

/// `factor × difficulty × 2^32` work units (2^32 expected hashes per unit of difficulty),
/// truncated; at least 1.
pub fn pplns_window_work(factor: Decimal, difficulty: Decimal) -> u128 {
    let hashes_per_difficulty = Decimal::from(1u64 << 32);
    factor
        .checked_mul(difficulty)
        .and_then(|x| x.checked_mul(hashes_per_difficulty))
        .and_then(|x| x.trunc().to_u128())
        .unwrap_or(u128::MAX)
        .max(1)
}

/// The coin's network difficulty for sizing a PPLNS window, and where it came from. Blocks
/// carry no difficulty, so: the decision loop's latest market view; else the latest stored
/// decision whose inputs name the coin; else the network's minimum difficulty (its proof-of-work
/// limit; exact on regtest).
pub async fn window_difficulty(
    shared: &Shared,
    coin: &Ticker,
) -> Result<(Decimal, &'static str), LedgerError> {
    let from_market = shared
        .market
        .borrow()
        .rows
        .iter()
        .find(|r| &r.coin == coin)
        .and_then(|r| r.difficulty.as_deref())
        .and_then(|d| Decimal::from_str(d).ok())
        .filter(|d| *d > Decimal::ZERO);
    if let Some(d) = from_market {
        return Ok((d, "the market view"));
    }
    for record in shared.store.recent_decisions(20).await? {
        let found = record.decision.inputs["coins"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["coin"].as_str() == Some(coin.as_str()))
            .and_then(|c| c["difficulty"].as_str())
            .and_then(|d| Decimal::from_str(d).ok())
            .filter(|d| *d > Decimal::ZERO);
        if let Some(d) = found {
            return Ok((d, "a stored decision"));
        }
    }
    let network = shared.config.config.network;
    let limit = shared
        .config
        .registry
        .get(coin)
        .and_then(|spec| spec.network(network))
        .and_then(|p| p.pow_limit().to_target())
        .map(|t| t.work())
        .ok_or_else(|| {
            LedgerError::Invalid(format!(
                "no difficulty known for {coin} and no {network:?} parameters to fall back on"
            ))
        })?;
    // Work of the easiest target / 2^32 = its difficulty.
    let d = Decimal::from_u128(limit).unwrap_or(Decimal::MAX) / Decimal::from(1u64 << 32);
    Ok((d, "the network's minimum difficulty"))
}

/// Users' realised credits per coin (for the API beside estimates): the store's balances of
/// `user:<user>`.
pub async fn user_balances(
    store: &Store,
    user: &str,
) -> Result<BTreeMap<Ticker, i64>, LedgerError> {
    Ok(store.balances(&Account::user(user).to_string()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_factor_times_difficulty_in_work_units() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert_eq!(pplns_window_work(d("2"), d("1")), 2 << 32);
        assert_eq!(pplns_window_work(d("2"), d("0.0001")), 858_993);
        assert_eq!(pplns_window_work(d("1.5"), d("1000")), 6_442_450_944_000);
        // Never empty, never overflowing.
        assert_eq!(pplns_window_work(d("0.000001"), d("0.000001")), 1);
        assert_eq!(pplns_window_work(Decimal::MAX, Decimal::MAX), u128::MAX);
    }

    #[test]
    fn payable_users() {
        let reg = CoinRegistry::builtin();
        let net = Network::Regtest;
        let addr = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
        assert_eq!(check_payable(&reg, net, addr, Some(addr)), Ok(()));
        assert_eq!(check_payable(&reg, net, "carol_01", None), Ok(()));
        // A mainnet address on a regtest pool, a non-address of address length, a bad account
        // name, a stored payout address that is not one: each refused with its cause.
        let main = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
        assert!(check_payable(&reg, net, main, None)
            .unwrap_err()
            .contains("not a BTC address"));
        assert!(check_payable(&reg, net, "bcrt1qnotanaddressnotanaddress", None).is_err());
        assert!(check_payable(&reg, net, "bad name!", None)
            .unwrap_err()
            .contains("account name"));
        assert!(check_payable(&reg, net, "carol", Some("nonsense")).is_err());
    }
}
