//! Probing `/health` and `/ready` with a hand-written HTTP/1.0 GET.
//!
//! One request line over a plain `TcpStream` is all the probes need, so the harness carries no
//! HTTP client crate.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one probe may take before it counts as "not answering".
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The HTTP status code of `GET path` on `addr` (`HOST:PORT`), or `None` when nothing answers
/// properly within a few seconds.
pub async fn http_status(addr: &str, path: &str) -> Option<u16> {
    http_get(addr, path).await.map(|(status, _)| status)
}

/// Status code and body of `GET path` on `addr`, or `None` when nothing answers properly.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        // "HTTP/1.1 200 OK"
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(PROBE_TIMEOUT, fut)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_the_status_line() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.0 503 Service Unavailable\r\n\r\nnot yet")
                .await
                .unwrap();
        });
        let got = super::http_get(&addr, "/ready").await;
        assert_eq!(got, Some((503, "not yet".to_string())));
    }

    #[tokio::test]
    async fn nothing_listening_is_none() {
        let addr = crate::ports::free_addr();
        assert_eq!(super::http_status(&addr, "/health").await, None);
    }
}
