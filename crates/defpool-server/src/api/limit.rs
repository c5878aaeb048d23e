//! Per-client-IP token buckets for the public endpoints.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// A bucket holds up to `burst` requests and refills at `per_sec`; a request takes one.
/// Amounts are in millionths of a request so refill needs no floats.
pub struct RateLimiter {
    per_sec: u64,
    capacity: u64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    micros: u64,
    at: Instant,
}

const ONE: u64 = 1_000_000;
/// Above this many tracked clients, full buckets are forgotten (they equal a new one).
const MAX_TRACKED: usize = 10_000;

impl RateLimiter {
    pub fn new(per_sec: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_sec: u64::from(per_sec.max(1)),
            capacity: u64::from(burst.max(1)) * ONE,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `ip`'s bucket, or says in how many whole seconds one is back.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > MAX_TRACKED {
            let (per_sec, capacity) = (self.per_sec, self.capacity);
            buckets.retain(|_, b| refill(b, now, per_sec, capacity) < capacity);
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            micros: self.capacity,
            at: now,
        });
        let micros = refill(bucket, now, self.per_sec, self.capacity);
        *bucket = Bucket { micros, at: now };
        if micros >= ONE {
            bucket.micros -= ONE;
            Ok(())
        } else {
            let missing = ONE - micros;
            let per_sec_micros = self.per_sec * ONE;
            Err(missing.div_ceil(per_sec_micros).max(1))
        }
    }
}

fn refill(b: &Bucket, now: Instant, per_sec: u64, capacity: u64) -> u64 {
    let elapsed_us = now.saturating_duration_since(b.at).as_micros();
    // per_sec requests per second = per_sec millionths of a request per microsecond.
    let added = elapsed_us.saturating_mul(u128::from(per_sec));
    let total = u128::from(b.micros).saturating_add(added);
    total.min(u128::from(capacity)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_refill_rate() {
        let l = RateLimiter::new(2, 3);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(ip, t0), Ok(()));
        }
        assert_eq!(l.check(ip, t0), Err(1));
        // Another client has its own bucket.
        assert_eq!(l.check(other, t0), Ok(()));
        // Half a second at 2/s refills one request, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.check(ip, t1), Ok(()));
        assert!(l.check(ip, t1).is_err());
        // Long idle: back to the full burst, not more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(l.check(ip, t2), Ok(()));
        }
        assert!(l.check(ip, t2).is_err());
    }

    #[test]
    fn retry_after_covers_the_missing_part() {
        let l = RateLimiter::new(1, 1);
        let ip: IpAddr = "::1".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(l.check(ip, t0), Ok(()));
        assert_eq!(l.check(ip, t0), Err(1));
        let slow = RateLimiter::new(1, 1);
        assert_eq!(slow.check(ip, t0), Ok(()));
        assert_eq!(slow.check(ip, t0 + Duration::from_millis(900)), Err(1));
    }
}
