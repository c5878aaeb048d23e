//! Who a miner is: `<payout address>.<worker>` or `<account>.<worker>`, and the options a miner
//! may put in the password field (`d=512,x`).

use defpool_core::address::{parse_payout_address_in, PayoutAddress};
use defpool_core::coin::{CoinRegistry, Network, Ticker};

/// Users are paid in BTC, so payout addresses are BTC addresses of the configured network.
pub const PAYOUT_COIN: &str = "BTC";

/// Names shorter than this are account names; longer ones must be valid addresses (a mistyped
/// address stays long and is refused rather than silently becoming an account).
const ADDRESS_MIN_LEN: usize = 25;
const MAX_ACCOUNT_LEN: usize = 24;
const MAX_WORKER_LEN: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinerIdentity {
    /// The user key the server accounts under: the canonical address or the account name.
    pub user: String,
    pub worker: String,
    pub payout: Option<PayoutAddress>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid payout address {address:?}: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("username is empty; use <BTC payout address>.<worker>")]
    Empty,
    #[error("account name {0:?} may only hold letters, digits, '_' and '-' (at most 24)")]
    BadAccount(String),
    #[error("worker name {0:?} is too long or holds control characters")]
    BadWorker(String),
}

/// Parses and validates a stratum username.
pub fn parse_username(
    registry: &CoinRegistry,
    network: Network,
    username: &str,
) -> Result<MinerIdentity, IdentityError> {
    let username = username.trim();
    let (name, worker) = match username.split_once('.') {
        Some((n, w)) => (n, w),
        None => (username, ""),
    };
    if name.is_empty() {
        return Err(IdentityError::Empty);
    }
    let worker = if worker.is_empty() { "default" } else { worker };
    if worker.len() > MAX_WORKER_LEN || worker.chars().any(|c| c.is_control()) {
        return Err(IdentityError::BadWorker(worker.to_string()));
    }
    if name.len() >= ADDRESS_MIN_LEN {
        let btc: Ticker = PAYOUT_COIN.parse().expect("BTC is a ticker");
        let coin = registry.get(&btc).expect("BTC is built in");
        let payout = parse_payout_address_in(registry, name, coin, network).map_err(|e| {
            IdentityError::BadAddress {
                address: name.to_string(),
                reason: e.to_string(),
            }
        })?;
        return Ok(MinerIdentity {
            user: payout.text.clone(),
            worker: worker.to_string(),
            payout: Some(payout),
        });
    }
    if name.len() > MAX_ACCOUNT_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(IdentityError::BadAccount(name.to_string()));
    }
    Ok(MinerIdentity {
        user: name.to_string(),
        worker: worker.to_string(),
        payout: None,
    })
}

/// Options from the password field.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MinerOptions {
    /// A fixed stratum difficulty (`d=`): disables vardiff for this connection.
    pub fixed_difficulty: Option<f64>,
}

/// Parses `d=512`, `d=512,x`, `x`, … ; unknown parts are ignored, as pools do.
pub fn parse_password(password: &str) -> MinerOptions {
    let mut opts = MinerOptions::default();
    for part in password.split([',', ';', ' ']) {
        if let Some(v) = part
            .strip_prefix("d=")
            .or_else(|| part.strip_prefix("diff="))
        {
            opts.fixed_difficulty = v.parse::<f64>().ok().filter(|d| d.is_finite() && *d > 0.0);
        }
    }
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> CoinRegistry {
        CoinRegistry::builtin()
    }

    #[test]
    fn addresses_accounts_and_workers() {
        let id = parse_username(
            &reg(),
            Network::Regtest,
            "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080.rig7",
        )
        .unwrap();
        assert_eq!(id.worker, "rig7");
        assert_eq!(id.user, "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080");
        assert!(id.payout.is_some());
        let id = parse_username(&reg(), Network::Mainnet, "alice.rig1").unwrap();
        assert_eq!((id.user.as_str(), id.worker.as_str()), ("alice", "rig1"));
        assert!(id.payout.is_none());
        let id = parse_username(&reg(), Network::Mainnet, "alice").unwrap();
        assert_eq!(id.worker, "default");
    }

    #[test]
    fn a_real_mainnet_address_is_accepted_and_a_typo_refused() {
        let good = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq";
        let id = parse_username(&reg(), Network::Mainnet, &format!("{good}.w1")).unwrap();
        assert_eq!(id.user, good);
        let typo = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdp";
        let err = parse_username(&reg(), Network::Mainnet, typo).unwrap_err();
        assert!(matches!(err, IdentityError::BadAddress { .. }), "{err}");
        // A testnet address on mainnet is refused too.
        let err = parse_username(
            &reg(),
            Network::Mainnet,
            "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx",
        )
        .unwrap_err();
        assert!(err.to_string().contains("invalid payout address"), "{err}");
    }

    #[test]
    fn bad_names() {
        assert_eq!(
            parse_username(&reg(), Network::Mainnet, ".w"),
            Err(IdentityError::Empty)
        );
        assert!(matches!(
            parse_username(&reg(), Network::Mainnet, "al ice"),
            Err(IdentityError::BadAccount(_))
        ));
        assert!(matches!(
            parse_username(&reg(), Network::Mainnet, "alice.w\u{7}"),
            Err(IdentityError::BadWorker(_))
        ));
    }

    #[test]
    fn password_options() {
        assert_eq!(parse_password("x").fixed_difficulty, None);
        assert_eq!(parse_password("d=512").fixed_difficulty, Some(512.0));
        assert_eq!(parse_password("x,d=0.5").fixed_difficulty, Some(0.5));
        assert_eq!(parse_password("d=-1").fixed_difficulty, None);
        assert_eq!(parse_password("d=nan").fixed_difficulty, None);
    }
}
