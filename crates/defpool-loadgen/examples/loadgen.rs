//! Run a test pool or miners from the command line (the `defpool loadgen` subcommands do the
//! same with full flags):
//!
//! ```text
//! cargo run --release -p defpool-loadgen --example loadgen -- pool sv1 127.0.0.1:4444 BTC sha256d 1e-7
//! cargo run --release -p defpool-loadgen --example loadgen -- miners sv1 127.0.0.1:4444 sha256d 1000 10 [authority-key|-] [shares/s] [idle]
//! ```

use std::time::Duration;

use defpool_loadgen::{run_miners, MinersOptions, PoolOptions};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(0) {
        "pool" => {
            let mut o = PoolOptions::new(
                arg(2).parse().expect("address"),
                arg(1).parse().expect("protocol"),
                arg(3),
                arg(4).parse().expect("algorithm"),
            );
            o.difficulty = arg(5).parse().expect("difficulty");
            let pool = defpool_loadgen::TestPool::bind(o).await.expect("bind");
            if let Some(key) = pool.authority_public_key() {
                println!("authority public key: {key}");
            }
            let report = pool
                .run(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                .expect("pool");
            println!("{}", serde_json::to_string_pretty(&report).expect("json"));
        }
        "miners" => {
            let mut o = MinersOptions::new(
                arg(2).parse().expect("address"),
                arg(1).parse().expect("kind"),
                arg(3).parse().expect("algorithm"),
            );
            o.count = arg(4).parse().expect("count");
            o.duration = Duration::from_secs(arg(5).parse().expect("seconds"));
            o.connect_rate_per_sec = 2000;
            o.progress = true;
            o.username = "tb1qloadgen".into();
            if !arg(6).is_empty() && arg(6) != "-" {
                o.authority_public_key = Some(arg(6).to_string());
            }
            if !arg(7).is_empty() {
                o.target_shares_per_sec = Some(arg(7).parse().expect("shares per second"));
            }
            o.hash = arg(8) != "idle";
            let report = run_miners(o, None).await.expect("miners");
            println!("{}", serde_json::to_string_pretty(&report).expect("json"));
        }
        _ => eprintln!("usage: loadgen pool <sv1|sv2> <addr> <TAG> <algorithm> <difficulty> | miners <kind> <addr> <algorithm> <count> <seconds> [authority key|-] [shares/s] [idle]"),
    }
}
