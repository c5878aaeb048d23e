//! Ledger accounts. Every entry names an account and a coin; a balance is the sum of an
//! account's entries in one coin, so one account can hold several coins.
//!
//! | name                    | holds                                                          |
//! |-------------------------|----------------------------------------------------------------|
//! | `user:<user>`           | what the pool owes a user (their balance)                      |
//! | `pool:fees`             | the pool's fee income                                          |
//! | `pool:unattributed`     | earnings nobody had work for (an empty window, no work): kept  |
//! |                         | apart from fees so an operator can see and re-attribute them   |
//! | `pool:earnings:<coin>`  | coin received from upstream pools, awaiting attribution        |
//! | `pool:immature:<coin>`  | solo block rewards found but not yet matured                   |
//! | `external:<upstream>`   | contra account of an upstream pool: its payouts come from here |
//! | `chain:<coin>`          | contra account of a coin's network: block rewards come from it |
//! | `exchange`              | the exchange's side of conversions between coins               |
//!
//! Contra accounts (`external:…`, `chain:…`, `exchange`) go negative by what flowed in from
//! outside, so the whole ledger sums to zero per coin.

use std::fmt;
use std::str::FromStr;

use defpool_core::Ticker;
use serde::{Deserialize, Serialize};

/// A ledger account. Displayed and serialised as its name (`user:ltc1q…`, `pool:fees`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Account {
    /// `user:<user>`: a user's balance; `<user>` is the stratum username's user part.
    User(String),
    /// `pool:fees`: the pool fee.
    PoolFees,
    /// `pool:unattributed`: earnings with no work to attribute them to.
    PoolUnattributed,
    /// `pool:earnings:<coin>`: received from upstream pools, not yet attributed.
    PoolEarnings(Ticker),
    /// `pool:immature:<coin>`: solo block rewards awaiting maturity.
    PoolImmature(Ticker),
    /// `external:<upstream>`: where an upstream pool's payouts come from.
    External(String),
    /// `chain:<coin>`: where a coin's block rewards come from.
    Chain(Ticker),
    /// `exchange`: the other side of conversions.
    Exchange,
}

/// Why an account name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("`{0}` is not an account (user:<user>, pool:fees, pool:unattributed, pool:earnings:<coin>, pool:immature:<coin>, external:<upstream>, chain:<coin>, exchange)")]
    Unknown(String),
    #[error("account `{0}`: {1}")]
    BadPart(String, String),
}

impl Account {
    pub fn user(user: impl Into<String>) -> Account {
        Account::User(user.into())
    }

    /// The user this account belongs to, if it is a user's.
    pub fn as_user(&self) -> Option<&str> {
        match self {
            Account::User(u) => Some(u),
            _ => None,
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::User(u) => write!(f, "user:{u}"),
            Account::PoolFees => f.write_str("pool:fees"),
            Account::PoolUnattributed => f.write_str("pool:unattributed"),
            Account::PoolEarnings(c) => write!(f, "pool:earnings:{c}"),
            Account::PoolImmature(c) => write!(f, "pool:immature:{c}"),
            Account::External(u) => write!(f, "external:{u}"),
            Account::Chain(c) => write!(f, "chain:{c}"),
            Account::Exchange => f.write_str("exchange"),
        }
    }
}

impl FromStr for Account {
    type Err = AccountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = |rest: &str| -> Result<String, AccountError> {
            if rest.is_empty() {
                Err(AccountError::BadPart(s.to_string(), "empty name".into()))
            } else {
                Ok(rest.to_string())
            }
        };
        let coin = |rest: &str| -> Result<Ticker, AccountError> {
            // Tickers are upper case; a lower-case spelling would name a second account.
            if rest != rest.to_ascii_uppercase() {
                return Err(AccountError::BadPart(
                    s.to_string(),
                    "ticker must be upper case".into(),
                ));
            }
            Ticker::from_str(rest).map_err(|e| AccountError::BadPart(s.to_string(), e))
        };
        match s {
            "pool:fees" => return Ok(Account::PoolFees),
            "pool:unattributed" => return Ok(Account::PoolUnattributed),
            "exchange" => return Ok(Account::Exchange),
            _ => {}
        }
        if let Some(rest) = s.strip_prefix("user:") {
            Ok(Account::User(name(rest)?))
        } else if let Some(rest) = s.strip_prefix("pool:earnings:") {
            Ok(Account::PoolEarnings(coin(rest)?))
        } else if let Some(rest) = s.strip_prefix("pool:immature:") {
            Ok(Account::PoolImmature(coin(rest)?))
        } else if let Some(rest) = s.strip_prefix("external:") {
            Ok(Account::External(name(rest)?))
        } else if let Some(rest) = s.strip_prefix("chain:") {
            Ok(Account::Chain(coin(rest)?))
        } else {
            Err(AccountError::Unknown(s.to_string()))
        }
    }
}

impl TryFrom<String> for Account {
    type Error = AccountError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Account> for String {
    fn from(a: Account) -> String {
        a.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let ltc: Ticker = "LTC".parse().unwrap();
        for a in [
            Account::user("ltc1qexample.with:colon"),
            Account::PoolFees,
            Account::PoolUnattributed,
            Account::PoolEarnings(ltc.clone()),
            Account::PoolImmature(ltc.clone()),
            Account::External("prohashing".into()),
            Account::Chain(ltc),
            Account::Exchange,
        ] {
            assert_eq!(a.to_string().parse::<Account>(), Ok(a.clone()));
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<Account>(&json).unwrap(), a);
        }
        assert_eq!(Account::user("bob").to_string(), "user:bob");
        assert_eq!(
            "pool:immature:LTC".parse::<Account>().unwrap(),
            Account::PoolImmature("LTC".parse().unwrap())
        );
    }

    #[test]
    fn bad_names() {
        assert!(matches!(
            "pool:other".parse::<Account>(),
            Err(AccountError::Unknown(_))
        ));
        assert!(matches!(
            "user:".parse::<Account>(),
            Err(AccountError::BadPart(..))
        ));
        assert!(matches!(
            "chain:ltc".parse::<Account>(),
            Err(AccountError::BadPart(..))
        ));
        assert!(matches!(
            "pool:earnings:L".parse::<Account>(),
            Err(AccountError::BadPart(..))
        ));
        assert!(serde_json::from_str::<Account>("\"bank\"").is_err());
    }
}
