//! Payout addresses: parsing and validation per coin and network.
//!
//! A miner or an operator names a payout address as text; the pool needs the output script its
//! coinbase will pay. [`parse_payout_address`] turns the one into the other under the
//! [`AddressFormat`] of one coin's network, and refuses everything else with an [`AddressError`]
//! that names the cause: a typo (bad checksum), an address of another network or coin, a format
//! the network does not have, or an address that exists but cannot receive a coinbase (Litecoin
//! MWEB stealth addresses, segwit versions without spending rules yet).
//! [`parse_payout_address_in`] does the same and, given the whole registry, tells which other
//! coin an address belongs to.
//!
//! Encodings understood:
//! - Base58Check (legacy P2PKH and P2SH), every coin, by its version bytes;
//! - segwit, BIP173 bech32 for witness v0 and BIP350 bech32m for v1 and later;
//! - CashAddr (Bitcoin Cash), with or without its `prefix:`, implemented here after the CashAddr
//!   specification (bitcoincash.org `spec/cashaddr.md`).
//!
//! Pure: no I/O.

use std::fmt;

use bech32::primitives::decode::{CharError, SegwitHrpstring, SegwitHrpstringError};
use bech32::primitives::decode::{UncheckedHrpstring, UncheckedHrpstringError};
use bech32::{Bech32, Bech32m, Fe32};

use crate::coin::{AddressFormat, CoinRegistry, CoinSpec, Network, Ticker};

/// No payout address is longer (MWEB stealth addresses, the longest, are about 120 characters).
pub const MAX_ADDRESS_LEN: usize = 256;

/// What an address pays to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressKind {
    /// Base58Check pay-to-pubkey-hash.
    P2pkh,
    /// Base58Check pay-to-script-hash.
    P2sh,
    /// A segwit output: v0 is P2WPKH (20-byte program) or P2WSH (32), v1 with 32 bytes taproot.
    Segwit { version: u8 },
    /// CashAddr pay-to-pubkey-hash (`q…`).
    CashAddrP2pkh,
    /// CashAddr pay-to-script-hash (`p…`).
    CashAddrP2sh,
}

impl fmt::Display for AddressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressKind::P2pkh => f.write_str("P2PKH"),
            AddressKind::P2sh => f.write_str("P2SH"),
            AddressKind::Segwit { version } => write!(f, "segwit v{version}"),
            AddressKind::CashAddrP2pkh => f.write_str("CashAddr P2PKH"),
            AddressKind::CashAddrP2sh => f.write_str("CashAddr P2SH"),
        }
    }
}

/// A payout address accepted for one coin and network.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PayoutAddress {
    /// The canonical text: Base58Check as given, segwit in lower case, CashAddr in lower case
    /// with its prefix.
    pub text: String,
    pub kind: AddressKind,
    /// The output script a coinbase pays to reach this address.
    pub script_pubkey: Vec<u8>,
}

impl fmt::Display for PayoutAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A text encoding of addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    Base58Check,
    /// BIP173 bech32; also names the segwit family as a whole.
    Bech32,
    /// BIP350 bech32m.
    Bech32m,
    CashAddr,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Base58Check => "Base58Check",
            Encoding::Bech32 => "bech32",
            Encoding::Bech32m => "bech32m",
            Encoding::CashAddr => "CashAddr",
        })
    }
}

/// Why a well-formed address of the right coin and network still cannot be paid by a coinbase.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NotPayableReason {
    /// A Litecoin MWEB stealth address: MWEB outputs live in the extension block, and a coinbase
    /// pays canonical-chain outputs only.
    Mweb,
    /// A segwit version (or v1 program length) with no spending rules yet: anyone could spend
    /// an output paying it.
    UndefinedWitnessProgram { version: u8, program_len: usize },
}

impl fmt::Display for NotPayableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotPayableReason::Mweb => f.write_str(
                "MWEB addresses cannot receive a coinbase; give a segwit or legacy address of \
                 the same wallet",
            ),
            NotPayableReason::UndefinedWitnessProgram {
                version,
                program_len,
            } => write!(
                f,
                "segwit v{version} with a {program_len}-byte program has no spending rules yet, \
                 so anyone could take a coinbase paid to it"
            ),
        }
    }
}

/// Why a payout address was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the payout address is empty")]
    Empty,
    #[error("the payout address is {len} characters long; none is longer than {max}")]
    TooLong { len: usize, max: usize },
    #[error("character {character:?} at position {position} cannot appear in a payout address")]
    NotAscii { character: char, position: usize },
    #[error("{coin} has no {network} network in the coin registry")]
    NetworkUndefined { coin: Ticker, network: Network },
    #[error("character {character:?} at position {position} is not valid in a {encoding} address")]
    InvalidCharacter {
        character: char,
        position: usize,
        encoding: Encoding,
    },
    #[error("bad {encoding} checksum: the address is mistyped or incomplete")]
    BadChecksum { encoding: Encoding },
    #[error("the {encoding} address mixes upper and lower case")]
    MixedCase { encoding: Encoding },
    #[error("bad length: {what} is {len} {unit} long; expected {expected}")]
    BadLength {
        what: &'static str,
        len: usize,
        unit: &'static str,
        expected: &'static str,
    },
    #[error("unknown version byte {version:#04x}: not a {coin} {network} address")]
    UnknownVersion {
        version: u8,
        coin: Ticker,
        network: Network,
    },
    #[error(
        "unknown prefix `{prefix}`: {coin} {network} {encoding} addresses start with `{expected}`"
    )]
    UnknownPrefix {
        prefix: String,
        encoding: Encoding,
        coin: Ticker,
        network: Network,
        expected: String,
    },
    #[error(
        "wrong network: this is a {coin} {} address, but the pool runs on {coin} {expected}",
        join_or(.found)
    )]
    WrongNetwork {
        coin: Ticker,
        expected: Network,
        found: Vec<Network>,
    },
    #[error("wrong coin: this is a {} {found_network} address, not a {expected} one", join_or(.found))]
    WrongCoin {
        expected: Ticker,
        found: Vec<Ticker>,
        found_network: Network,
    },
    #[error("{coin} {network} has no {encoding} addresses")]
    UnsupportedFormat {
        encoding: Encoding,
        coin: Ticker,
        network: Network,
    },
    #[error("witness v{version} addresses use the {expected} checksum, not {found}")]
    WrongChecksumVariant {
        version: u8,
        expected: Encoding,
        found: Encoding,
    },
    #[error("invalid witness version {0}: segwit versions run from 0 to 16")]
    InvalidWitnessVersion(u8),
    #[error("invalid padding in the {encoding} data")]
    InvalidPadding { encoding: Encoding },
    #[error("unsupported CashAddr type {0}: only P2PKH (q…) and P2SH (p…) addresses can be paid")]
    UnsupportedCashAddrType(u8),
    #[error(
        "unsupported CashAddr hash of {bits} bits: only 160-bit P2PKH and P2SH addresses can be paid"
    )]
    UnsupportedCashAddrHash { bits: u16 },
    #[error("malformed {encoding} address: {detail}")]
    Malformed { encoding: Encoding, detail: String },
    #[error("not payable: {0}")]
    NotPayable(NotPayableReason),
}

/// `a`, `a or b`, `a, b or c`.
fn join_or<T: fmt::Display>(items: &[T]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(if i + 1 == items.len() { " or " } else { ", " });
        }
        out.push_str(&item.to_string());
    }
    out
}

/// Parse `text` as a payout address of `coin` on `network`.
///
/// Surrounding whitespace is ignored. On success the address carries its canonical text and the
/// output script a coinbase pays to reach it.
pub fn parse_payout_address(
    text: &str,
    coin: &CoinSpec,
    network: Network,
) -> Result<PayoutAddress, AddressError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(AddressError::Empty);
    }
    if let Some((position, character)) = text.chars().enumerate().find(|(_, c)| !c.is_ascii()) {
        return Err(AddressError::NotAscii {
            character,
            position,
        });
    }
    if text.len() > MAX_ADDRESS_LEN {
        return Err(AddressError::TooLong {
            len: text.len(),
            max: MAX_ADDRESS_LEN,
        });
    }
    let params = coin
        .network(network)
        .ok_or_else(|| AddressError::NetworkUndefined {
            coin: coin.ticker.clone(),
            network,
        })?;
    let ctx = Ctx {
        coin,
        network,
        format: &params.address,
    };

    // Only CashAddr has a colon.
    if let Some(colon) = text.find(':') {
        return ctx.cashaddr(Some(&text[..colon]), &text[colon + 1..]);
    }
    // Base58Check first: a string that passes its 32-bit checksum is one.
    let base58 = bs58::decode(text).with_check(None).into_vec();
    if let Ok(payload) = &base58 {
        return ctx.base58(text, payload);
    }
    if let Some(hrp) = bech32_hrp(text) {
        if ctx.any_network(|f| hrp_is(&f.mweb_hrp, &hrp)) {
            return Err(mweb_refusal(text));
        }
        if ctx.any_network(|f| hrp_is(&f.bech32_hrp, &hrp)) {
            return ctx.segwit(text);
        }
    }
    if ctx.any_network(|f| f.cashaddr_prefix.is_some())
        && text.chars().all(|c| cashaddr_value(c).is_some())
    {
        return ctx.cashaddr(None, text);
    }
    if let Some(hrp) = foreign_bech32_hrp(text) {
        return Err(match &ctx.format.bech32_hrp {
            None => ctx.unsupported(Encoding::Bech32),
            Some(expected) => AddressError::UnknownPrefix {
                prefix: hrp,
                encoding: Encoding::Bech32,
                coin: coin.ticker.clone(),
                network,
                expected: format!("{}1", expected.to_ascii_lowercase()),
            },
        });
    }
    Err(base58_error(text, base58.unwrap_err()))
}

/// [`parse_payout_address`], and when the address is not `coin`'s, name the coin of `registry`
/// it belongs to ([`AddressError::WrongCoin`]), on the same network preferably.
pub fn parse_payout_address_in(
    registry: &CoinRegistry,
    text: &str,
    coin: &CoinSpec,
    network: Network,
) -> Result<PayoutAddress, AddressError> {
    let err = match parse_payout_address(text, coin, network) {
        Ok(address) => return Ok(address),
        Err(err) => err,
    };
    // These already say the address is this coin's.
    if matches!(
        err,
        AddressError::WrongNetwork { .. } | AddressError::NotPayable(_)
    ) {
        return Err(err);
    }
    let networks =
        std::iter::once(network).chain(Network::ALL.into_iter().filter(|n| *n != network));
    for net in networks {
        let found: Vec<Ticker> = registry
            .iter()
            .filter(|other| other.ticker != coin.ticker && other.network(net).is_some())
            .filter(|other| {
                matches!(
                    parse_payout_address(text, other, net),
                    Ok(_) | Err(AddressError::NotPayable(_))
                )
            })
            .map(|other| other.ticker.clone())
            .collect();
        if !found.is_empty() {
            return Err(AddressError::WrongCoin {
                expected: coin.ticker.clone(),
                found,
                found_network: net,
            });
        }
    }
    Err(err)
}

/// The coin and network an address is parsed for.
struct Ctx<'a> {
    coin: &'a CoinSpec,
    network: Network,
    format: &'a AddressFormat,
}

impl Ctx<'_> {
    fn any_network(&self, pred: impl Fn(&AddressFormat) -> bool) -> bool {
        self.coin.networks.values().any(|p| pred(&p.address))
    }

    /// The coin's other networks whose format satisfies `pred`.
    fn other_networks(&self, pred: impl Fn(&AddressFormat) -> bool) -> Vec<Network> {
        self.coin
            .networks
            .iter()
            .filter(|(net, p)| **net != self.network && pred(&p.address))
            .map(|(net, _)| *net)
            .collect()
    }

    fn wrong_network(&self, found: Vec<Network>) -> AddressError {
        AddressError::WrongNetwork {
            coin: self.coin.ticker.clone(),
            expected: self.network,
            found,
        }
    }

    fn unsupported(&self, encoding: Encoding) -> AddressError {
        AddressError::UnsupportedFormat {
            encoding,
            coin: self.coin.ticker.clone(),
            network: self.network,
        }
    }

    /// A Base58Check payload: a version byte and a 20-byte hash.
    fn base58(&self, text: &str, payload: &[u8]) -> Result<PayoutAddress, AddressError> {
        if payload.len() != 21 {
            return Err(AddressError::BadLength {
                what: "the Base58Check payload",
                len: payload.len(),
                unit: "bytes",
                expected: "21 bytes (a version byte and a 20-byte hash)",
            });
        }
        let (version, hash) = (payload[0], &payload[1..]);
        let (kind, script_pubkey) = if self.format.p2pkh.contains(&version) {
            (AddressKind::P2pkh, p2pkh_script(hash))
        } else if self.format.p2sh.contains(&version) {
            (AddressKind::P2sh, p2sh_script(hash))
        } else {
            let found =
                self.other_networks(|f| f.p2pkh.contains(&version) || f.p2sh.contains(&version));
            return Err(if !found.is_empty() {
                self.wrong_network(found)
            } else if self.format.p2pkh.is_empty() && self.format.p2sh.is_empty() {
                self.unsupported(Encoding::Base58Check)
            } else {
                AddressError::UnknownVersion {
                    version,
                    coin: self.coin.ticker.clone(),
                    network: self.network,
                }
            });
        };
        Ok(PayoutAddress {
            text: text.to_string(),
            kind,
            script_pubkey,
        })
    }

    /// A segwit address whose HRP is one of this coin's networks'.
    fn segwit(&self, text: &str) -> Result<PayoutAddress, AddressError> {
        let decoded = SegwitHrpstring::new(text).map_err(|e| segwit_error(text, e))?;
        let hrp = decoded.hrp().to_lowercase();
        let version = decoded.witness_version().to_u8();
        let program: Vec<u8> = decoded.byte_iter().collect();
        if !hrp_is(&self.format.bech32_hrp, &hrp) {
            let found = self.other_networks(|f| hrp_is(&f.bech32_hrp, &hrp));
            return Err(self.wrong_network(found));
        }
        match (version, program.len()) {
            (0, 20) | (0, 32) | (1, 32) => {}
            (version, program_len) => {
                return Err(AddressError::NotPayable(
                    NotPayableReason::UndefinedWitnessProgram {
                        version,
                        program_len,
                    },
                ))
            }
        }
        Ok(PayoutAddress {
            text: text.to_ascii_lowercase(),
            kind: AddressKind::Segwit { version },
            script_pubkey: witness_script(version, &program),
        })
    }

    /// A CashAddr address: `prefix:payload` or the payload alone.
    fn cashaddr(&self, prefix: Option<&str>, payload: &str) -> Result<PayoutAddress, AddressError> {
        if !self.any_network(|f| f.cashaddr_prefix.is_some()) {
            return Err(self.unsupported(Encoding::CashAddr));
        }
        let all = prefix.into_iter().chain([payload]);
        let upper = all
            .clone()
            .any(|s| s.bytes().any(|b| b.is_ascii_uppercase()));
        let lower = all
            .clone()
            .any(|s| s.bytes().any(|b| b.is_ascii_lowercase()));
        if upper && lower {
            return Err(AddressError::MixedCase {
                encoding: Encoding::CashAddr,
            });
        }
        let offset = prefix.map_or(0, |p| p.len() + 1);
        let mut values = Vec::with_capacity(payload.len());
        for (i, c) in payload.chars().enumerate() {
            match cashaddr_value(c) {
                Some(v) => values.push(v),
                None => {
                    return Err(AddressError::InvalidCharacter {
                        character: c,
                        position: offset + i,
                        encoding: Encoding::CashAddr,
                    })
                }
            }
        }
        // A 160-bit hash and its type byte take 34 characters, the checksum 8 more.
        if values.len() < 42 {
            return Err(AddressError::BadLength {
                what: "the CashAddr payload",
                len: values.len(),
                unit: "characters",
                expected: "42 characters (34 for a 160-bit hash and 8 of checksum)",
            });
        }

        let own = self
            .format
            .cashaddr_prefix
            .as_deref()
            .map(str::to_ascii_lowercase);
        let has_prefix = |f: &AddressFormat, p: &str| {
            f.cashaddr_prefix
                .as_deref()
                .is_some_and(|q| q.eq_ignore_ascii_case(p))
        };
        match prefix.map(str::to_ascii_lowercase) {
            Some(p) if own.as_deref() == Some(p.as_str()) => {
                if !cashaddr_checksum_ok(&p, &values) {
                    return Err(AddressError::BadChecksum {
                        encoding: Encoding::CashAddr,
                    });
                }
            }
            Some(p) => {
                let found = self.other_networks(|f| has_prefix(f, &p));
                return Err(if found.is_empty() {
                    match &own {
                        None => self.unsupported(Encoding::CashAddr),
                        Some(own) => AddressError::UnknownPrefix {
                            prefix: p,
                            encoding: Encoding::CashAddr,
                            coin: self.coin.ticker.clone(),
                            network: self.network,
                            expected: format!("{own}:"),
                        },
                    }
                } else if cashaddr_checksum_ok(&p, &values) {
                    self.wrong_network(found)
                } else {
                    AddressError::BadChecksum {
                        encoding: Encoding::CashAddr,
                    }
                });
            }
            None => {
                if !own
                    .as_deref()
                    .is_some_and(|own| cashaddr_checksum_ok(own, &values))
                {
                    // The checksum covers the prefix: one that fits names the network.
                    let found = self.other_networks(|f| {
                        f.cashaddr_prefix
                            .as_deref()
                            .is_some_and(|p| cashaddr_checksum_ok(&p.to_ascii_lowercase(), &values))
                    });
                    return Err(if !found.is_empty() {
                        self.wrong_network(found)
                    } else if own.is_none() {
                        self.unsupported(Encoding::CashAddr)
                    } else {
                        AddressError::BadChecksum {
                            encoding: Encoding::CashAddr,
                        }
                    });
                }
            }
        }
        let own = own.expect("checked above: this network has a CashAddr prefix");

        let data =
            from_base32(&values[..values.len() - 8]).ok_or(AddressError::InvalidPadding {
                encoding: Encoding::CashAddr,
            })?;
        let (type_byte, hash) = (data[0], &data[1..]);
        if type_byte & 0x80 != 0 {
            return Err(AddressError::UnsupportedCashAddrType(type_byte >> 3));
        }
        let bits = CASHADDR_HASH_BITS[usize::from(type_byte & 0x07)];
        if hash.len() * 8 != usize::from(bits) {
            return Err(AddressError::BadLength {
                what: "the CashAddr hash",
                len: hash.len() * 8,
                unit: "bits",
                expected: "the size its type byte gives",
            });
        }
        let kind = match type_byte >> 3 {
            0 => AddressKind::CashAddrP2pkh,
            1 => AddressKind::CashAddrP2sh,
            other => return Err(AddressError::UnsupportedCashAddrType(other)),
        };
        if bits != 160 {
            return Err(AddressError::UnsupportedCashAddrHash { bits });
        }
        let script_pubkey = match kind {
            AddressKind::CashAddrP2pkh => p2pkh_script(hash),
            _ => p2sh_script(hash),
        };
        Ok(PayoutAddress {
            text: format!("{own}:{}", payload.to_ascii_lowercase()),
            kind,
            script_pubkey,
        })
    }
}

fn hrp_is(configured: &Option<String>, hrp: &str) -> bool {
    configured
        .as_deref()
        .is_some_and(|c| c.eq_ignore_ascii_case(hrp))
}

/// The lower-cased human-readable part of a would-be bech32 string (before its last `1`).
fn bech32_hrp(text: &str) -> Option<String> {
    match text.rfind('1') {
        Some(sep) if sep > 0 => Some(text[..sep].to_ascii_lowercase()),
        _ => None,
    }
}

/// The HRP of a well-formed bech32 string of letters-only HRP that no network of the coin knows.
fn foreign_bech32_hrp(text: &str) -> Option<String> {
    let unchecked = UncheckedHrpstring::new(text).ok()?;
    let hrp = unchecked.hrp().to_lowercase();
    hrp.bytes().all(|b| b.is_ascii_alphabetic()).then_some(hrp)
}

/// An MWEB stealth address is refused whole; it is only decoded to tell a typo from the real
/// thing. MWEB addresses exceed segwit's 90 characters, so the checksum is checked without the
/// segwit length limit.
fn mweb_refusal(text: &str) -> AddressError {
    match UncheckedHrpstring::new(text) {
        Err(e) => unchecked_error(text, e),
        Ok(u) if u.has_valid_checksum::<Bech32>() || u.has_valid_checksum::<Bech32m>() => {
            AddressError::NotPayable(NotPayableReason::Mweb)
        }
        Ok(_) => AddressError::BadChecksum {
            encoding: Encoding::Bech32,
        },
    }
}

fn segwit_error(text: &str, e: SegwitHrpstringError) -> AddressError {
    match e {
        SegwitHrpstringError::Unchecked(e) => unchecked_error(text, e),
        SegwitHrpstringError::NoData => AddressError::BadLength {
            what: "the bech32 data part",
            len: 0,
            unit: "characters",
            expected: "a witness version, a program and a 6-character checksum",
        },
        SegwitHrpstringError::TooLong(len) => AddressError::BadLength {
            what: "the segwit address",
            len,
            unit: "characters",
            expected: "at most 90 characters",
        },
        SegwitHrpstringError::InvalidWitnessVersion(v) => {
            AddressError::InvalidWitnessVersion(v.to_u8())
        }
        SegwitHrpstringError::Padding(_) => AddressError::InvalidPadding {
            encoding: Encoding::Bech32,
        },
        SegwitHrpstringError::WitnessLength(_) => {
            let version = witness_version_of(text).unwrap_or(0);
            // Data characters after the version, less the 6 of the checksum, 5 bits each.
            let sep = text.rfind('1').unwrap_or(0);
            let chars = text.len().saturating_sub(sep + 1 + 1 + 6);
            AddressError::BadLength {
                what: "the witness program",
                len: chars * 5 / 8,
                unit: "bytes",
                expected: if version == 0 {
                    "20 or 32 bytes for witness v0"
                } else {
                    "2 to 40 bytes"
                },
            }
        }
        SegwitHrpstringError::Checksum(_) => checksum_variant_error(text),
        other => AddressError::Malformed {
            encoding: Encoding::Bech32,
            detail: other.to_string(),
        },
    }
}

fn unchecked_error(text: &str, e: UncheckedHrpstringError) -> AddressError {
    match e {
        UncheckedHrpstringError::Char(CharError::MixedCase)
        | UncheckedHrpstringError::Hrp(bech32::primitives::hrp::Error::MixedCase) => {
            AddressError::MixedCase {
                encoding: Encoding::Bech32,
            }
        }
        UncheckedHrpstringError::Char(CharError::InvalidChar(character)) => {
            let sep = text.rfind('1').map_or(0, |s| s + 1);
            let position = sep
                + text[sep..]
                    .chars()
                    .position(|c| c == character)
                    .unwrap_or(0);
            AddressError::InvalidCharacter {
                character,
                position,
                encoding: Encoding::Bech32,
            }
        }
        UncheckedHrpstringError::Char(CharError::NothingAfterSeparator) => {
            AddressError::BadLength {
                what: "the bech32 data part",
                len: 0,
                unit: "characters",
                expected: "a witness version, a program and a 6-character checksum",
            }
        }
        other => AddressError::Malformed {
            encoding: Encoding::Bech32,
            detail: other.to_string(),
        },
    }
}

fn witness_version_of(text: &str) -> Option<u8> {
    let sep = text.rfind('1')?;
    let c = text[sep + 1..].chars().next()?;
    Fe32::from_char(c).ok().map(Fe32::to_u8)
}

/// A segwit checksum failed: name the BIP350 mix-up (bech32 for v1+, bech32m for v0) when that
/// is what happened.
fn checksum_variant_error(text: &str) -> AddressError {
    let version = witness_version_of(text);
    let unchecked = UncheckedHrpstring::new(text).ok();
    let valid_bech32 = unchecked
        .as_ref()
        .is_some_and(|u| u.has_valid_checksum::<Bech32>());
    let valid_bech32m = unchecked
        .as_ref()
        .is_some_and(|u| u.has_valid_checksum::<Bech32m>());
    match version {
        Some(0) if valid_bech32m => AddressError::WrongChecksumVariant {
            version: 0,
            expected: Encoding::Bech32,
            found: Encoding::Bech32m,
        },
        Some(version) if version != 0 && valid_bech32 => AddressError::WrongChecksumVariant {
            version,
            expected: Encoding::Bech32m,
            found: Encoding::Bech32,
        },
        Some(0) => AddressError::BadChecksum {
            encoding: Encoding::Bech32,
        },
        _ => AddressError::BadChecksum {
            encoding: Encoding::Bech32m,
        },
    }
}

fn base58_error(text: &str, e: bs58::decode::Error) -> AddressError {
    match e {
        bs58::decode::Error::InvalidCharacter { character, index } => {
            AddressError::InvalidCharacter {
                character,
                position: index,
                encoding: Encoding::Base58Check,
            }
        }
        bs58::decode::Error::InvalidChecksum { .. } => AddressError::BadChecksum {
            encoding: Encoding::Base58Check,
        },
        bs58::decode::Error::NoChecksum => AddressError::BadLength {
            what: "the Base58Check address",
            len: text.len(),
            unit: "characters",
            expected: "26 to 35 characters",
        },
        other => AddressError::Malformed {
            encoding: Encoding::Base58Check,
            detail: other.to_string(),
        },
    }
}

/// OP_DUP OP_HASH160 <20> OP_EQUALVERIFY OP_CHECKSIG
fn p2pkh_script(hash: &[u8]) -> Vec<u8> {
    let mut script = Vec::with_capacity(25);
    script.extend_from_slice(&[0x76, 0xa9, 0x14]);
    script.extend_from_slice(hash);
    script.extend_from_slice(&[0x88, 0xac]);
    script
}

/// OP_HASH160 <20> OP_EQUAL
fn p2sh_script(hash: &[u8]) -> Vec<u8> {
    let mut script = Vec::with_capacity(23);
    script.extend_from_slice(&[0xa9, 0x14]);
    script.extend_from_slice(hash);
    script.push(0x87);
    script
}

/// OP_n <program>: OP_0 is 0x00, OP_1..OP_16 are 0x51..0x60.
fn witness_script(version: u8, program: &[u8]) -> Vec<u8> {
    let mut script = Vec::with_capacity(2 + program.len());
    script.push(if version == 0 { 0x00 } else { 0x50 + version });
    script.push(program.len() as u8);
    script.extend_from_slice(program);
    script
}

/// The base 32 alphabet CashAddr shares with bech32.
const CASHADDR_CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

/// Hash sizes of the CashAddr type byte's size bits.
const CASHADDR_HASH_BITS: [u16; 8] = [160, 192, 224, 256, 320, 384, 448, 512];

fn cashaddr_value(c: char) -> Option<u8> {
    let c = c.to_ascii_lowercase() as u8;
    CASHADDR_CHARSET
        .iter()
        .position(|&x| x == c)
        .map(|v| v as u8)
}

/// The CashAddr BCH code over GF(2^5), per the specification's `PolyMod`.
fn cashaddr_polymod(values: impl IntoIterator<Item = u8>) -> u64 {
    let mut c: u64 = 1;
    for d in values {
        let c0 = (c >> 35) as u8;
        c = ((c & 0x07_ffff_ffff) << 5) ^ u64::from(d);
        if c0 & 0x01 != 0 {
            c ^= 0x98_f2bc_8e61;
        }
        if c0 & 0x02 != 0 {
            c ^= 0x79_b76d_99e2;
        }
        if c0 & 0x04 != 0 {
            c ^= 0xf3_3e5f_b3c4;
        }
        if c0 & 0x08 != 0 {
            c ^= 0xae_2eab_e2a8;
        }
        if c0 & 0x10 != 0 {
            c ^= 0x1e_4f43_e470;
        }
    }
    c ^ 1
}

/// The lower 5 bits of each prefix character, a zero for the separator, then the payload.
fn cashaddr_checksum_input<'a>(
    prefix: &'a str,
    payload: &'a [u8],
) -> impl Iterator<Item = u8> + 'a {
    prefix
        .bytes()
        .map(|b| b & 0x1f)
        .chain([0])
        .chain(payload.iter().copied())
}

/// `values` is the payload with its 8 checksum characters, as 5-bit values.
fn cashaddr_checksum_ok(prefix: &str, values: &[u8]) -> bool {
    cashaddr_polymod(cashaddr_checksum_input(prefix, values)) == 0
}

/// 5-bit groups to bytes; the padding must be under 5 bits and zero.
fn from_base32(values: &[u8]) -> Option<Vec<u8>> {
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut out = Vec::with_capacity(values.len() * 5 / 8);
    for &v in values {
        acc = (acc << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    (bits < 5 && acc == 0 && !out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reg() -> CoinRegistry {
        CoinRegistry::builtin()
    }

    fn to_base32(data: &[u8]) -> Vec<u8> {
        let mut acc: u32 = 0;
        let mut bits = 0;
        let mut out = Vec::new();
        for &b in data {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(((acc >> bits) & 0x1f) as u8);
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            out.push(((acc << (5 - bits)) & 0x1f) as u8);
        }
        out
    }

    /// A CashAddr encoder, the spec's checksum computation, for round trips.
    fn cashaddr_encode(prefix: &str, type_byte: u8, hash: &[u8]) -> String {
        let mut data = vec![type_byte];
        data.extend_from_slice(hash);
        let mut values = to_base32(&data);
        let template: Vec<u8> = values.iter().copied().chain([0; 8]).collect();
        let checksum = cashaddr_polymod(cashaddr_checksum_input(prefix, &template));
        values.extend((0..8).map(|i| ((checksum >> (5 * (7 - i))) & 0x1f) as u8));
        let payload: String = values
            .iter()
            .map(|&v| CASHADDR_CHARSET[usize::from(v)] as char)
            .collect();
        format!("{prefix}:{payload}")
    }

    #[test]
    fn cashaddr_spec_checksum_vectors() {
        // The CashAddr specification's checksum vectors (bitcoincash.org spec/cashaddr.md, also
        // Bitcoin ABC's cashaddr_tests.cpp): valid checksums, deliberately invalid payloads.
        for vector in [
            "prefix:x64nx6hz",
            "p:gpf8m4h7",
            "bitcoincash:qpzry9x8gf2tvdw0s3jn54khce6mua7lcw20ayyn",
            "bchtest:testnetaddress4d6njnut",
            "bchreg:555555555555555555555555555555555555555555555udxmlmrz",
        ] {
            let (prefix, payload) = vector.split_once(':').unwrap();
            let values: Vec<u8> = payload
                .chars()
                .map(|c| cashaddr_value(c).unwrap())
                .collect();
            assert!(cashaddr_checksum_ok(prefix, &values), "{vector}");
        }
        let values: Vec<u8> = "x64nx6hy"
            .chars()
            .map(|c| cashaddr_value(c).unwrap())
            .collect();
        assert!(!cashaddr_checksum_ok("prefix", &values));
    }

    #[test]
    fn cashaddr_encoder_matches_the_spec() {
        // bitcoincash.org spec/cashaddr.md, "Larger test vectors", 20-byte rows.
        let hash = hex::decode("F5BF48B397DAE70BE82B3CCA4793F8EB2B6CDAC9").unwrap();
        assert_eq!(
            cashaddr_encode("bitcoincash", 0, &hash),
            "bitcoincash:qr6m7j9njldwwzlg9v7v53unlr4jkmx6eylep8ekg2"
        );
        assert_eq!(
            cashaddr_encode("bchtest", 8, &hash),
            "bchtest:pr6m7j9njldwwzlg9v7v53unlr4jkmx6eyvwc0uz5t"
        );
        assert_eq!(
            cashaddr_encode("pref", 8, &hash),
            "pref:pr6m7j9njldwwzlg9v7v53unlr4jkmx6ey65nvtks5"
        );
    }

    #[test]
    fn cashaddr_larger_hashes_are_decoded_then_refused() {
        let reg = reg();
        let bch = reg.by_ticker("BCH").unwrap();
        // Spec "Larger test vectors": a 32-byte P2SH hash (P2SH32) on bchtest.
        let err = parse_payout_address(
            "bchtest:pvch8mmxy0rtfrlarg7ucrxxfzds5pamg73h7370aa87d80gyhqxq7fqng6m6",
            bch,
            Network::Testnet,
        )
        .unwrap_err();
        assert_eq!(err, AddressError::UnsupportedCashAddrHash { bits: 256 });
        // A type byte whose size bits disagree with the hash length.
        let bad = cashaddr_encode("bitcoincash", 0x01, &[7; 20]);
        let err = parse_payout_address(&bad, bch, Network::Mainnet).unwrap_err();
        assert!(
            matches!(
                err,
                AddressError::BadLength {
                    what: "the CashAddr hash",
                    ..
                }
            ),
            "{err}"
        );
        // An undefined type (15, as in the spec's "Undefined types").
        let odd = cashaddr_encode("bitcoincash", 15 << 3, &[7; 20]);
        let err = parse_payout_address(&odd, bch, Network::Mainnet).unwrap_err();
        assert_eq!(err, AddressError::UnsupportedCashAddrType(15));
    }

    #[test]
    fn base32_padding_rules() {
        assert_eq!(
            from_base32(&to_base32(&[0xff; 21])).unwrap(),
            vec![0xff; 21]
        );
        // 34 values carry 170 bits: 2 of padding, which must be zero.
        let mut values = to_base32(&[0; 21]);
        *values.last_mut().unwrap() |= 1;
        assert_eq!(from_base32(&values), None);
    }

    #[test]
    fn scripts_have_the_standard_templates() {
        let h = [0xab; 20];
        assert_eq!(p2pkh_script(&h).len(), 25);
        assert_eq!(&p2pkh_script(&h)[..3], &[0x76, 0xa9, 0x14]);
        assert_eq!(&p2pkh_script(&h)[23..], &[0x88, 0xac]);
        assert_eq!(p2sh_script(&h)[0], 0xa9);
        assert_eq!(p2sh_script(&h)[22], 0x87);
        assert_eq!(&witness_script(0, &h)[..2], &[0x00, 0x14]);
        assert_eq!(&witness_script(1, &[0; 32])[..2], &[0x51, 0x20]);
        assert_eq!(witness_script(16, &[0; 2])[0], 0x60);
    }

    #[test]
    fn error_messages_name_the_cause() {
        let e = AddressError::WrongNetwork {
            coin: "BTC".parse().unwrap(),
            expected: Network::Mainnet,
            found: vec![Network::Testnet, Network::Regtest],
        };
        assert_eq!(
            e.to_string(),
            "wrong network: this is a BTC testnet or regtest address, but the pool runs on BTC mainnet"
        );
        let e = AddressError::WrongCoin {
            expected: "DOGE".parse().unwrap(),
            found: vec![
                "BCH".parse().unwrap(),
                "BSV".parse().unwrap(),
                "BTC".parse().unwrap(),
            ],
            found_network: Network::Mainnet,
        };
        assert_eq!(
            e.to_string(),
            "wrong coin: this is a BCH, BSV or BTC mainnet address, not a DOGE one"
        );
        let e = AddressError::NotPayable(NotPayableReason::Mweb);
        assert!(e
            .to_string()
            .contains("MWEB addresses cannot receive a coinbase"));
    }

    proptest! {
        #[test]
        fn cashaddr_round_trips_to_the_legacy_script(
            hash in prop::array::uniform20(any::<u8>()),
            p2sh in any::<bool>(),
            net in prop::sample::select(Network::ALL.to_vec()),
            upper in any::<bool>(),
            drop_prefix in any::<bool>(),
        ) {
            let reg = reg();
            let bch = reg.by_ticker("BCH").unwrap();
            let format = &bch.network(net).unwrap().address;
            let prefix = format.cashaddr_prefix.as_deref().unwrap();
            let text = cashaddr_encode(prefix, if p2sh { 8 } else { 0 }, &hash);
            let canonical = text.clone();
            let mut input = if drop_prefix {
                text.split_once(':').unwrap().1.to_string()
            } else {
                text
            };
            if upper {
                input = input.to_ascii_uppercase();
            }
            let parsed = parse_payout_address(&input, bch, net).unwrap();
            prop_assert_eq!(&parsed.text, &canonical);
            let legacy_version = if p2sh { format.p2sh[0] } else { format.p2pkh[0] };
            let legacy = bs58::encode(&hash).with_check_version(legacy_version).into_string();
            let legacy = parse_payout_address(&legacy, bch, net).unwrap();
            prop_assert_eq!(parsed.script_pubkey, legacy.script_pubkey);
        }
    }
}
