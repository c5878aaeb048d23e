//! Work arithmetic: SQLite's 32-bit limbs, decimal text from PostgreSQL, and the PPLNS window.

use std::collections::BTreeMap;

use primitive_types::U256;

use crate::error::{corrupt, StoreError};
use crate::types::PplnsWindow;

const LIMB_MASK: u128 = 0xFFFF_FFFF;

/// `work` as four 32-bit limbs, least significant first.
pub(crate) fn limbs(work: u128) -> [i64; 4] {
    [
        (work & LIMB_MASK) as i64,
        ((work >> 32) & LIMB_MASK) as i64,
        ((work >> 64) & LIMB_MASK) as i64,
        ((work >> 96) & LIMB_MASK) as i64,
    ]
}

/// Limb sums (as SQLite's SUM returns them; each may exceed 32 bits) back to a `u128`.
pub(crate) fn from_limb_sums(sums: [i64; 4]) -> Result<u128, StoreError> {
    let mut total: u128 = 0;
    for (i, s) in sums.into_iter().enumerate() {
        let s = u128::try_from(s).map_err(|_| corrupt("work limb", format!("negative {s}")))?;
        let shifted = if s == 0 {
            0
        } else {
            let shift = 32 * i as u32;
            // `s << shift` must not lose bits.
            if shift > 0 && s.leading_zeros() < shift {
                return Err(StoreError::WorkOverflow { what: "a sum" });
            }
            s << shift
        };
        total = total
            .checked_add(shifted)
            .ok_or(StoreError::WorkOverflow { what: "a sum" })?;
    }
    Ok(total)
}

/// Decimal text (PostgreSQL NUMERIC cast to text) to `u128`. `NULL` sums are zero.
pub(crate) fn parse_decimal(what: &'static str, text: Option<&str>) -> Result<u128, StoreError> {
    match text {
        None => Ok(0),
        Some(t) => {
            // NUMERIC(39,0) has no fraction; a bare NUMERIC sum may print `123` or `123.0…`.
            let int = t.split('.').next().unwrap_or(t);
            int.parse::<u128>().map_err(|e| {
                if int.len() >= 39 && int.bytes().all(|b| b.is_ascii_digit()) {
                    StoreError::WorkOverflow { what }
                } else {
                    corrupt(what, format!("`{t}`: {e}"))
                }
            })
        }
    }
}

/// Walks minutes newest first, each with its work per user, until `window` is covered. The
/// minute that crosses the boundary contributes pro rata.
#[derive(Debug)]
pub(crate) struct WindowWalk {
    window: u128,
    out: PplnsWindow,
}

impl WindowWalk {
    pub(crate) fn new(window: u128) -> WindowWalk {
        WindowWalk {
            window,
            out: PplnsWindow {
                complete: window == 0,
                ..PplnsWindow::default()
            },
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.out.complete
    }

    /// Adds one minute (called newest first). `users` is that minute's work per user.
    pub(crate) fn minute(
        &mut self,
        minute_ms: u64,
        users: BTreeMap<String, u128>,
    ) -> Result<(), StoreError> {
        if self.done() {
            return Ok(());
        }
        let mut minute_total: u128 = 0;
        for w in users.values() {
            minute_total = minute_total
                .checked_add(*w)
                .ok_or(StoreError::WorkOverflow { what: "a minute" })?;
        }
        if minute_total == 0 {
            return Ok(());
        }
        self.out.oldest_minute_ms = Some(minute_ms);
        let need = self.window - self.out.total;
        let taken = if minute_total <= need {
            users
        } else {
            prorate(users, minute_total, need)
        };
        for (user, w) in taken {
            if w == 0 {
                continue;
            }
            let slot = self.out.per_user.entry(user).or_insert(0);
            *slot += w; // bounded by the window
            self.out.total += w;
        }
        if self.out.total == self.window {
            self.out.complete = true;
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> PplnsWindow {
        self.out
    }
}

/// Scales `users` (summing to `total`) down to exactly `target < total`: floors of
/// `w * target / total`, then one unit each to the largest remainders (ties by user name).
fn prorate(users: BTreeMap<String, u128>, total: u128, target: u128) -> BTreeMap<String, u128> {
    let total256 = U256::from(total);
    let mut out = BTreeMap::new();
    let mut remainders = Vec::with_capacity(users.len());
    let mut assigned: u128 = 0;
    for (user, w) in users {
        let product = U256::from(w) * U256::from(target);
        let share = (product / total256).low_u128();
        let rem = product % total256;
        assigned += share;
        remainders.push((rem, user.clone()));
        out.insert(user, share);
    }
    let mut left = target - assigned;
    // Largest remainder first; among equals, the smaller user name.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    for (_, user) in remainders {
        if left == 0 {
            break;
        }
        *out.get_mut(&user).expect("inserted above") += 1;
        left -= 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limbs_round_trip() {
        for w in [
            0u128,
            1,
            u32::MAX as u128,
            1 << 64,
            u128::MAX,
            (1 << 100) + 12345,
        ] {
            assert_eq!(from_limb_sums(limbs(w)).unwrap(), w);
        }
        // Unnormalised sums still add up.
        let a = limbs(u128::MAX / 3);
        let b = limbs(u128::MAX / 3);
        let sums = [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]];
        assert_eq!(from_limb_sums(sums).unwrap(), u128::MAX / 3 * 2);
        let c = limbs(u128::MAX);
        assert!(matches!(
            from_limb_sums([c[0], c[1], c[2], c[3] + 1]),
            Err(StoreError::WorkOverflow { .. })
        ));
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal("w", None).unwrap(), 0);
        assert_eq!(parse_decimal("w", Some("42")).unwrap(), 42);
        assert_eq!(
            parse_decimal("w", Some(&u128::MAX.to_string())).unwrap(),
            u128::MAX
        );
        assert!(matches!(
            parse_decimal("w", Some("340282366920938463463374607431768211456")),
            Err(StoreError::WorkOverflow { .. })
        ));
    }

    #[test]
    fn prorating_is_exact() {
        let users: BTreeMap<String, u128> = [
            ("a".to_string(), 1),
            ("b".to_string(), 1),
            ("c".to_string(), 1),
        ]
        .into_iter()
        .collect();
        let out = prorate(users, 3, 2);
        assert_eq!(out.values().sum::<u128>(), 2);
        assert_eq!(out["a"], 1);
        assert_eq!(out["b"], 1);
        assert_eq!(out["c"], 0);

        let big: BTreeMap<String, u128> = [
            ("x".to_string(), u128::MAX / 2),
            ("y".to_string(), u128::MAX / 2),
        ]
        .into_iter()
        .collect();
        let out = prorate(big, u128::MAX - 1, u128::MAX / 3);
        assert_eq!(out.values().sum::<u128>(), u128::MAX / 3);
    }

    #[test]
    fn window_walk() {
        let mut walk = WindowWalk::new(150);
        walk.minute(120_000, [("a".to_string(), 100)].into_iter().collect())
            .unwrap();
        assert!(!walk.done());
        walk.minute(
            60_000,
            [("a".to_string(), 50), ("b".to_string(), 50)]
                .into_iter()
                .collect(),
        )
        .unwrap();
        assert!(walk.done());
        let w = walk.finish();
        assert_eq!(w.total, 150);
        assert_eq!(w.per_user["a"], 125);
        assert_eq!(w.per_user["b"], 25);
        assert_eq!(w.oldest_minute_ms, Some(60_000));
        assert!(w.complete);
    }
}
