//! The floor under the switch benchmark: how long this machine takes to deliver one message to
//! each of N loopback TCP connections when the sender does nothing else.
//!
//! The switch figure of `scripts/bench-proxy.sh` is the time from the switch command until each
//! of 10,000 miners has read its new job. Most of that is the kernel's loopback path (a send per
//! connection, the receive, the reader's wake-up), which no proxy change removes. This example
//! measures it with the proxy taken out, in one process on loopback:
//!
//! * `one-thread`: one thread writes the message to every socket in a loop (blocking `write`),
//!   the cheapest possible sender;
//! * `two-threads`: the same split over two threads, the cheapest sender using both cores;
//! * `task-per-connection`: a Tokio runtime with one task per connection, all woken by one
//!   `watch` change, each writing its message: the proxy's shape (a session task per miner)
//!   without building any job.
//!
//! The receiving side is a second process (this example re-run as a child, as the miners are a
//! process of their own in the benchmark): a Tokio runtime with one task per connection, as in
//! `defpool loadgen miners`, which records when each connection's message has fully arrived
//! (CLOCK_MONOTONIC, the same clock in both processes). Every runtime has two worker threads.
//! Output per round: p50/p99/max delivery time, and each side's CPU time per message.
//!
//! `cargo run --release -p defpool-loadgen --example fanout_floor -- [CONNECTIONS] [ROUNDS] [BYTES]`
//! (defaults 10000, 5, 400). Loopback only; bounded in connections, rounds and time.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

const MAX_CONNECTIONS: usize = 15_000;
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// CLOCK_MONOTONIC in nanoseconds: comparable between the two processes.
fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime only writes into the struct we pass.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

fn raise_fds(n: usize) {
    let want = n as u64 + 64;
    let limit = defpool_loadgen::raise_fd_limit(want).expect("raise the fd limit");
    assert!(limit >= want, "file-descriptor limit {limit} is too low");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--receive") {
        let addr: SocketAddr = args[1].parse().expect("address");
        let n: usize = args[2].parse().expect("connections");
        let bytes: usize = args[3].parse().expect("bytes");
        return receive(addr, n, bytes);
    }
    let n: usize = args
        .first()
        .map_or(10_000, |a| a.parse().expect("CONNECTIONS"));
    let rounds: usize = args.get(1).map_or(5, |a| a.parse().expect("ROUNDS"));
    let bytes: usize = args.get(2).map_or(400, |a| a.parse().expect("BYTES"));
    assert!(
        (1..=MAX_CONNECTIONS).contains(&n),
        "1..={MAX_CONNECTIONS} connections"
    );
    assert!((1..=100).contains(&rounds), "1..=100 rounds");
    assert!((1..=65_536).contains(&bytes), "1..=65536 bytes");
    raise_fds(n);

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("address");
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .args([
            "--receive",
            &addr.to_string(),
            &n.to_string(),
            &bytes.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the receiving process");
    let mut to_child = child.stdin.take().expect("child stdin");
    let mut from_child = BufReader::new(child.stdout.take().expect("child stdout")).lines();
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        let (server, _) = listener.accept().expect("accept");
        server.set_nodelay(true).expect("nodelay");
        senders.push(server);
    }
    let message = vec![b'x'; bytes];
    println!(
        "fanout_floor: {n} loopback connections, {bytes}-byte message, {rounds} rounds per sender"
    );
    let mut round_trip = |what: &str, round: usize, send: &mut dyn FnMut()| {
        std::thread::sleep(Duration::from_millis(300));
        let cpu0 = cpu_seconds();
        writeln!(to_child, "{}", monotonic_ns()).expect("tell the receiver");
        to_child.flush().expect("tell the receiver");
        send();
        let line = from_child
            .next()
            .expect("the receiver's report")
            .expect("the receiver's report");
        let sender_us = (cpu_seconds() - cpu0) * 1e6 / n as f64;
        println!("  {what:<20} round {round}: {line}, sender CPU {sender_us:5.2} us per message");
    };

    // One thread, blocking writes.
    for round in 1..=rounds {
        round_trip("one-thread", round, &mut || {
            for s in &mut senders {
                s.write_all(&message).expect("write");
            }
        });
    }

    // Two threads, half the sockets each: the cheapest sender that uses both cores.
    for round in 1..=rounds {
        round_trip("two-threads", round, &mut || {
            let (a, b) = senders.split_at_mut(n / 2);
            std::thread::scope(|scope| {
                for half in [a, b] {
                    let message = &message;
                    scope.spawn(move || {
                        for s in half {
                            s.write_all(message).expect("write");
                        }
                    });
                }
            });
        });
    }

    // A task per connection, woken together.
    let writers = runtime();
    let (go, _) = watch::channel(0u64);
    writers.block_on(async {
        for s in senders {
            s.set_nonblocking(true).expect("nonblocking");
            let mut s = tokio::net::TcpStream::from_std(s).expect("tokio stream");
            let mut go = go.subscribe();
            let message = message.clone();
            tokio::spawn(async move {
                while go.changed().await.is_ok() {
                    if s.write_all(&message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    for round in 1..=rounds {
        round_trip("task-per-connection", round, &mut || {
            go.send_modify(|r| *r += 1)
        });
    }
    drop(to_child);
    let _ = child.wait();
}

/// The receiving process: N connections, one task each; per round, reads the round's start from
/// stdin and prints the delivery percentiles once all N messages have arrived.
fn receive(addr: SocketAddr, n: usize, bytes: usize) {
    raise_fds(n);
    let rt = runtime();
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<u64>();
    rt.block_on(async {
        for _ in 0..n {
            let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let arrived_tx = arrived_tx.clone();
            tokio::spawn(async move {
                let mut client = client;
                let mut buf = vec![0u8; bytes];
                while client.read_exact(&mut buf).await.is_ok() {
                    let _ = arrived_tx.send(monotonic_ns());
                }
            });
        }
    });
    let (start_tx, mut starts) = mpsc::unbounded_channel::<u64>();
    let start_tx = Arc::new(start_tx);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            let Ok(t0) = line.trim().parse() else { return };
            if start_tx.send(t0).is_err() {
                return;
            }
        }
    });
    let mut out = std::io::stdout().lock();
    loop {
        let Some(t0) = rt.block_on(starts.recv()) else {
            return;
        };
        let cpu0 = cpu_seconds();
        let mut times = Vec::with_capacity(n);
        while times.len() < n {
            match rt.block_on(async { tokio::time::timeout(ROUND_TIMEOUT, arrived.recv()).await }) {
                Ok(Some(at)) => times.push(at.saturating_sub(t0) as f64 / 1e6),
                _ => panic!("{} of {n} messages arrived in time", times.len()),
            }
        }
        times.sort_by(f64::total_cmp);
        let _ = writeln!(
            out,
            "p50 {:6.1} ms  p99 {:6.1} ms  max {:6.1} ms, receiver CPU {:5.2} us per message",
            percentile(&times, 50.0),
            percentile(&times, 99.0),
            times.last().copied().unwrap_or(0.0),
            (cpu_seconds() - cpu0) * 1e6 / n as f64
        );
        let _ = out.flush();
    }
}
