//! How long the proxy takes to answer a share: from handling the submit to its answer written,
//! the outbox commit included. A lock-free histogram every session records into, read by the
//! status endpoint; two snapshots subtract, so a benchmark can take the figures of a window.
//!
//! Buckets are logarithmic with four steps per power of two (a bucket's upper bound is less than
//! 25 % above its lower bound), from 1 µs to beyond a minute: 128 counters, 1 KiB per proxy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Steps per power of two.
const STEPS: u32 = 4;
const BUCKETS: usize = 128;

/// The bucket of a duration in microseconds: 0..8 exact for 0..8 µs, then four per octave.
fn bucket_of(us: u64) -> usize {
    if us < 2 * STEPS as u64 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros(); // ≥ 3
    let step = (us >> (octave - 2)) & 0b11; // the two bits below the leading one
    let b = (octave - 1) * STEPS + step as u32;
    (b as usize).min(BUCKETS - 1)
}

/// The largest duration (µs) a bucket holds: the figure a percentile reports.
fn bucket_upper(b: usize) -> u64 {
    if b < 2 * STEPS as usize {
        return b as u64;
    }
    let octave = b as u32 / STEPS + 1;
    let step = (b as u32 % STEPS) as u64;
    let lower = (4 + step) << (octave - 2);
    lower + (1u64 << (octave - 2)) - 1
}

/// Share answer times, recorded concurrently.
pub struct LatencyHistogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.snapshot().count())
            .finish()
    }
}

impl LatencyHistogram {
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// The counts at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencySnapshot {
    counts: Vec<u64>,
}

impl LatencySnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The answers recorded after `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &LatencySnapshot) -> LatencySnapshot {
        LatencySnapshot {
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
        }
    }

    /// The `p`-th percentile (0 < p ≤ 100) in microseconds, as its bucket's upper bound; `None`
    /// without answers.
    pub fn percentile_us(&self, p: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((p / 100.0) * n as f64).ceil().clamp(1.0, n as f64) as u64;
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_upper(b));
            }
        }
        None
    }

    /// Non-empty buckets as `(upper bound in µs, count)`, for the status endpoint: a client
    /// subtracts two of these to get a window's figures.
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(b, c)| (bucket_upper(b), *c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_tile_the_microseconds_without_gaps() {
        let mut expected_lower = 0u64;
        for b in 0..BUCKETS - 1 {
            let upper = bucket_upper(b);
            assert!(upper >= expected_lower, "bucket {b}");
            assert_eq!(bucket_of(expected_lower), b, "lower bound of bucket {b}");
            assert_eq!(bucket_of(upper), b, "upper bound of bucket {b}");
            expected_lower = upper + 1;
        }
        // The last bucket takes everything beyond.
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert!(bucket_upper(BUCKETS - 2) > 60_000_000, "covers a minute");
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let h = LatencyHistogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 1000);
        let p50 = s.percentile_us(50.0).unwrap();
        let p99 = s.percentile_us(99.0).unwrap();
        assert!((500..=595).contains(&p50), "{p50}");
        assert!((990..=1023).contains(&p99), "{p99}");
        assert_eq!(s.percentile_us(100.0), Some(1023));
        assert_eq!(
            LatencyHistogram::default().snapshot().percentile_us(50.0),
            None
        );
    }

    #[test]
    fn a_window_is_the_difference_of_two_snapshots() {
        let h = LatencyHistogram::default();
        for _ in 0..100 {
            h.record(Duration::from_millis(20));
        }
        let before = h.snapshot();
        for _ in 0..100 {
            h.record(Duration::from_micros(900));
        }
        let window = h.snapshot().since(&before);
        assert_eq!(window.count(), 100);
        assert!(window.percentile_us(99.0).unwrap() < 1100);
        assert!(h.snapshot().percentile_us(99.0).unwrap() >= 20_000);
        assert_eq!(window.buckets().len(), 1);
    }

    proptest! {
        /// A percentile is never below the exact one and at most one bucket (< 25 %) above it.
        #[test]
        fn percentile_is_the_exact_one_rounded_up_to_its_bucket(
            mut values in proptest::collection::vec(0u64..10_000_000, 1..300),
            p in 1.0f64..100.0,
        ) {
            let h = LatencyHistogram::default();
            for v in &values {
                h.record(Duration::from_micros(*v));
            }
            values.sort_unstable();
            let rank = ((p / 100.0) * values.len() as f64).ceil().max(1.0) as usize;
            let exact = values[rank - 1];
            let got = h.snapshot().percentile_us(p).unwrap();
            prop_assert!(got >= exact, "{got} < {exact}");
            prop_assert!((got as f64) < exact as f64 * 1.25 + 1.0, "{got} ≫ {exact}");
        }
    }
}
