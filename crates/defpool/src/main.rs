//! `defpool`: one binary, one subcommand per role. Each subcommand is a thin wrapper over a
//! library crate; a subcommand is listed only once it really works.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use defpool_config::{ConfigError, EX_CONFIG};
use defpool_core::coin::CoinRegistry;
use defpool_core::Network;

#[derive(Parser)]
#[command(
    name = "defpool",
    version,
    about = "DefPool: a profit-switching mining pool"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// List the coin registry: built-in coins plus those a config file adds.
    Coins {
        /// Include the `[[coins]]` a config file adds (validated first).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Show this network's parameters.
        #[arg(long, default_value = "mainnet")]
        network: Network,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate config files and print each effective config (file plus DEFPOOL_… environment
    /// overrides) with secrets redacted. Exits 78 on the first invalid file.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { files },
        } => config_check(&files),
        Command::Coins { config, network } => coins(config, network),
    }
}

/// Write to stdout; a closed pipe (`defpool coins | head`) ends output quietly instead of
/// panicking.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush());
}

fn config_error(file: &std::path::Path, e: &ConfigError) -> ExitCode {
    eprintln!("defpool: invalid config {}: {e}", file.display());
    ExitCode::from(EX_CONFIG as u8)
}

fn config_check(files: &[PathBuf]) -> ExitCode {
    for file in files {
        match defpool_config::load(file) {
            Ok(valid) => {
                out(&format!(
                    "# {}: valid; network {}; roles: {}\n{}\n",
                    file.display(),
                    valid.config.network,
                    valid.roles().join(", "),
                    valid.to_redacted_toml()
                ));
            }
            Err(e) => return config_error(file, &e),
        }
    }
    ExitCode::SUCCESS
}

fn coins(config: Option<PathBuf>, network: Network) -> ExitCode {
    let registry = match &config {
        Some(file) => match defpool_config::load(file) {
            Ok(valid) => valid.registry,
            Err(e) => return config_error(file, &e),
        },
        None => CoinRegistry::builtin(),
    };
    let mut table = format!(
        "{:<6} {:<14} {:<8} {:>6} {:>9} {:>16} {:<12} {:<14} merged on\n",
        "coin", "name", "algo", "block", "maturity", "subsidy@h0", "mask", "gbt rules"
    );
    for coin in registry.iter() {
        let Some(params) = coin.network(network) else {
            continue;
        };
        table.push_str(&format!(
            "{:<6} {:<14} {:<8} {:>5}s {:>9} {:>16} {:#010x}   {:<14} {}\n",
            coin.ticker,
            coin.name,
            coin.algorithm,
            coin.block_time_secs,
            params.coinbase_maturity,
            defpool_core::money::format_units(params.subsidy.at(0) as i128, coin.decimals),
            coin.version_rolling_mask,
            if coin.gbt_rules.is_empty() {
                "-".to_string()
            } else {
                coin.gbt_rules.join(",")
            },
            coin.merged_mining
                .as_ref()
                .map(|m| m.parent.to_string())
                .unwrap_or_else(|| "-".into()),
        ));
    }
    out(&table);
    ExitCode::SUCCESS
}
