//! Pure profit-switching logic (no I/O): market snapshots and how several sources combine,
//! the profitability of a mining target, the decision engine with hysteresis, and the backtest.

pub mod backtest;
pub mod combine;
pub mod engine;
pub mod profit;
pub mod series;
pub mod sim;
pub mod snapshot;

pub use combine::{CoinMarket, CombineParams, Combiner, Exclusion};
pub use engine::{
    decide, split_weights, Candidate, Decision, DecisionKind, EngineParams, EngineState, TargetId,
};
pub use profit::{
    coin_profitability, target_profitability, MiningTarget, ProfitError, UpstreamTerms,
};
pub use snapshot::MarketSnapshot;
