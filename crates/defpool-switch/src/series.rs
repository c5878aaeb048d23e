//! Market series for the backtest: per time step and per coin, the price in BTC, the network
//! difficulty, the block reward and the number of blocks found.
//!
//! A series comes from recorded daily CSV files (one per coin, [`load_market`]) or from the
//! simulator ([`crate::sim`]). Values are `f64`: the backtest computes *estimates* of earnings,
//! and the decision engine receives them converted to `Decimal`.
//!
//! # Time convention (no look-ahead)
//!
//! Step `t` covers `[start_ms + t·step, start_ms + (t+1)·step)`. A strategy deciding at the start
//! of step `t` sees only step `t − 1`'s values ([`Series::observed`]); what it earns during step
//! `t` is computed from step `t`'s values. Step 0 is therefore *observed only*: it is never
//! earned. For the daily CSV data this is exactly the caveat of the data's provenance notes:
//! prices are end-of-day closes (the value for day D is the price at 00:00 UTC of D+1), so a
//! decision at the start of day D may use day D−1's row and nothing later. [`load_market`] loads
//! the day before `from` as that observed-only step 0.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// One coin at one time step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Price of one whole coin in BTC.
    pub price_btc: f64,
    /// Network difficulty, `getdifficulty` convention: a block takes `difficulty · 2^32` hashes
    /// on average.
    pub difficulty: f64,
    /// Reward per block in whole coins (subsidy, plus average fees per block if requested).
    pub block_reward: f64,
    /// Blocks the network found during the step.
    pub blocks: f64,
}

impl Point {
    /// Expected coins per hash: `block_reward / (difficulty · 2^32)`.
    pub fn coins_per_hash(&self) -> f64 {
        self.block_reward / (self.difficulty * TWO_POW_32)
    }

    /// Expected BTC per hash: [`Self::coins_per_hash`] times the price.
    pub fn btc_per_hash(&self) -> f64 {
        self.coins_per_hash() * self.price_btc
    }
}

pub(crate) const TWO_POW_32: f64 = 4_294_967_296.0;

/// Aligned per-coin series with a fixed step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Series {
    /// Coin tickers, in column order.
    pub coins: Vec<String>,
    /// Step length in seconds.
    pub step_secs: u64,
    /// Start of step 0, Unix milliseconds.
    pub start_ms: u64,
    /// Optional label per step (the date, for daily data).
    pub labels: Option<Vec<String>>,
    /// `points[coin][step]`.
    pub points: Vec<Vec<Point>>,
}

impl Series {
    /// Number of steps (step 0 included).
    pub fn len(&self) -> usize {
        self.points.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Column of a coin by ticker (case-insensitive).
    pub fn coin_index(&self, ticker: &str) -> Option<usize> {
        self.coins
            .iter()
            .position(|c| c.eq_ignore_ascii_case(ticker))
    }

    /// Start of step `t`, Unix milliseconds.
    pub fn time_ms(&self, t: usize) -> u64 {
        self.start_ms + t as u64 * self.step_secs * 1000
    }

    /// What a strategy deciding at the start of step `t ≥ 1` may see of `coin`: step `t − 1`.
    pub fn observed(&self, coin: usize, t: usize) -> &Point {
        &self.points[coin][t - 1]
    }

    /// What `coin` actually pays during step `t`.
    pub fn actual(&self, coin: usize, t: usize) -> &Point {
        &self.points[coin][t]
    }

    /// Label of step `t`: its date for daily data, otherwise `+<seconds>` from the start.
    pub fn label(&self, t: usize) -> String {
        match &self.labels {
            Some(labels) => labels[t].clone(),
            None => format!("+{}s", t as u64 * self.step_secs),
        }
    }

    /// Steps `[from, to)` as a new series (step `from` becomes the observed-only step 0).
    pub fn slice(&self, from: usize, to: usize) -> Series {
        Series {
            coins: self.coins.clone(),
            step_secs: self.step_secs,
            start_ms: self.time_ms(from),
            labels: self.labels.as_ref().map(|l| l[from..to].to_vec()),
            points: self.points.iter().map(|p| p[from..to].to_vec()).collect(),
        }
    }

    /// Checks that every value is finite and positive where it must be (blocks may be 0).
    pub fn validate(&self) -> Result<(), SeriesError> {
        if self.coins.is_empty() || self.len() < 2 {
            return Err(SeriesError::Empty);
        }
        for (c, col) in self.points.iter().enumerate() {
            if col.len() != self.len() {
                return Err(SeriesError::Invalid(format!(
                    "{}: {} steps, expected {}",
                    self.coins[c],
                    col.len(),
                    self.len()
                )));
            }
            for (t, p) in col.iter().enumerate() {
                let ok = p.price_btc.is_finite()
                    && p.price_btc >= 0.0
                    && p.difficulty.is_finite()
                    && p.difficulty > 0.0
                    && p.block_reward.is_finite()
                    && p.block_reward >= 0.0
                    && p.blocks.is_finite()
                    && p.blocks >= 0.0;
                if !ok {
                    return Err(SeriesError::Invalid(format!(
                        "{} at step {} ({}): {p:?}",
                        self.coins[c],
                        t,
                        self.label(t)
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Why a series could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeriesError {
    /// Reading a file failed.
    Io { file: String, reason: String },
    /// A line of a CSV file is malformed or has an empty cell inside the requested range.
    Line {
        file: String,
        line: usize,
        reason: String,
    },
    /// A date of the requested range has no row in a file.
    MissingDate { file: String, date: String },
    /// A bad date range or date argument.
    Range(String),
    /// No steps or no coins.
    Empty,
    /// A non-finite or negative value.
    Invalid(String),
}

impl fmt::Display for SeriesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeriesError::Io { file, reason } => write!(f, "{file}: {reason}"),
            SeriesError::Line { file, line, reason } => write!(f, "{file}:{line}: {reason}"),
            SeriesError::MissingDate { file, date } => write!(f, "{file}: no row for {date}"),
            SeriesError::Range(reason) => write!(f, "date range: {reason}"),
            SeriesError::Empty => write!(f, "the series has no coins or fewer than 2 steps"),
            SeriesError::Invalid(reason) => write!(f, "invalid value: {reason}"),
        }
    }
}

impl std::error::Error for SeriesError {}

/// A calendar day, as days since 1970-01-01 (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i64);

impl Day {
    /// Parses `YYYY-MM-DD` (strictly: four, two and two digits, a real calendar date).
    pub fn parse(s: &str) -> Option<Day> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let part = &s[r];
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
            return None;
        }
        Some(Day(days_from_civil(y, m, d)))
    }

    /// Unix milliseconds of 00:00 UTC of this day (days before 1970 clamp to 0).
    pub fn unix_ms(self) -> u64 {
        (self.0.max(0) as u64) * 86_400_000
    }

    pub fn prev(self) -> Day {
        Day(self.0 - 1)
    }

    pub fn next(self) -> Day {
        Day(self.0 + 1)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.0);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// One parsed row of a market CSV: cells as text (`None` when empty), with its line number.
#[derive(Clone, Debug, PartialEq)]
struct RawRow {
    line: usize,
    cells: Vec<Option<String>>,
}

/// The market CSV format, one file per coin, `<coin>.csv` (lower-case ticker):
///
/// ```text
/// date,price_btc,price_usd,difficulty,block_reward,blocks
/// 2020-01-01,0.0275,198.7,311357063437.93,12.5,147
/// ```
///
/// | column | meaning | used as |
/// |---|---|---|
/// | `date` | UTC day, `YYYY-MM-DD`, ascending, one row per day | the step |
/// | `price_btc` | end-of-day price of one coin in BTC (the close at 00:00 UTC of the next day) | [`Point::price_btc`] |
/// | `price_usd` | end-of-day price in USD | not used |
/// | `difficulty` | mean network difficulty over the day's blocks (`getdifficulty` convention) | [`Point::difficulty`] |
/// | `block_reward` | average subsidy per block that day, in coins (fees excluded) | [`Point::block_reward`] |
/// | `blocks` | blocks found that day | [`Point::blocks`] |
///
/// Columns are found by header name, so their order does not matter. Cells outside the
/// requested date range may be empty (early history); inside it every used cell must be present,
/// or loading fails naming the file and line.
///
/// Optional fees file `extras/<coin>_fees.csv`: `date,fees_total_ntv,fees_per_block_ntv,…`;
/// with fees enabled, `fees_per_block_ntv` is added to `block_reward`.
pub const MARKET_COLUMNS: [&str; 4] = ["price_btc", "difficulty", "block_reward", "blocks"];

/// Parses CSV text into rows keyed by date; `wanted` are the header names whose cells are
/// returned, in that order. Errors name `file` and the 1-based line.
fn parse_csv(
    file: &str,
    text: &str,
    wanted: &[&str],
) -> Result<BTreeMap<Day, RawRow>, SeriesError> {
    let mut lines = text.lines().enumerate();
    let line_err = |line: usize, reason: String| SeriesError::Line {
        file: file.to_string(),
        line,
        reason,
    };
    let Some((_, header)) = lines.next() else {
        return Err(line_err(1, "empty file: no header".into()));
    };
    let header: Vec<&str> = header
        .trim_end_matches('\r')
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let date_col =
        col("date").ok_or_else(|| line_err(1, "no `date` column in the header".into()))?;
    let mut cols = Vec::with_capacity(wanted.len());
    for name in wanted {
        cols.push(
            col(name).ok_or_else(|| line_err(1, format!("no `{name}` column in the header")))?,
        );
    }
    let mut rows = BTreeMap::new();
    let mut last: Option<Day> = None;
    for (i, raw) in lines {
        let line = i + 1;
        let raw = raw.trim_end_matches('\r');
        if raw.trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = raw.split(',').map(str::trim).collect();
        if cells.len() != header.len() {
            return Err(line_err(
                line,
                format!("{} cells, the header has {}", cells.len(), header.len()),
            ));
        }
        let day = Day::parse(cells[date_col])
            .ok_or_else(|| line_err(line, format!("bad date `{}`", cells[date_col])))?;
        if let Some(prev) = last {
            if day <= prev {
                return Err(line_err(
                    line,
                    format!("date {day} is not after the previous row's {prev}"),
                ));
            }
        }
        last = Some(day);
        let picked = cols
            .iter()
            .map(|&c| (!cells[c].is_empty()).then(|| cells[c].to_string()))
            .collect();
        rows.insert(
            day,
            RawRow {
                line,
                cells: picked,
            },
        );
    }
    Ok(rows)
}

fn cell(file: &str, row: &RawRow, idx: usize, name: &str, day: Day) -> Result<f64, SeriesError> {
    let err = |reason: String| SeriesError::Line {
        file: file.to_string(),
        line: row.line,
        reason,
    };
    let text = row.cells[idx].as_deref().ok_or_else(|| {
        err(format!(
            "empty `{name}` on {day}, inside the requested range"
        ))
    })?;
    let v: f64 = text
        .parse()
        .map_err(|_| err(format!("`{name}` = `{text}` on {day} is not a number")))?;
    if !v.is_finite() || v < 0.0 || (name == "difficulty" && v == 0.0) {
        return Err(err(format!("`{name}` = `{text}` on {day} is out of range")));
    }
    Ok(v)
}

/// Builds one coin's points for `days` from market CSV text (and optional fees CSV text).
pub fn parse_coin(
    file: &str,
    text: &str,
    fees: Option<(&str, &str)>,
    days: &[Day],
) -> Result<Vec<Point>, SeriesError> {
    let rows = parse_csv(file, text, &MARKET_COLUMNS)?;
    let fee_rows = match fees {
        Some((fee_file, fee_text)) => Some((
            fee_file,
            parse_csv(fee_file, fee_text, &["fees_per_block_ntv"])?,
        )),
        None => None,
    };
    let mut out = Vec::with_capacity(days.len());
    for &day in days {
        let row = rows.get(&day).ok_or_else(|| SeriesError::MissingDate {
            file: file.to_string(),
            date: day.to_string(),
        })?;
        let mut p = Point {
            price_btc: cell(file, row, 0, MARKET_COLUMNS[0], day)?,
            difficulty: cell(file, row, 1, MARKET_COLUMNS[1], day)?,
            block_reward: cell(file, row, 2, MARKET_COLUMNS[2], day)?,
            blocks: cell(file, row, 3, MARKET_COLUMNS[3], day)?,
        };
        if let Some((fee_file, fee_rows)) = &fee_rows {
            let row = fee_rows.get(&day).ok_or_else(|| SeriesError::MissingDate {
                file: fee_file.to_string(),
                date: day.to_string(),
            })?;
            p.block_reward += cell(fee_file, row, 0, "fees_per_block_ntv", day)?;
        }
        out.push(p);
    }
    Ok(out)
}

/// Every day from `from` to `to` inclusive.
pub fn day_range(from: Day, to: Day) -> Result<Vec<Day>, SeriesError> {
    if to < from {
        return Err(SeriesError::Range(format!("{to} is before {from}")));
    }
    Ok((from.0..=to.0).map(Day).collect())
}

/// One coin's CSV text for [`market_from_texts`]: `(ticker, file name, text, fees)` where
/// `fees` is the optional `(file name, text)` of its fees CSV.
pub type CoinText<'a> = (&'a str, &'a str, &'a str, Option<(&'a str, &'a str)>);

/// Builds a daily series from CSV texts, one [`CoinText`] per coin.
/// Earned days are `from..=to`; the day before `from` is loaded too, as the observed-only
/// step 0 (see the module docs).
pub fn market_from_texts(
    coins: &[CoinText<'_>],
    from: Day,
    to: Day,
) -> Result<Series, SeriesError> {
    let days = day_range(from.prev(), to)?;
    let mut points = Vec::with_capacity(coins.len());
    for (_, file, text, fees) in coins {
        points.push(parse_coin(file, text, *fees, &days)?);
    }
    let series = Series {
        coins: coins.iter().map(|c| c.0.to_uppercase()).collect(),
        step_secs: 86_400,
        start_ms: days[0].unix_ms(),
        labels: Some(days.iter().map(Day::to_string).collect()),
        points,
    };
    series.validate()?;
    Ok(series)
}

/// Reads `<dir>/<coin>.csv` for each ticker (lower-cased file name) and, with `fees`,
/// `<dir>/extras/<coin>_fees.csv`, for the days `from..=to` plus the observed-only day before.
pub fn load_market(
    dir: &Path,
    coins: &[String],
    from: Day,
    to: Day,
    fees: bool,
) -> Result<Series, SeriesError> {
    let read = |path: PathBuf| -> Result<(String, String), SeriesError> {
        let name = path.display().to_string();
        std::fs::read_to_string(&path)
            .map(|t| (name.clone(), t))
            .map_err(|e| SeriesError::Io {
                file: name,
                reason: e.to_string(),
            })
    };
    let mut loaded = Vec::new();
    for coin in coins {
        let lower = coin.to_lowercase();
        let market = read(dir.join(format!("{lower}.csv")))?;
        let fee = if fees {
            Some(read(dir.join("extras").join(format!("{lower}_fees.csv")))?)
        } else {
            None
        };
        loaded.push((coin.as_str(), market, fee));
    }
    let refs: Vec<_> = loaded
        .iter()
        .map(|(c, (f, t), fee)| {
            (
                *c,
                f.as_str(),
                t.as_str(),
                fee.as_ref().map(|(ff, ft)| (ff.as_str(), ft.as_str())),
            )
        })
        .collect();
    market_from_texts(&refs, from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BTC: &str = "date,price_btc,price_usd,difficulty,block_reward,blocks\n\
        2020-01-01,1.0,7200,100,12.5,144\n\
        2020-01-02,1.0,7300,110,12.5,150\n\
        2020-01-03,1.0,7400,120,12.5,140\n\
        2020-01-04,1.0,,130,12.5,140\n";
    const BCH: &str = "date,blocks,difficulty,price_btc,block_reward,price_usd\n\
        2019-12-31,140,10,0.03,12.5,200\n\
        2020-01-01,141,11,0.031,12.5,201\n\
        2020-01-02,142,12,0.032,12.5,202\n\
        2020-01-03,143,,0.033,12.5,203\n";
    const FEES: &str = "date,fees_total_ntv,fees_per_block_ntv,issuance_ntv,hashrate_ths\n\
        2020-01-01,1,0.25,0,0\n\
        2020-01-02,1,0.5,0,0\n";

    fn d(s: &str) -> Day {
        Day::parse(s).unwrap()
    }

    #[test]
    fn dates_round_trip() {
        for s in [
            "1970-01-01",
            "2000-02-29",
            "2018-11-15",
            "2020-07-27",
            "2100-12-31",
        ] {
            assert_eq!(d(s).to_string(), s);
        }
        assert_eq!(d("1970-01-02").0, 1);
        assert_eq!(d("2020-01-01").unix_ms(), 1_577_836_800_000);
        for bad in [
            "2019-02-29",
            "2020-13-01",
            "2020-1-01",
            "20200101",
            "2020-01-32",
            "x",
        ] {
            assert_eq!(Day::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_aligns_and_loads_the_observed_day_before() {
        let s = market_from_texts(
            &[("btc", "btc.csv", BTC, None), ("bch", "bch.csv", BCH, None)],
            d("2020-01-02"),
            d("2020-01-02"),
        )
        .unwrap();
        assert_eq!(s.coins, vec!["BTC", "BCH"]);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.labels.as_ref().unwrap(),
            &vec!["2020-01-01", "2020-01-02"]
        );
        assert_eq!(s.start_ms, d("2020-01-01").unix_ms());
        assert_eq!(s.step_secs, 86_400);
        // Columns are found by name whatever their order.
        assert_eq!(
            s.points[1][1],
            Point {
                price_btc: 0.032,
                difficulty: 12.0,
                block_reward: 12.5,
                blocks: 142.0
            }
        );
        assert_eq!(s.observed(1, 1), &s.points[1][0]);
        assert_eq!(s.actual(0, 1).difficulty, 110.0);
    }

    #[test]
    fn an_empty_cell_in_range_is_an_error_naming_file_and_line() {
        let err = market_from_texts(
            &[("bch", "bch.csv", BCH, None)],
            d("2020-01-01"),
            d("2020-01-03"),
        )
        .unwrap_err();
        assert_eq!(
            err,
            SeriesError::Line {
                file: "bch.csv".into(),
                line: 5,
                reason: "empty `difficulty` on 2020-01-03, inside the requested range".into()
            }
        );
        assert!(err.to_string().starts_with("bch.csv:5: empty `difficulty`"));
        // price_usd is not used: its empty cell on 2020-01-04 does not matter.
        market_from_texts(
            &[("btc", "btc.csv", BTC, None)],
            d("2020-01-03"),
            d("2020-01-04"),
        )
        .unwrap();
    }

    #[test]
    fn a_missing_date_is_an_error() {
        // 2020-01-01 needs 2019-12-31 as its observed day; BTC has no such row.
        let err = market_from_texts(
            &[("btc", "btc.csv", BTC, None)],
            d("2020-01-01"),
            d("2020-01-02"),
        )
        .unwrap_err();
        assert_eq!(
            err,
            SeriesError::MissingDate {
                file: "btc.csv".into(),
                date: "2019-12-31".into()
            }
        );
        let err = market_from_texts(
            &[("btc", "btc.csv", BTC, None)],
            d("2020-01-03"),
            d("2020-01-05"),
        )
        .unwrap_err();
        assert!(matches!(err, SeriesError::MissingDate { ref date, .. } if date == "2020-01-05"));
    }

    #[test]
    fn malformed_lines_are_errors() {
        let text = "date,price_btc,difficulty,block_reward,blocks\n2020-01-01,1,2,3\n";
        let err = parse_coin("x.csv", text, None, &[d("2020-01-01")]).unwrap_err();
        assert!(matches!(err, SeriesError::Line { line: 2, .. }), "{err}");
        let text = "date,price_btc,difficulty,block_reward,blocks\n2020-01-01,abc,2,3,4\n";
        let err = parse_coin("x.csv", text, None, &[d("2020-01-01")]).unwrap_err();
        assert!(err.to_string().contains("not a number"), "{err}");
        let text = "date,price_btc,difficulty,block_reward\n2020-01-01,1,2,3\n";
        let err = parse_coin("x.csv", text, None, &[d("2020-01-01")]).unwrap_err();
        assert!(err.to_string().contains("no `blocks` column"), "{err}");
        let text = "date,price_btc,difficulty,block_reward,blocks\n\
            2020-01-02,1,2,3,4\n2020-01-01,1,2,3,4\n";
        let err = parse_coin("x.csv", text, None, &[d("2020-01-01")]).unwrap_err();
        assert!(err.to_string().contains("x.csv:3: date"), "{err}");
        let text = "date,price_btc,difficulty,block_reward,blocks\n2020-01-01,1,0,3,4\n";
        let err = parse_coin("x.csv", text, None, &[d("2020-01-01")]).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[test]
    fn fees_are_added_to_the_reward() {
        let s = market_from_texts(
            &[("btc", "btc.csv", BTC, Some(("btc_fees.csv", FEES)))],
            d("2020-01-02"),
            d("2020-01-02"),
        )
        .unwrap();
        assert_eq!(s.points[0][0].block_reward, 12.75);
        assert_eq!(s.points[0][1].block_reward, 13.0);
        let err = market_from_texts(
            &[("btc", "btc.csv", BTC, Some(("btc_fees.csv", FEES)))],
            d("2020-01-02"),
            d("2020-01-03"),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("btc_fees.csv: no row for 2020-01-03"),
            "{err}"
        );
    }

    #[test]
    fn slicing_keeps_times_and_labels() {
        let s = market_from_texts(
            &[("btc", "btc.csv", BTC, None)],
            d("2020-01-02"),
            d("2020-01-03"),
        )
        .unwrap();
        let t = s.slice(1, 3);
        assert_eq!(t.len(), 2);
        assert_eq!(t.start_ms, d("2020-01-02").unix_ms());
        assert_eq!(t.label(0), "2020-01-02");
    }
}
