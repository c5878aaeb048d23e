use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use defpool_core::CoinRegistry;
use defpool_market::{CsvReplay, MarketSource, SourceError};

use crate::{d, t};

const DAY: u64 = 86_400_000;
/// 2019-08-03 00:00 UTC.
const AUG_3: u64 = 1_564_790_400_000;

fn recorded_csv(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/recorded/csv")
        .join(name)
}

/// The project's real daily series (read in place; never copied into the repository).
fn shared_market_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/market");
    assert!(
        dir.join("ltc.csv").is_file(),
        "the shared market data is expected beside the repository: {}",
        dir.display()
    );
    dir
}

#[test]
fn the_row_in_force_is_the_last_whose_day_has_ended() {
    let mut replay = CsvReplay::new();
    let n = replay
        .load_file(t("LTC"), &recorded_csv("ltc_sample.csv"), 8)
        .unwrap();
    assert_eq!(n, 4);
    let ltc = t("LTC");
    // During 2019-08-03 nothing is known yet: its row is that day's close.
    assert_eq!(replay.at(&ltc, AUG_3), None);
    assert_eq!(replay.at(&ltc, AUG_3 + DAY - 1), None);
    // From 2019-08-04 00:00 the row of the 3rd is in force, all day.
    for t_ms in [AUG_3 + DAY, AUG_3 + DAY + DAY / 2, AUG_3 + 2 * DAY - 1] {
        let s = replay.at(&ltc, t_ms).unwrap();
        assert_eq!(s.price_btc, Some(d("0.01048")));
        assert_eq!(s.difficulty, Some(d("14631432.52")));
        assert_eq!(s.block_reward, Some(2_500_000_000));
        assert_eq!(s.height, None);
        assert_eq!(s.observed_at_ms, AUG_3 + DAY);
        assert_eq!(s.source, "csv");
    }
    // Empty cells are unknown values.
    let s = replay.at(&ltc, AUG_3 + 2 * DAY).unwrap();
    assert_eq!(s.price_btc, None);
    assert_eq!(s.difficulty, Some(d("14800112.10")));
    // A halving day's mean reward, exactly in smallest units.
    let s = replay.at(&ltc, AUG_3 + 3 * DAY).unwrap();
    assert_eq!(s.block_reward, Some(1_766_256_591));
    // After the last row it stays in force (its observed time tells its age).
    let s = replay.at(&ltc, AUG_3 + 400 * DAY).unwrap();
    assert_eq!(s.block_reward, Some(1_250_000_000));
    assert_eq!(s.observed_at_ms, AUG_3 + 4 * DAY);

    let rows = replay.rows(&ltc);
    assert_eq!(rows[2].date, "2019-08-05");
    assert_eq!(rows[2].price_usd, Some(d("101.40")));
    assert_eq!(rows[2].blocks, Some(580));
    assert_eq!(rows[3].price_usd, None);
}

#[test]
fn fetch_serves_the_rows_in_force_at_the_clock() {
    let now = Arc::new(AtomicU64::new(AUG_3));
    let clock_now = now.clone();
    let mut replay =
        CsvReplay::new().with_clock(Arc::new(move || clock_now.load(Ordering::SeqCst)));
    replay
        .load_file(t("LTC"), &recorded_csv("ltc_sample.csv"), 8)
        .unwrap();
    replay
        .load_file(t("DOGE"), &recorded_csv("reordered_columns.csv"), 8)
        .unwrap();

    let err = replay.fetch(&[t("LTC")]).unwrap_err();
    assert!(matches!(err, SourceError::MissingPair { .. }), "{err:?}");

    now.store(AUG_3 + DAY, Ordering::SeqCst);
    let got = replay
        .fetch_detailed(&[t("LTC"), t("DOGE"), t("BTC")])
        .unwrap();
    assert_eq!(got.snapshots.len(), 2);
    let doge = got.snapshots.iter().find(|s| s.coin == t("DOGE")).unwrap();
    assert_eq!(doge.price_btc, Some(d("0.01048")), "columns found by name");
    assert!(matches!(
        &got.failed[..],
        [(c, SourceError::UnknownSymbol { .. })] if c == &t("BTC")
    ));
}

#[test]
fn broken_files_are_typed_errors_naming_the_line() {
    for (file, needle) in [
        ("missing_column.csv", "line 1: no `difficulty` column"),
        ("bad_date.csv", "line 3: date `2019-02-30`"),
        (
            "out_of_order.csv",
            "line 3: date 2019-08-03 does not follow 2019-08-04",
        ),
        ("bad_number.csv", "line 2: price_btc"),
        ("short_row.csv", "line 2: 3 cells, the header has 6"),
        (
            "negative_reward.csv",
            "line 2: block_reward -25 out of range",
        ),
    ] {
        let mut replay = CsvReplay::new();
        let err = replay
            .load_file(t("LTC"), &recorded_csv(file), 8)
            .unwrap_err();
        match &err {
            SourceError::Malformed { origin, detail } => {
                assert_eq!(origin, "csv");
                assert!(detail.contains(needle), "{file}: {detail}");
            }
            other => panic!("{file}: {other:?}"),
        }
    }
    let err = CsvReplay::new().load_str(t("LTC"), "", 8).unwrap_err();
    assert!(matches!(err, SourceError::Malformed { .. }));
    let err = CsvReplay::new()
        .load_file(t("LTC"), &recorded_csv("no_such_file.csv"), 8)
        .unwrap_err();
    assert!(matches!(err, SourceError::Io { .. }), "{err:?}");
}

#[test]
fn the_real_series_load_and_match_their_documented_values() {
    let registry = CoinRegistry::builtin();
    let coins = [t("BTC"), t("BCH"), t("BSV"), t("LTC"), t("DOGE")];
    let mut replay = CsvReplay::new();
    replay
        .load_dir(&registry, &shared_market_dir(), &coins)
        .unwrap();

    // The common window 2018-11-15 ..= 2020-07-27 is complete for all five coins.
    let first = 1_542_240_000_000; // 2018-11-15
    let last = 1_595_808_000_000; // 2020-07-27
    for coin in &coins {
        let window: Vec<_> = replay
            .rows(coin)
            .iter()
            .filter(|r| (first..=last).contains(&r.day_start_ms))
            .collect();
        assert_eq!(window.len(), 621, "{coin}");
        assert!(
            window.iter().all(|r| r.price_btc.is_some()
                && r.difficulty.is_some()
                && r.block_reward.is_some()
                && r.blocks.is_some()),
            "{coin}"
        );
    }

    // Halving days as SOURCES.md gives them, in force from the next midnight.
    let may_12_2020 = 1_589_241_600_000;
    let btc = replay.at(&t("BTC"), may_12_2020).unwrap();
    assert_eq!(btc.block_reward, Some(1_134_554_140));
    assert_eq!(btc.price_btc, Some(d("1")));
    let aug_6_2019 = AUG_3 + 3 * DAY;
    let ltc = replay.at(&t("LTC"), aug_6_2019).unwrap();
    assert_eq!(ltc.block_reward, Some(1_766_256_591));
    assert_eq!(ltc.price_btc, Some(d("0.00814121009267673")));
    assert_eq!(ltc.difficulty, Some(d("15930321.368898395")));
    // DOGE's float-noise prices are kept digit for digit.
    let doge = replay.at(&t("DOGE"), aug_6_2019).unwrap();
    assert_eq!(doge.price_btc, Some(d("0.00000025571303331385037")));
    assert_eq!(doge.block_reward, Some(1_000_000_000_000));
}
