//! Secrets (RPC passwords, API keys, tokens, private keys): kept as given, never shown.
//!
//! `Debug` and `Display` print a placeholder. Serialization also redacts, so a config or API
//! document can be printed safely; code that must send the secret itself (a login, the control
//! channel) calls [`Secret::expose`] explicitly.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a redacted secret prints as.
pub const REDACTED: &str = "<redacted>";

/// A URL for logs, errors and printed configs: its userinfo (`user:password@`) replaced,
/// `http://user:pass@host/` → `http://<redacted>@host/`. Works on text that does not parse as a
/// URL too, since that is when error messages quote it.
pub fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let prefix = scheme.map(|s| format!("{s}://")).unwrap_or_default();
            format!("{prefix}{REDACTED}@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compare with a presented credential in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
        for i in 0..a.len().max(b.len()) {
            diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
        }
        diff == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Serde helpers for the few wire formats that must carry a secret in clear (the control
/// channel between a proxy and its server): `#[serde(with = "defpool_core::secret::exposed")]`.
pub mod exposed {
    use super::Secret;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(secret: &Secret, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(secret.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_redacted_from_urls() {
        assert_eq!(
            redact_userinfo("http://u:p@127.0.0.1:9332/"),
            "http://<redacted>@127.0.0.1:9332/"
        );
        assert_eq!(
            redact_userinfo("postgres://pool:hunter2@127.0.0.1:5432 /db"),
            "postgres://<redacted>@127.0.0.1:5432 /db"
        );
        assert_eq!(
            redact_userinfo("http://127.0.0.1:9332/"),
            "http://127.0.0.1:9332/"
        );
        assert_eq!(redact_userinfo("h@st/a@b"), "<redacted>@st/a@b");
        assert_eq!(redact_userinfo("sqlite:a@b.db"), "<redacted>@b.db");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn matches_compares_whole_values() {
        let s = Secret::new("token");
        assert!(s.matches("token"));
        assert!(!s.matches("toke"));
        assert!(!s.matches("tokenn"));
        assert!(!s.matches("Token"));
        assert!(!Secret::new("").matches("x"));
        assert!(Secret::new("").matches(""));
    }
}
