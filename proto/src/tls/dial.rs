//! The dial side between cluster processes: TCP, then TLS with the current client config, then
//! a check that the server's certificate names the role we meant to reach.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use super::{identity_of, TlsCerts};
use crate::peer::CertRole;

/// Dials with the [`TlsCerts`] current at the time of each new connection, so that a
/// connection made after a rotation presents the new certificate.
#[derive(Clone)]
pub struct TlsConnector {
    certs: Arc<TlsCerts>,
    /// The role the server's certificate must name.
    expect: Option<CertRole>,
}

/// A connector to servers whose certificates name `expect` (any role when `None`).
pub fn connector(certs: Arc<TlsCerts>, expect: Option<CertRole>) -> TlsConnector {
    TlsConnector { certs, expect }
}

/// A lazily connected channel to `endpoint` (an `http://HOST:PORT` endpoint: TLS is ours, not
/// tonic's), through TLS when `tls` is given.
pub fn channel(
    endpoint: Endpoint,
    tls: Option<&Arc<TlsCerts>>,
    expect: Option<CertRole>,
) -> Channel {
    match tls {
        Some(certs) => endpoint.connect_with_connector_lazy(connector(certs.clone(), expect)),
        None => endpoint.connect_lazy(),
    }
}

type Dialed = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = Dialed;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Dialed>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.certs.client_config();
        let expect = self.expect;
        Box::pin(async move {
            let invalid =
                |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {why}"));
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let name = ServerName::try_from(host.clone()).map_err(|e| invalid(&e.to_string()))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            // Only a latency setting: a socket that refuses it still works.
            let _ = tcp.set_nodelay(true);
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            if let Some(expect) = expect {
                let found = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| identity_of(leaf))
                    .and_then(|id| id.role);
                if found != Some(expect) {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{host}:{port} presents a certificate for {}, not for a {expect}",
                            found.map_or("no role".to_string(), |r| format!("a {r}"))
                        ),
                    ));
                }
            }
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tonic::transport::server::Connected;
    use tower_service::Service;

    use super::super::testing::Ca;
    use super::super::{incoming, ClientAuth, TlsCerts};
    use super::*;

    struct Server {
        uri: http::Uri,
        accepted: Pin<Box<dyn futures::Stream<Item = io::Result<super::super::Accepted>> + Send>>,
        certs: Arc<TlsCerts>,
    }

    async fn server(ca: &Ca, dir: &std::path::Path, role: CertRole) -> Server {
        let files = ca.write(dir, "server", Some(role));
        let certs = TlsCerts::load(files, ClientAuth::Required, Some(role)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        Server {
            uri,
            accepted: incoming(listener, Some(certs.clone())),
            certs,
        }
    }

    fn client(ca: &Ca, dir: &std::path::Path, name: &str, role: CertRole) -> Arc<TlsCerts> {
        let files = ca.write(dir, name, Some(role));
        TlsCerts::load(files, ClientAuth::Required, Some(role)).unwrap()
    }

    #[tokio::test]
    async fn mutual_tls_carries_the_client_role_and_checks_the_server_role() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("ca");
        let mut server = server(&ca, dir.path(), CertRole::Node).await;
        let router = client(&ca, dir.path(), "router-1", CertRole::Router);

        let mut dialed = connector(router.clone(), Some(CertRole::Node))
            .call(server.uri.clone())
            .await
            .unwrap();
        let mut accepted = server.accepted.next().await.unwrap().unwrap();
        let peer = accepted.connect_info();
        let cert = peer.cert.expect("a verified client certificate");
        assert_eq!(cert.role, Some(CertRole::Router));
        assert_eq!(cert.name, "router-1");
        assert!(peer.addr.is_some());

        // Bytes flow both ways through the TLS streams.
        let io = dialed.inner_mut();
        io.write_all(b"ping").await.unwrap();
        io.flush().await.unwrap();
        let mut buf = [0u8; 4];
        accepted.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        // Dialing a node but finding a router: refused by the dialer.
        let err = connector(router, Some(CertRole::Router))
            .call(server.uri.clone())
            .await
            .expect_err("a node certificate where a router was expected");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("not for a router"), "{err}");
        drop(server.certs);
    }

    #[tokio::test]
    async fn plaintext_and_foreign_ca_clients_never_reach_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("ca");
        let mut server = server(&ca, dir.path(), CertRole::Node).await;
        let addr = server.uri.authority().unwrap().to_string();

        let mut plain = TcpStream::connect(&addr).await.unwrap();
        plain
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = plain.read_to_end(&mut buf).await;

        let other_dir = tempfile::tempdir().unwrap();
        let stranger = client(
            &Ca::new("other"),
            other_dir.path(),
            "intruder",
            CertRole::Node,
        );
        assert!(connector(stranger, None)
            .call(server.uri.clone())
            .await
            .is_err());

        // Neither was handed to the server; a good client still is.
        let good = client(&ca, dir.path(), "node-2", CertRole::Node);
        let _dialed = connector(good, Some(CertRole::Node))
            .call(server.uri.clone())
            .await
            .unwrap();
        let accepted = server.accepted.next().await.unwrap().unwrap();
        assert_eq!(accepted.connect_info().cert.unwrap().name, "node-2");
        assert_eq!(
            server
                .certs
                .stats
                .handshake_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }

    #[tokio::test]
    async fn connections_after_a_rotation_present_the_new_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("ca");
        let mut server = server(&ca, dir.path(), CertRole::Node).await;
        let files = ca.write(dir.path(), "client", Some(CertRole::Node));
        let certs =
            TlsCerts::load(files.clone(), ClientAuth::Required, Some(CertRole::Node)).unwrap();
        let mut connector = connector(certs.clone(), Some(CertRole::Node));

        let _first = connector.call(server.uri.clone()).await.unwrap();
        let first = server.accepted.next().await.unwrap().unwrap();
        assert_eq!(first.connect_info().cert.unwrap().name, "client");

        let (cert, key) = ca.leaf(Some(CertRole::Node), "client-rotated");
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        assert!(certs.reload_if_changed().unwrap());
        let _second = connector.call(server.uri.clone()).await.unwrap();
        let second = server.accepted.next().await.unwrap().unwrap();
        assert_eq!(second.connect_info().cert.unwrap().name, "client-rotated");
    }
}
