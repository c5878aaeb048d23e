//! Coins as data: the registry of every coin DefPool can mine, its networks and their rules.
//!
//! The built-in registry is `coins.toml` beside this file; operators add coins of a known
//! algorithm with the same schema (see [`CoinRegistry::with_additions`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::work::CompactTarget;

/// A proof-of-work algorithm. Coins of one algorithm form one switching group: hardware can
/// move between them without reconfiguration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Double SHA-256 (BTC, BCH, BSV).
    Sha256d,
    /// scrypt with N=1024, r=1, p=1 (LTC, DOGE).
    Scrypt,
}

impl Algorithm {
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256d, Algorithm::Scrypt];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256d => "sha256d",
            Algorithm::Scrypt => "scrypt",
        }
    }

    /// Pools conventionally show scrypt share difficulty 2^16 times larger than the network
    /// difficulty of the same target. This is the only place that factor lives.
    pub fn stratum_difficulty_factor(self) -> f64 {
        match self {
            Algorithm::Sha256d => 1.0,
            Algorithm::Scrypt => 65536.0,
        }
    }

    /// Whether one hash is expensive enough that it must not run on an async executor thread.
    pub fn is_expensive(self) -> bool {
        matches!(self, Algorithm::Scrypt)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha256d" => Ok(Algorithm::Sha256d),
            "scrypt" => Ok(Algorithm::Scrypt),
            other => Err(format!(
                "unknown algorithm `{other}` (known: sha256d, scrypt)"
            )),
        }
    }
}

/// Which chain of a coin: real money, public test chain, or a private regression-test chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    Mainnet,
    Testnet,
    Regtest,
}

impl Network {
    pub const ALL: [Network; 3] = [Network::Mainnet, Network::Testnet, Network::Regtest];

    pub fn as_str(self) -> &'static str {
        match self {
            Network::Mainnet => "mainnet",
            Network::Testnet => "testnet",
            Network::Regtest => "regtest",
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mainnet" => Ok(Network::Mainnet),
            "testnet" => Ok(Network::Testnet),
            "regtest" => Ok(Network::Regtest),
            other => Err(format!(
                "unknown network `{other}` (known: mainnet, testnet, regtest)"
            )),
        }
    }
}

/// A coin's ticker, upper case (`BTC`, `LTC`, …). The registry's key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ticker(String);

impl Ticker {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Ticker {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let upper = s.to_ascii_uppercase();
        let ok = (2..=10).contains(&upper.len())
            && upper
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if ok {
            Ok(Ticker(upper))
        } else {
            Err(format!(
                "invalid ticker `{s}`: 2 to 10 ASCII letters or digits"
            ))
        }
    }
}

impl FromStr for Ticker {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ticker::try_from(s.to_string())
    }
}

impl From<Ticker> for String {
    fn from(t: Ticker) -> String {
        t.0
    }
}

impl fmt::Display for Ticker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// How a network encodes payout addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AddressFormat {
    /// Base58Check version bytes of pay-to-pubkey-hash addresses (one or more accepted).
    #[serde(default)]
    pub p2pkh: Vec<u8>,
    /// Base58Check version bytes of pay-to-script-hash addresses.
    #[serde(default)]
    pub p2sh: Vec<u8>,
    /// Segwit human-readable part (bech32 for v0, bech32m for v1+), if the coin has segwit.
    #[serde(default)]
    pub bech32_hrp: Option<String>,
    /// CashAddr prefix (Bitcoin Cash).
    #[serde(default)]
    pub cashaddr_prefix: Option<String>,
    /// Human-readable part of MWEB stealth addresses, which cannot receive a coinbase.
    #[serde(default)]
    pub mweb_hrp: Option<String>,
}

/// The block subsidy schedule of one network, in smallest units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Subsidy {
    /// `initial` halved every `interval` blocks; optionally a fixed `tail_amount` from
    /// `tail_from` on.
    Halving {
        initial: u64,
        interval: u64,
        #[serde(default)]
        tail_from: Option<u64>,
        #[serde(default)]
        tail_amount: Option<u64>,
    },
    /// A table of `[from_height, amount]`, ascending; the last step at or below a height rules.
    Steps { steps: Vec<[u64; 2]> },
}

impl Subsidy {
    /// The subsidy of the block at `height`.
    pub fn at(&self, height: u64) -> u64 {
        match self {
            Subsidy::Halving {
                initial,
                interval,
                tail_from,
                tail_amount,
            } => {
                if let (Some(from), Some(amount)) = (tail_from, tail_amount) {
                    if height >= *from {
                        return *amount;
                    }
                }
                let halvings = height / (*interval).max(1);
                if halvings >= 64 {
                    0
                } else {
                    initial >> halvings
                }
            }
            Subsidy::Steps { steps } => steps
                .iter()
                .take_while(|[from, _]| *from <= height)
                .last()
                .map(|[_, amount]| *amount)
                .unwrap_or(0),
        }
    }

    fn check(&self) -> Result<(), String> {
        match self {
            Subsidy::Halving {
                interval,
                tail_from,
                tail_amount,
                ..
            } => {
                if *interval == 0 {
                    return Err("subsidy.interval must be at least 1".into());
                }
                if tail_from.is_some() != tail_amount.is_some() {
                    return Err("subsidy.tail_from and subsidy.tail_amount go together".into());
                }
                Ok(())
            }
            Subsidy::Steps { steps } => {
                if steps.is_empty() {
                    return Err("subsidy.steps is empty".into());
                }
                if steps.windows(2).any(|w| w[0][0] >= w[1][0]) {
                    return Err("subsidy.steps heights must ascend strictly".into());
                }
                Ok(())
            }
        }
    }
}

/// Per-network parameters of a coin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkParams {
    pub address: AddressFormat,
    pub subsidy: Subsidy,
    /// Blocks a coinbase output waits before it can be spent (and credited).
    pub coinbase_maturity: u32,
    /// The easiest target the network allows, compact form.
    pub pow_limit_bits: u32,
    /// The daemon's default JSON-RPC port.
    pub rpc_port: u16,
}

impl NetworkParams {
    pub fn pow_limit(&self) -> CompactTarget {
        CompactTarget(self.pow_limit_bits)
    }
}

/// A chain merge-mined on another coin's work (AuxPoW).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergedMining {
    /// The coin whose proof of work carries this one.
    pub parent: Ticker,
    /// The AuxPoW chain id, carried in the high 16 bits of the block version.
    pub chain_id: u32,
}

/// Everything DefPool needs to know about one coin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoinSpec {
    pub ticker: Ticker,
    pub name: String,
    pub algorithm: Algorithm,
    /// Decimal places of the smallest unit (8 for all built-in coins).
    pub decimals: u8,
    /// Target seconds between blocks.
    pub block_time_secs: u32,
    pub segwit: bool,
    /// Litecoin's MimbleWimble extension blocks.
    pub mweb: bool,
    /// BIP320 bits miners may roll in the header version.
    pub version_rolling_mask: u32,
    /// Rules to request from `getblocktemplate`.
    #[serde(default)]
    pub gbt_rules: Vec<String>,
    #[serde(default)]
    pub merged_mining: Option<MergedMining>,
    pub networks: BTreeMap<Network, NetworkParams>,
}

impl CoinSpec {
    /// The parameters of `network`, if the coin defines it.
    pub fn network(&self, network: Network) -> Option<&NetworkParams> {
        self.networks.get(&network)
    }

    fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name is empty".into());
        }
        if self.decimals > 18 {
            return Err(format!("decimals {} is above 18", self.decimals));
        }
        if self.block_time_secs == 0 {
            return Err("block_time_secs must be at least 1".into());
        }
        if self.networks.is_empty() {
            return Err("defines no network".into());
        }
        for (network, params) in &self.networks {
            params
                .subsidy
                .check()
                .map_err(|e| format!("networks.{network}.{e}"))?;
            let a = &params.address;
            if a.p2pkh.is_empty()
                && a.p2sh.is_empty()
                && a.bech32_hrp.is_none()
                && a.cashaddr_prefix.is_none()
            {
                return Err(format!(
                    "networks.{network}.address defines no payable format"
                ));
            }
            if CompactTarget(params.pow_limit_bits).to_target().is_none() {
                return Err(format!(
                    "networks.{network}.pow_limit_bits {:#010x} is not a valid compact target",
                    params.pow_limit_bits
                ));
            }
        }
        Ok(())
    }
}

/// Why a registry could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("coin `{ticker}`: {reason}")]
    Invalid { ticker: String, reason: String },
    #[error("coin `{0}` is defined twice")]
    Duplicate(String),
    #[error("coin registry is not valid TOML: {0}")]
    Parse(String),
}

/// All coins DefPool knows, keyed by ticker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoinRegistry {
    coins: BTreeMap<Ticker, CoinSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    coins: Vec<CoinSpec>,
}

const BUILTIN: &str = include_str!("coins.toml");

impl CoinRegistry {
    /// The built-in registry: BTC, BCH, BSV, LTC, DOGE.
    pub fn builtin() -> CoinRegistry {
        let file: RegistryFile = toml::from_str(BUILTIN).expect("the built-in coins.toml parses");
        CoinRegistry::from_specs(file.coins).expect("the built-in coins.toml is consistent")
    }

    /// Parse a registry from TOML text in the `coins.toml` schema.
    pub fn from_toml(text: &str) -> Result<CoinRegistry, RegistryError> {
        let file: RegistryFile =
            toml::from_str(text).map_err(|e| RegistryError::Parse(e.to_string()))?;
        CoinRegistry::from_specs(file.coins)
    }

    pub fn from_specs(specs: Vec<CoinSpec>) -> Result<CoinRegistry, RegistryError> {
        let mut coins = BTreeMap::new();
        for spec in specs {
            let ticker = spec.ticker.clone();
            if coins.insert(ticker.clone(), spec).is_some() {
                return Err(RegistryError::Duplicate(ticker.0));
            }
        }
        let registry = CoinRegistry { coins };
        registry.check()?;
        Ok(registry)
    }

    /// This registry plus operator-defined coins. A ticker already known is refused rather than
    /// silently overriding built-in consensus data.
    pub fn with_additions(&self, extra: Vec<CoinSpec>) -> Result<CoinRegistry, RegistryError> {
        let mut specs: Vec<CoinSpec> = self.coins.values().cloned().collect();
        specs.extend(extra);
        CoinRegistry::from_specs(specs)
    }

    fn check(&self) -> Result<(), RegistryError> {
        for spec in self.coins.values() {
            let invalid = |reason: String| RegistryError::Invalid {
                ticker: spec.ticker.0.clone(),
                reason,
            };
            spec.check().map_err(invalid)?;
            if let Some(mm) = &spec.merged_mining {
                let parent = self.coins.get(&mm.parent).ok_or_else(|| {
                    invalid(format!(
                        "merged_mining.parent `{}` is not a known coin",
                        mm.parent
                    ))
                })?;
                if parent.algorithm != spec.algorithm {
                    return Err(invalid(format!(
                        "merged_mining.parent `{}` mines {}, not {}",
                        mm.parent, parent.algorithm, spec.algorithm
                    )));
                }
                if parent.ticker == spec.ticker {
                    return Err(invalid("merged_mining.parent is the coin itself".into()));
                }
            }
        }
        Ok(())
    }

    pub fn get(&self, ticker: &Ticker) -> Option<&CoinSpec> {
        self.coins.get(ticker)
    }

    /// Look a coin up by ticker text, case-insensitively.
    pub fn by_ticker(&self, ticker: &str) -> Option<&CoinSpec> {
        Ticker::from_str(ticker)
            .ok()
            .and_then(|t| self.coins.get(&t))
    }

    pub fn iter(&self) -> impl Iterator<Item = &CoinSpec> {
        self.coins.values()
    }

    /// Coins of one algorithm: one switching group.
    pub fn group(&self, algorithm: Algorithm) -> impl Iterator<Item = &CoinSpec> {
        self.coins
            .values()
            .filter(move |c| c.algorithm == algorithm)
    }

    /// Chains merge-mined on `parent`'s work.
    pub fn merge_mined_on<'a>(&'a self, parent: &'a Ticker) -> impl Iterator<Item = &'a CoinSpec> {
        self.coins.values().filter(move |c| {
            c.merged_mining
                .as_ref()
                .is_some_and(|mm| &mm.parent == parent)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Ticker {
        s.parse().unwrap()
    }

    #[test]
    fn builtin_registry_has_the_five_coins_on_three_networks() {
        let reg = CoinRegistry::builtin();
        let tickers: Vec<_> = reg.iter().map(|c| c.ticker.as_str().to_string()).collect();
        assert_eq!(tickers, ["BCH", "BSV", "BTC", "DOGE", "LTC"]);
        for coin in reg.iter() {
            for net in Network::ALL {
                assert!(coin.network(net).is_some(), "{} lacks {net}", coin.ticker);
            }
        }
        let sha: Vec<_> = reg
            .group(Algorithm::Sha256d)
            .map(|c| c.ticker.as_str())
            .collect();
        assert_eq!(sha, ["BCH", "BSV", "BTC"]);
        let scrypt: Vec<_> = reg
            .group(Algorithm::Scrypt)
            .map(|c| c.ticker.as_str())
            .collect();
        assert_eq!(scrypt, ["DOGE", "LTC"]);
    }

    #[test]
    fn coin_quirks_are_recorded() {
        let reg = CoinRegistry::builtin();
        let ltc = reg.by_ticker("ltc").unwrap();
        assert_eq!(ltc.gbt_rules, ["mweb", "segwit"]);
        assert!(ltc.mweb && ltc.segwit);
        assert!(reg.by_ticker("BCH").unwrap().gbt_rules.is_empty());
        let doge = reg.by_ticker("DOGE").unwrap();
        assert_eq!(doge.merged_mining.as_ref().unwrap().parent, t("LTC"));
        assert_eq!(doge.merged_mining.as_ref().unwrap().chain_id, 0x62);
        // DOGE's chain id lives in version bits 16..31: none of them may be rolled.
        assert_eq!(doge.version_rolling_mask & 0xffff_0000, 0);
        let ltc_ticker = t("LTC");
        let on_ltc: Vec<_> = reg
            .merge_mined_on(&ltc_ticker)
            .map(|c| c.ticker.as_str())
            .collect();
        assert_eq!(on_ltc, ["DOGE"]);
    }

    #[test]
    fn subsidy_schedules() {
        const COIN: u64 = 100_000_000;
        let reg = CoinRegistry::builtin();
        let btc = &reg.by_ticker("BTC").unwrap().networks;
        assert_eq!(btc[&Network::Mainnet].subsidy.at(0), 50 * COIN);
        assert_eq!(btc[&Network::Mainnet].subsidy.at(210_000), 25 * COIN);
        assert_eq!(btc[&Network::Mainnet].subsidy.at(840_000), 312_500_000);
        assert_eq!(btc[&Network::Regtest].subsidy.at(149), 50 * COIN);
        assert_eq!(btc[&Network::Regtest].subsidy.at(150), 25 * COIN);
        assert_eq!(btc[&Network::Regtest].subsidy.at(150 * 64), 0);
        let ltc = &reg.by_ticker("LTC").unwrap().networks;
        assert_eq!(ltc[&Network::Mainnet].subsidy.at(1_680_000), 1_250_000_000);
        assert_eq!(ltc[&Network::Regtest].subsidy.at(432), 1_250_000_000);
        let doge = &reg.by_ticker("DOGE").unwrap().networks;
        assert_eq!(doge[&Network::Mainnet].subsidy.at(5_000_000), 10_000 * COIN);
        assert_eq!(doge[&Network::Mainnet].subsidy.at(250_000), 125_000 * COIN);
        assert_eq!(doge[&Network::Regtest].subsidy.at(150), 250_000 * COIN);
        assert_eq!(doge[&Network::Regtest].subsidy.at(900), 10_000 * COIN);
    }

    #[test]
    fn operator_adds_a_coin_as_data() {
        let text = r#"
            [[coins]]
            ticker = "XSHA"
            name = "Example SHA coin"
            algorithm = "sha256d"
            decimals = 8
            block_time_secs = 120
            segwit = false
            mweb = false
            version_rolling_mask = 0x1fffe000
            [coins.networks.mainnet]
            address = { p2pkh = [0x3c], p2sh = [0x7a] }
            subsidy = { kind = "halving", initial = 1000000000, interval = 100000 }
            coinbase_maturity = 100
            pow_limit_bits = 0x1d00ffff
            rpc_port = 7777
        "#;
        let extra = CoinRegistry::from_toml(text).unwrap();
        let reg = CoinRegistry::builtin()
            .with_additions(extra.iter().cloned().collect())
            .unwrap();
        assert_eq!(reg.group(Algorithm::Sha256d).count(), 4);
        assert_eq!(
            reg.by_ticker("xsha").unwrap().networks[&Network::Mainnet]
                .subsidy
                .at(100_000),
            500_000_000
        );
    }

    #[test]
    fn bad_coin_definitions_are_refused_with_the_reason() {
        let reg = CoinRegistry::builtin();
        let mut dup = reg.by_ticker("BTC").unwrap().clone();
        assert_eq!(
            reg.with_additions(vec![dup.clone()]),
            Err(RegistryError::Duplicate("BTC".into()))
        );
        dup.ticker = t("XBAD");
        dup.merged_mining = Some(MergedMining {
            parent: t("LTC"),
            chain_id: 1,
        });
        let err = reg
            .with_additions(vec![dup.clone()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mines scrypt, not sha256d"), "{err}");
        dup.merged_mining = None;
        dup.networks
            .get_mut(&Network::Mainnet)
            .unwrap()
            .pow_limit_bits = 0x2300_0001;
        let err = reg.with_additions(vec![dup]).unwrap_err().to_string();
        assert!(err.contains("pow_limit_bits"), "{err}");
        assert!(CoinRegistry::from_toml("[[coins]]\nticker = \"X\"").is_err());
    }
}
