//! The decision engine: which mining target an algorithm group mines now.
//!
//! [`decide`] is a pure function of (parameters, state, candidates, admin pin, clock). Precedence:
//!
//! 1. an admin **pin** on a known candidate beats everything (a pin on an unknown target is
//!    reported in the reason and ignored);
//! 2. with no current target, the best eligible one is taken (**Initial**);
//! 3. when the current target is ineligible or no longer a candidate, the pool moves to the best
//!    eligible target at once, bypassing hysteresis and dwell (**Forced**);
//! 4. otherwise the best eligible challenger must beat the current target by strictly more than
//!    X % (`challenger > current · (1 + X/100)`) continuously for Y ms (the timer restarts when
//!    the margin falls to X % or below, or when the best challenger changes), and the minimum
//!    dwell time since the last switch must have passed (**Switch**); else **Stay**;
//! 5. with nothing eligible, the pool keeps mining what it mines (**NoEligible**).
//!
//! "Best" means the highest profitability; ties go to the lexicographically smallest target id,
//! so the choice does not depend on the order of the candidates. Target ids are expected to be
//! unique within one call; for a repeated id, the first entry is the one looked up as current.
//!
//! Every [`Decision`] carries its inputs and a reason naming the numbers.

use std::cmp::Ordering;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A mining target's id: `"LTC"`, `"LTC+DOGE"`, ….
pub type TargetId = String;

/// The hysteresis rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineParams {
    /// X: a challenger must beat the current target by strictly more than this percentage.
    pub hysteresis_percent: Decimal,
    /// Y: … continuously for at least this long.
    pub hysteresis_ms: u64,
    /// Minimum time after any switch before a non-forced switch may follow.
    pub min_dwell_ms: u64,
}

impl Default for EngineParams {
    /// X = 5 %, Y = 10 min, dwell = 30 min.
    fn default() -> Self {
        EngineParams {
            hysteresis_percent: Decimal::from(5),
            hysteresis_ms: 10 * 60_000,
            min_dwell_ms: 30 * 60_000,
        }
    }
}

/// One target as the engine sees it at one evaluation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub target: TargetId,
    /// Expected BTC per day per unit hashrate (TH/s or MH/s), net of the upstream fee.
    pub profitability: Decimal,
    /// `Err(reason)`: not whitelisted, upstreams down, stale data, ….
    pub eligible: Result<(), String>,
}

/// What the engine remembers between evaluations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineState {
    /// The target being mined.
    pub current: Option<TargetId>,
    /// Since when `current` has been mined.
    pub since_ms: u64,
    /// The challenger currently beating `current` by more than X %, and since when.
    pub challenger: Option<(TargetId, u64)>,
    /// When the target last changed (any kind, including the initial choice).
    pub last_switch_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecisionKind {
    /// The first choice: nothing was mined before.
    Initial,
    /// An admin pin decided (whether or not the target changed).
    Pinned,
    /// The current target became ineligible or disappeared: moved at once.
    Forced,
    /// The hysteresis rule was met.
    Switch,
    /// Keep the current target.
    Stay,
    /// No eligible target: keep mining the current one, if any.
    NoEligible,
}

/// One evaluation's outcome, with what it was based on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub at_ms: u64,
    pub kind: DecisionKind,
    /// The target mined before this decision.
    pub from: Option<TargetId>,
    /// The target mined after it (`None` only when nothing is mined).
    pub to: Option<TargetId>,
    pub reason: String,
    pub inputs: Vec<Candidate>,
}

impl Decision {
    /// Whether the pool moves from one target to another. The initial choice is not a switch
    /// (nothing was being mined), so it returns `false`; compare `from` and `to` to detect it.
    pub fn switched(&self) -> bool {
        self.from.is_some() && self.to.is_some() && self.from != self.to
    }
}

/// Evaluates the rules (see the module documentation) once.
pub fn decide(
    params: &EngineParams,
    state: &EngineState,
    candidates: &[Candidate],
    pin: Option<&str>,
    now_ms: u64,
) -> (Decision, EngineState) {
    let mut prefix = String::new();
    if let Some(p) = pin {
        match find(candidates, p) {
            Some(c) => return pinned(state, c, candidates, now_ms),
            None => prefix = format!("pin on unknown target {p} ignored; "),
        }
    }
    let from = state.current.clone();
    let best = best_eligible(candidates, None);
    let decision = |kind, to: Option<TargetId>, reason: String| Decision {
        at_ms: now_ms,
        kind,
        from: from.clone(),
        to,
        reason: format!("{prefix}{reason}"),
        inputs: candidates.to_vec(),
    };

    let Some(current_id) = state.current.as_deref() else {
        return match best {
            Some(b) => (
                decision(
                    DecisionKind::Initial,
                    Some(b.target.clone()),
                    format!(
                        "start on {} ({} BTC/day), best of {} eligible",
                        b.target,
                        num(b.profitability),
                        count_eligible(candidates)
                    ),
                ),
                moved_to(&b.target, now_ms),
            ),
            None => (
                decision(
                    DecisionKind::NoEligible,
                    None,
                    format!(
                        "no eligible target{}: nothing to mine",
                        ineligible_summary(candidates)
                    ),
                ),
                EngineState {
                    challenger: None,
                    ..state.clone()
                },
            ),
        };
    };

    let current = find(candidates, current_id);
    let cause = match current {
        None => Some(format!("{current_id} is no longer a candidate")),
        Some(Candidate {
            eligible: Err(why), ..
        }) => Some(format!("{current_id} is ineligible ({why})")),
        Some(_) => None,
    };
    if let Some(cause) = cause {
        return match best {
            Some(b) => (
                decision(
                    DecisionKind::Forced,
                    Some(b.target.clone()),
                    format!(
                        "forced: {cause}; switch to {} ({} BTC/day), best of {} eligible",
                        b.target,
                        num(b.profitability),
                        count_eligible(candidates)
                    ),
                ),
                moved_to(&b.target, now_ms),
            ),
            None => (
                decision(
                    DecisionKind::NoEligible,
                    from.clone(),
                    format!(
                        "{cause}, and no target is eligible{}: keep mining {current_id}",
                        ineligible_summary(candidates)
                    ),
                ),
                EngineState {
                    challenger: None,
                    ..state.clone()
                },
            ),
        };
    }
    let current = current.expect("cause is None only when current is found");

    let stay = |reason: String, challenger: Option<(TargetId, u64)>| {
        (
            decision(DecisionKind::Stay, from.clone(), reason),
            EngineState {
                challenger,
                ..state.clone()
            },
        )
    };
    let x = &params.hysteresis_percent;
    let Some(ch) = best_eligible(candidates, Some(current_id)) else {
        return stay(
            format!(
                "stay on {current_id} ({} BTC/day): no other eligible target",
                num(current.profitability)
            ),
            None,
        );
    };
    let numbers = format!(
        "{} {} vs {} {} BTC/day",
        ch.target,
        num(ch.profitability),
        current_id,
        num(current.profitability)
    );
    let threshold = x
        .checked_div(Decimal::ONE_HUNDRED)
        .and_then(|f| Decimal::ONE.checked_add(f))
        .and_then(|f| current.profitability.checked_mul(f));
    let Some(threshold) = threshold else {
        return stay(
            format!("stay on {current_id}: the X = {x} % threshold overflows ({numbers})"),
            None,
        );
    };
    if ch.profitability <= threshold {
        return stay(
            format!(
                "stay on {current_id}: best challenger {} is {}, not more than X = {} % ({numbers})",
                ch.target,
                margin(ch.profitability, current.profitability),
                num(*x)
            ),
            None,
        );
    }

    let started = match &state.challenger {
        Some((id, since)) if *id == ch.target => *since,
        _ => now_ms,
    };
    let held = now_ms.saturating_sub(started);
    let beats = format!(
        "{} beats {current_id} by {} for {}",
        ch.target,
        margin(ch.profitability, current.profitability),
        duration(held)
    );
    let x_y = format!("X = {} %", num(*x));
    if held < params.hysteresis_ms {
        return stay(
            format!(
                "stay on {current_id}: {beats} < {} ({x_y}; {numbers})",
                duration(params.hysteresis_ms)
            ),
            Some((ch.target.clone(), started)),
        );
    }
    if let Some(last) = state.last_switch_ms {
        let dwelt = now_ms.saturating_sub(last);
        if dwelt < params.min_dwell_ms {
            return stay(
                format!(
                    "stay on {current_id}: {beats} ≥ {} ({x_y}), but only {} since the last switch < dwell {} ({numbers})",
                    duration(params.hysteresis_ms),
                    duration(dwelt),
                    duration(params.min_dwell_ms)
                ),
                Some((ch.target.clone(), started)),
            );
        }
    }
    (
        decision(
            DecisionKind::Switch,
            Some(ch.target.clone()),
            format!(
                "{beats} ≥ {} ({x_y}); {numbers}",
                duration(params.hysteresis_ms)
            ),
        ),
        moved_to(&ch.target, now_ms),
    )
}

fn pinned(
    state: &EngineState,
    c: &Candidate,
    candidates: &[Candidate],
    now_ms: u64,
) -> (Decision, EngineState) {
    let warn = match &c.eligible {
        Ok(()) => String::new(),
        Err(why) => format!(" although ineligible ({why})"),
    };
    let same = state.current.as_deref() == Some(c.target.as_str());
    let reason = if same {
        format!(
            "pinned to {} by the admin{warn} ({} BTC/day)",
            c.target,
            num(c.profitability)
        )
    } else {
        format!(
            "pinned to {} by the admin{warn}: switch from {} ({} BTC/day)",
            c.target,
            state.current.as_deref().unwrap_or("nothing"),
            num(c.profitability)
        )
    };
    let next = if same {
        EngineState {
            challenger: None,
            ..state.clone()
        }
    } else {
        moved_to(&c.target, now_ms)
    };
    (
        Decision {
            at_ms: now_ms,
            kind: DecisionKind::Pinned,
            from: state.current.clone(),
            to: Some(c.target.clone()),
            reason,
            inputs: candidates.to_vec(),
        },
        next,
    )
}

fn moved_to(target: &str, now_ms: u64) -> EngineState {
    EngineState {
        current: Some(target.to_string()),
        since_ms: now_ms,
        challenger: None,
        last_switch_ms: Some(now_ms),
    }
}

fn find<'a>(candidates: &'a [Candidate], id: &str) -> Option<&'a Candidate> {
    candidates.iter().find(|c| c.target == id)
}

/// Higher profitability first, then the smaller id.
fn rank(a: &Candidate, b: &Candidate) -> Ordering {
    b.profitability
        .cmp(&a.profitability)
        .then_with(|| a.target.cmp(&b.target))
}

fn best_eligible<'a>(candidates: &'a [Candidate], except: Option<&str>) -> Option<&'a Candidate> {
    candidates
        .iter()
        .filter(|c| c.eligible.is_ok() && Some(c.target.as_str()) != except)
        .min_by(|a, b| rank(a, b))
}

fn count_eligible(candidates: &[Candidate]) -> usize {
    candidates.iter().filter(|c| c.eligible.is_ok()).count()
}

fn ineligible_summary(candidates: &[Candidate]) -> String {
    if candidates.is_empty() {
        return " (no candidates)".to_string();
    }
    let parts: Vec<String> = candidates
        .iter()
        .filter_map(|c| {
            c.eligible
                .as_ref()
                .err()
                .map(|w| format!("{}: {w}", c.target))
        })
        .collect();
    format!(" ({})", parts.join("; "))
}

/// `"by 7.2 %"`-style margin of `a` over `b`.
fn margin(a: Decimal, b: Decimal) -> String {
    if b <= Decimal::ZERO {
        return format!("{} BTC/day over {}", num(a), num(b));
    }
    match a
        .checked_div(b)
        .and_then(|r| r.checked_sub(Decimal::ONE))
        .and_then(|r| r.checked_mul(Decimal::ONE_HUNDRED))
    {
        Some(p) => format!("{} %", p.round_dp(2).normalize()),
        None => "an overflowing margin".to_string(),
    }
}

/// A number for a reason: six significant digits, no trailing zeros.
pub(crate) fn num(d: Decimal) -> Decimal {
    d.round_sf(6).unwrap_or(d).normalize()
}

/// A duration for a reason: `850 ms`, `12 s`, `12.5 min`, `3 h`, `2 d`.
pub(crate) fn duration(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "min"),
        (1_000, "s"),
    ];
    for (size, unit) in UNITS {
        if ms >= size {
            let v = (Decimal::from(ms) / Decimal::from(size))
                .round_dp(1)
                .normalize();
            return format!("{v} {unit}");
        }
    }
    format!("{ms} ms")
}

/// Weights (summing to `total`) for splitting hashrate across the `top_n` best eligible targets
/// with positive profitability, proportional to profitability. Largest remainder, ties to the
/// better-ranked target. Empty when no target qualifies.
pub fn split_weights(candidates: &[Candidate], top_n: usize, total: u32) -> Vec<(TargetId, u32)> {
    let mut top: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.eligible.is_ok() && c.profitability > Decimal::ZERO)
        .collect();
    top.sort_by(|a, b| rank(a, b));
    top.truncate(top_n);
    if top.is_empty() {
        return Vec::new();
    }
    let sum = top
        .iter()
        .try_fold(Decimal::ZERO, |s, c| s.checked_add(c.profitability));
    let shares: Option<Vec<Decimal>> = sum.and_then(|sum| {
        top.iter()
            .map(|c| {
                Decimal::from(total)
                    .checked_mul(c.profitability)
                    .and_then(|v| v.checked_div(sum))
            })
            .collect()
    });
    let Some(shares) = shares else {
        // Unrepresentable sums: everything to the best.
        let mut out: Vec<(TargetId, u32)> = top.iter().map(|c| (c.target.clone(), 0)).collect();
        out[0].1 = total;
        return out;
    };
    let mut weights: Vec<u32> = shares
        .iter()
        .map(|s| s.floor().to_u32().unwrap_or(0).min(total))
        .collect();
    let given: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut left = u64::from(total).saturating_sub(given);
    let mut order: Vec<usize> = (0..top.len()).collect();
    order.sort_by(|&i, &j| {
        let ri = shares[i] - shares[i].floor();
        let rj = shares[j] - shares[j].floor();
        rj.cmp(&ri).then(i.cmp(&j))
    });
    for &i in order.iter().cycle().take(top.len() * 2) {
        if left == 0 {
            break;
        }
        weights[i] += 1;
        left -= 1;
    }
    top.iter()
        .zip(weights)
        .map(|(c, w)| (c.target.clone(), w))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: u64 = 60_000;

    fn params() -> EngineParams {
        EngineParams {
            hysteresis_percent: Decimal::from(5),
            hysteresis_ms: 10 * MIN,
            min_dwell_ms: 30 * MIN,
        }
    }

    fn ok(target: &str, p: i64) -> Candidate {
        Candidate {
            target: target.to_string(),
            profitability: Decimal::from(p),
            eligible: Ok(()),
        }
    }

    fn bad(target: &str, p: i64, why: &str) -> Candidate {
        Candidate {
            eligible: Err(why.to_string()),
            ..ok(target, p)
        }
    }

    fn on(target: &str, since: u64) -> EngineState {
        EngineState {
            current: Some(target.to_string()),
            since_ms: since,
            challenger: None,
            last_switch_ms: Some(since),
        }
    }

    #[test]
    fn initial_takes_the_best_eligible_and_breaks_ties_by_id() {
        let c = [ok("LTC", 100), bad("DOGE", 500, "stale"), ok("BCH", 100)];
        let (d, s) = decide(&params(), &EngineState::default(), &c, None, 7);
        assert_eq!(d.kind, DecisionKind::Initial);
        assert_eq!(d.to.as_deref(), Some("BCH"));
        assert!(!d.switched());
        assert_eq!(d.inputs, c.to_vec());
        assert_eq!(s, on("BCH", 7));
        assert_eq!(d.reason, "start on BCH (100 BTC/day), best of 2 eligible");
    }

    #[test]
    fn nothing_eligible_and_nothing_mined() {
        let c = [bad("LTC", 1, "stale data")];
        let (d, s) = decide(&params(), &EngineState::default(), &c, None, 7);
        assert_eq!(d.kind, DecisionKind::NoEligible);
        assert_eq!(d.to, None);
        assert_eq!(s, EngineState::default());
        assert!(d.reason.contains("LTC: stale data"), "{}", d.reason);
    }

    #[test]
    fn forced_when_current_is_ineligible_bypassing_hysteresis_and_dwell() {
        let c = [
            bad("LTC", 1000, "upstreams down"),
            ok("DOGE", 1),
            ok("BCH", 2),
        ];
        let (d, s) = decide(&params(), &on("LTC", 100), &c, None, 101);
        assert_eq!(d.kind, DecisionKind::Forced);
        assert_eq!(d.to.as_deref(), Some("BCH"));
        assert!(d.switched());
        assert_eq!(s, on("BCH", 101));
        assert!(
            d.reason.contains("LTC is ineligible (upstreams down)"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn forced_when_current_disappears() {
        let (d, _) = decide(&params(), &on("LTC", 0), &[ok("DOGE", 1)], None, 5);
        assert_eq!(d.kind, DecisionKind::Forced);
        assert_eq!(d.to.as_deref(), Some("DOGE"));
        assert!(
            d.reason.contains("LTC is no longer a candidate"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn no_eligible_keeps_mining_the_current_target() {
        let state = EngineState {
            challenger: Some(("DOGE".into(), 3)),
            ..on("LTC", 0)
        };
        let c = [bad("LTC", 1, "stale"), bad("DOGE", 2, "not whitelisted")];
        let (d, s) = decide(&params(), &state, &c, None, 5);
        assert_eq!(d.kind, DecisionKind::NoEligible);
        assert_eq!(
            (d.from.as_deref(), d.to.as_deref()),
            (Some("LTC"), Some("LTC"))
        );
        assert!(!d.switched());
        assert_eq!(s, on("LTC", 0));
        assert!(d.reason.ends_with("keep mining LTC"), "{}", d.reason);
    }

    #[test]
    fn margin_must_be_strictly_above_x() {
        // 105 is exactly 5 % above 100: never a challenger.
        let c = [ok("LTC", 100), ok("DOGE", 105)];
        let mut state = on("LTC", 0);
        for t in 0..100 {
            let (d, s) = decide(&params(), &state, &c, None, 40 * MIN + t * MIN);
            assert_eq!(d.kind, DecisionKind::Stay);
            assert_eq!(s.challenger, None);
            state = s;
        }
        let (d, _) = decide(&params(), &state, &c, None, 0);
        assert!(
            d.reason.contains("DOGE is 5 %, not more than X = 5 %"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn challenger_must_hold_for_y_then_switches() {
        let c = [ok("LTC", 1000), ok("LTC+DOGE", 1072)];
        let s0 = on("LTC", 0);
        let t0 = 60 * MIN;
        let (d, s1) = decide(&params(), &s0, &c, None, t0);
        assert_eq!(d.kind, DecisionKind::Stay);
        assert_eq!(s1.challenger, Some(("LTC+DOGE".into(), t0)));
        let (d, s2) = decide(&params(), &s1, &c, None, t0 + 10 * MIN - 1);
        assert_eq!(d.kind, DecisionKind::Stay);
        assert_eq!(s2.challenger, Some(("LTC+DOGE".into(), t0)));
        let (d, s3) = decide(&params(), &s2, &c, None, t0 + 12 * MIN);
        assert_eq!(d.kind, DecisionKind::Switch);
        assert!(d.switched());
        assert_eq!(s3, on("LTC+DOGE", t0 + 12 * MIN));
        assert_eq!(
            d.reason,
            "LTC+DOGE beats LTC by 7.2 % for 12 min ≥ 10 min (X = 5 %); \
             LTC+DOGE 1072 vs LTC 1000 BTC/day"
        );
    }

    #[test]
    fn timer_restarts_when_margin_drops() {
        let hi = [ok("LTC", 100), ok("DOGE", 110)];
        let lo = [ok("LTC", 100), ok("DOGE", 104)];
        let t0 = 60 * MIN;
        let (_, s) = decide(&params(), &on("LTC", 0), &hi, None, t0);
        let (d, s) = decide(&params(), &s, &lo, None, t0 + 5 * MIN);
        assert_eq!((d.kind, s.challenger.clone()), (DecisionKind::Stay, None));
        let (_, s) = decide(&params(), &s, &hi, None, t0 + 6 * MIN);
        let (d, s) = decide(&params(), &s, &hi, None, t0 + 15 * MIN);
        assert_eq!(d.kind, DecisionKind::Stay, "only 9 min since the restart");
        let (d, _) = decide(&params(), &s, &hi, None, t0 + 16 * MIN);
        assert_eq!(d.kind, DecisionKind::Switch);
    }

    #[test]
    fn timer_restarts_when_the_best_challenger_changes() {
        let a = [ok("LTC", 100), ok("DOGE", 110), ok("BCH", 108)];
        let b = [ok("LTC", 100), ok("DOGE", 108), ok("BCH", 110)];
        let t0 = 60 * MIN;
        let (_, s) = decide(&params(), &on("LTC", 0), &a, None, t0);
        let (_, s) = decide(&params(), &s, &b, None, t0 + 5 * MIN);
        assert_eq!(s.challenger, Some(("BCH".into(), t0 + 5 * MIN)));
        let (d, s) = decide(&params(), &s, &b, None, t0 + 14 * MIN);
        assert_eq!(d.kind, DecisionKind::Stay);
        let (d, _) = decide(&params(), &s, &b, None, t0 + 15 * MIN);
        assert_eq!(
            (d.kind, d.to.as_deref()),
            (DecisionKind::Switch, Some("BCH"))
        );
    }

    #[test]
    fn dwell_blocks_a_switch_until_it_has_passed() {
        let c = [ok("LTC", 100), ok("DOGE", 200)];
        let (_, s) = decide(&params(), &on("LTC", 0), &c, None, 0);
        let (d, s) = decide(&params(), &s, &c, None, 20 * MIN);
        assert_eq!(d.kind, DecisionKind::Stay);
        assert!(
            d.reason
                .contains("only 20 min since the last switch < dwell 30 min"),
            "{}",
            d.reason
        );
        assert_eq!(s.challenger, Some(("DOGE".into(), 0)));
        let (d, _) = decide(&params(), &s, &c, None, 30 * MIN);
        assert_eq!(d.kind, DecisionKind::Switch);
    }

    #[test]
    fn zero_y_and_zero_dwell_switch_on_the_first_evaluation() {
        let p = EngineParams {
            hysteresis_percent: Decimal::ZERO,
            hysteresis_ms: 0,
            min_dwell_ms: 0,
        };
        let (d, _) = decide(
            &p,
            &on("LTC", 5),
            &[ok("LTC", 100), ok("DOGE", 101)],
            None,
            5,
        );
        assert_eq!(d.kind, DecisionKind::Switch);
    }

    #[test]
    fn no_challenger_at_all() {
        let c = [ok("LTC", 100), bad("DOGE", 900, "stale")];
        let (d, s) = decide(&params(), &on("LTC", 0), &c, None, 10);
        assert_eq!(d.kind, DecisionKind::Stay);
        assert_eq!(s, on("LTC", 0));
        assert!(
            d.reason.contains("no other eligible target"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn zero_current_profitability() {
        let c = [ok("LTC", 0), ok("DOGE", 1)];
        let (d, _) = decide(&params(), &on("LTC", 0), &c, None, 10);
        assert_eq!(d.kind, DecisionKind::Stay);
        assert!(d.reason.contains("1 BTC/day over 0"), "{}", d.reason);
    }

    #[test]
    fn pin_beats_everything() {
        let c = [ok("LTC", 100), ok("DOGE", 200)];
        let (d, s) = decide(&params(), &on("DOGE", 0), &c, Some("LTC"), 1);
        assert_eq!(d.kind, DecisionKind::Pinned);
        assert_eq!(
            (d.from.as_deref(), d.to.as_deref()),
            (Some("DOGE"), Some("LTC"))
        );
        assert!(d.switched());
        assert_eq!(s, on("LTC", 1));
        // Staying pinned does not touch the dwell clock.
        let (d, s2) = decide(&params(), &s, &c, Some("LTC"), 99 * MIN);
        assert_eq!(d.kind, DecisionKind::Pinned);
        assert!(!d.switched());
        assert_eq!(s2, s);
        // Even an ineligible target, with the reason saying so.
        let c = [bad("LTC", 100, "stale"), ok("DOGE", 200)];
        let (d, _) = decide(&params(), &EngineState::default(), &c, Some("LTC"), 1);
        assert_eq!(d.to.as_deref(), Some("LTC"));
        assert!(
            d.reason.contains("although ineligible (stale)"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn pin_on_an_unknown_target_is_reported_and_ignored() {
        let c = [ok("LTC", 100), ok("DOGE", 200)];
        let (d, _) = decide(&params(), &EngineState::default(), &c, Some("XMR"), 1);
        assert_eq!(d.kind, DecisionKind::Initial);
        assert_eq!(d.to.as_deref(), Some("DOGE"));
        assert!(
            d.reason.starts_with("pin on unknown target XMR ignored; "),
            "{}",
            d.reason
        );
    }

    #[test]
    fn state_and_decision_round_trip_through_serde() {
        let s = EngineState {
            challenger: Some(("DOGE".into(), 3)),
            ..on("LTC", 1)
        };
        let (d, _) = decide(&params(), &s, &[ok("LTC", 1), bad("DOGE", 2, "x")], None, 4);
        let json = serde_json::to_string(&(&s, &d, params())).unwrap();
        let back: (EngineState, Decision, EngineParams) = serde_json::from_str(&json).unwrap();
        assert_eq!(back, (s, d, params()));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_000), "12 s");
        assert_eq!(duration(750_000), "12.5 min");
        assert_eq!(duration(3 * 3_600_000), "3 h");
        assert_eq!(duration(2 * 86_400_000), "2 d");
    }

    #[test]
    fn split_weights_are_proportional_and_sum_to_total() {
        let c = [
            ok("A", 3),
            ok("B", 1),
            bad("C", 100, "stale"),
            ok("D", 0),
            ok("E", 2),
        ];
        assert_eq!(
            split_weights(&c, 2, 1000),
            vec![("A".into(), 600), ("E".into(), 400)]
        );
        let w = split_weights(&c, 10, 100);
        assert_eq!(
            w,
            vec![("A".into(), 50), ("E".into(), 33), ("B".into(), 17)]
        );
        assert!(split_weights(&c[2..4], 3, 100).is_empty());
    }

    // ---- property tests ----

    const IDS: [&str; 5] = ["A", "B", "C", "D", "E"];

    /// One evaluation: per id, absent / ineligible / eligible with a profitability; and the time
    /// step before it.
    fn step() -> impl Strategy<Value = (u64, Vec<Candidate>)> {
        (
            0u64..20 * MIN,
            prop::collection::vec((0u8..10, 1i64..2_000), IDS.len()),
        )
            .prop_map(|(dt, cs)| {
                let cands = IDS
                    .iter()
                    .zip(cs)
                    .filter(|(_, (mode, _))| *mode != 0)
                    .map(|(id, (mode, p))| {
                        if mode == 1 {
                            bad(id, p, "stale")
                        } else {
                            ok(id, p)
                        }
                    })
                    .collect();
                (dt, cands)
            })
    }

    fn any_params() -> impl Strategy<Value = EngineParams> {
        (0i64..30, 0u64..60 * MIN, 0u64..120 * MIN).prop_map(|(x, y, dwell)| EngineParams {
            hysteresis_percent: Decimal::from(x),
            hysteresis_ms: y,
            min_dwell_ms: dwell,
        })
    }

    fn run(p: &EngineParams, steps: &[(u64, Vec<Candidate>)]) -> Vec<Decision> {
        let mut state = EngineState::default();
        let mut now = 0;
        let mut out = Vec::new();
        for (dt, c) in steps {
            now += dt;
            let (d, s) = decide(p, &state, c, None, now);
            assert_eq!(d.to, s.current);
            state = s;
            out.push(d);
        }
        out
    }

    proptest! {
        #[test]
        fn no_switch_while_the_margin_stays_under_x(
            p in any_params(),
            steps in prop::collection::vec((0u64..20 * MIN, 1i64..2_000, prop::collection::vec(0i64..=100, 4)), 1..60),
        ) {
            // A is current and eligible throughout; every other target earns at most A·(1+X/100).
            let mut state = on("A", 0);
            let mut now = 0;
            for (dt, a, others) in steps {
                now += dt;
                let a = Decimal::from(a);
                let cap = a * (Decimal::ONE + p.hysteresis_percent / Decimal::ONE_HUNDRED);
                let mut c = vec![Candidate { target: "A".into(), profitability: a, eligible: Ok(()) }];
                for (id, pct) in IDS[1..].iter().zip(others) {
                    c.push(Candidate {
                        target: id.to_string(),
                        profitability: cap * Decimal::from(pct) / Decimal::ONE_HUNDRED,
                        eligible: Ok(()),
                    });
                }
                let (d, s) = decide(&p, &state, &c, None, now);
                prop_assert_eq!(d.kind, DecisionKind::Stay, "{}", d.reason);
                prop_assert!(s.challenger.is_none());
                state = s;
            }
        }

        #[test]
        fn never_two_non_forced_switches_within_the_dwell(
            p in any_params(),
            steps in prop::collection::vec(step(), 1..80),
        ) {
            let mut last_change: Option<u64> = None;
            for d in run(&p, &steps) {
                if d.kind == DecisionKind::Switch {
                    if let Some(t) = last_change {
                        prop_assert!(d.at_ms - t >= p.min_dwell_ms, "{} after {}", d.at_ms, t);
                    }
                }
                if d.to != d.from {
                    last_change = Some(d.at_ms);
                }
            }
        }

        #[test]
        fn never_a_move_to_an_ineligible_target(
            p in any_params(),
            steps in prop::collection::vec(step(), 1..80),
        ) {
            for d in run(&p, &steps) {
                if d.to != d.from {
                    let to = d.to.as_deref().unwrap();
                    let c = d.inputs.iter().find(|c| c.target == to).unwrap();
                    prop_assert!(c.eligible.is_ok(), "{:?}", d);
                }
            }
        }

        #[test]
        fn a_switch_needs_the_margin_held_for_y(
            p in any_params(),
            steps in prop::collection::vec(step(), 1..80),
        ) {
            // Whatever the history, a hysteresis switch goes to a target beating the current
            // one by more than X % at that evaluation.
            for d in run(&p, &steps) {
                if d.kind == DecisionKind::Switch {
                    let from = d.from.as_deref().unwrap();
                    let to = d.to.as_deref().unwrap();
                    let pf = d.inputs.iter().find(|c| c.target == from).unwrap().profitability;
                    let pt = d.inputs.iter().find(|c| c.target == to).unwrap().profitability;
                    prop_assert!(pt > pf * (Decimal::ONE + p.hysteresis_percent / Decimal::ONE_HUNDRED));
                }
            }
        }

        #[test]
        fn forced_switch_on_the_first_evaluation_after_its_cause(
            p in any_params(),
            since in 0u64..1_000 * MIN,
            challenger in prop::option::of(0u64..1_000 * MIN),
            dt in 0u64..10 * MIN,
            absent in any::<bool>(),
            (_, others) in step(),
        ) {
            // Whatever the history, once A is ineligible (or gone) and something else is
            // eligible, the very next decision moves.
            let state = EngineState {
                current: Some("A".into()),
                since_ms: since,
                challenger: challenger.map(|t| ("B".to_string(), t)),
                last_switch_ms: Some(since),
            };
            let mut c: Vec<Candidate> = others.into_iter().filter(|c| c.target != "A").collect();
            if !absent {
                c.push(bad("A", 5_000, "upstreams down"));
            }
            let now = since + dt;
            let (d, s) = decide(&p, &state, &c, None, now);
            if c.iter().any(|c| c.eligible.is_ok()) {
                prop_assert_eq!(d.kind, DecisionKind::Forced);
                prop_assert!(d.switched());
                prop_assert_eq!(s.last_switch_ms, Some(now));
            } else {
                prop_assert_eq!(d.kind, DecisionKind::NoEligible);
                prop_assert_eq!(d.to.as_deref(), Some("A"));
            }
        }

        #[test]
        fn decide_is_deterministic_and_order_independent(
            p in any_params(),
            steps in prop::collection::vec(step(), 1..40),
            pin in prop::option::of(0usize..7),
        ) {
            let pin = pin.map(|i| ["A", "B", "C", "D", "E", "X", "Y"][i]);
            let mut state = EngineState::default();
            let mut now = 0;
            for (dt, c) in steps {
                now += dt;
                let (d1, s1) = decide(&p, &state, &c, pin, now);
                let (d2, s2) = decide(&p, &state, &c, pin, now);
                prop_assert_eq!(&d1, &d2);
                prop_assert_eq!(&s1, &s2);
                let mut rev = c.clone();
                rev.reverse();
                let (d3, s3) = decide(&p, &state, &rev, pin, now);
                prop_assert_eq!((d1.kind, &d1.to), (d3.kind, &d3.to));
                prop_assert_eq!(&s1, &s3);
                state = s1;
            }
        }

        #[test]
        fn a_pin_on_a_candidate_always_wins(
            p in any_params(),
            (_, c) in step(),
            i in 0usize..5,
        ) {
            prop_assume!(!c.is_empty());
            let target = c[i % c.len()].target.clone();
            let (d, s) = decide(&p, &on("A", 0), &c, Some(&target), 1);
            prop_assert_eq!(d.kind, DecisionKind::Pinned);
            prop_assert_eq!(d.to.as_deref(), Some(target.as_str()));
            prop_assert_eq!(s.current, Some(target));
        }

        #[test]
        fn split_weights_sum_to_total(
            (_, c) in step(),
            n in 0usize..6,
            total in 0u32..100_000,
        ) {
            let w = split_weights(&c, n, total);
            if !w.is_empty() {
                prop_assert_eq!(w.iter().map(|(_, w)| u64::from(*w)).sum::<u64>(), u64::from(total));
            }
            prop_assert!(w.len() <= n);
        }
    }
}
