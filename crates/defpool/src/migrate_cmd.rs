//! `defpool migrate`: apply the store's migrations to the database of `[server] database_url`
//! (or `--database-url`) and say what was applied. Idempotent.
//!
//! Exit codes: 0 done, 78 a bad config or URL, 1 the database could not be reached or
//! migrated. Messages never carry a URL's password.

use std::path::PathBuf;
use std::process::ExitCode;

use defpool_config::EX_CONFIG;
use defpool_store::{migration_name, Store, StoreError};

const KEY: &str = "server.database_url";

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// Configuration file whose `[server] database_url` names the database.
    #[arg(long, short, required_unless_present = "database_url")]
    config: Option<PathBuf>,
    /// The database URL itself: `sqlite:PATH` or `postgres://…` (instead of `--config`).
    #[arg(long, conflicts_with = "config")]
    database_url: Option<String>,
}

pub fn run(args: &MigrateArgs) -> ExitCode {
    let url = match (&args.config, &args.database_url) {
        (_, Some(url)) => match check_url(url) {
            Ok(()) => url.clone(),
            Err(reason) => return config_error(&reason),
        },
        (Some(file), None) => match defpool_config::load(file) {
            Ok(valid) => match &valid.config.server {
                Some(server) => server.database_url.clone(),
                None => {
                    eprintln!(
                        "defpool: invalid config {}: server: the file has no [server] section",
                        file.display()
                    );
                    return ExitCode::from(EX_CONFIG as u8);
                }
            },
            Err(e) => {
                eprintln!(
                    "defpool: invalid config {}: {}",
                    file.display(),
                    scrub(&e.to_string(), "")
                );
                return ExitCode::from(EX_CONFIG as u8);
            }
        },
        (None, None) => unreachable!("clap requires --config or --database-url"),
    };
    let shown = redact(&url);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("defpool migrate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let store = Store::connect(&url).await?;
        let report = store.migrate().await;
        store.close().await;
        report.map(|r| (store.backend(), r))
    });
    match result {
        Ok((backend, report)) => {
            if report.applied.is_empty() {
                println!(
                    "{shown}: schema at version {}, nothing to apply",
                    report.version
                );
            } else {
                for v in &report.applied {
                    println!(
                        "{shown}: applied migration {v} ({})",
                        migration_name(backend, *v).unwrap_or("?")
                    );
                }
                println!("{shown}: schema at version {}", report.version);
            }
            ExitCode::SUCCESS
        }
        Err(e @ StoreError::UnsupportedUrl { .. }) => config_error(&e.to_string()),
        Err(StoreError::Database { operation, source }) if operation.starts_with("parsing") => {
            config_error(&scrub(&source.to_string(), &url))
        }
        Err(e) => {
            eprintln!("defpool migrate: {shown}: {}", scrub(&e.to_string(), &url));
            ExitCode::FAILURE
        }
    }
}

fn config_error(reason: &str) -> ExitCode {
    eprintln!("defpool migrate: {KEY}: {reason}");
    ExitCode::from(EX_CONFIG as u8)
}

/// The checks `[server] database_url` gets in a config file, for `--database-url`; the reason
/// never repeats the URL (it may hold a password).
fn check_url(url: &str) -> Result<(), String> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        return if path.trim_start_matches("//").is_empty() {
            Err("`sqlite:` needs a file path (`sqlite:defpool.db`)".into())
        } else {
            Ok(())
        };
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("not a URL (use sqlite:PATH or postgres://user@host/db)".into());
    };
    if scheme != "postgres" && scheme != "postgresql" {
        return Err(format!(
            "scheme `{}` is not supported (use sqlite:PATH or postgres://…)",
            scheme.chars().take(32).collect::<String>()
        ));
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err("the URL names no host".into());
    }
    Ok(())
}

/// The password of `scheme://user:password@host…`, if any.
fn password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, pass) = userinfo.split_once(':')?;
    (!pass.is_empty()).then_some(pass)
}

/// `url` with its password replaced by `***`.
fn redact(url: &str) -> String {
    match password(url) {
        Some(pass) => url.replacen(&format!(":{pass}@"), ":***@", 1),
        None => url.to_string(),
    }
}

/// `message` with any password of `url` in it replaced by `***`.
fn scrub(message: &str, url: &str) -> String {
    let mut out = message.to_string();
    if let Some(pass) = password(url) {
        out = out.replace(pass, "***");
    }
    // Whatever URLs the message quotes lose their passwords too.
    for word in message.split(|c: char| c.is_whitespace() || c == '`' || c == '"') {
        if let Some(pass) = password(word) {
            out = out.replace(pass, "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(check_url("sqlite:pool.db").is_ok());
        assert!(check_url("sqlite::memory:").is_ok());
        assert!(check_url("postgres://u:p@127.0.0.1:5432/db").is_ok());
        assert!(check_url("postgresql://localhost/db").is_ok());
        assert!(check_url("sqlite:").is_err());
        assert!(check_url("mysql://u:secret@h/db")
            .unwrap_err()
            .contains("mysql"));
        assert!(!check_url("mysql://u:secret@h/db")
            .unwrap_err()
            .contains("secret"));
        assert!(check_url("postgres://u:secret@/db").is_err());
        assert!(check_url("nonsense").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:hunter2@127.0.0.1/db"),
            "postgres://u:***@127.0.0.1/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:a.db"), "sqlite:a.db");
        assert_eq!(
            scrub(
                "bad `postgres://x:pw1@h/db` and hunter2",
                "postgres://u:hunter2@h/db"
            ),
            "bad `postgres://x:***@h/db` and ***"
        );
    }
}
