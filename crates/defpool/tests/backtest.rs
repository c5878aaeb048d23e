//! `defpool backtest`: reads `<coin>.csv` from `--data`, prints a table, writes JSON, and with
//! `--sweep` reports only the evaluation period.

use std::path::PathBuf;
use std::process::{Command, Output};

fn defpool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_defpool"))
        .args(args)
        .output()
        .expect("defpool runs")
}

/// Daily CSVs for two SHA-256 coins over 2019-01-01..2019-03-31 whose lead alternates weekly.
fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("defpool-backtest-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut btc = String::from("date,price_btc,price_usd,difficulty,block_reward,blocks\n");
    let mut bch = btc.clone();
    let days_in = [31, 28, 31];
    let mut n = 0;
    for (m, days) in days_in.iter().enumerate() {
        for d in 1..=*days {
            let date = format!("2019-{:02}-{d:02}", m + 1);
            let lead = (n / 7) % 2 == 0;
            btc.push_str(&format!("{date},1.0,4000,6000000000000,12.5,144\n"));
            let price = if lead { 0.025 } else { 0.018 };
            bch.push_str(&format!("{date},{price},100,140000000000,12.5,144\n"));
            n += 1;
        }
    }
    std::fs::write(dir.join("btc.csv"), btc).unwrap();
    std::fs::write(dir.join("bch.csv"), bch).unwrap();
    dir
}

#[test]
fn sweep_reports_the_evaluation_period_only() {
    let dir = data_dir("sweep");
    let json = dir.join("out.json");
    let out = defpool(&[
        "backtest",
        "--data",
        dir.to_str().unwrap(),
        "--coins",
        "BTC,BCH",
        "--from",
        "2019-03-01",
        "--to",
        "2019-03-31",
        "--sweep",
        "--tune-from",
        "2019-01-02",
        "--tune-to",
        "2019-02-28",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("evaluation: 2019-03-01..2019-03-31"),
        "{stdout}"
    );
    assert!(stdout.contains("| oracle"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["evaluation"][0]["from"], "2019-03-01");
    assert_eq!(report["tuned_on"][0], "2019-01-02..2019-02-28");
    // No figure or switch from the tuning months.
    let text = report["evaluation"].to_string();
    assert!(
        !text.contains("2019-01-") && !text.contains("2019-02-1"),
        "{text}"
    );

    // Overlapping tuning and evaluation periods are refused.
    let out = defpool(&[
        "backtest",
        "--data",
        dir.to_str().unwrap(),
        "--coins",
        "BTC,BCH",
        "--from",
        "2019-02-01",
        "--to",
        "2019-03-31",
        "--sweep",
        "--tune-from",
        "2019-01-02",
        "--tune-to",
        "2019-02-28",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("overlaps"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_missing_day_names_the_file() {
    let dir = data_dir("missing");
    let out = defpool(&[
        "backtest",
        "--data",
        dir.to_str().unwrap(),
        "--coins",
        "BTC,BCH",
        "--from",
        "2019-03-01",
        "--to",
        "2019-04-02",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("btc.csv: no row for 2019-04-01"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn simulated_runs_print_a_summary() {
    let out = defpool(&["backtest", "--simulate", "--seeds", "2", "--sim-days", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 seeds (1..2)"), "{stdout}");
    assert!(stdout.contains("rule beats greedy in"), "{stdout}");
}
