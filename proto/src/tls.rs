//! TLS material from files, shared by every server and client: one place reads the PEM files
//! named by `--tls-cert`, `--tls-key` and `--tls-ca`, so that they mean the same everywhere.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The three files of a process's TLS setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate (PEM), signed by the CA.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA whose certificates this process trusts (PEM).
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
}

fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(TlsError::NotPem {
            path: path.to_owned(),
            what,
        });
    }
    Ok(bytes)
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

    fn identity(&self) -> Result<Identity, TlsError> {
        Ok(Identity::from_pem(
            read_pem(&self.cert, "certificate")?,
            read_pem(&self.key, "private key")?,
        ))
    }

    fn ca(&self) -> Result<Certificate, TlsError> {
        Ok(Certificate::from_pem(read_pem(&self.ca, "CA certificate")?))
    }

    /// A server config presenting this process's certificate and verifying client
    /// certificates against the CA: required when `require_client_cert`, otherwise optional
    /// (clients of a router may authenticate otherwise).
    pub fn server(&self, require_client_cert: bool) -> Result<ServerTlsConfig, TlsError> {
        Ok(ServerTlsConfig::new()
            .identity(self.identity()?)
            .client_ca_root(self.ca()?)
            .client_auth_optional(!require_client_cert))
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
