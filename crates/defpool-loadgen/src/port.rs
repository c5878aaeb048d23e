//! Loopback ports for servers that another process will bind: tests, the demo and benchmarks
//! pick a port here and write it into a child's config.
//!
//! Asking the kernel for port 0 and closing the socket again is racy in exactly that use: the
//! port comes from the ephemeral range, so until the child binds it any outgoing connection on
//! the machine (an RPC call, a `litecoin-cli` run) may take it as its source port, and the child
//! then fails to listen. Ports here come from just below the ephemeral range instead, which the
//! kernel never hands out on its own, and a process-wide counter keeps two picks in one process
//! apart.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the kernel's ephemeral range starts when `/proc` does not say (Linux's default).
const DEFAULT_EPHEMERAL_LOW: u32 = 32768;
/// The lowest port handed out: above the well-known and common service ports (and the coin
/// daemons' regtest defaults, 18443–19445).
const LOWEST: u32 = 20000;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback TCP port that is free now and outside the kernel's ephemeral range.
pub fn free_loopback_port() -> std::io::Result<u16> {
    let high = ephemeral_low().max(LOWEST + 1000);
    // A start that differs between processes, so consecutive test binaries do not retry the
    // ports their predecessors' children may still hold.
    let _ = NEXT.compare_exchange(
        0,
        start_offset(high - LOWEST) + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    match pick(&NEXT, high) {
        Some(port) => Ok(port),
        // Everything below the ephemeral range is taken: let the kernel choose.
        None => TcpListener::bind("127.0.0.1:0")?
            .local_addr()
            .map(|a| a.port()),
    }
}

/// The first port from `counter` on (one past its value, wrapping within `LOWEST..high`) that
/// binds now; the counter moves past it. `None` after a whole round of taken ports.
fn pick(counter: &AtomicU32, high: u32) -> Option<u16> {
    let span = high - LOWEST;
    (0..span).find_map(|_| {
        let n = counter.fetch_add(1, Ordering::Relaxed) - 1;
        let port = (LOWEST + n % span) as u16;
        TcpListener::bind(("127.0.0.1", port))
            .is_ok()
            .then_some(port)
    })
}

fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_LOW)
}

fn start_offset(span: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (std::process::id().wrapping_mul(7919) ^ nanos) % span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_are_distinct_bindable_and_below_the_ephemeral_range() {
        let low = ephemeral_low();
        let picks: Vec<u16> = (0..50).map(|_| free_loopback_port().unwrap()).collect();
        let distinct: std::collections::HashSet<_> = picks.iter().collect();
        assert_eq!(distinct.len(), picks.len(), "{picks:?}");
        for p in &picks {
            assert!(u32::from(*p) >= LOWEST, "{p}");
            if low > LOWEST + 1000 {
                assert!(
                    u32::from(*p) < low,
                    "{p} is in the ephemeral range from {low}"
                );
            }
            TcpListener::bind(("127.0.0.1", *p)).unwrap();
        }
    }

    #[test]
    fn a_taken_port_is_skipped() {
        // A counter of its own, so the other test's picks cannot move it.
        let high = ephemeral_low().max(LOWEST + 1000);
        let counter = AtomicU32::new(start_offset(high - LOWEST) + 1);
        let first = pick(&counter, high).unwrap();
        // Hold the port the sequence reaches next: the picker must step over it.
        let next = (LOWEST + (u32::from(first) - LOWEST + 1) % (high - LOWEST)) as u16;
        let Ok(_held) = TcpListener::bind(("127.0.0.1", next)) else {
            return; // taken by someone else already: the point is made either way
        };
        let second = pick(&counter, high).unwrap();
        assert_ne!(second, next);
        assert_ne!(second, first);
    }
}
