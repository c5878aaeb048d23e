//! The backtest: replays a market [`Series`] and reports the BTC a given hashrate would have
//! earned under each strategy.
//!
//! # Strategies
//!
//! - **rule**: the decision engine ([`crate::engine::decide`]) with X / Y / dwell, evaluated once
//!   per step on the previous step's values.
//! - **single `T`**: stay on target `T` throughout.
//! - **greedy**: always the target with the highest observed profitability (no hysteresis;
//!   switches on every lead change, ties keep the current target).
//! - **fixed margin M %**: switch to the best challenger when its observed profitability is at
//!   least `(1 + M/100)` times the current one's; no time condition, no dwell.
//! - **oracle**: the hindsight optimum *with the same switch costs*, by dynamic programming over
//!   the *actual* per-step earnings (it knows the future and pays for each switch). With zero
//!   switch cost it is the best target of every step.
//!
//! # Earnings and switch cost
//!
//! A target is one coin or a parent coin plus chains merge-mined on its work (`LTC+DOGE`): its
//! earnings and profitability are the sums over its chains, for the same hashes. During step `t`
//! target `j` earns `H · Δ · Σ_chains reward · price / (difficulty · 2^32)` BTC with step `t`'s
//! actual values. In a step that begins with a switch, the work earns only
//! `max(0, 1 − lost_secs/Δ − stale_fraction)` of that: `lost_secs` of no work while miners
//! reconnect, plus `stale_fraction` of the step's (the next period's) shares lost as stale. The
//! initial choice is free. Decisions at step `t` see step `t − 1` only (see [`crate::series`]).
//!
//! # Sweep
//!
//! [`sweep`] tries every X / Y / dwell of a grid on *tuning* series, picks the one with the
//! highest mean rule earnings relative to the best single target, and reports that choice run on
//! *evaluation* series only. It refuses tuning series that are evaluation series or whose dates
//! overlap theirs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use defpool_core::{Algorithm, CoinRegistry};
use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::engine::{decide, Candidate, DecisionKind, EngineParams, EngineState};
use crate::series::{load_market, Day, Series, SeriesError};
use crate::sim::{simulate, SimParams};

/// Why a backtest could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BacktestError {
    /// A target names a coin the series does not have, or is malformed.
    Target(String),
    /// Bad parameters.
    Params(String),
    /// Tuning and evaluation data overlap.
    Overlap(String),
}

impl fmt::Display for BacktestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BacktestError::Target(r) => write!(f, "target: {r}"),
            BacktestError::Params(r) => write!(f, "parameters: {r}"),
            BacktestError::Overlap(r) => write!(f, "sweep: {r}"),
        }
    }
}

impl std::error::Error for BacktestError {}

/// A mining target: coins of the series whose rewards one unit of work earns together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    /// `"BTC"`, `"LTC+DOGE"`.
    pub id: String,
    /// Column indices in the series; the first is the parent chain.
    #[serde(skip)]
    pub coins: Vec<usize>,
}

/// Parses target specs (`"LTC"`, `"LTC+DOGE"`) against a series. With a registry, the coins
/// it knows must share one algorithm and each chain after the first must be merge-mined on the
/// first; the algorithm found (if any) is returned.
pub fn parse_targets(
    series: &Series,
    specs: &[String],
    registry: Option<&CoinRegistry>,
) -> Result<(Vec<Target>, Option<Algorithm>), BacktestError> {
    let mut targets: Vec<Target> = Vec::new();
    let mut algorithm = None;
    for spec in specs {
        let names: Vec<&str> = spec.split('+').map(str::trim).collect();
        if names.iter().any(|n| n.is_empty()) {
            return Err(BacktestError::Target(format!("`{spec}` is malformed")));
        }
        let mut coins = Vec::new();
        for name in &names {
            let idx = series.coin_index(name).ok_or_else(|| {
                BacktestError::Target(format!("`{name}` (in `{spec}`) is not in the data"))
            })?;
            if coins.contains(&idx) {
                return Err(BacktestError::Target(format!("`{spec}` repeats {name}")));
            }
            coins.push(idx);
        }
        if let Some(reg) = registry {
            for (i, name) in names.iter().enumerate() {
                let Some(spec_) = reg.by_ticker(name) else {
                    continue;
                };
                match algorithm {
                    None => algorithm = Some(spec_.algorithm),
                    Some(a) if a != spec_.algorithm => {
                        return Err(BacktestError::Target(format!(
                        "{name} is {} but other targets are {a}: one algorithm group per backtest",
                        spec_.algorithm
                    )))
                    }
                    Some(_) => {}
                }
                if i > 0 {
                    let parent = spec_.merged_mining.as_ref().map(|m| m.parent.as_str());
                    if !parent.is_some_and(|p| p.eq_ignore_ascii_case(names[0])) {
                        return Err(BacktestError::Target(format!(
                            "`{spec}`: {name} is not merge-mined on {}",
                            names[0]
                        )));
                    }
                }
            }
        }
        let id = coins
            .iter()
            .map(|&c| series.coins[c].clone())
            .collect::<Vec<_>>()
            .join("+");
        if targets.iter().any(|t| t.id == id) {
            return Err(BacktestError::Target(format!("`{spec}` is given twice")));
        }
        targets.push(Target { id, coins });
    }
    if targets.is_empty() {
        return Err(BacktestError::Target("no targets".into()));
    }
    Ok((targets, algorithm))
}

/// Hashes per second of the profitability unit: TH/s for sha256d, MH/s for scrypt.
pub fn profitability_unit_hs(algorithm: Algorithm) -> f64 {
    match algorithm {
        Algorithm::Sha256d => 1e12,
        Algorithm::Scrypt => 1e6,
    }
}

/// Parses a hashrate such as `1e15`, `250T`, `1.5P` or `10G` (SI prefixes k M G T P E; an
/// optional trailing `H/s` or `H` is ignored) into hashes per second.
pub fn parse_hashrate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("H/s")
        .or_else(|| t.strip_suffix("h/s"))
        .or_else(|| t.strip_suffix('H'))
        .unwrap_or(t)
        .trim();
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m = match c {
                'k' | 'K' => 1e3,
                'M' => 1e6,
                'G' => 1e9,
                'T' => 1e12,
                'P' => 1e15,
                'E' => 1e18,
                _ => return Err(format!("unknown hashrate prefix `{c}` in `{text}`")),
            };
            (&t[..t.len() - 1], m)
        }
        _ => (t, 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a hashrate"))?;
    let v = v * mult;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("hashrate `{text}` must be positive"));
    }
    Ok(v)
}

/// The rule's X / Y / dwell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleParams {
    pub x_percent: Decimal,
    pub y_secs: u64,
    pub dwell_secs: u64,
}

impl RuleParams {
    pub fn engine(&self) -> EngineParams {
        EngineParams {
            hysteresis_percent: self.x_percent,
            hysteresis_ms: self.y_secs * 1000,
            min_dwell_ms: self.dwell_secs * 1000,
        }
    }
}

impl fmt::Display for RuleParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "X = {} %, Y = {}, dwell = {}",
            self.x_percent.normalize(),
            format_secs(self.y_secs),
            format_secs(self.dwell_secs)
        )
    }
}

/// `90` → `90s`, `600` → `10m`, `86400` → `1d`, `5400` → `90m`.
pub fn format_secs(s: u64) -> String {
    if s == 0 {
        "0".into()
    } else if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Parses `0`, `45s`, `30m`, `2h`, `1d` (a bare number is seconds).
pub fn parse_secs(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mult) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1),
        Some('m') => (&t[..t.len() - 1], 60),
        Some('h') => (&t[..t.len() - 1], 3600),
        Some('d') => (&t[..t.len() - 1], 86_400),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{text}` is not a duration (e.g. 0, 90s, 30m, 2h, 1d)"))
}

/// Everything but the rule's parameters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BacktestConfig {
    /// The pool's hashrate, hashes per second.
    pub hashrate_hs: f64,
    /// Hashes per second of the profitability unit the engine sees (1e12: per TH/s).
    pub unit_hs: f64,
    /// Seconds of work lost per switch.
    pub switch_cost_secs: f64,
    /// Fraction of the step after a switch lost as stale shares.
    pub stale_fraction: f64,
    /// M of the fixed-margin strategy, percent.
    pub margin_percent: f64,
    /// The target earnings are shown relative to (default: the first).
    pub baseline: Option<String>,
}

impl Default for BacktestConfig {
    fn default() -> Self {
        BacktestConfig {
            hashrate_hs: 1e15,
            unit_hs: 1e12,
            switch_cost_secs: 30.0,
            stale_fraction: 0.01,
            margin_percent: 5.0,
            baseline: None,
        }
    }
}

/// One strategy's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StrategyResult {
    /// `rule`, `single BTC`, `greedy`, `fixed 5%`, `oracle`.
    pub name: String,
    pub btc: f64,
    pub switches: usize,
    /// `btc` / the baseline single target's `btc`.
    pub vs_baseline: f64,
    /// `btc` / the best single target's `btc`.
    pub vs_best_single: f64,
    /// Steps spent on each target.
    pub steps_on: BTreeMap<String, usize>,
}

/// A switch the rule made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SwitchEvent {
    pub at: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// The backtest of one series.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BacktestReport {
    /// First and last earned step (labels; dates for daily data).
    pub from: String,
    pub to: String,
    pub earned_steps: usize,
    pub step_secs: u64,
    pub targets: Vec<String>,
    pub config: BacktestConfig,
    pub rule_params: RuleParams,
    pub baseline: String,
    pub best_single: String,
    /// How the oracle is computed.
    pub oracle: String,
    pub strategies: Vec<StrategyResult>,
    /// The rule's decisions by kind.
    pub rule_decisions: BTreeMap<String, usize>,
    /// The rule's switches (at most the first 1,000).
    pub rule_switches: Vec<SwitchEvent>,
}

impl BacktestReport {
    pub fn strategy(&self, name: &str) -> Option<&StrategyResult> {
        self.strategies.iter().find(|s| s.name == name)
    }
}

pub const ORACLE_DESCRIPTION: &str = "hindsight optimum by dynamic programming over actual \
    per-step earnings, paying the same switch cost (initial choice free)";

/// A series prepared for one set of targets and costs: everything except the rule is computed
/// once, so a sweep re-runs only the rule.
pub struct Prepared<'a> {
    series: &'a Series,
    targets: Vec<Target>,
    config: BacktestConfig,
    /// `earn[j][t]`: BTC target `j` earns in step `t` at full work (index 0 unused).
    earn: Vec<Vec<f64>>,
    /// `prof[j][t]`: profitability the strategies see at step `t` (from step `t − 1`).
    prof: Vec<Vec<f64>>,
    prof_dec: Vec<Vec<Decimal>>,
    /// Fraction of a step's earnings kept in a step that starts with a switch.
    keep: f64,
    baseline: usize,
    fixed: Vec<StrategyResult>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

impl<'a> Prepared<'a> {
    pub fn new(
        series: &'a Series,
        targets: Vec<Target>,
        config: BacktestConfig,
    ) -> Result<Prepared<'a>, BacktestError> {
        let n = series.len();
        if n < 2 {
            return Err(BacktestError::Params(
                "the series needs at least 2 steps".into(),
            ));
        }
        let checks = [
            (config.hashrate_hs > 0.0, "hashrate must be positive"),
            (config.unit_hs > 0.0, "unit must be positive"),
            (config.switch_cost_secs >= 0.0, "switch cost must be ≥ 0"),
            (
                (0.0..=1.0).contains(&config.stale_fraction),
                "stale fraction must be in 0..=1",
            ),
            (config.margin_percent >= 0.0, "margin must be ≥ 0"),
        ];
        for (ok, why) in checks {
            if !ok {
                return Err(BacktestError::Params(why.into()));
            }
        }
        let baseline = match &config.baseline {
            None => 0,
            Some(b) => targets
                .iter()
                .position(|t| t.id.eq_ignore_ascii_case(b))
                .ok_or_else(|| BacktestError::Target(format!("baseline {b} is not a target")))?,
        };
        let step = series.step_secs as f64;
        let day_per_unit = 86_400.0 * config.unit_hs;
        let mut earn = Vec::with_capacity(targets.len());
        let mut prof = Vec::with_capacity(targets.len());
        let mut prof_dec = Vec::with_capacity(targets.len());
        for target in &targets {
            let mut e = vec![0.0; n];
            let mut p = vec![0.0; n];
            let mut pd = vec![Decimal::ZERO; n];
            for t in 1..n {
                e[t] = target
                    .coins
                    .iter()
                    .map(|&c| series.actual(c, t).btc_per_hash())
                    .sum::<f64>()
                    * config.hashrate_hs
                    * step;
                p[t] = target
                    .coins
                    .iter()
                    .map(|&c| series.observed(c, t).btc_per_hash())
                    .sum::<f64>()
                    * day_per_unit;
                pd[t] = Decimal::from_f64(p[t]).unwrap_or(Decimal::ZERO);
            }
            earn.push(e);
            prof.push(p);
            prof_dec.push(pd);
        }
        let keep = (1.0 - config.switch_cost_secs / step - config.stale_fraction).max(0.0);
        let mut prepared = Prepared {
            series,
            targets,
            config,
            earn,
            prof,
            prof_dec,
            keep,
            baseline,
            fixed: Vec::new(),
        };
        let mut fixed = Vec::new();
        for j in 0..prepared.targets.len() {
            let name = format!("single {}", prepared.targets[j].id);
            fixed.push(prepared.run_path(name, |_, _| Some(j)));
        }
        fixed.push(prepared.greedy());
        fixed.push(prepared.fixed_margin());
        fixed.push(prepared.oracle());
        prepared.fixed = fixed;
        Ok(prepared)
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The profitability (BTC/day per unit hashrate) the strategies see for target `j` when
    /// deciding at step `t ≥ 1`, computed from step `t − 1`.
    pub fn observed_profitability(&self, j: usize, t: usize) -> f64 {
        self.prof[j][t]
    }

    /// Earnings of following `choose(t, current)` for steps 1..n.
    fn run_path(
        &self,
        name: String,
        mut choose: impl FnMut(usize, Option<usize>) -> Option<usize>,
    ) -> StrategyResult {
        let mut current = None;
        let mut btc = 0.0;
        let mut switches = 0;
        let mut steps = vec![0usize; self.targets.len()];
        for t in 1..self.series.len() {
            let next = choose(t, current);
            if let Some(j) = next {
                let switched = current.is_some_and(|c| c != j);
                switches += usize::from(switched);
                btc += self.earn[j][t] * if switched { self.keep } else { 1.0 };
                steps[j] += 1;
            }
            current = next.or(current);
        }
        self.result(name, btc, switches, &steps)
    }

    fn result(&self, name: String, btc: f64, switches: usize, steps: &[usize]) -> StrategyResult {
        StrategyResult {
            name,
            btc,
            switches,
            vs_baseline: f64::NAN,
            vs_best_single: f64::NAN,
            steps_on: self
                .targets
                .iter()
                .zip(steps)
                .map(|(t, &s)| (t.id.clone(), s))
                .collect(),
        }
    }

    fn best_observed(&self, t: usize) -> usize {
        let mut best = 0;
        for j in 1..self.targets.len() {
            if self.prof[j][t] > self.prof[best][t] {
                best = j;
            }
        }
        best
    }

    fn greedy(&self) -> StrategyResult {
        self.run_path("greedy".into(), |t, cur| {
            let best = self.best_observed(t);
            match cur {
                Some(c) if self.prof[c][t] >= self.prof[best][t] => Some(c),
                _ => Some(best),
            }
        })
    }

    fn fixed_margin(&self) -> StrategyResult {
        let factor = 1.0 + self.config.margin_percent / 100.0;
        let name = format!("fixed {}%", self.config.margin_percent);
        self.run_path(name, |t, cur| {
            let best = self.best_observed(t);
            match cur {
                Some(c) if self.prof[best][t] < self.prof[c][t] * factor => Some(c),
                _ => Some(best),
            }
        })
    }

    fn oracle(&self) -> StrategyResult {
        let m = self.targets.len();
        let n = self.series.len();
        // value[j]: best total ending on j; from[t][j]: the target mined at t − 1 on that path.
        let mut value = vec![0.0f64; m];
        let mut from = vec![0u16; n * m];
        for t in 1..n {
            let (mut b1, mut b2) = (0usize, usize::MAX);
            for j in 1..m {
                if value[j] > value[b1] {
                    b2 = b1;
                    b1 = j;
                } else if b2 == usize::MAX || value[j] > value[b2] {
                    b2 = j;
                }
            }
            let mut next = vec![0.0; m];
            for (j, slot) in next.iter_mut().enumerate() {
                let stay = value[j] + self.earn[j][t];
                let other = if j == b1 { b2 } else { b1 };
                let cost = if t == 1 { 1.0 } else { self.keep };
                let mv = (other != usize::MAX).then(|| value[other] + self.earn[j][t] * cost);
                match mv {
                    Some(v) if v > stay => {
                        *slot = v;
                        from[t * m + j] = other as u16;
                    }
                    _ => {
                        *slot = stay;
                        from[t * m + j] = j as u16;
                    }
                }
            }
            value = next;
        }
        let mut end = 0;
        for j in 1..m {
            if value[j] > value[end] {
                end = j;
            }
        }
        let mut path = vec![0usize; n];
        let mut j = end;
        for t in (1..n).rev() {
            path[t] = j;
            j = from[t * m + j] as usize;
        }
        // Re-run the path so the figures use exactly the same accounting as the others.
        let r = self.run_path("oracle".into(), |t, _| Some(path[t]));
        debug_assert!((r.btc - value[end]).abs() <= 1e-9 * value[end].abs().max(1e-300));
        r
    }

    /// The rule with `params`, plus its decisions by kind and its switches.
    pub fn rule(
        &self,
        params: &RuleParams,
    ) -> (StrategyResult, BTreeMap<String, usize>, Vec<SwitchEvent>) {
        let engine = params.engine();
        let index: HashMap<&str, usize> = self
            .targets
            .iter()
            .enumerate()
            .map(|(j, t)| (t.id.as_str(), j))
            .collect();
        let mut state = EngineState::default();
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        let mut events = Vec::new();
        let mut candidates: Vec<Candidate> = self
            .targets
            .iter()
            .map(|t| Candidate {
                target: t.id.clone(),
                profitability: Decimal::ZERO,
                eligible: Ok(()),
            })
            .collect();
        let r = self.run_path("rule".into(), |t, _| {
            for (j, c) in candidates.iter_mut().enumerate() {
                c.profitability = self.prof_dec[j][t];
            }
            let (d, next) = decide(&engine, &state, &candidates, None, self.series.time_ms(t));
            state = next;
            *kinds.entry(kind_name(d.kind).to_string()).or_default() += 1;
            if d.switched() && events.len() < 1000 {
                events.push(SwitchEvent {
                    at: self.series.label(t),
                    from: d.from.clone().unwrap_or_default(),
                    to: d.to.clone().unwrap_or_default(),
                    reason: d.reason.clone(),
                });
            }
            d.to.as_deref().and_then(|id| index.get(id).copied())
        });
        (r, kinds, events)
    }

    /// The full report with the rule run with `params`.
    pub fn report(&self, params: &RuleParams) -> BacktestReport {
        let (rule, kinds, events) = self.rule(params);
        let mut strategies = vec![rule];
        strategies.extend(self.fixed.iter().cloned());
        let singles = &self.fixed[..self.targets.len()];
        let best = (0..singles.len())
            .max_by(|&a, &b| singles[a].btc.total_cmp(&singles[b].btc))
            .unwrap_or(0);
        let (base_btc, best_btc) = (singles[self.baseline].btc, singles[best].btc);
        for s in &mut strategies {
            s.vs_baseline = ratio(s.btc, base_btc);
            s.vs_best_single = ratio(s.btc, best_btc);
        }
        let n = self.series.len();
        BacktestReport {
            from: self.series.label(1),
            to: self.series.label(n - 1),
            earned_steps: n - 1,
            step_secs: self.series.step_secs,
            targets: self.targets.iter().map(|t| t.id.clone()).collect(),
            config: self.config.clone(),
            rule_params: params.clone(),
            baseline: self.targets[self.baseline].id.clone(),
            best_single: self.targets[best].id.clone(),
            oracle: ORACLE_DESCRIPTION.into(),
            strategies,
            rule_decisions: kinds,
            rule_switches: events,
        }
    }
}

fn kind_name(k: DecisionKind) -> &'static str {
    match k {
        DecisionKind::Initial => "initial",
        DecisionKind::Pinned => "pinned",
        DecisionKind::Forced => "forced",
        DecisionKind::Switch => "switch",
        DecisionKind::Stay => "stay",
        DecisionKind::NoEligible => "no_eligible",
    }
}

/// Backtests one series.
pub fn backtest(
    series: &Series,
    targets: Vec<Target>,
    config: BacktestConfig,
    params: &RuleParams,
) -> Result<BacktestReport, BacktestError> {
    Ok(Prepared::new(series, targets, config)?.report(params))
}

/// The X / Y / dwell values a sweep tries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SweepGrid {
    pub x_percent: Vec<Decimal>,
    pub y_secs: Vec<u64>,
    pub dwell_secs: Vec<u64>,
}

impl SweepGrid {
    /// A default grid for a step length: in days for daily data, in minutes for finer steps.
    pub fn default_for(step_secs: u64) -> SweepGrid {
        let x = |v: &[i64]| v.iter().map(|&p| Decimal::new(p, 1)).collect();
        if step_secs >= 3600 {
            let d = |v: &[u64]| v.iter().map(|&n| n * step_secs).collect();
            SweepGrid {
                x_percent: x(&[0, 10, 20, 30, 50, 75, 100, 150, 200]),
                y_secs: d(&[0, 1, 2, 3]),
                dwell_secs: d(&[0, 1, 2, 3, 7]),
            }
        } else {
            let m = |v: &[u64]| v.iter().map(|&n| n * 60).collect();
            SweepGrid {
                x_percent: x(&[5, 10, 20, 30, 50, 100]),
                y_secs: m(&[0, 10, 30, 60]),
                dwell_secs: m(&[0, 30, 120, 360]),
            }
        }
    }

    pub fn all(&self) -> Vec<RuleParams> {
        let mut out = Vec::new();
        for x in &self.x_percent {
            for &y in &self.y_secs {
                for &d in &self.dwell_secs {
                    out.push(RuleParams {
                        x_percent: *x,
                        y_secs: y,
                        dwell_secs: d,
                    });
                }
            }
        }
        out
    }
}

/// What a sweep chose and how the choice did on the evaluation data.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepReport {
    pub grid: SweepGrid,
    pub combinations: usize,
    /// What the tuning data was (periods or seeds); its figures are deliberately not reported.
    pub tuned_on: Vec<String>,
    pub chosen: RuleParams,
    /// The chosen parameters on the evaluation series (never the tuning series).
    pub evaluation: Vec<BacktestReport>,
}

fn earned_range(s: &Series) -> Option<(u64, u64)> {
    s.labels.as_ref()?;
    Some((s.time_ms(1), s.time_ms(s.len())))
}

/// Describes a series for reports: its dates, or its step count.
pub fn describe(s: &Series) -> String {
    match &s.labels {
        Some(_) => format!("{}..{}", s.label(1), s.label(s.len() - 1)),
        None => format!("{} steps of {}", s.len() - 1, format_secs(s.step_secs)),
    }
}

/// Tunes X / Y / dwell on `tuning` and reports the choice on `evaluation`; see the module docs.
/// `make_targets` builds the targets for a series. `progress(done, total)` is called as the grid
/// advances.
pub fn sweep(
    tuning: &[(String, Series)],
    evaluation: &[Series],
    make_targets: &(dyn Fn(&Series) -> Result<Vec<Target>, BacktestError> + Sync),
    config: &BacktestConfig,
    grid: &SweepGrid,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SweepReport, BacktestError> {
    if tuning.is_empty() || evaluation.is_empty() {
        return Err(BacktestError::Params(
            "a sweep needs tuning and evaluation data".into(),
        ));
    }
    for (name, t) in tuning {
        for e in evaluation {
            if t == e {
                return Err(BacktestError::Overlap(format!(
                    "tuning data {name} is also evaluation data"
                )));
            }
            if let (Some((t0, t1)), Some((e0, e1))) = (earned_range(t), earned_range(e)) {
                if t0 < e1 && e0 < t1 {
                    return Err(BacktestError::Overlap(format!(
                        "tuning period {} overlaps evaluation period {}",
                        describe(t),
                        describe(e)
                    )));
                }
            }
        }
    }
    let chosen = tune(tuning, make_targets, config, grid, progress)?;
    let evaluation = evaluation
        .iter()
        .map(|s| backtest(s, make_targets(s)?, config.clone(), &chosen))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SweepReport {
        grid: grid.clone(),
        combinations: grid.all().len(),
        tuned_on: tuning.iter().map(|(n, _)| n.clone()).collect(),
        chosen,
        evaluation,
    })
}

/// The grid point with the highest mean rule earnings relative to the best single target over
/// `tuning`; ties keep the earliest point of the grid. Only the choice is returned.
pub fn tune(
    tuning: &[(String, Series)],
    make_targets: &(dyn Fn(&Series) -> Result<Vec<Target>, BacktestError> + Sync),
    config: &BacktestConfig,
    grid: &SweepGrid,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<RuleParams, BacktestError> {
    let combos = grid.all();
    if combos.is_empty() || tuning.is_empty() {
        return Err(BacktestError::Params(
            "empty sweep grid or no tuning data".into(),
        ));
    }
    let prepared = tuning
        .iter()
        .map(|(_, s)| Prepared::new(s, make_targets(s)?, config.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let best_single: Vec<f64> = prepared
        .iter()
        .map(|p| {
            p.fixed[..p.targets.len()]
                .iter()
                .map(|s| s.btc)
                .fold(0.0, f64::max)
        })
        .collect();
    let score = |params: &RuleParams| -> f64 {
        prepared
            .iter()
            .zip(&best_single)
            .map(|(p, b)| ratio(p.rule(params).0.btc, *b))
            .sum::<f64>()
            / prepared.len() as f64
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut scores = Vec::with_capacity(combos.len());
    progress(0, combos.len());
    for chunk in combos.chunks(threads) {
        let chunk_scores: Vec<f64> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|c| s.spawn(|| score(c))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("sweep worker panicked"))
                .collect()
        });
        scores.extend(chunk_scores);
        progress(scores.len(), combos.len());
    }
    // Highest score; ties keep the earliest combination of the grid.
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if *s > scores[best] {
            best = i;
        }
    }
    Ok(combos[best].clone())
}

/// One strategy's figures across seeds, relative to each seed's best single target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AcrossSeeds {
    pub name: String,
    pub mean_vs_best_single: f64,
    pub min_vs_best_single: f64,
    pub max_vs_best_single: f64,
    pub mean_switches: f64,
}

/// Per-seed summary of a simulated comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeedSummary {
    pub seed: u64,
    pub rule_vs_best_single: f64,
    pub greedy_vs_best_single: f64,
    pub oracle_vs_best_single: f64,
    pub rule_switches: usize,
    pub greedy_switches: usize,
}

/// The simulated comparison over many seeds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimComparison {
    pub sim: SimParams,
    pub seeds: Vec<u64>,
    pub config: BacktestConfig,
    pub rule_params: RuleParams,
    /// Set when the parameters were chosen by a sweep on other seeds.
    pub tuned_on_seeds: Option<Vec<u64>>,
    pub strategies: Vec<AcrossSeeds>,
    /// Seeds in which the rule earned strictly more than greedy.
    pub rule_beats_greedy: usize,
    pub rule_beats_greedy_fraction: f64,
    pub per_seed: Vec<SeedSummary>,
    pub oracle: String,
    /// Wall-clock seconds spent simulating and backtesting, summed over seeds (threads overlap).
    pub simulate_secs: f64,
    pub backtest_secs: f64,
}

/// Summarises per-seed reports (all with the same strategies) into a [`SimComparison`].
pub fn summarize_seeds(
    sim: &SimParams,
    seeds: &[u64],
    reports: &[BacktestReport],
    tuned_on_seeds: Option<Vec<u64>>,
) -> SimComparison {
    let first = &reports[0];
    let strategies = first
        .strategies
        .iter()
        .map(|s| {
            let vals: Vec<f64> = reports
                .iter()
                .map(|r| r.strategy(&s.name).map_or(f64::NAN, |x| x.vs_best_single))
                .collect();
            let sw: f64 = reports
                .iter()
                .map(|r| r.strategy(&s.name).map_or(0, |x| x.switches) as f64)
                .sum();
            AcrossSeeds {
                name: s.name.clone(),
                mean_vs_best_single: vals.iter().sum::<f64>() / vals.len() as f64,
                min_vs_best_single: vals.iter().copied().fold(f64::INFINITY, f64::min),
                max_vs_best_single: vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                mean_switches: sw / reports.len() as f64,
            }
        })
        .collect();
    let per_seed: Vec<SeedSummary> = seeds
        .iter()
        .zip(reports)
        .map(|(&seed, r)| {
            let get = |n: &str| r.strategy(n).expect("every report has the strategy");
            SeedSummary {
                seed,
                rule_vs_best_single: get("rule").vs_best_single,
                greedy_vs_best_single: get("greedy").vs_best_single,
                oracle_vs_best_single: get("oracle").vs_best_single,
                rule_switches: get("rule").switches,
                greedy_switches: get("greedy").switches,
            }
        })
        .collect();
    let beats = per_seed
        .iter()
        .filter(|s| s.rule_vs_best_single > s.greedy_vs_best_single)
        .count();
    SimComparison {
        sim: sim.clone(),
        seeds: seeds.to_vec(),
        config: first.config.clone(),
        rule_params: first.rule_params.clone(),
        tuned_on_seeds,
        strategies,
        rule_beats_greedy: beats,
        rule_beats_greedy_fraction: beats as f64 / seeds.len().max(1) as f64,
        per_seed,
        oracle: ORACLE_DESCRIPTION.into(),
        simulate_secs: 0.0,
        backtest_secs: 0.0,
    }
}

/// Simulates each seed and backtests it with `params` (in parallel), then summarises.
pub fn simulate_seeds(
    sim: &SimParams,
    seeds: &[u64],
    config: &BacktestConfig,
    params: &RuleParams,
    tuned_on_seeds: Option<Vec<u64>>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SimComparison, BacktestError> {
    if seeds.is_empty() {
        return Err(BacktestError::Params("no seeds".into()));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut reports = Vec::with_capacity(seeds.len());
    let (mut simulate_secs, mut backtest_secs) = (0.0, 0.0);
    progress(0, seeds.len());
    for chunk in seeds.chunks(threads) {
        type Timed = (Result<BacktestReport, BacktestError>, f64, f64);
        let done: Vec<Timed> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&seed| {
                    s.spawn(move || {
                        let start = std::time::Instant::now();
                        let series = simulate(sim, seed);
                        let simulated = start.elapsed().as_secs_f64();
                        let targets = all_coins(&series);
                        let report = backtest(&series, targets, config.clone(), params);
                        (report, simulated, start.elapsed().as_secs_f64() - simulated)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("seed worker panicked"))
                .collect()
        });
        for (r, sim_secs, bt_secs) in done {
            reports.push(r?);
            simulate_secs += sim_secs;
            backtest_secs += bt_secs;
        }
        progress(reports.len(), seeds.len());
    }
    let mut summary = summarize_seeds(sim, seeds, &reports, tuned_on_seeds);
    summary.simulate_secs = simulate_secs;
    summary.backtest_secs = backtest_secs;
    Ok(summary)
}

/// Every coin of a series as its own target.
pub fn all_coins(series: &Series) -> Vec<Target> {
    series
        .coins
        .iter()
        .enumerate()
        .map(|(c, id)| Target {
            id: id.clone(),
            coins: vec![c],
        })
        .collect()
}

fn pct(r: f64) -> String {
    if r.is_finite() {
        format!("{:.2} %", r * 100.0)
    } else {
        "-".into()
    }
}

/// A plain-text table of one report.
pub fn render_report(r: &BacktestReport) -> String {
    let mut out = format!(
        "{}..{} ({} steps of {}), targets {}; rule {}; switch cost {} s + {} % stale\n",
        r.from,
        r.to,
        r.earned_steps,
        format_secs(r.step_secs),
        r.targets.join(", "),
        r.rule_params,
        r.config.switch_cost_secs,
        r.config.stale_fraction * 100.0
    );
    let base = format!("vs {}", r.baseline);
    let best = format!("vs best ({})", r.best_single);
    out.push_str(&format!(
        "| {:<18} | {:>14} | {:>12} | {:>18} | {:>8} |\n|{}|{}|{}|{}|{}|\n",
        "strategy",
        "BTC",
        base,
        best,
        "switches",
        "-".repeat(20),
        "-".repeat(16),
        "-".repeat(14),
        "-".repeat(20),
        "-".repeat(10)
    ));
    for s in &r.strategies {
        out.push_str(&format!(
            "| {:<18} | {:>14.8} | {:>12} | {:>18} | {:>8} |\n",
            s.name,
            s.btc,
            pct(s.vs_baseline),
            pct(s.vs_best_single),
            s.switches
        ));
    }
    out
}

/// A plain-text table of a simulated comparison.
pub fn render_comparison(c: &SimComparison) -> String {
    let mut out = format!(
        "{} seeds ({}..{}); {} coins, {} steps over {} days; rule {}{}; switch cost {} s + {} % stale\n",
        c.seeds.len(),
        c.seeds.first().copied().unwrap_or(0),
        c.seeds.last().copied().unwrap_or(0),
        c.sim.coins,
        format_secs(c.sim.step_secs),
        c.sim.days,
        c.rule_params,
        match &c.tuned_on_seeds {
            Some(s) => format!(
                " (chosen by --sweep on seeds {}..{})",
                s.first().copied().unwrap_or(0),
                s.last().copied().unwrap_or(0)
            ),
            None => String::new(),
        },
        c.config.switch_cost_secs,
        c.config.stale_fraction * 100.0
    );
    out.push_str(&format!(
        "| {:<14} | {:>16} | {:>10} | {:>10} | {:>14} |\n|{}|{}|{}|{}|{}|\n",
        "strategy",
        "mean vs best 1",
        "min",
        "max",
        "mean switches",
        "-".repeat(16),
        "-".repeat(18),
        "-".repeat(12),
        "-".repeat(12),
        "-".repeat(16)
    ));
    for s in &c.strategies {
        out.push_str(&format!(
            "| {:<14} | {:>16} | {:>10} | {:>10} | {:>14.1} |\n",
            s.name,
            pct(s.mean_vs_best_single),
            pct(s.min_vs_best_single),
            pct(s.max_vs_best_single),
            s.mean_switches
        ));
    }
    out.push_str(&format!(
        "rule beats greedy in {} of {} seeds ({:.0} %)\n",
        c.rule_beats_greedy,
        c.seeds.len(),
        c.rule_beats_greedy_fraction * 100.0
    ));
    out
}

/// Where a backtest's series come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// Daily CSV files `<dir>/<coin>.csv` (see [`crate::series::load_market`]).
    Market {
        dir: PathBuf,
        /// Target specs: `BTC`, `LTC+DOGE`.
        targets: Vec<String>,
        from: Day,
        to: Day,
        /// Add `extras/<coin>_fees.csv`'s fees per block to the reward.
        fees: bool,
        /// The tuning period of a sweep.
        tune: Option<(Day, Day)>,
    },
    /// The simulator, one run per seed; every simulated coin is a target.
    Simulate {
        sim: SimParams,
        seeds: Vec<u64>,
        /// The seeds a sweep tunes on (must not be evaluation seeds).
        tune_seeds: Vec<u64>,
    },
}

/// A whole `defpool backtest` invocation.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub source: Source,
    /// `None`: 1 PH/s for sha256d (and the simulator), 1 GH/s for scrypt.
    pub hashrate_hs: Option<f64>,
    /// Costs, margin and baseline (its hashrate and unit are filled in by [`run`]).
    pub config: BacktestConfig,
    /// The rule's parameters when not sweeping.
    pub params: RuleParams,
    /// `Some`: sweep this grid on the tuning data instead of using `params`.
    pub grid: Option<SweepGrid>,
}

/// What [`run`] produced.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Report(BacktestReport),
    Sweep(SweepReport),
    Simulated(SimComparison),
}

impl Outcome {
    /// The plain-text tables.
    pub fn render(&self) -> String {
        match self {
            Outcome::Report(r) => render_report(r),
            Outcome::Simulated(c) => render_comparison(c),
            Outcome::Sweep(s) => {
                let mut out = format!(
                    "sweep: {} combinations of X {:?} %, Y {:?}, dwell {:?} tuned on {} (figures not shown); chosen {}\n",
                    s.combinations,
                    s.grid.x_percent.iter().map(|x| x.normalize().to_string()).collect::<Vec<_>>(),
                    s.grid.y_secs.iter().map(|&y| format_secs(y)).collect::<Vec<_>>(),
                    s.grid.dwell_secs.iter().map(|&d| format_secs(d)).collect::<Vec<_>>(),
                    s.tuned_on.join(", "),
                    s.chosen
                );
                for r in &s.evaluation {
                    out.push_str("evaluation: ");
                    out.push_str(&render_report(r));
                }
                out
            }
        }
    }
}

/// A failure of [`run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    Series(SeriesError),
    Backtest(BacktestError),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Series(e) => e.fmt(f),
            RunError::Backtest(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RunError {}

impl From<SeriesError> for RunError {
    fn from(e: SeriesError) -> Self {
        RunError::Series(e)
    }
}

impl From<BacktestError> for RunError {
    fn from(e: BacktestError) -> Self {
        RunError::Backtest(e)
    }
}

fn default_hashrate(algorithm: Algorithm) -> f64 {
    match algorithm {
        Algorithm::Sha256d => 1e15,
        Algorithm::Scrypt => 1e9,
    }
}

/// Runs a [`Request`]. `progress(phase, done, total)` reports long phases.
pub fn run(
    request: &Request,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Outcome, RunError> {
    let mut config = request.config.clone();
    match &request.source {
        Source::Market {
            dir,
            targets,
            from,
            to,
            fees,
            tune,
        } => {
            let mut coins: Vec<String> = Vec::new();
            for spec in targets {
                for c in spec.split('+').map(|c| c.trim().to_uppercase()) {
                    if !coins.contains(&c) {
                        coins.push(c);
                    }
                }
            }
            let registry = CoinRegistry::builtin();
            let eval = load_market(dir, &coins, *from, *to, *fees)?;
            let (parsed, algorithm) = parse_targets(&eval, targets, Some(&registry))?;
            let algorithm = algorithm.unwrap_or(Algorithm::Sha256d);
            config.unit_hs = profitability_unit_hs(algorithm);
            config.hashrate_hs = request
                .hashrate_hs
                .unwrap_or_else(|| default_hashrate(algorithm));
            let Some(grid) = &request.grid else {
                return Ok(Outcome::Report(backtest(
                    &eval,
                    parsed,
                    config,
                    &request.params,
                )?));
            };
            let Some((tune_from, tune_to)) = tune else {
                return Err(BacktestError::Params(
                    "a sweep needs a tuning period (--tune-from/--tune-to)".into(),
                )
                .into());
            };
            let tuning = load_market(dir, &coins, *tune_from, *tune_to, *fees)?;
            let make = |s: &Series| parse_targets(s, targets, Some(&registry)).map(|t| t.0);
            let name = format!("{tune_from}..{tune_to}");
            Ok(Outcome::Sweep(sweep(
                &[(name, tuning)],
                std::slice::from_ref(&eval),
                &make,
                &config,
                grid,
                &mut |d, t| progress("sweep", d, t),
            )?))
        }
        Source::Simulate {
            sim,
            seeds,
            tune_seeds,
        } => {
            config.unit_hs = profitability_unit_hs(Algorithm::Sha256d);
            config.hashrate_hs = request
                .hashrate_hs
                .unwrap_or_else(|| default_hashrate(Algorithm::Sha256d));
            let (params, tuned_on) = match &request.grid {
                None => (request.params.clone(), None),
                Some(grid) => {
                    if let Some(s) = tune_seeds.iter().find(|s| seeds.contains(s)) {
                        return Err(BacktestError::Overlap(format!(
                            "seed {s} is both a tuning and an evaluation seed"
                        ))
                        .into());
                    }
                    let tuning: Vec<(String, Series)> = tune_seeds
                        .iter()
                        .map(|&s| (format!("seed {s}"), simulate(sim, s)))
                        .collect();
                    let chosen = tune(
                        &tuning,
                        &|s: &Series| Ok(all_coins(s)),
                        &config,
                        grid,
                        &mut |d, t| progress("sweep", d, t),
                    )?;
                    (chosen, Some(tune_seeds.clone()))
                }
            };
            Ok(Outcome::Simulated(simulate_seeds(
                sim,
                seeds,
                &config,
                &params,
                tuned_on,
                &mut |d, t| progress("seeds", d, t),
            )?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::Point;

    /// A daily series where coin `c` has BTC-per-hash `values[c][t]` (reward 1, difficulty
    /// 1/2^32 scaled): price = value, difficulty = 1/2^32 so btc_per_hash = value.
    fn series(values: &[&[f64]]) -> Series {
        let pt = |v: f64| Point {
            price_btc: v,
            difficulty: 1.0 / crate::series::TWO_POW_32,
            block_reward: 1.0,
            blocks: 1.0,
        };
        Series {
            coins: (0..values.len()).map(|c| format!("C{c}")).collect(),
            step_secs: 100,
            start_ms: 1_000_000,
            labels: None,
            points: values
                .iter()
                .map(|col| col.iter().map(|&v| pt(v)).collect())
                .collect(),
        }
    }

    fn config(cost: f64, stale: f64) -> BacktestConfig {
        BacktestConfig {
            hashrate_hs: 1.0,
            unit_hs: 1.0,
            switch_cost_secs: cost,
            stale_fraction: stale,
            margin_percent: 5.0,
            baseline: None,
        }
    }

    fn rule(x: i64, y: u64, dwell: u64) -> RuleParams {
        RuleParams {
            x_percent: Decimal::from(x),
            y_secs: y,
            dwell_secs: dwell,
        }
    }

    fn run(s: &Series, cfg: BacktestConfig, p: &RuleParams) -> BacktestReport {
        backtest(s, all_coins(s), cfg, p).unwrap()
    }

    #[test]
    fn singles_earn_their_actual_values_and_skip_step_zero() {
        let s = series(&[&[9.0, 1.0, 2.0, 3.0], &[9.0, 2.0, 2.0, 2.0]]);
        let r = run(&s, config(0.0, 0.0), &rule(0, 0, 0));
        // hashrate 1 H/s × 100 s per step × value.
        assert_eq!(r.strategy("single C0").unwrap().btc, 600.0);
        assert_eq!(r.strategy("single C1").unwrap().btc, 600.0);
        assert_eq!(r.earned_steps, 3);
        assert_eq!(r.strategy("single C0").unwrap().switches, 0);
    }

    #[test]
    fn greedy_switches_on_every_lead_change_one_step_late() {
        // Leader by step: C0, C1, C0, C1, C1.
        let s = series(&[&[2.0, 1.0, 2.0, 1.0, 1.0], &[1.0, 2.0, 1.0, 2.0, 2.0]]);
        let r = run(&s, config(0.0, 0.0), &rule(0, 0, 0));
        let g = r.strategy("greedy").unwrap();
        // Decides on t-1: mines C0 (t=1), C1, C0, C1 → 3 switches, always on last step's leader,
        // which is this step's loser except at the last step.
        assert_eq!(g.switches, 3);
        assert_eq!(g.btc, 100.0 * (1.0 + 1.0 + 1.0 + 2.0));
        assert_eq!(g.steps_on["C0"], 2);
        // The oracle mines each step's leader.
        let o = r.strategy("oracle").unwrap();
        assert_eq!(o.btc, 100.0 * 8.0);
        assert_eq!(o.switches, 2); // leaders C1, C0, C1, C1
    }

    #[test]
    fn switch_cost_is_lost_seconds_plus_stale_fraction_of_the_step() {
        let s = series(&[&[2.0, 2.0, 1.0, 1.0], &[1.0, 1.0, 3.0, 3.0]]);
        // One greedy switch at t = 3: keeps 1 - 20/100 - 0.1 = 0.7 of that step.
        let r = run(&s, config(20.0, 0.1), &rule(0, 0, 0));
        let g = r.strategy("greedy").unwrap();
        assert_eq!(g.switches, 1);
        assert!(
            (g.btc - 100.0 * (2.0 + 1.0 + 3.0 * 0.7)).abs() < 1e-9,
            "{}",
            g.btc
        );
    }

    #[test]
    fn fixed_margin_needs_m_percent() {
        // C1 leads by 4 % then by 6 %.
        let s = series(&[&[1.0, 1.0, 1.0, 1.0], &[0.5, 1.04, 1.06, 1.0]]);
        let r = run(&s, config(0.0, 0.0), &rule(0, 0, 0));
        let f = r.strategy("fixed 5%").unwrap();
        assert_eq!(f.switches, 1);
        assert_eq!(f.steps_on["C1"], 1); // switched at t = 3 on t = 2's 6 % lead
        assert_eq!(r.strategy("greedy").unwrap().switches, 1);
        assert_eq!(r.strategy("greedy").unwrap().steps_on["C1"], 2);
    }

    #[test]
    fn the_rule_waits_y_and_respects_x() {
        // C1 leads by 50 % from step 1 on; with Y = 200 s (2 steps) the rule switches at t = 4.
        let s = series(&[&[1.0; 6], &[0.5, 1.5, 1.5, 1.5, 1.5, 1.5]]);
        let r = run(&s, config(0.0, 0.0), &rule(10, 200, 0));
        let rl = r.strategy("rule").unwrap();
        assert_eq!(rl.switches, 1);
        assert_eq!(rl.steps_on["C0"], 3);
        assert_eq!(r.rule_switches.len(), 1);
        assert_eq!(r.rule_decisions["initial"], 1);
        // X = 60 %: never.
        let r = run(&s, config(0.0, 0.0), &rule(60, 0, 0));
        assert_eq!(r.strategy("rule").unwrap().switches, 0);
    }

    #[test]
    fn merged_targets_add_their_chains() {
        let s = series(&[&[1.0, 1.0, 1.0], &[0.5, 0.5, 0.5]]);
        let (targets, _) = parse_targets(&s, &["C0".into(), "C0+C1".into()], None).unwrap();
        assert_eq!(targets[1].id, "C0+C1");
        let r = backtest(&s, targets, config(0.0, 0.0), &rule(5, 0, 0)).unwrap();
        assert_eq!(r.strategy("single C0+C1").unwrap().btc, 300.0);
        assert_eq!(r.best_single, "C0+C1");
        assert_eq!(r.strategy("rule").unwrap().steps_on["C0+C1"], 2);
        assert!(parse_targets(&s, &["C0+C9".into()], None).is_err());
        assert!(parse_targets(&s, &["C0+C0".into()], None).is_err());
        assert!(parse_targets(&s, &["C0".into(), "c0".into()], None).is_err());
    }

    #[test]
    fn registry_checks_merge_mining_and_algorithm() {
        let mut s = series(&[&[1.0, 1.0], &[1.0, 1.0], &[1.0, 1.0]]);
        s.coins = vec!["LTC".into(), "DOGE".into(), "BTC".into()];
        let reg = CoinRegistry::builtin();
        let (_, algo) = parse_targets(&s, &["LTC".into(), "LTC+DOGE".into()], Some(&reg)).unwrap();
        assert_eq!(algo, Some(Algorithm::Scrypt));
        assert!(parse_targets(&s, &["DOGE+LTC".into()], Some(&reg)).is_err());
        assert!(parse_targets(&s, &["LTC".into(), "BTC".into()], Some(&reg)).is_err());
    }

    #[test]
    fn profitability_matches_the_profit_module() {
        use crate::profit::coin_profitability;
        // BTC on 2020-01-01: price 1, difficulty 13.8e12, 12.5 BTC; BCH-like second coin.
        let p = |price: f64, diff: f64| Point {
            price_btc: price,
            difficulty: diff,
            block_reward: 12.5,
            blocks: 144.0,
        };
        let s = Series {
            coins: vec!["BTC".into(), "BCH".into()],
            step_secs: 86_400,
            start_ms: 0,
            labels: None,
            points: vec![
                vec![p(1.0, 13_798_783_827_516.4), p(1.0, 1.0)],
                vec![p(0.02814, 311_357_063_437.93), p(1.0, 1.0)],
            ],
        };
        let prepared = Prepared::new(&s, all_coins(&s), BacktestConfig::default()).unwrap();
        for (j, (price, diff)) in [("1", "13798783827516.4"), ("0.02814", "311357063437.93")]
            .iter()
            .enumerate()
        {
            let expected = coin_profitability(
                Algorithm::Sha256d,
                1_250_000_000,
                8,
                price.parse().unwrap(),
                diff.parse().unwrap(),
            )
            .unwrap();
            let expected: f64 = expected.to_string().parse().unwrap();
            let ours = prepared.observed_profitability(j, 1);
            assert!(
                (ours / expected - 1.0).abs() < 1e-12,
                "{ours} vs {expected}"
            );
        }
    }

    #[test]
    fn parses_hashrates_and_durations() {
        assert_eq!(parse_hashrate("1e15").unwrap(), 1e15);
        assert_eq!(parse_hashrate("250T").unwrap(), 250e12);
        assert_eq!(parse_hashrate("1.5 PH/s").unwrap(), 1.5e15);
        assert_eq!(parse_hashrate("10G").unwrap(), 10e9);
        assert_eq!(parse_hashrate("2E").unwrap(), 2e18);
        assert!(parse_hashrate("0").is_err());
        assert!(parse_hashrate("5X").is_err());
        assert_eq!(parse_secs("30m").unwrap(), 1800);
        assert_eq!(parse_secs("1d").unwrap(), 86_400);
        assert_eq!(parse_secs("45").unwrap(), 45);
        assert!(parse_secs("x").is_err());
        assert_eq!(format_secs(5400), "90m");
        assert_eq!(format_secs(172_800), "2d");
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// With zero switch cost the oracle earns at least as much as every strategy, and it
        /// earns the sum of each step's best; with a cost it is still ≥ every strategy.
        #[test]
        fn the_oracle_is_an_upper_bound(
            cols in prop::collection::vec(prop::collection::vec(0.1f64..10.0, 12), 2..5),
            cost in 0.0f64..60.0,
            stale in 0.0f64..0.2,
            x in 0i64..30,
            y in 0u64..4,
            d in 0u64..4,
        ) {
            let refs: Vec<&[f64]> = cols.iter().map(|c| c.as_slice()).collect();
            let s = series(&refs);
            let free = run(&s, config(0.0, 0.0), &rule(x, y * 100, d * 100));
            let o = free.strategy("oracle").unwrap().btc;
            let best_sum: f64 = (1..12)
                .map(|t| cols.iter().map(|c| c[t]).fold(0.0, f64::max) * 100.0)
                .sum();
            prop_assert!((o - best_sum).abs() <= 1e-9 * best_sum);
            for st in &free.strategies {
                prop_assert!(st.btc <= o * (1.0 + 1e-12), "{} {} > {}", st.name, st.btc, o);
            }
            let costly = run(&s, config(cost, stale), &rule(x, y * 100, d * 100));
            let o = costly.strategy("oracle").unwrap().btc;
            for st in &costly.strategies {
                prop_assert!(st.btc <= o * (1.0 + 1e-12), "{} {} > {}", st.name, st.btc, o);
            }
        }
    }

    fn dated(from: &str, to: &str) -> Series {
        use crate::series::{day_range, Day};
        let days = day_range(Day::parse(from).unwrap(), Day::parse(to).unwrap()).unwrap();
        let n = days.len();
        // Alternating leadership with a tuning-dependent pattern.
        let a: Vec<f64> = (0..n).map(|t| 1.0 + 0.3 * ((t / 3) % 2) as f64).collect();
        let b: Vec<f64> = (0..n)
            .map(|t| 1.0 + 0.3 * (((t / 3) + 1) % 2) as f64)
            .collect();
        let mut s = series(&[&a, &b]);
        s.step_secs = 86_400;
        s.start_ms = days[0].unix_ms();
        s.labels = Some(days.iter().map(|d| d.to_string()).collect());
        s
    }

    #[test]
    fn sweep_reports_only_the_evaluation_period() {
        let tune = dated("2019-01-01", "2019-03-01");
        let eval = dated("2019-12-31", "2020-02-01");
        let grid = SweepGrid::default_for(86_400);
        let mut calls = 0;
        let rep = sweep(
            &[("2019-01-01..2019-03-01".into(), tune.clone())],
            std::slice::from_ref(&eval),
            &|s| Ok(all_coins(s)),
            &config(30.0, 0.01),
            &grid,
            &mut |_, _| calls += 1,
        )
        .unwrap();
        assert!(calls >= 2);
        assert_eq!(rep.combinations, grid.all().len());
        assert_eq!(rep.evaluation.len(), 1);
        let ev = &rep.evaluation[0];
        assert_eq!(
            (ev.from.as_str(), ev.to.as_str()),
            ("2020-01-01", "2020-02-01")
        );
        // The figures are the chosen parameters run on the evaluation series…
        let direct = run(&eval, config(30.0, 0.01), &rep.chosen);
        assert_eq!(ev, &direct);
        // …and not on the tuning series.
        let on_tune = run(&tune, config(30.0, 0.01), &rep.chosen);
        assert_ne!(ev.strategy("rule"), on_tune.strategy("rule"));
        let json = serde_json::to_string(&rep).unwrap();
        assert!(
            !json.contains("2019-02-"),
            "the tuning dates leak into the figures: {json}"
        );
        assert!(json.contains("2019-01-01..2019-03-01")); // named as what it tuned on, only

        // Overlapping periods and identical series are refused.
        let overlapping = dated("2019-02-01", "2019-04-01");
        let err = sweep(
            &[("t".into(), tune.clone())],
            &[overlapping],
            &|s| Ok(all_coins(s)),
            &config(30.0, 0.01),
            &grid,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(err, BacktestError::Overlap(_)), "{err}");
        let err = sweep(
            &[("t".into(), eval.clone())],
            std::slice::from_ref(&eval),
            &|s| Ok(all_coins(s)),
            &config(30.0, 0.01),
            &grid,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(err, BacktestError::Overlap(_)), "{err}");
    }

    #[test]
    fn simulated_seeds_are_summarised() {
        let sim = SimParams {
            days: 1.0,
            ..SimParams::default()
        };
        let c = simulate_seeds(
            &sim,
            &[1, 2, 3],
            &BacktestConfig::default(),
            &rule(2, 600, 1800),
            None,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(c.per_seed.len(), 3);
        let oracle = c.strategies.iter().find(|s| s.name == "oracle").unwrap();
        assert!(oracle.min_vs_best_single >= 1.0 - 1e-12);
        let text = render_comparison(&c);
        assert!(text.contains("rule beats greedy in"), "{text}");
    }
}
