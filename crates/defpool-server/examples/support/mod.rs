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

/// The real server, started in this process.
pub struct Server {
    pub started: defpool_server::server::Started,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), defpool_server::server::ServerError>>,
}

impl Server {
    /// Starts the server with `config` and waits (up to 30 s) until it listens.
    pub async fn start(config: defpool_config::Validated) -> Result<Server, String> {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(defpool_server::server::run(
            config,
            Some(started_tx),
            async move {
                let _ = stop_rx.await;
            },
        ));
        let started = tokio::time::timeout(std::time::Duration::from_secs(30), started_rx)
            .await
            .map_err(|_| "the server did not start within 30 s".to_string())?
            .map_err(|_| "the server stopped while starting".to_string())?;
        Ok(Server {
            started,
            stop,
            task,
        })
    }

    /// Stops it and waits (up to 30 s) for it to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), self.task).await;
    }
}
