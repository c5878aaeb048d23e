//! `defpool admin`: a thin HTTP client of the server's admin endpoints. The API address and the
//! admin token come from the config's `[server]` (`api_listen`, `admin_token`), or from `--url`
//! and `DEFPOOL_ADMIN_TOKEN` (which keeps the token out of `ps`). Prints the API's JSON; on an
//! API error prints its code and message and exits 1; a bad config exits 78.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use defpool_config::EX_CONFIG;
use serde_json::{json, Value};

/// The environment variable holding the admin token.
pub const TOKEN_ENV: &str = "DEFPOOL_ADMIN_TOKEN";

#[derive(Args)]
pub struct AdminArgs {
    /// Configuration file with the `[server]` section (its `api_listen` and `admin_token`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The server's API, `http://host:port` (instead of the config's `api_listen`).
    #[arg(long)]
    url: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// The whitelist: list (default), add, enable, disable, remove.
    Coins {
        #[command(subcommand)]
        action: Option<CoinsAction>,
    },
    /// X / Y / dwell: show (default) or set.
    Switching {
        #[command(subcommand)]
        action: Option<SwitchingAction>,
    },
    /// Pin a coin for its algorithm group (beats the engine).
    Pin { algorithm: String, coin: String },
    /// Remove an algorithm's pin.
    Unpin { algorithm: String },
    /// Upstream terms: list (default), set, remove.
    Upstreams {
        #[command(subcommand)]
        action: Option<UpstreamsAction>,
    },
    /// Record an external pool's payout (attributed by PROP over the period, minus the fee).
    Payout {
        #[arg(long)]
        coin: String,
        #[arg(long)]
        upstream: String,
        /// Period start, Unix milliseconds.
        #[arg(long)]
        from: u64,
        /// Period end, Unix milliseconds.
        #[arg(long)]
        to: u64,
        /// Smallest units of the coin.
        #[arg(long)]
        amount: i64,
        /// The pool's reference (txid, statement id): recording it twice posts once.
        #[arg(long)]
        reference: String,
    },
    /// The audit log, newest first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum CoinsAction {
    List,
    /// Whitelist a coin, enabled.
    Add {
        ticker: String,
    },
    Enable {
        ticker: String,
    },
    Disable {
        ticker: String,
    },
    Remove {
        ticker: String,
    },
}

#[derive(Subcommand)]
enum SwitchingAction {
    Show,
    /// Change any of X, Y, dwell (the others stay as they are).
    Set {
        /// X: a challenger must be this many percent better (decimal, 0..1000).
        #[arg(long)]
        x: Option<String>,
        /// Y: for this many minutes (≤ 1440).
        #[arg(long)]
        y: Option<u32>,
        /// Minimum minutes on a coin (≤ 10080).
        #[arg(long)]
        dwell: Option<u32>,
    },
}

#[derive(Subcommand)]
enum UpstreamsAction {
    List,
    /// Register an upstream or replace its terms.
    Set {
        name: String,
        #[arg(long)]
        coin: String,
        /// sv2, sv1 or adapter.
        #[arg(long)]
        protocol: String,
        /// The upstream's fee, basis points.
        #[arg(long, default_value_t = 0)]
        fee_bps: u32,
        /// solo, pplns, pps or prop.
        #[arg(long)]
        scheme: String,
        #[arg(long, default_value_t = 0)]
        switch_cost_secs: u32,
        /// Where it is (kept in the terms' details; never a secret).
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        disabled: bool,
    },
    Remove {
        name: String,
    },
}

/// One admin request.
struct Call {
    method: &'static str,
    path: String,
    body: Option<Value>,
}

fn call(method: &'static str, path: impl Into<String>, body: Option<Value>) -> Call {
    Call {
        method,
        path: path.into(),
        body,
    }
}

/// Path segments are percent-encoded (tickers and names are plain, but be safe).
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn calls(cmd: &AdminCommand) -> Vec<Call> {
    match cmd {
        AdminCommand::Coins { action } => match action.as_ref().unwrap_or(&CoinsAction::List) {
            CoinsAction::List => vec![call("GET", "/api/admin/coins", None)],
            CoinsAction::Add { ticker } | CoinsAction::Enable { ticker } => vec![call(
                "PUT",
                format!("/api/admin/coins/{}", seg(ticker)),
                Some(json!({"enabled": true})),
            )],
            CoinsAction::Disable { ticker } => vec![call(
                "PUT",
                format!("/api/admin/coins/{}", seg(ticker)),
                Some(json!({"enabled": false})),
            )],
            CoinsAction::Remove { ticker } => vec![call(
                "DELETE",
                format!("/api/admin/coins/{}", seg(ticker)),
                None,
            )],
        },
        AdminCommand::Switching { action } => {
            match action.as_ref().unwrap_or(&SwitchingAction::Show) {
                SwitchingAction::Show => vec![call("GET", "/api/admin/switching", None)],
                // Read, change what was given, write: the body carries all three.
                SwitchingAction::Set { .. } => vec![
                    call("GET", "/api/admin/switching", None),
                    call("PUT", "/api/admin/switching", None),
                ],
            }
        }
        AdminCommand::Pin { algorithm, coin } => vec![call(
            "PUT",
            format!("/api/admin/pins/{}", seg(algorithm)),
            Some(json!({ "coin": coin })),
        )],
        AdminCommand::Unpin { algorithm } => vec![call(
            "DELETE",
            format!("/api/admin/pins/{}", seg(algorithm)),
            None,
        )],
        AdminCommand::Upstreams { action } => {
            match action.as_ref().unwrap_or(&UpstreamsAction::List) {
                UpstreamsAction::List => vec![call("GET", "/api/admin/upstreams", None)],
                UpstreamsAction::Set {
                    name,
                    coin,
                    protocol,
                    fee_bps,
                    scheme,
                    switch_cost_secs,
                    address,
                    disabled,
                } => vec![call(
                    "PUT",
                    format!("/api/admin/upstreams/{}", seg(name)),
                    Some(json!({
                        "coin": coin, "protocol": protocol, "fee_bps": fee_bps,
                        "payout_scheme": scheme, "switch_cost_secs": switch_cost_secs,
                        "details": address.as_ref().map(|a| json!({"address": a})).unwrap_or(json!({})),
                        "enabled": !disabled,
                    })),
                )],
                UpstreamsAction::Remove { name } => vec![call(
                    "DELETE",
                    format!("/api/admin/upstreams/{}", seg(name)),
                    None,
                )],
            }
        }
        AdminCommand::Payout {
            coin,
            upstream,
            from,
            to,
            amount,
            reference,
        } => vec![call(
            "POST",
            "/api/admin/payouts",
            Some(
                json!({"coin": coin, "upstream": upstream, "from_ms": from, "to_ms": to,
                        "amount": amount, "reference": reference}),
            ),
        )],
        AdminCommand::Audit { limit } => {
            vec![call("GET", format!("/api/admin/audit?limit={limit}"), None)]
        }
    }
}

/// Where to send requests: `host:port` and the token.
struct Target {
    addr: String,
    token: String,
}

fn target(args: &AdminArgs) -> Result<Target, String> {
    // Read (and drop) the token variable first: the config loader would take any `DEFPOOL_`
    // variable for a config key and refuse this one.
    let env_token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
    std::env::remove_var(TOKEN_ENV);
    let server = match &args.config {
        Some(file) => {
            let valid = defpool_config::load(file)
                .map_err(|e| format!("invalid config {}: {e}", file.display()))?;
            Some(valid.config.server.ok_or_else(|| {
                format!(
                    "invalid config {}: server: the file has no [server] section",
                    file.display()
                )
            })?)
        }
        None => None,
    };
    let addr = match (&args.url, &server) {
        (Some(url), _) => {
            let rest = url
                .strip_prefix("http://")
                .ok_or_else(|| format!("--url {url}: only http://host:port is supported"))?;
            rest.trim_end_matches('/').to_string()
        }
        (None, Some(s)) => s.api_listen.to_string(),
        (None, None) => return Err("give --config FILE (with [server]) or --url".into()),
    };
    let token = env_token
        .or_else(|| {
            server
                .as_ref()
                .and_then(|s| s.admin_token.as_ref())
                .map(|t| t.expose().to_string())
        })
        .ok_or_else(|| format!("no admin token: set {TOKEN_ENV} or give --config"))?;
    Ok(Target { addr, token })
}

/// What an HTTP exchange gave.
struct Reply {
    status: u16,
    body: String,
}

/// One HTTP/1.1 request (`Connection: close`), read to the end.
fn request(t: &Target, method: &str, path: &str, body: Option<&Value>) -> Result<Reply, String> {
    let mut s = TcpStream::connect(&t.addr).map_err(|e| format!("cannot reach {}: {e}", t.addr))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        t.addr,
        t.token,
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("sending to {}: {e}", t.addr))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("reading from {}: {e}", t.addr))?;
    parse(&raw).ok_or_else(|| format!("{} answered something that is not HTTP", t.addr))
}

fn parse(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.lines().next()?.split(' ').nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut body = &raw[split + 4..];
    let mut out = Vec::new();
    if chunked {
        while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&body[..end]).trim(), 16).ok()?;
            if size == 0 {
                break;
            }
            let start = end + 2;
            out.extend_from_slice(body.get(start..start + size)?);
            body = body.get(start + size + 2..).unwrap_or_default();
        }
    } else {
        out.extend_from_slice(body);
    }
    Some(Reply {
        status,
        body: String::from_utf8_lossy(&out).to_string(),
    })
}

/// The API's error as `code: message`, else the status and body.
fn api_error(r: &Reply) -> String {
    serde_json::from_str::<Value>(&r.body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(format!(
                "{}: {}",
                e.get("code")?.as_str()?,
                e.get("message")?.as_str()?
            ))
        })
        .unwrap_or_else(|| format!("HTTP {}: {}", r.status, r.body.trim()))
}

pub fn run(args: &AdminArgs) -> ExitCode {
    let t = match target(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("defpool admin: {e}");
            return ExitCode::from(EX_CONFIG as u8);
        }
    };
    let mut last: Option<Value> = None;
    for c in calls(&args.command) {
        let body = match (&args.command, c.method, &last) {
            (
                AdminCommand::Switching {
                    action: Some(SwitchingAction::Set { x, y, dwell }),
                },
                "PUT",
                Some(current),
            ) => {
                let mut b = current.clone();
                if let Some(x) = x {
                    b["hysteresis_percent"] = json!(x);
                }
                if let Some(y) = y {
                    b["hysteresis_minutes"] = json!(y);
                }
                if let Some(d) = dwell {
                    b["min_dwell_minutes"] = json!(d);
                }
                Some(b)
            }
            _ => c.body.clone(),
        };
        let reply = match request(&t, c.method, &c.path, body.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("defpool admin: {e}");
                return ExitCode::from(1);
            }
        };
        if !(200..300).contains(&reply.status) {
            eprintln!("defpool admin: {}", api_error(&reply));
            return ExitCode::from(1);
        }
        last = Some(serde_json::from_str(&reply.body).unwrap_or(Value::String(reply.body)));
    }
    if let Some(v) = last {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_plain_and_chunked() {
        let r = parse(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "{}"));
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!(r.body, "{\"a\":1}");
        assert!(parse(b"garbage").is_none());
    }

    #[test]
    fn errors_show_the_api_code() {
        let r = Reply {
            status: 404,
            body: r#"{"error":{"code":"unknown-coin","message":"`X` is not a coin"}}"#.into(),
        };
        assert_eq!(api_error(&r), "unknown-coin: `X` is not a coin");
        let r = Reply {
            status: 502,
            body: "bad gateway".into(),
        };
        assert_eq!(api_error(&r), "HTTP 502: bad gateway");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }
}
