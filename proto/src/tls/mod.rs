//! TLS for every hop, from PEM files, shared by every server and client: one place reads the
//! files named by `--tls-cert`, `--tls-key` and `--tls-ca`, so that they mean the same
//! everywhere.
//!
//! - [`TlsCerts`]: a cluster process's certificate, key and CA, as rustls server and client
//!   configs, re-read when the files change ([`TlsCerts::watch`]) so that rotating
//!   certificates needs no restart: new connections use the new files, open ones go on.
//! - [`incoming`]: the accept side of every server we run, plaintext or TLS: handshakes run
//!   beside the accept loop under a deadline, and each connection carries the peer's verified
//!   certificate as a [`PeerInfo`](crate::peer::PeerInfo).
//! - [`connector`]: the dial side between cluster processes, with the current client config
//!   and a check of the role the server's certificate names.
//! - [`ClientTls`]: what the client library and `kvctl` trust and present (tonic's own TLS).
//!
//! We accept and dial TLS ourselves rather than through tonic's `tls_config`, which takes a
//! fixed config: a reload would otherwise mean a restart.

mod accept;
mod dial;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::peer::{CertIdentity, CertRole};

pub use accept::{incoming, Accepted, HANDSHAKE_TIMEOUT, MAX_HANDSHAKES};
pub use dial::{channel, connector, TlsConnector};

/// The three files of a process's TLS setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate (PEM), signed by the CA; intermediates may follow it.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA certificates this process trusts (PEM; several during a CA rotation).
    pub ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM {what}")]
    NotPem { path: PathBuf, what: &'static str },
    #[error("--tls-cert, --tls-key and --tls-ca go together: {0} missing")]
    Incomplete(&'static str),
    #[error("{path}: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{path} is a certificate for {found}; this process needs one for the {needed} role (kvctl certs create writes one per role)")]
    WrongRole {
        path: PathBuf,
        found: String,
        needed: CertRole,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = read(path)?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(TlsError::NotPem {
            path: path.to_owned(),
            what,
        });
    }
    Ok(bytes)
}

fn certs_of(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NotPem {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The identity a certificate names: the role in its `urn:kv:role:` SAN URI and its subject's
/// common name. `None` if the bytes are not a certificate.
pub fn identity_of(der: &[u8]) -> Option<CertIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let role = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => CertRole::from_uri(uri),
                _ => None,
            })
        });
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    Some(CertIdentity { role, name })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether a server asks its clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Between cluster processes: no certificate from the CA, no connection.
    Required,
    /// A router's client API: clients may authenticate with a token instead; a certificate
    /// presented is still verified against the CA.
    Optional,
}

/// One loaded generation of the files.
struct Loaded {
    /// The three files' bytes, to tell whether they changed.
    contents: [Vec<u8>; 3],
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    identity: CertIdentity,
}

/// Counters a process exports as metrics.
#[derive(Debug, Default)]
pub struct TlsStats {
    /// Times the files changed and the new ones were taken.
    pub reloads: AtomicU64,
    /// Times the files changed but could not be used (the old ones stay in use).
    pub reload_failures: AtomicU64,
    /// Connections whose TLS handshake failed or timed out (plaintext clients, certificates
    /// from another CA, port scanners).
    pub handshake_failures: AtomicU64,
}

impl TlsStats {
    /// Appends these counters to a Prometheus text page as `PREFIX_tls_*`.
    pub fn write_metrics(&self, out: &mut String, prefix: &str) {
        use std::fmt::Write;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "tls_reloads_total",
                "Times changed TLS files were taken without a restart.",
                get(&self.reloads),
            ),
            (
                "tls_reload_failures_total",
                "Times changed TLS files could not be used; the old ones stayed in use.",
                get(&self.reload_failures),
            ),
            (
                "tls_handshake_failures_total",
                "Connections whose TLS handshake failed or timed out (plaintext, another CA, scans).",
                get(&self.handshake_failures),
            ),
        ] {
            let _ = writeln!(out, "# HELP {prefix}_{name} {help}");
            let _ = writeln!(out, "# TYPE {prefix}_{name} counter");
            let _ = writeln!(out, "{prefix}_{name} {value}");
        }
    }
}

/// A cluster process's TLS material, as server and client configs, reloaded when the files
/// change.
pub struct TlsCerts {
    files: TlsFiles,
    client_auth: ClientAuth,
    /// The role this process's own certificate must name, checked on every load so that a
    /// rotation to the wrong file is refused rather than served.
    own_role: Option<CertRole>,
    // std RwLock: held only to clone two `Arc`s or swap them, never across an await.
    current: RwLock<Arc<Loaded>>,
    /// Contents that failed to load, so a broken file is reported once, not every poll.
    last_failed: RwLock<Option<[Vec<u8>; 3]>>,
    pub stats: TlsStats,
}

impl std::fmt::Debug for TlsCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCerts")
            .field("files", &self.files)
            .field("client_auth", &self.client_auth)
            .field("own_role", &self.own_role)
            .finish_non_exhaustive()
    }
}

impl TlsCerts {
    /// Reads the files and builds the configs; an error names the file at fault.
    pub fn load(
        files: TlsFiles,
        client_auth: ClientAuth,
        own_role: Option<CertRole>,
    ) -> Result<Arc<TlsCerts>, TlsError> {
        let contents = read_all(&files)?;
        let loaded = build(&files, contents, client_auth, own_role)?;
        Ok(Arc::new(TlsCerts {
            files,
            client_auth,
            own_role,
            current: RwLock::new(Arc::new(loaded)),
            last_failed: RwLock::new(None),
            stats: TlsStats::default(),
        }))
    }

    fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The config new server connections are accepted with.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current().server.clone()
    }

    /// The config new connections to other cluster processes are made with.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current().client.clone()
    }

    /// What this process's own certificate says.
    pub fn identity(&self) -> CertIdentity {
        self.current().identity.clone()
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Re-reads the files; takes them if they changed and load, keeps the old ones (and says
    /// why, once per change) if they do not. `Ok(true)` when new files were taken.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let contents = read_all(&self.files)?;
        if contents == self.current().contents {
            return Ok(false);
        }
        match build(
            &self.files,
            contents.clone(),
            self.client_auth,
            self.own_role,
        ) {
            Ok(loaded) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificates reloaded");
                Ok(true)
            }
            Err(e) => {
                let mut failed = self.last_failed.write().unwrap_or_else(|p| p.into_inner());
                if failed.as_ref() != Some(&contents) {
                    self.stats.reload_failures.fetch_add(1, Ordering::Relaxed);
                    *failed = Some(contents);
                }
                Err(e)
            }
        }
    }

    /// Polls the files every `every` until `stop` completes. A rotation writes three files
    /// one after another: a poll that sees a new certificate with the old key fails to load,
    /// keeps the old pair in use, and the next poll takes the complete new set.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut reported: Option<String> = None;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.reload_if_changed() {
                Ok(_) => reported = None,
                Err(e) => {
                    let why = e.to_string();
                    if reported.as_deref() != Some(why.as_str()) {
                        tracing::warn!(error = %why, "new TLS files not taken; the old ones stay in use");
                        reported = Some(why);
                    }
                }
            }
        }
    }
}

fn read_all(files: &TlsFiles) -> Result<[Vec<u8>; 3], TlsError> {
    Ok([
        read_pem(&files.cert, "certificate")?,
        read_pem(&files.key, "private key")?,
        read_pem(&files.ca, "CA certificate")?,
    ])
}

fn build(
    files: &TlsFiles,
    contents: [Vec<u8>; 3],
    client_auth: ClientAuth,
    own_role: Option<CertRole>,
) -> Result<Loaded, TlsError> {
    let chain = certs_of(&files.cert, &contents[0])?;
    let key =
        PrivateKeyDer::from_pem_slice(&contents[1]).map_err(|e| TlsError::BadCertificate {
            path: files.key.clone(),
            message: format!("no usable private key: {e}"),
        })?;
    let mut roots = RootCertStore::empty();
    for ca in certs_of(&files.ca, &contents[2])? {
        roots.add(ca).map_err(|e| TlsError::BadCertificate {
            path: files.ca.clone(),
            message: e.to_string(),
        })?;
    }
    let identity = identity_of(&chain[0]).ok_or_else(|| TlsError::BadCertificate {
        path: files.cert.clone(),
        message: "not an X.509 certificate".into(),
    })?;
    if let Some(needed) = own_role {
        if identity.role != Some(needed) {
            return Err(TlsError::WrongRole {
                path: files.cert.clone(),
                found: identity
                    .role
                    .map_or("no role".to_string(), |r| format!("the {r} role")),
                needed,
            });
        }
    }
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
    let verifier = match client_auth {
        ClientAuth::Required => verifier.build(),
        ClientAuth::Optional => verifier.allow_unauthenticated().build(),
    }
    .map_err(|e| TlsError::BadCertificate {
        path: files.ca.clone(),
        message: e.to_string(),
    })?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| TlsError::BadCertificate {
            path: files.key.clone(),
            message: format!("does not go with {}: {e}", files.cert.display()),
        })?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        contents,
        server: Arc::new(server),
        client: Arc::new(client),
        identity,
    })
}

impl TlsFiles {
    /// The files from three optional flags: all three, none (`Ok(None)`), or an error naming
    /// the one missing.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca })),
            (None, _, _) => Err(TlsError::Incomplete("--tls-cert")),
            (_, None, _) => Err(TlsError::Incomplete("--tls-key")),
            (_, _, None) => Err(TlsError::Incomplete("--tls-ca")),
        }
    }
}

/// A client's TLS setup: the CA to trust, and optionally a certificate to present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientTls {
    pub fn config(&self) -> Result<ClientTlsConfig, TlsError> {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_pem(&self.ca, "CA certificate")?));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(
                read_pem(cert, "certificate")?,
                read_pem(key, "private key")?,
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A CA and role certificates made in memory, written to a temp dir, for the tests of this
    //! module and its children.

    use std::path::Path;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

    use super::*;

    pub struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pub pem: String,
    }

    impl Ca {
        pub fn new(name: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Ca {
                pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        /// A leaf for `role` (no role URI when `None`), valid for localhost and 127.0.0.1.
        pub fn leaf(&self, role: Option<CertRole>, cn: &str) -> (String, String) {
            let mut params =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            if let Some(role) = role {
                params
                    .subject_alt_names
                    .push(SanType::URI(role.uri().try_into().unwrap()));
            }
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }

        /// Writes a leaf and this CA as `NAME.pem`, `NAME-key.pem`, `NAME-ca.pem` in `dir`.
        pub fn write(&self, dir: &Path, name: &str, role: Option<CertRole>) -> TlsFiles {
            let (cert, key) = self.leaf(role, name);
            let files = TlsFiles {
                cert: dir.join(format!("{name}.pem")),
                key: dir.join(format!("{name}-key.pem")),
                ca: dir.join(format!("{name}-ca.pem")),
            };
            std::fs::write(&files.cert, cert).unwrap();
            std::fs::write(&files.key, key).unwrap();
            std::fs::write(&files.ca, &self.pem).unwrap();
            files
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Ca;
    use super::*;

    #[test]
    fn a_certificate_names_its_role_and_common_name() {
        let ca = Ca::new("test ca");
        let (cert, _) = ca.leaf(Some(CertRole::Router), "router-7");
        let der = certs_of(Path::new("x"), cert.as_bytes()).unwrap();
        let id = identity_of(&der[0]).unwrap();
        assert_eq!(id.role, Some(CertRole::Router));
        assert_eq!(id.name, "router-7");
        let (cert, _) = ca.leaf(None, "plain");
        let der = certs_of(Path::new("x"), cert.as_bytes()).unwrap();
        assert_eq!(identity_of(&der[0]).unwrap().role, None);
        assert!(identity_of(b"garbage").is_none());
    }

    #[test]
    fn load_checks_the_own_role_and_that_key_and_certificate_match() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("ca");
        let files = ca.write(dir.path(), "node", Some(CertRole::Node));
        assert!(TlsCerts::load(files.clone(), ClientAuth::Required, Some(CertRole::Node)).is_ok());
        let err = TlsCerts::load(files.clone(), ClientAuth::Required, Some(CertRole::Router))
            .unwrap_err();
        assert!(matches!(err, TlsError::WrongRole { .. }), "{err}");
        assert!(err.to_string().contains("node role"), "{err}");

        let other = ca.write(dir.path(), "other", Some(CertRole::Node));
        let mismatched = TlsFiles {
            key: other.key,
            ..files
        };
        let err = TlsCerts::load(mismatched, ClientAuth::Required, None).unwrap_err();
        assert!(err.to_string().contains("does not go with"), "{err}");
    }

    #[test]
    fn a_change_is_taken_a_broken_one_is_not_and_the_old_stays() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("ca");
        let files = ca.write(dir.path(), "node", Some(CertRole::Node));
        let certs =
            TlsCerts::load(files.clone(), ClientAuth::Required, Some(CertRole::Node)).unwrap();
        assert!(!certs.reload_if_changed().unwrap());
        let before = certs.server_config();

        // A new certificate without its key: refused, the old pair stays.
        let (cert, key) = ca.leaf(Some(CertRole::Node), "node-2");
        std::fs::write(&files.cert, &cert).unwrap();
        assert!(certs.reload_if_changed().is_err());
        assert!(certs.reload_if_changed().is_err());
        assert_eq!(certs.stats.reload_failures.load(Ordering::Relaxed), 1);
        assert!(Arc::ptr_eq(&before, &certs.server_config()));
        assert_eq!(certs.identity().name, "node");

        std::fs::write(&files.key, &key).unwrap();
        assert!(certs.reload_if_changed().unwrap());
        assert_eq!(certs.identity().name, "node-2");
        assert_eq!(certs.stats.reloads.load(Ordering::Relaxed), 1);
        assert!(!Arc::ptr_eq(&before, &certs.server_config()));
    }
}
