//! DefPool's configuration: one TOML file per process, with `DEFPOOL_…` environment overrides
//! (`DEFPOOL_SERVER__ADMIN_TOKEN` sets `server.admin_token`), loaded with figment.
//!
//! [`load`] reads and validates; any problem is a [`ConfigError`] naming the key and why, and the
//! binary exits 78 (EX_CONFIG) on it before anything starts. A section's presence decides which
//! roles this process runs: `[server]`, `[proxy]`, `[[adapters]]` (all three: the embedded
//! default). Secrets are [`Secret`]s: redacted whenever the config is printed.
//!
//! Every key is documented in `config/README.md`.

mod model;
mod validate;

use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;

pub use model::*;
pub use validate::Validated;

/// The exit code for a bad configuration (sysexits.h EX_CONFIG).
pub const EX_CONFIG: i32 = 78;

/// A configuration problem: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// Dotted path of the offending key (`proxy.ports[1].listen`), or the file for file-level
    /// problems.
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Environment variables with this prefix override file keys; `__` separates levels.
pub const ENV_PREFIX: &str = "DEFPOOL_";

/// Read `path`, apply `DEFPOOL_…` overrides from the environment, and validate.
pub fn load(path: &Path) -> Result<Validated, ConfigError> {
    load_with_env(path, Env::prefixed(ENV_PREFIX).split("__"))
}

fn load_with_env(path: &Path, env: Env) -> Result<Validated, ConfigError> {
    finish(base(path)?.merge(env))
}

fn base(path: &Path) -> Result<Figment, ConfigError> {
    let shown = path.display().to_string();
    if !path.is_file() {
        return Err(ConfigError::new(shown, "no such file"));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(shown.clone(), format!("cannot read: {e}")))?;
    // Parse once ourselves for a precise syntax error with line and column.
    if let Err(e) = text.parse::<toml::Table>() {
        let at = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        return Err(ConfigError::new(
            shown,
            format!(
                "not valid TOML{at}: {}",
                e.message().trim().replace('\n', "; ")
            ),
        ));
    }
    Ok(Figment::from(Toml::file(path)))
}

fn finish(figment: Figment) -> Result<Validated, ConfigError> {
    let config: Config = figment.extract().map_err(from_figment)?;
    config.validate()
}

fn from_figment(e: figment::Error) -> ConfigError {
    let key = if e.path.is_empty() {
        "config".to_string()
    } else {
        e.path.join(".")
    };
    let source = e
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(s) => format!(" (from {s})"),
            None => format!(" (from {})", m.name),
        })
        .unwrap_or_default();
    ConfigError::new(key, format!("{}{source}", e.kind))
}
