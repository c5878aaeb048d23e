//! Exact numbers from JSON and text: prices and difficulties go straight from the provider's
//! digits to a `Decimal`, whether the provider sends a JSON number or a numeric string. Floats
//! never see them.

use std::str::FromStr;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// A JSON number (`6.25`, `1.2e13`) or numeric string (`"0.00123400"`), read exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JsonDecimal(pub Decimal);

impl<'de> Deserialize<'de> for JsonDecimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: Box<RawValue> = Deserialize::deserialize(d)?;
        parse_json_decimal(raw.get())
            .map(JsonDecimal)
            .map_err(D::Error::custom)
    }
}

/// The text of one JSON value (number or string) as a `Decimal`.
pub(crate) fn parse_json_decimal(text: &str) -> Result<Decimal, String> {
    let text = text.trim();
    if text.starts_with('"') {
        let s: String = serde_json::from_str(text).map_err(|e| e.to_string())?;
        parse_decimal(s.trim())
    } else {
        parse_decimal(text)
    }
}

/// A plain or scientific decimal literal as a `Decimal`.
pub(crate) fn parse_decimal(s: &str) -> Result<Decimal, String> {
    let well_formed = !s.is_empty()
        && s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    if !well_formed {
        return Err(format!("`{}` is not a number", short(s)));
    }
    let parsed = if s.contains(['e', 'E']) {
        Decimal::from_scientific_lossy(s)
    } else {
        Decimal::from_str(s)
    };
    parsed
        .map(|d| d.normalize())
        .map_err(|e| format!("`{}` is not a decimal: {e}", short(s)))
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Whole coins to smallest units (`6.25`, 8 decimals → 625000000), rounded to the nearest unit
/// (ties to even). `None` for negative or out-of-range amounts.
pub(crate) fn coins_to_units(coins: Decimal, decimals: u8) -> Option<u64> {
    if coins.is_sign_negative() && !coins.is_zero() {
        return None;
    }
    let scale = Decimal::from_i128_with_scale(10i128.checked_pow(u32::from(decimals))?, 0);
    coins
        .checked_mul(scale)?
        .round_dp_with_strategy(0, RoundingStrategy::MidpointNearestEven)
        .to_u64()
}

/// The price of one coin in BTC from a pair's last price: as is for `COIN/BTC`, inverted for
/// `BTC/COIN`. A zero or negative price is refused.
pub(crate) fn btc_price(pair_price: Decimal, inverse: bool) -> Result<Decimal, String> {
    if pair_price <= Decimal::ZERO {
        return Err(format!("non-positive price {pair_price}"));
    }
    if !inverse {
        return Ok(pair_price.normalize());
    }
    Decimal::ONE
        .checked_div(pair_price)
        .map(|p| p.normalize())
        .ok_or_else(|| format!("cannot invert price {pair_price}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn json_numbers_and_strings_are_exact() {
        assert_eq!(parse_json_decimal("6.25"), Ok(d("6.25")));
        assert_eq!(parse_json_decimal("\"0.00123400\""), Ok(d("0.001234")));
        assert_eq!(parse_json_decimal("1.2e13"), Ok(d("12000000000000")));
        assert_eq!(parse_json_decimal("1.5E+3"), Ok(d("1500")));
        assert_eq!(parse_json_decimal("9.7e-7"), Ok(d("0.00000097")));
        // 0.1 + 0.2 style noise is kept as written, not as a float would have it.
        assert_eq!(
            parse_json_decimal("0.000001899999999999994"),
            Ok(d("0.000001899999999999994"))
        );
        for bad in [
            "", "\"\"", "null", "true", "\"abc\"", "[1]", "1e99999", "--1", "1.2.3", "e",
        ] {
            assert!(parse_json_decimal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn units_round_to_the_nearest_unit() {
        assert_eq!(coins_to_units(d("6.25"), 8), Some(625_000_000));
        assert_eq!(coins_to_units(d("11.3455414"), 8), Some(1_134_554_140));
        assert_eq!(coins_to_units(d("0.000000005"), 8), Some(0));
        assert_eq!(coins_to_units(d("0.000000015"), 8), Some(2));
        assert_eq!(coins_to_units(d("-1"), 8), None);
        assert_eq!(coins_to_units(d("1e20"), 8), None);
        assert_eq!(coins_to_units(d("1"), 40), None);
    }

    #[test]
    fn inverse_prices() {
        assert_eq!(btc_price(d("0.5"), false), Ok(d("0.5")));
        assert_eq!(btc_price(d("50000"), true), Ok(d("0.00002")));
        assert!(btc_price(Decimal::ZERO, true).is_err());
        assert!(btc_price(d("-1"), false).is_err());
    }
}
