//! Shared helpers for the binary's end-to-end tests: child processes that die with the test,
//! free loopback ports, waiting for a port.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, then wait up to 10 s for a clean exit.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn free_port() -> u16 {
    defpool_loadgen::free_loopback_port().unwrap()
}

/// Runs `defpool <args>` with its log (stderr, appended) in `log`.
pub fn defpool(args: &[&str], log: &Path) -> Proc {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Proc(
        Command::new(env!("CARGO_BIN_EXE_defpool"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("defpool starts"),
    )
}

pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to 30 s for `port` to accept connections from `child`, whose log is `log`. Fails at
/// once if the child exits first, and either way with the end of its log, so a CI run says why.
pub fn wait_port_of(child: &mut Child, port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() >= deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            match exited {
                Some(status) => {
                    panic!("exited ({status}) before port {port} opened; its log ends:\n{tail}")
                }
                None => panic!("port {port} never opened; the log ends:\n{tail}"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 request on loopback; the whole response as text.
pub fn http(port: u16, method: &str, path: &str, token: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A proxy's sha256d SV1 port at a tiny test difficulty and one SV1 test pool as its BTC
/// upstream, as config TOML (after a `[proxy]` table).
pub fn sv1_port_and_pool(miner_port: u16, pool_port: u16) -> String {
    format!(
        r#"[[proxy.ports]]
algorithm = "sha256d"
protocol = "sv1"
listen = "127.0.0.1:{miner_port}"
start_difficulty = 0.000001
min_difficulty = 0.000000001
[[upstreams]]
name = "pool"
coin = "BTC"
protocol = "sv1"
url = "stratum+tcp://127.0.0.1:{pool_port}"
username = "proxy"
password = "x"
"#
    )
}
