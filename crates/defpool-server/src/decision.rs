//! The decision loop: market data → profitability per coin → the switching engine per (group,
//! algorithm) → assignments pushed to the proxies.
//!
//! Every second and at once on `decide_now` (an admin change, new market data) it:
//! 1. reads the whitelist (the store's coins table, seeded from `[server] whitelist` when empty),
//!    the upstreams (`[[upstreams]]`, then enabled store-registered ones), the `switching` and
//!    `pins` settings;
//! 2. combines the sources' latest snapshots ([`Combiner`], stale after
//!    `switching.stale_after_secs`) and computes each coin's profitability net of its first
//!    upstream's fee;
//! 3. runs [`decide`] per group (`default` and every group with a stored assignment) and
//!    algorithm, with the engine state kept in memory and restored after a restart from the
//!    stored assignment and the last decision (so a restart neither re-starts nor flips);
//! 4. on a new target: stores the assignment with the next epoch, broadcasts it (the control
//!    plane pushes it), publishes a `switch` feed event; records the decision with its inputs.
//!    Decisions that change nothing are recorded at most once a minute per slot.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use defpool_config::Validated;
use defpool_control::{Assignment, MiningTarget as AssignedTarget, UpstreamKind, UpstreamRef};
use defpool_core::secret::Secret;
use defpool_core::{Algorithm, Ticker};
use defpool_store::{SaveAssignment, StoreError, UpstreamRecord};
use defpool_switch::profit::{candidate, coin_profitability, hashrate_unit};
use defpool_switch::{
    decide, Candidate, CoinMarket, CombineParams, Combiner, DecisionKind, EngineParams,
    EngineState, MiningTarget, UpstreamTerms,
};
use rust_decimal::Decimal;
use serde_json::json;
use tokio::sync::watch;

use crate::market::{build_sources, MarketFeed};
use crate::state::{settings, FeedEvent, MarketView, Metrics, ProfitRow, Shared};

/// How often the loop evaluates without being asked.
pub const TICK: Duration = Duration::from_secs(1);
/// Decisions that change nothing are recorded at most this often per (group, algorithm).
pub const QUIET_RECORD_EVERY_MS: u64 = 60_000;
/// The audit actor of the whitelist seeded from the configuration.
pub const CONFIG_ACTOR: &str = "config";

/// Runs the decision loop (and its market pollers) until `stop`.
pub async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    // Building a simulator runs its whole simulation: keep it off the async workers.
    let (config, clock) = (shared.config.clone(), shared.clock.clone());
    let (sources, errors) =
        match tokio::task::spawn_blocking(move || build_sources(&config, &clock)).await {
            Ok(built) => built,
            Err(e) => (
                Vec::new(),
                vec![format!("building the market sources failed: {e}")],
            ),
        };
    for e in errors {
        tracing::error!(error = %e, "market source left out");
    }
    let feed = MarketFeed::spawn(shared.clone(), sources, stop.clone());
    let mut lp = DecisionLoop::new(shared.clone(), feed);
    lp.run(stop).await;
}

/// One upstream a coin can be mined on, with its fee.
#[derive(Clone, Debug)]
pub struct UpstreamChoice {
    pub reference: UpstreamRef,
    pub fee_bps: u32,
}

/// The loop's memory per (group, algorithm).
#[derive(Clone, Debug, Default)]
struct Slot {
    engine: EngineState,
    /// When a decision of this slot was last recorded (clock ms).
    last_recorded_ms: Option<u64>,
}

pub struct DecisionLoop {
    shared: Arc<Shared>,
    feed: MarketFeed,
    combiner: Combiner,
    slots: HashMap<(String, Algorithm), Slot>,
    seeded: bool,
}

/// What one evaluation saw, shared by every slot.
struct Inputs {
    now: u64,
    params: EngineParams,
    pins: settings::Pins,
    /// Per algorithm: candidates sorted by target id.
    candidates: BTreeMap<Algorithm, Vec<Candidate>>,
    upstreams: BTreeMap<Ticker, Vec<UpstreamChoice>>,
    coins_json: Vec<serde_json::Value>,
}

impl DecisionLoop {
    pub fn new(shared: Arc<Shared>, feed: MarketFeed) -> DecisionLoop {
        let stale_after_ms = u64::from(shared.server_config().switching.stale_after_secs) * 1000;
        DecisionLoop {
            shared,
            feed,
            combiner: Combiner::new(CombineParams {
                stale_after_ms,
                ..CombineParams::default()
            }),
            slots: HashMap::new(),
            seeded: false,
        }
    }

    pub async fn run(&mut self, mut stop: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.evaluate().await {
                tracing::error!(error = %e, "decision loop evaluation failed");
            }
            tokio::select! {
                _ = self.shared.decide_now.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// The store's whitelist, seeded once from the configuration when it is empty.
    async fn whitelist(&mut self) -> Result<BTreeMap<Ticker, bool>, StoreError> {
        let store = &self.shared.store;
        let mut coins = store.coins().await?;
        if coins.is_empty() && !self.seeded {
            for t in &self.shared.server_config().whitelist {
                store.set_coin(CONFIG_ACTOR, t, true).await?;
            }
            coins = store.coins().await?;
            tracing::info!(
                coins = coins.len(),
                "whitelist seeded from the configuration"
            );
        }
        self.seeded = true;
        Ok(coins.into_iter().map(|c| (c.ticker, c.enabled)).collect())
    }

    /// One evaluation of every slot.
    pub async fn evaluate(&mut self) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let store = &shared.store;
        let now = shared.now_ms();
        let whitelist = self.whitelist().await?;
        let upstreams = upstream_choices(&shared.config, &store.upstreams().await?);
        let params = engine_params(
            shared.server_config(),
            store.setting(settings::SWITCHING).await?,
        );
        let pins: settings::Pins = store
            .setting(settings::PINS)
            .await?
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();

        let known: BTreeSet<Ticker> = whitelist
            .keys()
            .chain(upstreams.keys())
            .filter(|t| shared.config.registry.get(t).is_some())
            .cloned()
            .collect();
        self.feed.want(known.iter().cloned().collect());
        let (markets, exclusions) = self.combiner.update(&self.feed.snapshots(), now);
        let markets: BTreeMap<Ticker, CoinMarket> =
            markets.into_iter().map(|m| (m.coin.clone(), m)).collect();
        let excluded: BTreeMap<Ticker, String> =
            exclusions.into_iter().map(|e| (e.coin, e.reason)).collect();

        let mut candidates: BTreeMap<Algorithm, Vec<Candidate>> = BTreeMap::new();
        let mut rows = Vec::new();
        let mut coins_json = Vec::new();
        for coin in &known {
            let spec = shared.config.registry.get(coin).expect("filtered above");
            let market = markets.get(coin);
            let ups = upstreams.get(coin).map(Vec::as_slice).unwrap_or(&[]);
            let eligible = eligibility(
                coin,
                whitelist.get(coin).copied(),
                ups.len(),
                market,
                excluded.get(coin),
            );
            let gross = market.and_then(|m| {
                coin_profitability(
                    spec.algorithm,
                    m.block_reward,
                    spec.decimals,
                    m.price_btc,
                    m.difficulty,
                )
                .ok()
            });
            let terms = UpstreamTerms {
                fee_bps: ups.first().map(|u| u.fee_bps).unwrap_or(0),
                switch_cost_secs: 0,
            };
            let c = candidate(
                &MiningTarget::single(coin.clone()),
                &terms,
                |_| gross,
                eligible,
            );
            rows.push(ProfitRow {
                coin: coin.clone(),
                algorithm: spec.algorithm,
                price_btc: market.map(|m| m.price_btc.normalize().to_string()),
                difficulty: market.map(|m| m.difficulty.normalize().to_string()),
                block_reward: market.map(|m| m.block_reward),
                profitability: gross.map(|_| c.profitability.normalize().to_string()),
                unit: hashrate_unit(spec.algorithm).to_string(),
                whitelisted: whitelist.contains_key(coin),
                eligible: c.eligible.is_ok(),
                reason: c.eligible.clone().err(),
                sources: market.map(|m| m.sources.clone()).unwrap_or_default(),
                observed_at_ms: market.map(|m| m.observed_at_ms),
                current: false,
            });
            coins_json.push(json!({
                "coin": coin,
                "price_btc": market.map(|m| m.price_btc.to_string()),
                "difficulty": market.map(|m| m.difficulty.to_string()),
                "block_reward": market.map(|m| m.block_reward),
                "observed_at_ms": market.map(|m| m.observed_at_ms),
                "sources": market.map(|m| m.sources.clone()),
                "notes": market.map(|m| m.notes.clone()),
                "fee_bps": terms.fee_bps,
            }));
            candidates.entry(spec.algorithm).or_default().push(c);
        }

        let inputs = Inputs {
            now,
            params,
            pins,
            candidates,
            upstreams,
            coins_json,
        };
        let stored = store.assignments().await?;
        let mut groups: BTreeSet<String> = stored.iter().map(|a| a.group.clone()).collect();
        groups.insert("default".to_string());
        for algorithm in Algorithm::ALL {
            let has_candidates = inputs.candidates.contains_key(&algorithm);
            for group in &groups {
                let current = stored
                    .iter()
                    .find(|a| &a.group == group && a.algorithm == algorithm);
                if !has_candidates && current.is_none() {
                    continue;
                }
                self.evaluate_slot(group, algorithm, current, &inputs)
                    .await?;
            }
        }

        for row in &mut rows {
            row.current = self
                .slots
                .get(&("default".to_string(), row.algorithm))
                .and_then(|s| s.engine.current.as_deref())
                == Some(row.coin.as_str());
        }
        shared.market.send_replace(MarketView {
            updated_ms: now,
            rows,
        });
        Ok(())
    }

    async fn evaluate_slot(
        &mut self,
        group: &str,
        algorithm: Algorithm,
        stored: Option<&Assignment>,
        inputs: &Inputs,
    ) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let key = (group.to_string(), algorithm);
        if !self.slots.contains_key(&key) {
            let slot = restore(&shared, group, algorithm, stored).await?;
            self.slots.insert(key.clone(), slot);
        }
        let slot = self.slots.get_mut(&key).expect("inserted above");
        // An assignment stored by someone else (an operator) is what the group mines now.
        if let Some(a) = stored {
            let coin = a.primary_coin().map(|c| c.as_str().to_string());
            if slot.engine.current != coin {
                slot.engine = EngineState {
                    current: coin,
                    since_ms: a.issued_at_ms,
                    challenger: None,
                    last_switch_ms: Some(a.issued_at_ms),
                };
            }
        }
        let empty = Vec::new();
        let candidates = inputs.candidates.get(&algorithm).unwrap_or(&empty);
        let pin = inputs.pins.get(algorithm.as_str()).map(String::as_str);
        let (decision, next) = decide(&inputs.params, &slot.engine, candidates, pin, inputs.now);
        let before = slot.engine.current.clone();
        let changes = decision.to.is_some() && decision.to != before;

        let record_inputs = |state: &EngineState| {
            json!({
                "kind": kind_name(decision.kind),
                "from": decision.from,
                "to": decision.to,
                "candidates": decision.inputs.iter().map(|c| json!({
                    "target": c.target,
                    "profitability": c.profitability.normalize().to_string(),
                    "eligible": c.eligible.is_ok(),
                    "ineligible_reason": c.eligible.as_ref().err(),
                })).collect::<Vec<_>>(),
                "coins": inputs.coins_json,
                "params": {
                    "hysteresis_percent": inputs.params.hysteresis_percent.normalize().to_string(),
                    "hysteresis_ms": inputs.params.hysteresis_ms,
                    "min_dwell_ms": inputs.params.min_dwell_ms,
                },
                "pin": pin,
                "state": state,
            })
        };

        if !changes {
            slot.engine = next;
            let due = slot
                .last_recorded_ms
                .is_none_or(|t| inputs.now.saturating_sub(t) >= QUIET_RECORD_EVERY_MS);
            if due {
                slot.last_recorded_ms = Some(inputs.now);
                shared
                    .store
                    .record_decision(&defpool_store::Decision {
                        group: group.to_string(),
                        algorithm,
                        epoch: stored.map(|a| a.epoch).unwrap_or(0),
                        coin: decision
                            .to
                            .as_deref()
                            .and_then(|t| Ticker::from_str(t).ok()),
                        reason: decision.reason.clone(),
                        inputs: record_inputs(&slot.engine),
                        at_ms: inputs.now,
                    })
                    .await?;
                Metrics::add(&shared.metrics.decisions, 1);
            }
            return Ok(());
        }

        let to = decision.to.clone().expect("changes implies a target");
        let coin = Ticker::from_str(&to).map_err(|e| StoreError::OutOfRange {
            what: "a target id",
            value: format!("{to}: {e}"),
        })?;
        let ups = inputs.upstreams.get(&coin).cloned().unwrap_or_default();
        if ups.is_empty() {
            // Only a pin can choose a coin without upstreams: the proxies could not mine it.
            if slot
                .last_recorded_ms
                .is_none_or(|t| inputs.now.saturating_sub(t) >= QUIET_RECORD_EVERY_MS)
            {
                slot.last_recorded_ms = Some(inputs.now);
                tracing::warn!(group, algorithm = algorithm.as_str(), coin = %coin, "not assigned: the coin has no upstream");
                shared
                    .store
                    .record_decision(&defpool_store::Decision {
                        group: group.to_string(),
                        algorithm,
                        epoch: stored.map(|a| a.epoch).unwrap_or(0),
                        coin: before.as_deref().and_then(|t| Ticker::from_str(t).ok()),
                        reason: format!(
                            "{}; not assigned: {coin} has no upstream",
                            decision.reason
                        ),
                        inputs: record_inputs(&slot.engine),
                        at_ms: inputs.now,
                    })
                    .await?;
            }
            return Ok(());
        }
        let runner_up = candidates
            .iter()
            .filter(|c| c.eligible.is_ok() && c.target != to)
            .max_by(|a, b| {
                a.profitability
                    .cmp(&b.profitability)
                    .then_with(|| b.target.cmp(&a.target))
            })
            .and_then(|c| Ticker::from_str(&c.target).ok());
        let standby = runner_up
            .and_then(|t| inputs.upstreams.get(&t))
            .and_then(|u| u.first())
            .map(|u| vec![u.reference.clone()])
            .unwrap_or_default();
        let epoch = stored.map(|a| a.epoch).unwrap_or(0) + 1;
        let assignment = Assignment {
            epoch,
            group: group.to_string(),
            algorithm,
            targets: vec![AssignedTarget {
                coin: coin.clone(),
                merged: vec![],
                weight: 1,
            }],
            upstreams: ups.iter().map(|u| u.reference.clone()).collect(),
            standby,
            issued_at_ms: inputs.now,
            reason: decision.reason.clone(),
        };
        match shared.store.save_assignment(&assignment).await? {
            SaveAssignment::Saved => {}
            SaveAssignment::Unchanged => return Ok(()),
            SaveAssignment::Stale { current_epoch } => {
                // Someone stored a newer one meanwhile: adopt it at the next evaluation.
                tracing::info!(
                    group,
                    algorithm = algorithm.as_str(),
                    current_epoch,
                    "assignment superseded before it was saved"
                );
                return Ok(());
            }
        }
        let _ = shared.assignments.send(assignment);
        slot.engine = next;
        slot.last_recorded_ms = Some(inputs.now);
        Metrics::add(&shared.metrics.switches, 1);
        Metrics::add(&shared.metrics.decisions, 1);
        let kind = kind_name(decision.kind);
        tracing::info!(group, algorithm = algorithm.as_str(), from = ?before, to = %coin, epoch, kind, reason = %decision.reason, "assignment issued");
        shared.publish(FeedEvent::Switch {
            at_ms: inputs.now,
            group: group.to_string(),
            algorithm,
            from: before,
            to: Some(to),
            epoch,
            kind: kind.to_string(),
            reason: decision.reason.clone(),
        });
        shared
            .store
            .record_decision(&defpool_store::Decision {
                group: group.to_string(),
                algorithm,
                epoch,
                coin: Some(coin),
                reason: decision.reason.clone(),
                inputs: record_inputs(&slot.engine),
                at_ms: inputs.now,
            })
            .await?;
        Ok(())
    }
}

/// The engine state of a slot after a restart: the stored assignment's coin since it was
/// issued, with the challenger of the last recorded decision if that decision was on the same
/// coin (so a challenger's time is not lost, and nothing restarts as `initial`).
async fn restore(
    shared: &Shared,
    group: &str,
    algorithm: Algorithm,
    stored: Option<&Assignment>,
) -> Result<Slot, StoreError> {
    let Some(a) = stored else {
        return Ok(Slot::default());
    };
    let coin = a.primary_coin().map(|c| c.as_str().to_string());
    let mut engine = EngineState {
        current: coin.clone(),
        since_ms: a.issued_at_ms,
        challenger: None,
        last_switch_ms: Some(a.issued_at_ms),
    };
    let last = shared
        .store
        .recent_decisions(200)
        .await?
        .into_iter()
        .find(|d| d.decision.group == group && d.decision.algorithm == algorithm);
    if let Some(d) = last {
        if let Ok(state) = serde_json::from_value::<EngineState>(d.decision.inputs["state"].clone())
        {
            if state.current == coin {
                engine = state;
            }
        }
    }
    Ok(Slot {
        engine,
        last_recorded_ms: None,
    })
}

/// The feed's and the record's name of a decision kind.
pub fn kind_name(kind: DecisionKind) -> &'static str {
    match kind {
        DecisionKind::Initial => "initial",
        DecisionKind::Switch => "switch",
        DecisionKind::Forced => "forced",
        DecisionKind::Pinned => "pinned",
        DecisionKind::Stay => "stay",
        DecisionKind::NoEligible => "no_eligible",
    }
}

/// Why a coin may not be chosen, if it may not.
pub fn eligibility(
    coin: &Ticker,
    whitelisted: Option<bool>,
    upstreams: usize,
    market: Option<&CoinMarket>,
    excluded: Option<&String>,
) -> Result<(), String> {
    match whitelisted {
        None => return Err(format!("{coin} is not whitelisted")),
        Some(false) => return Err(format!("{coin} is disabled in the whitelist")),
        Some(true) => {}
    }
    if upstreams == 0 {
        return Err(format!("{coin} has no upstream"));
    }
    if market.is_none() {
        return Err(match excluded {
            Some(reason) => format!("market data: {reason}"),
            None => format!("no market data for {coin} yet"),
        });
    }
    Ok(())
}

/// X / Y / dwell: the admin's `switching` setting, else `[server.switching]`.
pub fn engine_params(
    cfg: &defpool_config::ServerConfig,
    setting: Option<serde_json::Value>,
) -> EngineParams {
    let from_setting = setting
        .and_then(|v| serde_json::from_value::<settings::SwitchingSettings>(v).ok())
        .and_then(|s| {
            Decimal::from_str(s.hysteresis_percent.trim())
                .ok()
                .map(|x| (x, s.hysteresis_minutes, s.min_dwell_minutes))
        });
    let (x, y, dwell) = from_setting.unwrap_or_else(|| {
        let sw = &cfg.switching;
        // The config's X is a float; its shortest decimal spelling is what the operator wrote.
        let x = Decimal::from_str(&sw.hysteresis_percent.to_string()).unwrap_or(Decimal::from(5));
        (x, sw.hysteresis_minutes, sw.min_dwell_minutes)
    });
    EngineParams {
        hysteresis_percent: x,
        hysteresis_ms: u64::from(y) * 60_000,
        min_dwell_ms: u64::from(dwell) * 60_000,
    }
}

/// Upstreams per coin: `[[upstreams]]` in config order, then enabled store-registered ones not
/// named in the config. Store records carry no secrets: their `details` give `url`/`address`,
/// `username` and `authority_public_key`.
pub fn upstream_choices(
    v: &Validated,
    registered: &[UpstreamRecord],
) -> BTreeMap<Ticker, Vec<UpstreamChoice>> {
    let mut out: BTreeMap<Ticker, Vec<UpstreamChoice>> = BTreeMap::new();
    for u in &v.config.upstreams {
        out.entry(u.coin.clone()).or_default().push(UpstreamChoice {
            reference: u.to_upstream_ref(),
            fee_bps: u.fee_bps,
        });
    }
    for r in registered {
        let t = &r.terms;
        if !t.enabled || v.config.upstreams.iter().any(|u| u.name == t.name) {
            continue;
        }
        let kind = match t.protocol.as_str() {
            "sv1" => UpstreamKind::Sv1,
            "adapter" => UpstreamKind::Adapter,
            _ => UpstreamKind::Sv2,
        };
        let detail = |k: &str| {
            t.details
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let Some(address) = detail("url").or_else(|| detail("address")) else {
            tracing::debug!(upstream = %t.name, "registered upstream without a url: left out");
            continue;
        };
        out.entry(t.coin.clone()).or_default().push(UpstreamChoice {
            reference: UpstreamRef {
                name: t.name.clone(),
                coin: t.coin.clone(),
                kind,
                address,
                authority_public_key: detail("authority_public_key"),
                username: detail("username").unwrap_or_default(),
                password: Secret::new(""),
            },
            fee_bps: t.fee_bps,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Ticker {
        s.parse().unwrap()
    }

    #[test]
    fn eligibility_names_the_cause() {
        let m = CoinMarket {
            coin: t("LTC"),
            price_btc: Decimal::ONE,
            difficulty: Decimal::ONE,
            block_reward: 1,
            observed_at_ms: 0,
            sources: vec![],
            notes: vec![],
        };
        assert_eq!(
            eligibility(&t("LTC"), Some(true), 1, Some(&m), None),
            Ok(())
        );
        assert!(eligibility(&t("LTC"), None, 1, Some(&m), None)
            .unwrap_err()
            .contains("not whitelisted"));
        assert!(eligibility(&t("LTC"), Some(false), 1, Some(&m), None)
            .unwrap_err()
            .contains("disabled"));
        assert!(eligibility(&t("LTC"), Some(true), 0, Some(&m), None)
            .unwrap_err()
            .contains("no upstream"));
        let stale = "LTC: no price newer than 5 min".to_string();
        assert!(eligibility(&t("LTC"), Some(true), 1, None, Some(&stale))
            .unwrap_err()
            .contains("no price newer"));
    }

    #[test]
    fn kinds_match_the_feed_names() {
        assert_eq!(kind_name(DecisionKind::Initial), "initial");
        assert_eq!(kind_name(DecisionKind::Forced), "forced");
        assert_eq!(kind_name(DecisionKind::Pinned), "pinned");
        assert_eq!(kind_name(DecisionKind::Switch), "switch");
    }
}
