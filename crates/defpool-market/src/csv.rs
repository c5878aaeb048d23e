//! Replay of recorded daily series in the backtest CSV format.
//!
//! Format (one file per coin, as in the project's shared market data):
//!
//! ```text
//! date,price_btc,price_usd,difficulty,block_reward,blocks
//! 2019-01-01,0.008338,31.63,5216468.98,25,576
//! ```
//!
//! - `date`: the UTC day the row describes (`YYYY-MM-DD`), ascending, no repeats;
//! - `price_btc`, `price_usd`: end-of-day prices (the close at 00:00 UTC of the next day);
//! - `difficulty`: the day's mean difficulty (`getdifficulty` convention);
//! - `block_reward`: the day's mean reward per block in whole coins;
//! - `blocks`: blocks found that day.
//!
//! Empty cells are unknown values. Columns are found by name, so their order may differ;
//! `date`, `price_btc`, `difficulty` and `block_reward` are required, the others optional.
//!
//! **Time.** A row describes a whole day and its prices are that day's close, so the row dated
//! `D` is known only from `D+1` 00:00 UTC: that is when it comes into force, and its snapshot's
//! `observed_at_ms`. At a time `t` the row in force is the last one known by `t`; deciding on day
//! `D` therefore uses the row of `D-1`, never the day being decided.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use defpool_core::{CoinRegistry, Ticker};
use rust_decimal::Decimal;

use crate::error::SourceError;
use crate::http::{days_from_civil, system_clock, Clock};
use crate::num::{coins_to_units, parse_decimal};
use crate::{unique, Fetched, MarketSnapshot, MarketSource};

const DAY_MS: u64 = 86_400_000;

/// One recorded day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvRow {
    /// The day described, as written (`2019-01-01`).
    pub date: String,
    /// Unix milliseconds of that day's 00:00 UTC.
    pub day_start_ms: u64,
    pub price_btc: Option<Decimal>,
    pub price_usd: Option<Decimal>,
    pub difficulty: Option<Decimal>,
    /// Mean reward per block, in smallest units.
    pub block_reward: Option<u64>,
    pub blocks: Option<u64>,
}

impl CsvRow {
    /// When the row comes into force: the end of its day.
    pub fn known_at_ms(&self) -> u64 {
        self.day_start_ms.saturating_add(DAY_MS)
    }
}

/// Recorded series for several coins, served as the rows in force at the clock's time.
#[derive(Clone)]
pub struct CsvReplay {
    name: String,
    series: BTreeMap<Ticker, Vec<CsvRow>>,
    clock: Clock,
}

impl std::fmt::Debug for CsvReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: BTreeMap<&Ticker, usize> = self
            .series
            .iter()
            .map(|(c, rows)| (c, rows.len()))
            .collect();
        f.debug_struct("CsvReplay")
            .field("name", &self.name)
            .field("rows", &sizes)
            .finish_non_exhaustive()
    }
}

impl Default for CsvReplay {
    fn default() -> Self {
        CsvReplay::new()
    }
}

impl CsvReplay {
    /// An empty replay on the wall clock (serving each coin's latest row).
    pub fn new() -> CsvReplay {
        CsvReplay {
            name: "csv".into(),
            series: BTreeMap::new(),
            clock: system_clock(),
        }
    }

    /// The clock `fetch` reads: a backtest passes its simulated time.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Report under another name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Load `<dir>/<ticker in lower case>.csv` for each coin, with decimals from `registry`.
    pub fn load_dir(
        &mut self,
        registry: &CoinRegistry,
        dir: &Path,
        coins: &[Ticker],
    ) -> Result<(), SourceError> {
        for coin in coins {
            let decimals = registry.get(coin).map(|s| s.decimals).ok_or_else(|| {
                SourceError::unknown(&self.name, format!("{coin} (not in the coin registry)"))
            })?;
            let path = dir.join(format!("{}.csv", coin.as_str().to_ascii_lowercase()));
            self.load_file(coin.clone(), &path, decimals)?;
        }
        Ok(())
    }

    /// Load one coin's series from a file (replacing any series it had). Returns the row count.
    pub fn load_file(
        &mut self,
        coin: Ticker,
        path: &Path,
        decimals: u8,
    ) -> Result<usize, SourceError> {
        let text = std::fs::read_to_string(path).map_err(|e| SourceError::Io {
            origin: self.name.clone(),
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        self.load_str(coin, &text, decimals)
    }

    /// Load one coin's series from CSV text (replacing any series it had). Returns the row
    /// count.
    pub fn load_str(
        &mut self,
        coin: Ticker,
        text: &str,
        decimals: u8,
    ) -> Result<usize, SourceError> {
        let rows = parse(&self.name, &coin, text, decimals)?;
        let n = rows.len();
        self.series.insert(coin, rows);
        Ok(n)
    }

    /// A coin's rows, oldest first.
    pub fn rows(&self, coin: &Ticker) -> &[CsvRow] {
        self.series.get(coin).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The row in force at `unix_ms`: the last one whose day had ended by then.
    pub fn in_force(&self, coin: &Ticker, unix_ms: u64) -> Option<&CsvRow> {
        let rows = self.series.get(coin)?;
        let known = rows.partition_point(|r| r.known_at_ms() <= unix_ms);
        known.checked_sub(1).map(|i| &rows[i])
    }

    /// The snapshot in force at `unix_ms`.
    pub fn at(&self, coin: &Ticker, unix_ms: u64) -> Option<MarketSnapshot> {
        self.in_force(coin, unix_ms).map(|row| MarketSnapshot {
            coin: coin.clone(),
            price_btc: row.price_btc,
            difficulty: row.difficulty,
            block_reward: row.block_reward,
            height: None,
            observed_at_ms: row.known_at_ms(),
            source: self.name.clone(),
        })
    }
}

impl MarketSource for CsvReplay {
    fn name(&self) -> &str {
        &self.name
    }

    fn fetch_detailed(&self, coins: &[Ticker]) -> Result<Fetched, SourceError> {
        let now = (self.clock)();
        let mut out = Fetched::default();
        for coin in unique(coins) {
            if !self.series.contains_key(&coin) {
                let e = SourceError::unknown(&self.name, format!("{coin} (no series loaded)"));
                out.failed.push((coin, e));
                continue;
            }
            match self.at(&coin, now) {
                Some(s) => out.snapshots.push(s),
                None => {
                    let e = SourceError::missing(
                        &self.name,
                        coin.as_str(),
                        format!("no row in force at {now} ms"),
                    );
                    out.failed.push((coin, e));
                }
            }
        }
        Ok(out)
    }
}

/// Parse one coin's CSV text.
fn parse(
    origin: &str,
    coin: &Ticker,
    text: &str,
    decimals: u8,
) -> Result<Vec<CsvRow>, SourceError> {
    let bad = |line: usize, detail: String| {
        SourceError::malformed(origin, format!("{coin} CSV line {line}: {detail}"))
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty());
    let (header_no, header) = lines
        .next()
        .ok_or_else(|| bad(1, "empty file, no header".into()))?;
    let names: Vec<&str> = header
        .trim_start_matches('\u{feff}')
        .split(',')
        .map(str::trim)
        .collect();
    let column = |name: &str| names.iter().position(|n| *n == name);
    let required = |name: &str| {
        column(name).ok_or_else(|| bad(header_no, format!("no `{name}` column in the header")))
    };
    let c_date = required("date")?;
    let c_price = required("price_btc")?;
    let c_diff = required("difficulty")?;
    let c_reward = required("block_reward")?;
    let c_usd = column("price_usd");
    let c_blocks = column("blocks");

    let mut rows: Vec<CsvRow> = Vec::new();
    for (no, line) in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != names.len() {
            return Err(bad(
                no,
                format!("{} cells, the header has {}", cells.len(), names.len()),
            ));
        }
        let cell = |i: usize| Some(cells[i]).filter(|c| !c.is_empty());
        let decimal = |i: usize, what: &str| -> Result<Option<Decimal>, SourceError> {
            cell(i)
                .map(|c| parse_decimal(c).map_err(|e| bad(no, format!("{what}: {e}"))))
                .transpose()
        };
        let date = cells[c_date];
        let day_start_ms =
            parse_date(date).ok_or_else(|| bad(no, format!("date `{date}` is not YYYY-MM-DD")))?;
        if let Some(prev) = rows.last() {
            if day_start_ms <= prev.day_start_ms {
                return Err(bad(
                    no,
                    format!("date {date} does not follow {}", prev.date),
                ));
            }
        }
        let price_btc = decimal(c_price, "price_btc")?;
        let price_usd = c_usd
            .map(|c| decimal(c, "price_usd"))
            .transpose()?
            .flatten();
        let difficulty = decimal(c_diff, "difficulty")?;
        let block_reward = decimal(c_reward, "block_reward")?
            .map(|coins| {
                coins_to_units(coins, decimals)
                    .ok_or_else(|| bad(no, format!("block_reward {coins} out of range")))
            })
            .transpose()?;
        let blocks = c_blocks
            .and_then(cell)
            .map(|b| u64::from_str(b).map_err(|_| bad(no, format!("blocks `{b}` is not a count"))))
            .transpose()?;
        for (what, value) in [("price_btc", price_btc), ("difficulty", difficulty)] {
            if value.is_some_and(|v| v.is_sign_negative() && !v.is_zero()) {
                return Err(bad(no, format!("negative {what}")));
            }
        }
        rows.push(CsvRow {
            date: date.to_string(),
            day_start_ms,
            price_btc,
            price_usd,
            difficulty,
            block_reward,
            blocks,
        });
    }
    Ok(rows)
}

/// `YYYY-MM-DD` → Unix milliseconds of its 00:00 UTC.
fn parse_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if d == 0 || d > days_in_month {
        return None;
    }
    days_from_civil(y, m, d)?.checked_mul(DAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2020-02-29"), Some(1_582_934_400_000));
        assert_eq!(parse_date("2019-02-29"), None);
        assert_eq!(parse_date("2019-13-01"), None);
        assert_eq!(parse_date("2019-1-01"), None);
        assert_eq!(parse_date("+019-01-01"), None);
        assert_eq!(parse_date("1969-12-31"), None);
    }
}
