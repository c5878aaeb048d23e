//! Just enough HTTP/1.1 to POST a switch command to the proxy's admin endpoint on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::LoadgenError;

/// `http://host:port/prefix` split into a socket address and a path prefix.
pub(crate) async fn parse_url(url: &str) -> Result<(SocketAddr, String, String), LoadgenError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| LoadgenError::option("admin_url", "must start with http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_string()),
        None => (rest, String::new()),
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| LoadgenError::io(format!("resolving {authority}"), e))?
        .find(|a| a.ip().is_loopback())
        .ok_or_else(|| LoadgenError::NotLoopback {
            what: "admin endpoint",
            addr: authority.to_string(),
        })?;
    Ok((addr, authority.to_string(), path))
}

/// POST `body` as JSON to `url` + `path` with a bearer token; the response status.
pub(crate) async fn post_json(
    url: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Result<u16, LoadgenError> {
    let (addr, host, prefix) = parse_url(url).await?;
    let request = format!(
        "POST {prefix}{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        stream.write_all(request.as_bytes()).await?;
        // Read the status line (the rest, up to 64 KiB, is drained and ignored).
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(2).any(|w| w == b"\r\n") || buf.len() > 65_536 {
                break;
            }
        }
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| {
            LoadgenError::io(
                format!("POST {url}{path}"),
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 10 s"),
            )
        })?
        .map_err(|e| LoadgenError::io(format!("POST {url}{path}"), e))?;
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            LoadgenError::io(
                format!("POST {url}{path}"),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "not an HTTP response: {:?}",
                        line.lines().next().unwrap_or("")
                    ),
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    #[tokio::test]
    async fn posts_with_a_bearer_token() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut r = tokio::io::BufReader::new(s);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let mut body = [0u8; 7];
            r.read_exact(&mut body).await.unwrap();
            r.get_mut()
                .write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            (head, body)
        });
        let status = post_json(&format!("http://{addr}/api"), "/assign", "t0k", "{\"a\":1}")
            .await
            .unwrap();
        assert_eq!(status, 202);
        let (head, body) = server.await.unwrap();
        assert!(head.starts_with("POST /api/assign HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("Authorization: Bearer t0k\r\n"));
        assert_eq!(&body, b"{\"a\":1}");
        assert!(matches!(
            post_json("http://192.0.2.1:80", "/assign", "t", "{}").await,
            Err(LoadgenError::NotLoopback { .. })
        ));
    }
}
