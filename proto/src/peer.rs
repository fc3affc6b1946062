//! Who is at the other end of a connection, as its TLS certificate says.
//!
//! Servers accept connections through [`crate::tls`], which reads the peer's certificate once
//! per connection (not per request) and attaches a [`PeerInfo`] to every request on it. The
//! node's role checks and the router's authentication read it from there with
//! [`PeerInfo::of`].

use std::net::SocketAddr;
use std::sync::Arc;

/// The role a certificate was issued for, named by its subject alternative name
/// `urn:kv:role:ROLE` (`kvctl certs create` writes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertRole {
    Node,
    Router,
    Client,
}

impl CertRole {
    pub fn name(self) -> &'static str {
        match self {
            CertRole::Node => "node",
            CertRole::Router => "router",
            CertRole::Client => "client",
        }
    }

    /// The role named by a SAN URI such as `urn:kv:role:node`; `None` for other URIs.
    pub fn from_uri(uri: &str) -> Option<CertRole> {
        match uri.strip_prefix(ROLE_URI_PREFIX)? {
            "node" => Some(CertRole::Node),
            "router" => Some(CertRole::Router),
            "client" => Some(CertRole::Client),
            _ => None,
        }
    }

    /// The SAN URI that names this role.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.name())
    }
}

impl std::fmt::Display for CertRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The prefix of the SAN URI that names a certificate's role.
pub const ROLE_URI_PREFIX: &str = "urn:kv:role:";

/// What a verified peer certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// `None` when the certificate (signed by the cluster's CA) names no role we know.
    pub role: Option<CertRole>,
    /// The subject's common name: a user name for client certificates.
    pub name: String,
}

/// Attached to every request a server receives: the peer's address, and its verified
/// certificate when the connection is TLS and the peer presented one.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub addr: Option<SocketAddr>,
    pub cert: Option<Arc<CertIdentity>>,
}

impl PeerInfo {
    /// The peer of a request, when it came through one of our servers.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&PeerInfo> {
        request.extensions().get::<PeerInfo>()
    }

    /// The certificate's role, if the peer presented a certificate naming one.
    pub fn role(&self) -> Option<CertRole> {
        self.cert.as_ref().and_then(|c| c.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_uris_round_trip_and_others_are_none() {
        for role in [CertRole::Node, CertRole::Router, CertRole::Client] {
            assert_eq!(CertRole::from_uri(&role.uri()), Some(role));
        }
        assert_eq!(CertRole::from_uri("urn:kv:role:admin"), None);
        assert_eq!(CertRole::from_uri("https://example.com"), None);
    }
}
