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
    use super::super::{incoming, ClientAuth, TlsCerts, TlsFiles};
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

    /// A CA rotation, step by step: both CAs trusted everywhere, every certificate reissued
    /// from the new CA, the old CA dropped. A connection works at every step and after it.
    #[tokio::test]
    async fn a_ca_is_rotated_through_a_bundle_of_both() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (Ca::new("old"), Ca::new("new"));
        let server_files = old.write(dir.path(), "server", Some(CertRole::Node));
        let client_files = old.write(dir.path(), "client", Some(CertRole::Node));
        let server = TlsCerts::load(server_files.clone(), ClientAuth::Required, None).unwrap();
        let client = TlsCerts::load(client_files.clone(), ClientAuth::Required, None).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: http::Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let mut accepted = incoming(listener, Some(server.clone()));
        let mut dial = connector(client.clone(), Some(CertRole::Node));
        let mut connects = |step: &'static str| {
            let (uri, fut) = (uri.clone(), dial.call(uri.clone()));
            async move {
                fut.await
                    .unwrap_or_else(|e| panic!("{step}: dialing {uri}: {e}"));
            }
        };
        let swap = |files: &TlsFiles, ca: &str, leaf: Option<(String, String)>| {
            std::fs::write(&files.ca, ca).unwrap();
            if let Some((cert, key)) = leaf {
                std::fs::write(&files.key, key).unwrap();
                std::fs::write(&files.cert, cert).unwrap();
            }
        };
        connects("before").await;
        assert!(accepted.next().await.is_some());

        // 1. Both CAs trusted by everyone.
        let bundle = format!("{}{}", old.pem, new.pem);
        swap(&server_files, &bundle, None);
        swap(&client_files, &bundle, None);
        assert!(server.reload_if_changed().unwrap() && client.reload_if_changed().unwrap());
        connects("both trusted").await;
        assert!(accepted.next().await.is_some());

        // 2. Every certificate reissued by the new CA: old and new meet, both trusted.
        swap(
            &server_files,
            &bundle,
            Some(new.leaf(Some(CertRole::Node), "server")),
        );
        assert!(server.reload_if_changed().unwrap());
        connects("server reissued").await;
        assert!(accepted.next().await.is_some());
        swap(
            &client_files,
            &bundle,
            Some(new.leaf(Some(CertRole::Node), "client")),
        );
        assert!(client.reload_if_changed().unwrap());
        connects("all reissued").await;
        assert!(accepted.next().await.is_some());

        // 3. The old CA dropped: only the new one is trusted, and still everything connects.
        swap(&server_files, &new.pem, None);
        swap(&client_files, &new.pem, None);
        assert!(server.reload_if_changed().unwrap() && client.reload_if_changed().unwrap());
        connects("old CA dropped").await;
        assert!(accepted.next().await.is_some());

        // An old-CA certificate is now refused by the server (in TLS 1.3 the client's side of
        // the handshake ends first, so the refusal shows on the server).
        let stale = old.write(dir.path(), "stale", Some(CertRole::Node));
        let stale = TlsCerts::load(stale, ClientAuth::Required, None).unwrap();
        std::fs::write(&stale.files().ca, &new.pem).unwrap();
        assert!(stale.reload_if_changed().unwrap());
        let _ = connector(stale, None).call(uri.clone()).await;
        let handed_over =
            tokio::time::timeout(std::time::Duration::from_millis(500), accepted.next()).await;
        assert!(handed_over.is_err(), "an old-CA client was accepted");
        assert_eq!(
            server
                .stats
                .handshake_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
