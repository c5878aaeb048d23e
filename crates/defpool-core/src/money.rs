//! Money in smallest units (satoshis, litoshis, …): exact parsing and formatting, and exact
//! pro-rata splits. Floats never touch an amount.

/// Why an amount string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("`{0}` is not a decimal amount")]
    Syntax(String),
    #[error("`{0}` has more than {1} decimal places")]
    TooPrecise(String, u8),
    #[error("`{0}` is too large")]
    Overflow(String),
}

/// Parse a non-negative decimal amount (`"12.5"`) into smallest units with `decimals` places.
pub fn parse_units(s: &str, decimals: u8) -> Result<u64, AmountError> {
    let syntax = || AmountError::Syntax(s.to_string());
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err(syntax());
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax());
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > decimals as usize {
        return Err(AmountError::TooPrecise(s.to_string(), decimals));
    }
    let overflow = || AmountError::Overflow(s.to_string());
    let scale = 10u64.checked_pow(decimals as u32).ok_or_else(overflow)?;
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| overflow())?
    };
    let frac_units: u64 = if frac.is_empty() {
        0
    } else {
        let digits: u64 = frac.parse().map_err(|_| syntax())?;
        digits * 10u64.pow((decimals as usize - frac.len()) as u32)
    };
    whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(frac_units))
        .ok_or_else(overflow)
}

/// Format smallest units as a decimal with exactly `decimals` places (`1250000000, 8` →
/// `"12.50000000"`). Negative amounts (ledger balances) keep their sign.
pub fn format_units(units: i128, decimals: u8) -> String {
    let scale = 10i128.pow(decimals as u32);
    let sign = if units < 0 { "-" } else { "" };
    let abs = units.unsigned_abs();
    let scale = scale as u128;
    if decimals == 0 {
        return format!("{sign}{abs}");
    }
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = decimals as usize
    )
}

/// Split `total` units in proportion to `weights`, exactly: every unit is handed out. Each share
/// gets `floor(total·w/Σw)`; the units left over go one each to the largest fractional
/// remainders, ties to the lower index, so the result is deterministic. All-zero weights get
/// nothing and the whole total is returned as the undistributed remainder.
pub fn split_pro_rata(total: u64, weights: &[u128]) -> (Vec<u64>, u64) {
    let sum: u128 = weights.iter().sum();
    if sum == 0 {
        return (vec![0; weights.len()], total);
    }
    let mut shares = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    let mut handed = 0u64;
    for (i, &w) in weights.iter().enumerate() {
        // total < 2^64 and w <= sum, so floor(total·w/sum) <= total; the product is done in
        // two halves to stay inside u128 for any weights.
        let (q, r) = mul_div_rem(total as u128, w, sum);
        shares.push(q as u64);
        handed += q as u64;
        remainders.push((r, i));
    }
    let mut left = total - handed;
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter() {
        if left == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    (shares, 0)
}

/// `(a·b) / d` and `(a·b) % d` for `a < 2^64`, any `b <= d`, without overflowing u128.
fn mul_div_rem(a: u128, b: u128, d: u128) -> (u128, u128) {
    if let Some(p) = a.checked_mul(b) {
        return (p / d, p % d);
    }
    // Long multiplication-division, bit by bit over `a` (at most 64 bits).
    let (mut q, mut r) = (0u128, 0u128);
    let (bq, br) = (b / d, b % d);
    for bit in (0..64).rev() {
        q <<= 1;
        // r < d, so doubling needs care: r*2 may overflow u128 only if d > 2^127.
        let (r2, carry) = r.overflowing_add(r);
        r = r2;
        if carry || r >= d {
            r = r.wrapping_sub(d);
            q += 1;
        }
        if (a >> bit) & 1 == 1 {
            q += bq;
            let (r2, carry) = r.overflowing_add(br);
            r = r2;
            if carry || r >= d {
                r = r.wrapping_sub(d);
                q += 1;
            }
        }
    }
    (q, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_and_format() {
        assert_eq!(parse_units("12.5", 8), Ok(1_250_000_000));
        assert_eq!(parse_units("0.00000001", 8), Ok(1));
        assert_eq!(parse_units(".5", 8), Ok(50_000_000));
        assert_eq!(parse_units("7", 0), Ok(7));
        assert_eq!(parse_units("1.000000000", 8), Ok(100_000_000));
        assert!(matches!(
            parse_units("0.000000001", 8),
            Err(AmountError::TooPrecise(..))
        ));
        assert!(matches!(parse_units("1e5", 8), Err(AmountError::Syntax(_))));
        assert!(matches!(parse_units("-1", 8), Err(AmountError::Syntax(_))));
        assert!(matches!(parse_units("", 8), Err(AmountError::Syntax(_))));
        assert!(matches!(
            parse_units("999999999999", 8),
            Err(AmountError::Overflow(_))
        ));
        assert_eq!(format_units(1_250_000_000, 8), "12.50000000");
        assert_eq!(format_units(-1, 8), "-0.00000001");
        assert_eq!(format_units(5, 0), "5");
    }

    #[test]
    fn split_examples() {
        assert_eq!(split_pro_rata(10, &[1, 1, 1]), (vec![4, 3, 3], 0));
        assert_eq!(split_pro_rata(10, &[0, 0]), (vec![0, 0], 10));
        assert_eq!(
            split_pro_rata(7, &[u128::MAX / 2, u128::MAX / 2]),
            (vec![4, 3], 0)
        );
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(units in 0u64..u64::MAX / 2, decimals in 0u8..=8) {
            prop_assert_eq!(parse_units(&format_units(units as i128, decimals), decimals), Ok(units));
        }

        #[test]
        fn split_hands_out_every_unit_fairly(total in any::<u64>(), weights in prop::collection::vec(any::<u128>(), 1..20)) {
            let weights: Vec<u128> = weights.iter().map(|w| w >> 8).collect();
            let sum: u128 = weights.iter().sum();
            let (shares, left) = split_pro_rata(total, &weights);
            if sum == 0 {
                prop_assert_eq!(left, total);
            } else {
                prop_assert_eq!(left, 0);
                prop_assert_eq!(shares.iter().map(|&s| s as u128).sum::<u128>(), total as u128);
                for (s, w) in shares.iter().zip(&weights) {
                    let (exact, _) = mul_div_rem(total as u128, *w, sum);
                    // Each share is its exact pro-rata part rounded down, or one unit more.
                    prop_assert!(*s as u128 == exact || *s as u128 == exact + 1);
                }
            }
        }

        #[test]
        fn mul_div_rem_matches_wide_arithmetic(a in any::<u64>(), b in any::<u128>(), d in 1u128..) {
            let b = b % d;
            let (q, r) = mul_div_rem(a as u128, b, d);
            let wide = primitive_types::U256::from(a) * primitive_types::U256::from(b);
            prop_assert_eq!(primitive_types::U256::from(q) * primitive_types::U256::from(d) + primitive_types::U256::from(r), wide);
            prop_assert!(r < d);
        }
    }
}
