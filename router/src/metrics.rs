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
}

/// How many methods are counted.
const METHODS: usize = 15;

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
    }
}
