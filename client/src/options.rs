//! Per-client and per-call options.
//!
//! Every option struct has public fields and a `Default`, so a call site names only what it
//! changes: `WriteOptions { if_version: Some(3), ..Default::default() }`.

use std::time::Duration;

use kv_proto::kv;

/// How fresh a read must be, or how durable a write must be before it is acknowledged.
/// See the consistency table in the design.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// Reads are linearizable (served by the group leader after a quorum check); writes are
    /// acknowledged once a quorum committed and applied them.
    #[default]
    Strong,
    /// Reads may be served by any replica and may be stale; writes are acknowledged once the
    /// leader accepted them into its log and may be lost if that leader fails first.
    Eventual,
}

impl Consistency {
    /// The protobuf enum value.
    pub(crate) fn to_proto(self) -> i32 {
        match self {
            Consistency::Strong => kv::Consistency::Strong as i32,
            Consistency::Eventual => kv::Consistency::Eventual as i32,
        }
    }
}

/// Options for a whole [`Client`](crate::Client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Time budget of one call, retries and backoff included. Default 5 s.
    /// ([`Client::scan_all`](crate::Client::scan_all) gives each page its own budget.)
    pub timeout: Duration,
    /// How many times a retryable failure is retried (so at most `max_retries + 1` attempts),
    /// as long as the time budget lasts. Default 5.
    pub max_retries: u32,
    /// Longest wait for a TCP connection to a router. Default 2 s.
    pub connect_timeout: Duration,
    /// The first backoff before a retry; it doubles on each further retry. Default 50 ms.
    pub initial_backoff: Duration,
    /// The largest backoff between two attempts. Default 1 s.
    pub max_backoff: Duration,
    /// Carry gets, puts and deletes over one long-lived `MultiStream` call per router, calls
    /// in flight at the same time sharing messages (each still routed, retried and answered
    /// on its own, as soon as it is done). Under load this saves most of the per-call RPC
    /// cost on both sides; a lone call goes out at once, so it adds no wait. Default on; off
    /// sends one unary RPC per call.
    pub coalesce: bool,
    /// TLS for `https://` routers: the CA to trust, and a client certificate to present if
    /// any. `https://` addresses need it; `http://` ones ignore it. Default none.
    pub tls: Option<kv_proto::tls::ClientTls>,
    /// An access token (`kvt_...`, from `kvctl user create` or `kvctl user token`), sent as
    /// `authorization: Bearer <token>` on every call, the shared `MultiStream` included.
    /// Needed when the cluster has authentication on, unless the TLS client certificate
    /// names a user. Default none.
    pub token: Option<AccessToken>,
}

/// An access token, kept out of `Debug` output so that it does not end up in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    /// The token's text, as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for AccessToken {
    fn from(text: String) -> Self {
        AccessToken(text.trim().to_string())
    }
}

impl From<&str> for AccessToken {
    fn from(text: &str) -> Self {
        AccessToken(text.trim().to_string())
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The id part (`kvt_<id>`) names the token without revealing its secret.
        let shown: String = self.0.chars().take(20).collect();
        write!(f, "AccessToken({shown}…)")
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(5),
            max_retries: 5,
            connect_timeout: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            coalesce: true,
            tls: None,
            token: None,
        }
    }
}

/// Options of a read ([`Client::get_with`](crate::Client::get_with),
/// [`Client::batch_get`](crate::Client::batch_get)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// The keyspace; empty means the default keyspace.
    pub keyspace: String,
    /// Strong (default) or eventual.
    pub consistency: Consistency,
    /// Eventual reads only: refuse replicas that have not heard from their group's leader (a
    /// leader: from a quorum) within this long; the router then tries another replica, and the
    /// call fails with `UNAVAILABLE` (code `STALE_REPLICA`) when none qualifies in time.
    /// `None`: no bound. Ignored by strong reads, which are never stale.
    pub max_staleness: Option<Duration>,
}

/// Options of a write ([`Client::put_with`](crate::Client::put_with),
/// [`Client::delete_with`](crate::Client::delete_with),
/// [`Client::batch_put`](crate::Client::batch_put)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// The keyspace; empty means the default keyspace.
    pub keyspace: String,
    /// Strong (default) or eventual.
    pub consistency: Consistency,
    /// Write only if the key's current version equals this (0: only if the key does not
    /// exist); otherwise the call fails with [`Error::ConditionFailed`](crate::Error).
    /// Not supported by `batch_put`.
    pub if_version: Option<u64>,
}

/// Options of a scan ([`Client::scan`](crate::Client::scan),
/// [`Client::scan_all`](crate::Client::scan_all)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// For `scan`: the most keys in the page (0: the server's default page size).
    /// For `scan_all`: the most keys in total (0: no limit).
    pub limit: u32,
    /// Return keys and versions with empty values.
    pub keys_only: bool,
    /// The keyspace; empty means the default keyspace.
    pub keyspace: String,
    /// Strong (default) or eventual.
    pub consistency: Consistency,
    /// Eventual scans only: as [`ReadOptions::max_staleness`], for every group scanned.
    pub max_staleness: Option<Duration>,
}

/// The protobuf form of a max staleness: milliseconds, at least 1 when set (0 means no bound).
pub(crate) fn staleness_ms(bound: Option<Duration>) -> u32 {
    bound.map_or(0, |d| {
        u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
    })
}
