//! Which certificate roles may call which of the node's services, when the node serves TLS.
//!
//! Mutual TLS proves a caller holds a certificate of the cluster's CA; the role that
//! certificate names decides what it may do. `Raft` moves votes and log entries: only another
//! node may send them. `Node` reads, writes and changes the map on behalf of routers: nodes and
//! routers may call it, a client certificate may not (clients go through a router, which
//! authenticates them). Checked once per call by an interceptor, from the identity the
//! acceptor read once per connection ([`kv_proto::peer::PeerInfo`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kv_proto::peer::{CertRole, PeerInfo};
use kv_proto::{codes, meta};

/// The roles each service admits.
pub const RAFT_ROLES: &[CertRole] = &[CertRole::Node];
pub const NODE_ROLES: &[CertRole] = &[CertRole::Node, CertRole::Router];

/// Calls refused for their caller's certificate, for `/metrics`.
#[derive(Debug, Default)]
pub struct Refused {
    raft_no_certificate: AtomicU64,
    raft_wrong_role: AtomicU64,
    node_no_certificate: AtomicU64,
    node_wrong_role: AtomicU64,
}

impl Refused {
    /// `(service, reason, count)` for every pair.
    pub fn by_reason(&self) -> [(&'static str, &'static str, u64); 4] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("Raft", "no_certificate", get(&self.raft_no_certificate)),
            ("Raft", "wrong_role", get(&self.raft_wrong_role)),
            ("Node", "no_certificate", get(&self.node_no_certificate)),
            ("Node", "wrong_role", get(&self.node_wrong_role)),
        ]
    }
}

/// The interceptor in front of one service.
#[derive(Clone)]
pub struct RoleCheck {
    service: Service,
    /// Off when the node serves plaintext: there is no certificate to check.
    enforce: bool,
    refused: Arc<Refused>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Raft,
    Node,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Raft => "Raft",
            Service::Node => "Node",
        }
    }

    fn allowed(self) -> &'static [CertRole] {
        match self {
            Service::Raft => RAFT_ROLES,
            Service::Node => NODE_ROLES,
        }
    }
}

impl RoleCheck {
    pub fn new(service: Service, enforce: bool, refused: Arc<Refused>) -> RoleCheck {
        RoleCheck {
            service,
            enforce,
            refused,
        }
    }

    /// Why `peer` may not call this service, if it may not.
    fn refusal(&self, peer: Option<&PeerInfo>) -> Option<(&'static str, String)> {
        let allowed = self.service.allowed();
        let names = allowed
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(" or ");
        let service = self.service.name();
        match peer.and_then(|p| p.cert.as_deref()) {
            None => Some((
                "no_certificate",
                format!("the {service} service takes calls from {names} certificates only; this caller presented none"),
            )),
            Some(cert) => match cert.role {
                Some(role) if allowed.contains(&role) => None,
                role => Some((
                    "wrong_role",
                    format!(
                        "the {service} service takes calls from {names} certificates only; this caller's certificate (CN {:?}) is for {}",
                        cert.name,
                        role.map_or("no role".to_string(), |r| format!("the {r} role")),
                    ),
                )),
            },
        }
    }
}

impl tonic::service::Interceptor for RoleCheck {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if !self.enforce {
            return Ok(request);
        }
        let peer = PeerInfo::of(&request);
        let Some((reason, message)) = self.refusal(peer) else {
            return Ok(request);
        };
        let counter = match (self.service, reason) {
            (Service::Raft, "no_certificate") => &self.refused.raft_no_certificate,
            (Service::Raft, _) => &self.refused.raft_wrong_role,
            (Service::Node, "no_certificate") => &self.refused.node_no_certificate,
            (Service::Node, _) => &self.refused.node_wrong_role,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = ?peer.and_then(|p| p.addr), service = self.service.name(), reason, "call refused for its certificate");
        let mut status = tonic::Status::permission_denied(message);
        status.metadata_mut().insert(
            meta::ERROR_CODE,
            tonic::metadata::MetadataValue::from_static(codes::WRONG_ROLE),
        );
        Err(status)
    }
}

#[cfg(test)]
mod tests {
    use kv_proto::peer::CertIdentity;
    use tonic::service::Interceptor;

    use super::*;

    fn call(check: &mut RoleCheck, role: Option<Option<CertRole>>) -> Result<(), tonic::Status> {
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(PeerInfo {
            addr: None,
            cert: role.map(|role| {
                Arc::new(CertIdentity {
                    role,
                    name: "x".into(),
                })
            }),
        });
        check.call(request).map(|_| ())
    }

    #[test]
    fn raft_is_for_nodes_and_node_for_nodes_and_routers() {
        let refused = Arc::new(Refused::default());
        let mut raft = RoleCheck::new(Service::Raft, true, refused.clone());
        let mut node = RoleCheck::new(Service::Node, true, refused.clone());
        assert!(call(&mut raft, Some(Some(CertRole::Node))).is_ok());
        for role in [Some(CertRole::Router), Some(CertRole::Client), None] {
            let err = call(&mut raft, Some(role)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied);
            assert!(err.message().contains("Raft service"), "{}", err.message());
        }
        assert!(call(&mut node, Some(Some(CertRole::Node))).is_ok());
        assert!(call(&mut node, Some(Some(CertRole::Router))).is_ok());
        let err = call(&mut node, Some(Some(CertRole::Client))).unwrap_err();
        assert!(err.message().contains("client role"), "{}", err.message());
        assert_eq!(
            err.metadata().get(meta::ERROR_CODE).unwrap(),
            codes::WRONG_ROLE
        );
        assert!(call(&mut node, None).is_err());
        assert_eq!(
            refused.by_reason().map(|(_, _, n)| n),
            [0, 3, 1, 1],
            "raft: none without a certificate, three wrong roles; node: one each"
        );
        // Without TLS there is nothing to check.
        let mut open = RoleCheck::new(Service::Raft, false, refused);
        assert!(call(&mut open, None).is_ok());
    }
}
