//! What the server examples share: a free loopback port and a control client's start.

use defpool_control::{encode, Message, ProxyId};
use defpool_core::secret::Secret;
use defpool_core::Algorithm;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A loopback port free right now (the config refuses port 0).
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

/// Connects to the control plane as `proxy_id` and sends its Hello; the Welcome is the
/// caller's to read.
pub async fn hello(
    control: std::net::SocketAddr,
    proxy_id: String,
    token: String,
    algorithm: Algorithm,
) -> Result<(OwnedReadHalf, OwnedWriteHalf), String> {
    let stream = TcpStream::connect(control)
        .await
        .map_err(|e| format!("{proxy_id}: connect: {e}"))?;
    stream.set_nodelay(true).ok();
    let (read, mut write) = stream.into_split();
    let mut line = encode(&Message::Hello {
        proxy_id: ProxyId(proxy_id.clone()),
        token: Secret::new(token),
        group: "default".into(),
        algorithms: vec![algorithm],
        last_acked_sequence: 0,
    });
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .map_err(|e| format!("{proxy_id}: Hello: {e}"))?;
    Ok((read, write))
}
