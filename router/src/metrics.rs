//! Request and error counters, rendered as Prometheus text for `/metrics`.
//!
//! Plain atomics indexed by method: no registry, no locks, nothing to configure.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The public API's methods, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Delete,
    Scan,
    BatchGet,
    BatchPut,
    CreateKeyspace,
    DropKeyspace,
    ListKeyspaces,
    DescribeKeyspace,
    SetDirectory,
    GetDirectory,
    ListDirectory,
    RemoveDirectory,
    Locate,
    CreateUser,
    DeleteUser,
    ListUsers,
    SetUserRoles,
    IssueToken,
    RevokeToken,
    CreateRole,
    DeleteRole,
    ListRoles,
    Grant,
    RevokeGrant,
    SetAuthEnabled,
    WhoAmI,
}

/// How many methods are counted.
const METHODS: usize = 28;

impl Method {
    /// Every method, in the order they are rendered.
    pub const ALL: [Method; METHODS] = [
        Method::Get,
        Method::Put,
        Method::Delete,
        Method::Scan,
        Method::BatchGet,
        Method::BatchPut,
        Method::CreateKeyspace,
        Method::DropKeyspace,
        Method::ListKeyspaces,
        Method::DescribeKeyspace,
        Method::SetDirectory,
        Method::GetDirectory,
        Method::ListDirectory,
        Method::RemoveDirectory,
        Method::Locate,
        Method::CreateUser,
        Method::DeleteUser,
        Method::ListUsers,
        Method::SetUserRoles,
        Method::IssueToken,
        Method::RevokeToken,
        Method::CreateRole,
        Method::DeleteRole,
        Method::ListRoles,
        Method::Grant,
        Method::RevokeGrant,
        Method::SetAuthEnabled,
        Method::WhoAmI,
    ];

    /// The gRPC method name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Get => "Get",
            Method::Put => "Put",
            Method::Delete => "Delete",
            Method::Scan => "Scan",
            Method::BatchGet => "BatchGet",
            Method::BatchPut => "BatchPut",
            Method::CreateKeyspace => "CreateKeyspace",
            Method::DropKeyspace => "DropKeyspace",
            Method::ListKeyspaces => "ListKeyspaces",
            Method::DescribeKeyspace => "DescribeKeyspace",
            Method::SetDirectory => "SetDirectory",
            Method::GetDirectory => "GetDirectory",
            Method::ListDirectory => "ListDirectory",
            Method::RemoveDirectory => "RemoveDirectory",
            Method::Locate => "Locate",
            Method::CreateUser => "CreateUser",
            Method::DeleteUser => "DeleteUser",
            Method::ListUsers => "ListUsers",
            Method::SetUserRoles => "SetUserRoles",
            Method::IssueToken => "IssueToken",
            Method::RevokeToken => "RevokeToken",
            Method::CreateRole => "CreateRole",
            Method::DeleteRole => "DeleteRole",
            Method::ListRoles => "ListRoles",
            Method::Grant => "Grant",
            Method::RevokeGrant => "RevokeGrant",
            Method::SetAuthEnabled => "SetAuthEnabled",
            Method::WhoAmI => "WhoAmI",
        }
    }
}

/// Why a request was refused by auth: the `reason` label of `kvrouter_auth_denied_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// Auth is on and the request carried neither a token nor a client certificate.
    NoCredential,
    MalformedToken,
    /// Never issued, or revoked.
    UnknownToken,
    /// A known token id with the wrong secret.
    InvalidToken,
    ExpiredToken,
    /// A client certificate (or a deleted user's token) naming no user of the map.
    UnknownUser,
    /// Authenticated, but no role allows the action on the target.
    Forbidden,
}

const DENY_REASONS: usize = 7;

impl DenyReason {
    pub const ALL: [DenyReason; DENY_REASONS] = [
        DenyReason::NoCredential,
        DenyReason::MalformedToken,
        DenyReason::UnknownToken,
        DenyReason::InvalidToken,
        DenyReason::ExpiredToken,
        DenyReason::UnknownUser,
        DenyReason::Forbidden,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DenyReason::NoCredential => "no_credential",
            DenyReason::MalformedToken => "malformed_token",
            DenyReason::UnknownToken => "unknown_token",
            DenyReason::InvalidToken => "invalid_token",
            DenyReason::ExpiredToken => "expired_token",
            DenyReason::UnknownUser => "unknown_user",
            DenyReason::Forbidden => "forbidden",
        }
    }
}

/// The router's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [AtomicU64; METHODS],
    errors: [AtomicU64; METHODS],
    /// Node RPC attempts that failed and were retried on another (or the same) replica.
    pub node_retries: AtomicU64,
    /// Cluster maps loaded (a new epoch was installed).
    pub map_updates: AtomicU64,
    /// Failed attempts to read the cluster map from a node.
    pub map_fetch_errors: AtomicU64,
    /// The epoch of the map in use (0: none yet).
    pub map_epoch: AtomicU64,
    /// Requests refused by authentication or authorization, by [`DenyReason`].
    auth_denied: [AtomicU64; DENY_REASONS],
}

impl Metrics {
    /// Counts one finished request, and whether it failed.
    pub fn record(&self, method: Method, failed: bool) {
        let i = method as usize;
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one request refused by auth.
    pub fn count_denied(&self, reason: DenyReason) {
        self.auth_denied[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP kvrouter_requests_total Requests handled, by method."
        );
        let _ = writeln!(out, "# TYPE kvrouter_requests_total counter");
        for m in Method::ALL {
            let v = self.requests[m as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "kvrouter_requests_total{{method=\"{}\"}} {v}",
                m.name()
            );
        }
        let _ = writeln!(
            out,
            "# HELP kvrouter_errors_total Requests answered with an error, by method."
        );
        let _ = writeln!(out, "# TYPE kvrouter_errors_total counter");
        for m in Method::ALL {
            let v = self.errors[m as usize].load(Ordering::Relaxed);
            let _ = writeln!(out, "kvrouter_errors_total{{method=\"{}\"}} {v}", m.name());
        }
        let singles = [
            (
                "kvrouter_node_retries_total",
                "counter",
                "Node RPC attempts retried.",
                &self.node_retries,
            ),
            (
                "kvrouter_map_updates_total",
                "counter",
                "Cluster maps installed.",
                &self.map_updates,
            ),
            (
                "kvrouter_map_fetch_errors_total",
                "counter",
                "Failed cluster map reads.",
                &self.map_fetch_errors,
            ),
            (
                "kvrouter_map_epoch",
                "gauge",
                "Epoch of the cluster map in use.",
                &self.map_epoch,
            ),
        ];
        for (name, kind, help, value) in singles {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP kvrouter_auth_denied_total Requests refused by authentication or authorization, by reason."
        );
        let _ = writeln!(out, "# TYPE kvrouter_auth_denied_total counter");
        for r in DenyReason::ALL {
            let v = self.auth_denied[r as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "kvrouter_auth_denied_total{{reason=\"{}\"}} {v}",
                r.label()
            );
        }
        let (dropped, written, failed) = crate::audit::counters();
        for (name, help, value) in [
            (
                "kvrouter_audit_records_total",
                "Audit log lines written.",
                written,
            ),
            (
                "kvrouter_audit_dropped_total",
                "Audit records dropped because the writer fell behind.",
                dropped,
            ),
            (
                "kvrouter_audit_write_errors_total",
                "Audit records lost to failed writes.",
                failed,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_by_method() {
        let m = Metrics::default();
        m.record(Method::Get, false);
        m.record(Method::Get, true);
        m.record(Method::BatchPut, false);
        m.record(Method::CreateKeyspace, true);
        let text = m.render();
        assert!(text.contains("kvrouter_errors_total{method=\"CreateKeyspace\"} 1\n"));
        assert!(text.contains("kvrouter_requests_total{method=\"Get\"} 2\n"));
        assert!(text.contains("kvrouter_errors_total{method=\"Get\"} 1\n"));
        assert!(text.contains("kvrouter_requests_total{method=\"BatchPut\"} 1\n"));
        assert!(text.contains("kvrouter_map_epoch 0\n"));
        m.count_denied(DenyReason::Forbidden);
        let text = m.render();
        assert!(text.contains("kvrouter_auth_denied_total{reason=\"forbidden\"} 1\n"));
        assert!(text.contains("kvrouter_auth_denied_total{reason=\"no_credential\"} 0\n"));
        assert!(text.contains("# TYPE kvrouter_audit_dropped_total counter\n"));
    }
}
